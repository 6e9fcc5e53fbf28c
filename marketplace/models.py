"""Users, provider profiles, offerings, saved SSH keys and rental contracts."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.urls import reverse
from django.utils import timezone

from marketplace.validators import (
    CURRENCIES,
    validate_country_code,
    validate_multiline_text,
    validate_visible_text,
)
from provisioning.models import ProvisionedServer


class UserManager(BaseUserManager):
    """Creates users identified by email address."""

    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra_fields):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email: str, password: str | None = None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra_fields)


class User(AbstractUser):
    """A person with an account; the same account can rent (tenant) and sell (provider)."""

    username = None
    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    def __str__(self) -> str:
        return self.email

    @property
    def is_provider(self) -> bool:
        return hasattr(self, "provider_profile")


class ProviderProfile(models.Model):
    """A user's public identity as a seller of capacity."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="provider_profile")
    display_name = models.CharField(max_length=80, validators=[validate_visible_text])
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True, max_length=5000, validators=[validate_multiline_text])
    website = models.URLField(blank=True)
    country = models.CharField(max_length=2, blank=True, validators=[validate_country_code])
    auto_accept = models.BooleanField(
        default=True, help_text="Accept paid rentals at once; when off, each rental waits for your decision."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["display_name"]
        constraints = [
            # Case-insensitive, so a new provider cannot pose as an existing one by changing the case.
            models.UniqueConstraint(
                Lower("display_name"),
                name="providerprofile_display_name_ci_unique",
                violation_error_message="A provider with this name already exists; choose another name.",
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    def get_absolute_url(self) -> str:
        return reverse("marketplace:provider", kwargs={"slug": self.slug})


class SshKey(models.Model):
    """An SSH public key a user saved to reuse when renting."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=80, validators=[validate_visible_text])
    public_key = models.TextField()
    key_type = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=128)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "SSH key"
        verbose_name_plural = "SSH keys"
        constraints = [
            models.UniqueConstraint(fields=["user", "fingerprint"], name="sshkey_unique_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class ProductType(models.TextChoices):
    VM = "vm", "Virtual machine"
    SERVICE = "service", "Ready-made service"
    GPU = "gpu", "GPU machine"


class Visibility(models.TextChoices):
    PUBLIC = "public", "Public"
    SHARED = "shared", "Shared with selected users"
    PRIVATE = "private", "Private"


#: Badge colour per visibility, used by every template that shows one.
VISIBILITY_COLOURS = {
    Visibility.PUBLIC: "green",
    Visibility.SHARED: "blue",
    Visibility.PRIVATE: "grey",
}


class StockStatus(models.TextChoices):
    IN_STOCK = "in_stock", "In stock"
    LIMITED = "limited", "Limited"
    OUT_OF_STOCK = "out_of_stock", "Out of stock"


#: Upper bounds of an offering's specs: 16 TiB of memory, 1,000,000 GB of disk, 64 GPUs.
MAX_MEMORY_MIB = 16 * 1024 * 1024
MAX_DISK_GB = 1_000_000
MAX_GPU_COUNT = 64


class Offering(models.Model):
    """Something a provider sells: a backend configuration, optional recipe and a monthly price."""

    provider = models.ForeignKey(ProviderProfile, on_delete=models.PROTECT, related_name="offerings")
    cloud_account = models.ForeignKey(
        "provisioning.CloudAccount", on_delete=models.PROTECT, related_name="offerings"
    )
    name = models.CharField(max_length=120, validators=[validate_visible_text])
    slug = models.SlugField(max_length=140, unique=True)
    description = models.TextField(blank=True, max_length=10000, validators=[validate_multiline_text])
    product_type = models.CharField(max_length=16, choices=ProductType.choices, default=ProductType.VM)

    vcpu = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(1024)])
    memory_mib = models.PositiveIntegerField(validators=[MinValueValidator(128), MaxValueValidator(MAX_MEMORY_MIB)])
    disk_gb = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(MAX_DISK_GB)])
    gpu_model = models.CharField(max_length=80, blank=True, validators=[validate_visible_text])
    gpu_count = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(MAX_GPU_COUNT)])

    country = models.CharField(max_length=2, validators=[validate_country_code])
    city = models.CharField(max_length=80, validators=[validate_visible_text])
    location_code = models.CharField(max_length=40, help_text="The backend's location code, for example fsn1.")

    server_type = models.CharField(max_length=60, help_text="The backend's server type, for example cx22.")
    image = models.CharField(max_length=80, help_text="The image to boot, for example ubuntu-24.04.")
    recipe_version = models.ForeignKey(
        "recipes.RecipeVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="offerings"
    )

    price_cents = models.PositiveIntegerField(
        validators=[MinValueValidator(0), MaxValueValidator(100_000_000)],
        help_text="Monthly price in the currency's minor unit (cents).",
    )
    currency = models.CharField(
        max_length=3,
        default="EUR",
        choices=CURRENCIES,
        error_messages={
            "invalid_choice": "Unsupported currency %(value)r; use one of "
            + ", ".join(code for code, _label in CURRENCIES)
            + "."
        },
    )
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC)
    stock_status = models.CharField(max_length=16, choices=StockStatus.choices, default=StockStatus.IN_STOCK)
    # Set when the offering lists the owner's running VM: its stock is that one VM, a rental
    # borrows it (SSH key hand-over) instead of creating a server, and ending the rental
    # returns it instead of deleting the server.
    resource = models.OneToOneField(
        "provisioning.Resource", on_delete=models.PROTECT, null=True, blank=True, related_name="listing"
    )

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["price_cents", "id"]
        indexes = [
            models.Index(fields=["visibility", "price_cents", "id"], name="offering_catalog_price"),
            models.Index(fields=["visibility", "vcpu", "id"], name="offering_catalog_vcpu"),
            models.Index(fields=["visibility", "memory_mib", "id"], name="offering_catalog_memory"),
            models.Index(fields=["visibility", "country", "price_cents"], name="offering_catalog_country"),
            models.Index(fields=["visibility", "product_type", "price_cents"], name="offering_catalog_type"),
            models.Index(fields=["visibility", "country", "vcpu"], name="offering_catalog_country_vcpu"),
            models.Index(fields=["visibility", "country", "memory_mib"], name="offering_catalog_country_mem"),
            # The catalog of a user on an allowlist matches public OR (shared AND id IN ...), which
            # the indexes above cannot return in price order; this one can.
            models.Index(
                fields=["price_cents", "id"],
                condition=Q(visibility__in=["public", "shared"]),
                name="offering_listed_price",
            ),
            # GPU offerings are a small share of the catalog; a partial index finds them directly.
            models.Index(
                fields=["visibility", "price_cents"], condition=Q(gpu_count__gt=0), name="offering_catalog_gpu_price"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gte=0), name="offering_gpu_count_nonnegative"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("marketplace:offering", kwargs={"slug": self.slug})

    def clean(self) -> None:
        super().clean()
        gpu_model = (self.gpu_model or "").strip()
        if gpu_model and not self.gpu_count:
            message = f"GPU model {gpu_model!r} needs a GPU count of 1 or more; set GPU count or clear GPU model."
            raise ValidationError({"gpu_model": message, "gpu_count": message})
        if self.gpu_count and not gpu_model:
            message = (
                f"GPU count {self.gpu_count} needs a GPU model, for example 'NVIDIA L4'; "
                "fill in GPU model or set GPU count to 0."
            )
            raise ValidationError({"gpu_model": message, "gpu_count": message})

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024

    def is_rentable(self) -> bool:
        return self.stock_status != StockStatus.OUT_OF_STOCK and self.cloud_account.is_usable

    @property
    def visibility_colour(self) -> str:
        return VISIBILITY_COLOURS.get(self.visibility, "grey")


#: Most email addresses one shared offering's allowlist may contain.
MAX_ALLOWLIST_ENTRIES = 500


class OfferingAllowlistEntry(models.Model):
    """One email address that may see and rent a shared offering.

    Entries are kept while the offering is public or private, so switching back to shared
    restores the list. The address is stored in lower case and matched against the signed-in
    user's email address, so it may belong to someone who has no account yet.
    """

    offering = models.ForeignKey(Offering, on_delete=models.CASCADE, related_name="allowlist_entries")
    email = models.EmailField(max_length=254)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["email", "id"]
        verbose_name = "offering allowlist entry"
        verbose_name_plural = "offering allowlist entries"
        constraints = [
            models.UniqueConstraint(fields=["offering", "email"], name="offeringallowlist_unique_email"),
        ]
        indexes = [models.Index(fields=["email"], name="offeringallowlist_email")]

    def __str__(self) -> str:
        return f"{self.email} may rent offering {self.offering_id}"

    def clean(self) -> None:
        super().clean()
        # Matching compares lower case, so an entry typed in the admin must be stored that way.
        self.email = (self.email or "").strip().lower()


class ContractStatus(models.TextChoices):
    REQUESTED = "requested", "Awaiting payment"
    PAID = "paid", "Paid, awaiting provider"
    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    TERMINATING = "terminating", "Terminating"
    TERMINATED = "terminated", "Terminated"
    REJECTED = "rejected", "Rejected"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"
    TERMINATION_FAILED = "termination_failed", "Termination failed"


#: Badge colour per contract status, used by every template that shows a status.
CONTRACT_STATUS_COLOURS = {
    ContractStatus.REQUESTED: "grey",
    ContractStatus.PAID: "blue",
    ContractStatus.PROVISIONING: "blue",
    ContractStatus.ACTIVE: "green",
    ContractStatus.TERMINATING: "orange",
    ContractStatus.TERMINATED: "grey",
    ContractStatus.REJECTED: "red",
    ContractStatus.CANCELLED: "grey",
    ContractStatus.FAILED: "red",
    ContractStatus.TERMINATION_FAILED: "red",
}

ENDED_STATUSES = frozenset(
    {ContractStatus.TERMINATED, ContractStatus.REJECTED, ContractStatus.CANCELLED, ContractStatus.FAILED}
)

#: Rentals that keep running when their offering is hidden from the catalog.
RUNNING_STATUSES = frozenset({ContractStatus.PAID, ContractStatus.PROVISIONING, ContractStatus.ACTIVE})


class ProvisioningStep(models.TextChoices):
    CREATING_SERVER = "creating_server", "Creating server"
    WAITING_FOR_BOOT = "waiting_for_boot", "Waiting for boot"
    WAITING_FOR_SSH = "waiting_for_ssh", "Waiting for SSH"
    RUNNING_RECIPE = "running_recipe", "Running recipe"
    FINALIZING = "finalizing", "Finalizing"


PROVISIONING_STEP_ORDER = list(ProvisioningStep)


def provisioning_step_states(
    *, current_step: str, has_recipe: bool, finished: bool, current_state: str
) -> list[tuple[str, str, str]]:
    """Return (step value, label, state) per provisioning step for a progress list.

    Every step is "done" once provisioning `finished`. Otherwise the steps before `current_step`
    are "done", the current one has `current_state` and the rest are "pending". A plain VM has no
    recipe to run, so without `has_recipe` the list does not claim that a recipe ran.
    """
    steps = [step for step in PROVISIONING_STEP_ORDER if has_recipe or step != ProvisioningStep.RUNNING_RECIPE]
    result = []
    seen_current = False
    for step in steps:
        if finished:
            state = "done"
        elif step == current_step:
            state = current_state
            seen_current = True
        elif current_step and not seen_current:
            state = "done"
        else:
            state = "pending"
        result.append((step.value, step.label, state))
    return result


class Contract(ProvisionedServer):
    """One rental of one offering by one tenant, with a snapshot of what the tenant agreed to.

    Only `marketplace.services.contracts` changes `status`; every change is a compare-and-set
    that writes a `ContractEvent` in the same transaction.
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="contracts")
    offering = models.ForeignKey(Offering, on_delete=models.PROTECT, related_name="contracts")
    provider = models.ForeignKey(ProviderProfile, on_delete=models.PROTECT, related_name="contracts")
    cloud_account = models.ForeignKey("provisioning.CloudAccount", on_delete=models.PROTECT, related_name="contracts")

    status = models.CharField(max_length=24, choices=ContractStatus.choices, default=ContractStatus.REQUESTED)
    provisioning_step = models.CharField(max_length=24, choices=ProvisioningStep.choices, blank=True)
    status_reason = models.TextField(blank=True)
    # Set once per submitted rent form, so a second click or a replayed request finds the
    # contract the first one created.
    idempotency_key = models.CharField(max_length=64)

    # Snapshot of the offering at rental time.
    offering_name = models.CharField(max_length=120)
    price_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    billing_period = models.CharField(max_length=16, default="month")
    commission_bps = models.PositiveIntegerField(help_text="The platform's share of each payment, in basis points.")
    author_share_bps = models.PositiveIntegerField(
        default=0, help_text="The recipe author's share, in basis points; 0 when the provider wrote the recipe."
    )
    is_self_rental = models.BooleanField(default=False)
    # How the rental is paid: billing.models.PaymentMethod ("" for rentals made before it existed).
    payment_method = models.CharField(max_length=16, blank=True)
    vcpu = models.PositiveSmallIntegerField()
    memory_mib = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField()
    gpu_model = models.CharField(max_length=80, blank=True)
    gpu_count = models.PositiveSmallIntegerField(default=0)
    country = models.CharField(max_length=2)
    city = models.CharField(max_length=80)
    location_code = models.CharField(max_length=40)
    backend = models.CharField(max_length=16)
    server_type = models.CharField(max_length=60)
    image = models.CharField(max_length=80)
    recipe_version = models.ForeignKey(
        "recipes.RecipeVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="contracts"
    )
    recipe_script = models.TextField(blank=True)

    ssh_public_key = models.TextField()
    ssh_key_fingerprint = models.CharField(max_length=128)

    # Provisioning results and the lease come from ProvisionedServer.

    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    paid_until = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    ended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"], name="contract_idempotency_per_tenant"),
        ]
        indexes = [
            models.Index(fields=["status", "paid_until"], name="contract_status_paid_until"),
            models.Index(fields=["status", "lease_expires_at"], name="contract_status_lease"),
        ]

    def __str__(self) -> str:
        return f"Contract {self.pk} ({self.offering_name})"

    def get_absolute_url(self) -> str:
        return reverse("marketplace:rental", kwargs={"public_id": self.public_id})

    @property
    def status_colour(self) -> str:
        return CONTRACT_STATUS_COLOURS.get(self.status, "grey")

    @property
    def is_ended(self) -> bool:
        return self.status in ENDED_STATUSES

    @property
    def is_sandbox(self) -> bool:
        return self.backend == "sandbox"

    @property
    def pays_by_card(self) -> bool:
        return self.payment_method == "stripe"

    @property
    def cancel_ends_now(self) -> bool:
        """A tenant's cancel ends the rental at once when nothing real was paid for the period."""
        return self.is_self_rental or (self.is_sandbox and not self.pays_by_card)

    def step_states(self) -> list[tuple[str, str, str]]:
        """Return (step value, label, "done" | "current" | "failed" | "pending") for the progress list."""
        if self.status == ContractStatus.PROVISIONING:
            current_state = "current"
        elif self.status == ContractStatus.FAILED:
            current_state = "failed"
        else:
            current_state = "pending"
        # Only a rental that became active finished every step; one cancelled while provisioning
        # stopped at its current step.
        return provisioning_step_states(
            current_step=self.provisioning_step,
            has_recipe=bool(self.recipe_script),
            finished=self.activated_at is not None or self.status == ContractStatus.ACTIVE,
            current_state=current_state,
        )

    def can_cancel(self) -> bool:
        return self.status in {ContractStatus.REQUESTED, ContractStatus.PAID, ContractStatus.PROVISIONING} or (
            self.status == ContractStatus.ACTIVE and not self.cancel_at_period_end
        )

    def can_accept(self) -> bool:
        return self.status == ContractStatus.PAID

    @property
    def response_deadline(self) -> datetime | None:
        """When a paid rental that waits for its provider is rejected and refunded automatically.

        None unless the rental is paid and waiting; the deadline is `paid_at` plus
        PROVIDER_RESPONSE_DEADLINE_HOURS.
        """
        if self.status != ContractStatus.PAID or self.paid_at is None:
            return None
        return self.paid_at + timedelta(hours=settings.PROVIDER_RESPONSE_DEADLINE_HOURS)

    def can_retry_provisioning(self) -> bool:
        return self.status == ContractStatus.PROVISIONING


class ProvisioningQueueEntry(Contract):
    """A contract seen as work in flight: provisioning, terminating or stuck in termination."""

    class Meta:
        proxy = True
        verbose_name = "provisioning queue entry"
        verbose_name_plural = "provisioning queue"


#: Actor labels non-staff users may see; every other label (worker ids contain host names and
#: process ids) is shown as "Platform".
PUBLIC_ACTOR_LABELS = {"tenant": "Tenant", "provider": "Provider", "staff": "Staff"}


class ContractEvent(models.Model):
    """One change of a contract's status or provisioning step, with who made it and why."""

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=24, blank=True)
    to_status = models.CharField(max_length=24)
    step = models.CharField(max_length=24, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=64, help_text="'tenant', 'provider', 'staff', 'system' or a worker id.")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.from_status or '-'} -> {self.to_status} ({self.step})"

    @property
    def public_actor(self) -> str:
        """The role shown to non-staff users; worker ids, "worker" and "system" become "Platform"."""
        return PUBLIC_ACTOR_LABELS.get(self.actor_label, "Platform")


class OfferingImport(models.Model):
    """A CSV file of offerings a provider uploaded, kept between its preview and its apply.

    The apply step parses and validates `content` again, so it never relies on the preview
    the browser showed. A row that is not applied expires at `expires_at`.
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    provider = models.ForeignKey(ProviderProfile, on_delete=models.CASCADE, related_name="offering_imports")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    filename = models.CharField(max_length=255, blank=True)
    content = models.TextField(help_text="The uploaded file decoded as UTF-8.")
    preview = models.JSONField(default=dict, help_text="The dry-run report shown before applying.")
    result = models.JSONField(null=True, blank=True, help_text="The report of the apply step.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["expires_at"], name="offeringimport_expires_at")]

    def __str__(self) -> str:
        return f"Offering import {self.public_id} ({self.filename or 'unnamed file'})"

    def get_absolute_url(self) -> str:
        return reverse("marketplace:offering_import_preview", kwargs={"public_id": self.public_id})

    @property
    def is_expired(self) -> bool:
        return self.applied_at is None and timezone.now() >= self.expires_at

    def can_apply(self) -> bool:
        return self.applied_at is None and not self.is_expired
