"""Cloud accounts: a provider's credentials for one cloud backend."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from provisioning import crypto


class Backend(models.TextChoices):
    HETZNER = "hetzner", "Hetzner Cloud"
    SANDBOX = "sandbox", "Sandbox (simulated, no real machine)"


class ValidationStatus(models.TextChoices):
    UNCHECKED = "unchecked", "Not checked yet"
    VALID = "valid", "Valid"
    INVALID = "invalid", "Invalid"


VALIDATION_STATUS_COLOURS = {
    ValidationStatus.UNCHECKED: "grey",
    ValidationStatus.VALID: "green",
    ValidationStatus.INVALID: "red",
}


class CloudAccount(models.Model):
    """A provider's account at one cloud backend, with its API token encrypted at rest.

    The token is write-only: forms, admin and API accept a new one but never show it back.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cloud_accounts")
    backend = models.CharField(max_length=16, choices=Backend.choices)
    label = models.CharField(max_length=80)
    token_ciphertext = models.TextField(blank=True)
    token_key_id = models.CharField(max_length=32, blank=True)
    validation_status = models.CharField(
        max_length=16, choices=ValidationStatus.choices, default=ValidationStatus.UNCHECKED
    )
    last_error = models.TextField(blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["label", "id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "label"], name="cloudaccount_label_unique_per_owner"),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.get_backend_display()})"

    TOKEN_BINDING = "provisioning.CloudAccount.token"

    def set_token(self, token: str) -> None:
        value = crypto.encrypt(token, associated_data=self.TOKEN_BINDING)
        self.token_ciphertext = value.ciphertext
        self.token_key_id = value.key_id

    def get_token(self) -> str:
        if not self.token_ciphertext:
            return ""
        return crypto.decrypt(
            crypto.EncryptedValue(self.token_ciphertext, self.token_key_id), associated_data=self.TOKEN_BINDING
        )

    @property
    def has_token(self) -> bool:
        return bool(self.token_ciphertext)

    @property
    def is_usable(self) -> bool:
        return self.validation_status != ValidationStatus.INVALID

    @property
    def status_colour(self) -> str:
        return VALIDATION_STATUS_COLOURS.get(self.validation_status, "grey")


class SandboxServer(models.Model):
    """A simulated server of the Sandbox backend; no machine exists behind it."""

    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="sandbox_servers")
    name = models.CharField(max_length=120)
    server_type = models.CharField(max_length=60)
    image = models.CharField(max_length=80)
    location = models.CharField(max_length=40)
    labels = models.JSONField(default=dict)
    ipv4 = models.GenericIPAddressField()
    boot_seconds = models.FloatField()
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Sandbox server {self.pk} ({self.name})"
