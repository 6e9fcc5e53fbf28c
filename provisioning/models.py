"""Cloud accounts (a provider's credentials for one cloud backend), self-provisioned resources,
orphans, health checks and agent pools."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, router, transaction
from django.utils import timezone

from marketplace.validators import validate_visible_text
from provisioning.encrypted_fields import CLOUD_ACCOUNT_TOKEN


class Backend(models.TextChoices):
    HETZNER = "hetzner", "Hetzner Cloud"
    PROXMOX = "proxmox", "Proxmox VE"
    SANDBOX = "sandbox", "Sandbox (simulated, no real machine)"
    AGENT = "agent", "Provider agent pool"


class ValidationStatus(models.TextChoices):
    UNCHECKED = "unchecked", "Not checked yet"
    VALID = "valid", "Valid"
    INVALID = "invalid", "Invalid"


VALIDATION_STATUS_COLOURS = {
    ValidationStatus.UNCHECKED: "grey",
    ValidationStatus.VALID: "green",
    ValidationStatus.INVALID: "red",
}


class CloudAccountManager(models.Manager):
    """Cloud accounts that were not deleted; `CloudAccount.all_objects` includes deleted ones."""

    def get_queryset(self):
        return super().get_queryset().filter(deleted_at__isnull=True)


class CloudAccount(models.Model):
    """A provider's account at one cloud backend, with its API token encrypted at rest.

    The token is write-only: forms, admin and API accept a new one but never show it back. For
    Proxmox VE the token is the API token's secret, and the `proxmox_*` fields contain the
    address and settings of the node. Other backends leave them empty.

    A deleted account that ended rentals still refer to stays as a row with `deleted_at` set
    and its token erased; `CloudAccount.objects` leaves such rows out.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cloud_accounts")
    backend = models.CharField(max_length=16, choices=Backend.choices)
    label = models.CharField(max_length=80, validators=[validate_visible_text])
    token_ciphertext = models.TextField(blank=True)
    token_key_id = models.CharField(max_length=32, blank=True)
    validation_status = models.CharField(
        max_length=16, choices=ValidationStatus.choices, default=ValidationStatus.UNCHECKED
    )
    last_error = models.TextField(blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    proxmox_api_url = models.CharField(
        "Proxmox API URL", max_length=300, blank=True,
        help_text="Address of the Proxmox VE web interface, for example https://pve.example.com:8006.",
    )
    proxmox_token_id = models.CharField(
        "Proxmox token ID", max_length=200, blank=True,
        help_text="The API token's ID, USER@REALM!TOKENNAME, for example cloudmarket@pve!provisioning.",
    )
    proxmox_node = models.CharField(
        "Proxmox node", max_length=63, blank=True, help_text="The node that runs the VMs and holds the templates."
    )
    proxmox_verify_tls = models.BooleanField(
        "Verify TLS certificate", default=True,
        help_text="Check the API's certificate against trusted CAs. Turn off only for a self-signed certificate "
        "on a network you trust.",
    )
    proxmox_vmid_min = models.PositiveIntegerField(
        "First VM ID", null=True, blank=True,
        help_text="VM IDs the platform may use; leave both ends empty for 100000-199999.",
    )
    proxmox_vmid_max = models.PositiveIntegerField("Last VM ID", null=True, blank=True)
    proxmox_server_types = models.JSONField(
        "Proxmox server types", default=list, blank=True,
        help_text='Sizes offered, as a list of {"name", "vcpu", "memory_mib", "disk_gb"} objects; '
        "empty for pve-small, pve-medium and pve-large.",
    )
    proxmox_ipconfig0 = models.CharField(
        "Cloud-init network", max_length=200, blank=True, default="ip=dhcp",
        help_text="Cloud-init ipconfig0 of new VMs, for example ip=dhcp.",
    )

    # A token set before the row had a primary key. The ciphertext is bound to the primary key,
    # so save() encrypts the token once the row exists.
    _unsaved_token: str | None = None

    all_objects = models.Manager()
    objects = CloudAccountManager()

    class Meta:
        ordering = ["label", "id"]
        default_manager_name = "objects"
        # Related lookups such as contract.cloud_account still find deleted accounts.
        base_manager_name = "all_objects"
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "label"],
                condition=models.Q(deleted_at__isnull=True),
                name="cloudaccount_label_unique_per_owner",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.get_backend_display()})"

    def save(self, *args, **kwargs) -> None:
        """Save the row; a token set before the first save is encrypted and stored in the same transaction."""
        token = self._unsaved_token
        if token is None:
            super().save(*args, **kwargs)
            return
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            super().save(*args, **kwargs)
            changed = CLOUD_ACCOUNT_TOKEN.seal(self, token)
            type(self).all_objects.using(using).filter(pk=self.pk).update(
                **{name: getattr(self, name) for name in changed}
            )
        self._unsaved_token = None

    def clean(self) -> None:
        super().clean()
        if self.backend == Backend.PROXMOX:
            from provisioning.backends.proxmox_settings import proxmox_settings_errors

            errors = proxmox_settings_errors(self)
            if errors:
                raise ValidationError(errors)

    def set_token(self, token: str) -> None:
        """Encrypt `token` into the token columns; on an unsaved account, keep it until `save()`."""
        if self.pk is None:
            self._unsaved_token = token
            self.token_ciphertext = ""
            self.token_key_id = ""
            return
        self._unsaved_token = None
        CLOUD_ACCOUNT_TOKEN.seal(self, token)

    def get_token(self) -> str:
        """Return the plaintext token, "" when there is none. Raises `crypto.DecryptionError`."""
        if self._unsaved_token is not None:
            return self._unsaved_token
        return CLOUD_ACCOUNT_TOKEN.open(self)

    @property
    def has_token(self) -> bool:
        return bool(self.token_ciphertext) or bool(self._unsaved_token)

    @property
    def is_usable(self) -> bool:
        return self.validation_status != ValidationStatus.INVALID and self.deleted_at is None

    @property
    def proxmox_vmid_range_text(self) -> str:
        if self.proxmox_vmid_min is None or self.proxmox_vmid_max is None:
            return ""
        return f"{self.proxmox_vmid_min}-{self.proxmox_vmid_max}"

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
    # Set by the last start after a stop; the server reports running `boot_seconds` later.
    started_at = models.DateTimeField(null=True, blank=True)
    # Set while the server is stopped.
    stopped_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Sandbox server {self.pk} ({self.name})"


class OrphanReason(models.TextChoices):
    NO_CONTRACT_LABEL = "no_contract_label", "No contract label"
    UNKNOWN_CONTRACT = "unknown_contract", "Unknown contract"
    CONTRACT_ENDED = "contract_ended", "Contract ended"
    NOT_CONTRACT_SERVER = "not_contract_server", "Not the contract's server"


class OrphanStatus(models.TextChoices):
    REPORTED = "reported", "Reported"
    DELETED = "deleted", "Deleted"
    GONE = "gone", "Gone"
    CLEARED = "cleared", "No longer an orphan"


ORPHAN_STATUS_COLOURS = {
    OrphanStatus.REPORTED: "orange",
    OrphanStatus.DELETED: "grey",
    OrphanStatus.GONE: "grey",
    OrphanStatus.CLEARED: "green",
}


class OrphanServer(models.Model):
    """A server carrying this deployment's label at a cloud account that no live contract owns.

    The reconciler reports it, and deletes it once it has been seen for
    `RECONCILE_ORPHAN_GRACE_SECONDS` (staff can delete it earlier from the admin). `gone` means
    the server disappeared without the reconciler deleting it, and `cleared` that a later run
    found a live contract owning it.
    """

    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="orphan_servers")
    server_id = models.CharField(max_length=64)
    name = models.CharField(max_length=255, blank=True)
    labels = models.JSONField(default=dict)
    reason = models.CharField(max_length=24, choices=OrphanReason.choices)
    # The contract named by the server's contract label, if that contract exists.
    contract = models.ForeignKey(
        "marketplace.Contract", null=True, blank=True, on_delete=models.SET_NULL, related_name="orphan_servers"
    )
    status = models.CharField(max_length=16, choices=OrphanStatus.choices, default=OrphanStatus.REPORTED)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)
    # Staff user who deleted it from the admin; empty when the reconciler deleted it.
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    delete_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-first_seen_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "server_id"], name="orphanserver_unique_per_account"),
        ]
        indexes = [models.Index(fields=["status", "first_seen_at"], name="orphanserver_status_seen")]

    def __str__(self) -> str:
        return f"Orphan server {self.server_id} at {self.account}"

    @property
    def status_colour(self) -> str:
        return ORPHAN_STATUS_COLOURS.get(self.status, "grey")

    def can_delete(self) -> bool:
        return self.status == OrphanStatus.REPORTED


class ServerMissingReport(models.Model):
    """A live contract whose cloud server was not found at its cloud account.

    At most one report per contract is open (`resolved_at` empty). The tenant and the provider
    are notified when a report opens. It is resolved when the server is found again, the
    contract stores another server id, or the contract is no longer live.
    """

    contract = models.ForeignKey("marketplace.Contract", on_delete=models.CASCADE, related_name="server_missing_reports")
    cloud_server_id = models.CharField(max_length=64)
    detected_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-detected_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["contract"],
                condition=models.Q(resolved_at__isnull=True),
                name="servermissingreport_one_open_per_contract",
            ),
        ]

    def __str__(self) -> str:
        return f"Server {self.cloud_server_id} of contract {self.contract_id} missing"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class HealthSource(models.TextChoices):
    PLATFORM = "platform", "Platform probe"
    AGENT = "agent", "Provider agent"


class HealthStatus(models.TextChoices):
    UP = "up", "Up"
    DOWN = "down", "Down"


HEALTH_STATUS_COLOURS = {
    HealthStatus.UP: "green",
    HealthStatus.DOWN: "red",
}


class HealthCheck(models.Model):
    """One probe of one contract's server: up or down at `checked_at`, with the TCP connect latency.

    The platform probe connects to the server's SSH port; agents report the same probe from the
    host plus the hypervisor's state. `provisioning.health.health_check_record` writes the rows,
    and `health_checks_prune` deletes them after `HEALTH_CHECK_RETENTION_DAYS`.
    """

    contract = models.ForeignKey("marketplace.Contract", on_delete=models.CASCADE, related_name="health_checks")
    checked_at = models.DateTimeField()
    source = models.CharField(max_length=16, choices=HealthSource.choices)
    status = models.CharField(max_length=8, choices=HealthStatus.choices)
    # Milliseconds until the TCP connection was established; empty when the server was down.
    latency_ms = models.FloatField(null=True, blank=True)
    # The hypervisor's word for the VM's state (for example "running"), as an agent reported it.
    hypervisor_state = models.CharField(max_length=64, blank=True)
    detail = models.CharField(max_length=500, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-checked_at", "-id"]
        indexes = [
            models.Index(fields=["contract", "checked_at"], name="healthcheck_contract_time"),
            models.Index(fields=["checked_at"], name="healthcheck_time"),
        ]

    def __str__(self) -> str:
        return f"Contract {self.contract_id} {self.status} at {self.checked_at:%Y-%m-%d %H:%M:%S}"

    @property
    def status_colour(self) -> str:
        return HEALTH_STATUS_COLOURS.get(self.status, "grey")


class HealthProbeState(models.Model):
    """A contract's health-check bookkeeping: when the platform probes it next, and its failure streak.

    Workers claim a due row by moving `next_probe_at` forward while holding its row lock, so
    two workers never probe one contract in the same interval. `failing_since` is set while a
    "health check failing" notification is open, so it is sent once per outage.
    """

    contract = models.OneToOneField("marketplace.Contract", on_delete=models.CASCADE, related_name="health_state")
    next_probe_at = models.DateTimeField(default=timezone.now)
    # Newest `checked_at` counted in the streak; older reports that arrive late do not change it.
    last_checked_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["next_probe_at"], name="healthprobestate_next_probe")]

    def __str__(self) -> str:
        return f"Health of contract {self.contract_id}"

    @property
    def is_failing(self) -> bool:
        return self.failing_since is not None


class HealthRollup(models.Model):
    """Up and down time, check counts and latency of one contract in one UTC hour.

    `provisioning.health.health_rollups_update` sums them from the health checks once the hour
    is complete, so uptime over days reads one row per contract and hour instead of every check.
    """

    contract = models.ForeignKey("marketplace.Contract", on_delete=models.CASCADE, related_name="health_rollups")
    hour = models.DateTimeField()
    up_seconds = models.FloatField(default=0)
    down_seconds = models.FloatField(default=0)
    up_count = models.PositiveIntegerField(default=0)
    down_count = models.PositiveIntegerField(default=0)
    # Sum and maximum of the latencies of the hour's up checks, in milliseconds.
    latency_sum_ms = models.FloatField(default=0)
    latency_max_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-hour", "contract_id"]
        constraints = [models.UniqueConstraint(fields=["contract", "hour"], name="healthrollup_unique_contract_hour")]
        indexes = [models.Index(fields=["hour"], name="healthrollup_hour")]

    def __str__(self) -> str:
        return f"Contract {self.contract_id} health in the hour from {self.hour:%Y-%m-%d %H:%M}"


class HealthRollupProgress(models.Model):
    """The single row (pk 1) that records the end of the hours whose `HealthRollup` rows are complete."""

    rolled_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Health rollups complete until {self.rolled_until}"


# --- provider agents -----------------------------------------------------------------------------


class ProvisionerType(models.TextChoices):
    PROXMOX = "proxmox", "Proxmox VE"
    SCRIPT = "script", "Script (external commands)"
    DOCKER = "docker", "Docker"


class AgentPool(models.Model):
    """A group of agents on a provider's own hardware that serve the offerings of one cloud account.

    The pool is backed by a `CloudAccount` with backend `agent`, so offerings and contracts
    refer to it like to any other account. The account's label is the pool's name. Platform
    workers never provision or reconcile agent-backed contracts; the pool's agents do.
    """

    cloud_account = models.OneToOneField(CloudAccount, on_delete=models.CASCADE, related_name="agent_pool")
    region = models.CharField(
        max_length=40, validators=[validate_visible_text],
        help_text="Where the pool's hosts are, for example fra-home-1; offerings use it as their location code.",
    )
    provisioner_type = models.CharField(max_length=16, choices=ProvisionerType.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["cloud_account__label", "id"]

    def __str__(self) -> str:
        return f"Agent pool {self.cloud_account.label} ({self.get_provisioner_type_display()}, {self.region})"

    @property
    def name(self) -> str:
        return self.cloud_account.label

    @property
    def owner(self):
        return self.cloud_account.owner


class AgentSetupToken(models.Model):
    """A one-time token an agent exchanges for its credential; only its SHA-256 hash is stored."""

    pool = models.ForeignKey(AgentPool, on_delete=models.CASCADE, related_name="setup_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    agent = models.OneToOneField(
        "Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="setup_token",
        help_text="The agent that used the token.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Setup token {self.pk} of pool {self.pool_id}"

    def is_usable(self, *, now=None) -> bool:
        now = now or timezone.now()
        return self.used_at is None and self.expires_at > now


class Agent(models.Model):
    """One agent process on a provider's host, with its revocable credential (stored as a SHA-256 hash).

    `last_heartbeat_at`, `version`, `capabilities` and `free_resources` are what the agent sent
    in its latest heartbeat. An agent is online while its latest heartbeat is younger than
    AGENT_OFFLINE_AFTER_SECONDS.
    """

    pool = models.ForeignKey(AgentPool, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=80, validators=[validate_visible_text])
    credential_hash = models.CharField(max_length=64, unique=True)
    # The credential's first characters, so the provider can tell agents' credentials apart.
    credential_prefix = models.CharField(max_length=16)
    version = models.CharField(max_length=40, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    free_resources = models.JSONField(default=dict, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["pool", "last_heartbeat_at"], name="agent_pool_heartbeat")]

    def __str__(self) -> str:
        return f"Agent {self.name} ({self.pk})"

    @property
    def lease_owner(self) -> str:
        """The `Contract.lease_owner` value of the leases this agent holds."""
        return f"agent:{self.pk}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_online(self, *, now=None) -> bool:
        if self.revoked_at is not None or self.last_heartbeat_at is None:
            return False
        now = now or timezone.now()
        return (now - self.last_heartbeat_at).total_seconds() < settings.AGENT_OFFLINE_AFTER_SECONDS

    @property
    def status_label(self) -> str:
        if self.is_revoked:
            return "Revoked"
        return "Online" if self.is_online() else "Offline"

    @property
    def status_colour(self) -> str:
        if self.is_revoked:
            return "red"
        return "green" if self.is_online() else "grey"


class ProvisionedServer(models.Model):
    """The columns the provisioning pipeline reads and writes: the server, its keys and the worker's lease.

    `marketplace.Contract` (a rental) and `Resource` (a user's own VM) both have them, so one
    pipeline (`provisioning.pipeline`) provisions either.
    """

    # Provisioning results.
    cloud_server_id = models.CharField(max_length=64, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    ssh_port = models.PositiveIntegerField(default=22)
    ssh_username = models.CharField(max_length=32, default="root")
    host_public_key = models.TextField(blank=True)
    # The per-row platform key's private half, AES-256-GCM encrypted (see provisioning.crypto).
    platform_key_ciphertext = models.TextField(blank=True)
    platform_key_key_id = models.CharField(max_length=32, blank=True)
    platform_public_key = models.TextField(blank=True)
    host_key_ciphertext = models.TextField(blank=True)
    host_key_key_id = models.CharField(max_length=32, blank=True)

    # Work in flight: the worker holding the lease.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_claimed_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Set while a retry waits out its backoff; no worker claims the row before it.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        abstract = True

    @property
    def ssh_command(self) -> str:
        if not self.ip_address:
            return ""
        port = "" if self.ssh_port == 22 else f" -p {self.ssh_port}"
        return f"ssh{port} {self.ssh_username}@{self.ip_address}"


class ResourceStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Creating"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    DELETE_FAILED = "delete_failed", "Deletion failed"


#: Badge colour per resource status, used by every template that shows one.
RESOURCE_STATUS_COLOURS = {
    ResourceStatus.PROVISIONING: "blue",
    ResourceStatus.RUNNING: "green",
    ResourceStatus.STOPPING: "orange",
    ResourceStatus.STOPPED: "grey",
    ResourceStatus.STARTING: "blue",
    ResourceStatus.FAILED: "red",
    ResourceStatus.DELETING: "orange",
    ResourceStatus.DELETED: "grey",
    ResourceStatus.DELETE_FAILED: "red",
}

#: Statuses in which a worker has a pending cloud operation for the resource.
RESOURCE_BUSY_STATUSES = frozenset(
    {ResourceStatus.PROVISIONING, ResourceStatus.STOPPING, ResourceStatus.STARTING, ResourceStatus.DELETING}
)


class Resource(ProvisionedServer):
    """A VM a user created for their own use at one of their cloud accounts, without payment.

    The provisioning pipeline drives it like a rental (lease, steps, recipe run), but it has no
    offering, price or provider and never reaches billing. Listing it on the marketplace binds
    one `marketplace.Offering` to it (`Offering.resource`). A rental of that offering borrows
    the VM: the platform installs the tenant's key at the start and restores the owner's keys
    at the end, and the VM is never deleted by the rental.

    Only `provisioning.resources` changes `status`; every change writes a `ResourceEvent`.
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="resources")
    cloud_account = models.ForeignKey(CloudAccount, on_delete=models.PROTECT, related_name="resources")
    name = models.CharField(max_length=80, validators=[validate_visible_text])

    status = models.CharField(max_length=16, choices=ResourceStatus.choices, default=ResourceStatus.PROVISIONING)
    provisioning_step = models.CharField(max_length=24, blank=True)
    status_reason = models.TextField(blank=True)

    # What was created, copied from the cloud catalog when the wizard was submitted.
    backend = models.CharField(max_length=16, choices=Backend.choices)
    location_code = models.CharField(max_length=40)
    country = models.CharField(max_length=2, blank=True)
    city = models.CharField(max_length=80, blank=True)
    server_type = models.CharField(max_length=60)
    vcpu = models.PositiveSmallIntegerField()
    memory_mib = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField()
    image = models.CharField(max_length=80)
    recipe_version = models.ForeignKey(
        "recipes.RecipeVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="resources"
    )
    recipe_script = models.TextField(blank=True)

    # The owner's key, authorised for root on the VM whenever no tenant has it.
    ssh_public_key = models.TextField()
    ssh_key_fingerprint = models.CharField(max_length=128)

    remove_owner_keys_while_rented = models.BooleanField(
        default=False, help_text="Remove the owner's keys from root while a tenant rents the VM; restored afterwards."
    )

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "status"], name="resource_owner_status"),
            models.Index(fields=["status", "lease_expires_at"], name="resource_status_lease"),
        ]

    def __str__(self) -> str:
        return f"Resource {self.pk} ({self.name})"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("resources:detail", kwargs={"public_id": self.public_id})

    @property
    def status_colour(self) -> str:
        return RESOURCE_STATUS_COLOURS.get(self.status, "grey")

    @property
    def is_sandbox(self) -> bool:
        return self.backend == Backend.SANDBOX

    @property
    def is_busy(self) -> bool:
        return self.status in RESOURCE_BUSY_STATUSES

    def can_start(self) -> bool:
        return self.status == ResourceStatus.STOPPED

    def can_stop(self) -> bool:
        return self.status == ResourceStatus.RUNNING

    def can_delete(self) -> bool:
        return self.status in {
            ResourceStatus.RUNNING, ResourceStatus.STOPPED, ResourceStatus.FAILED, ResourceStatus.DELETE_FAILED
        }

    def can_list(self) -> bool:
        return self.status == ResourceStatus.RUNNING

    def step_states(self) -> list[tuple[str, str, str]]:
        """Return (step value, label, "done" | "current" | "failed" | "pending") for the progress list."""
        from marketplace.models import provisioning_step_states

        return provisioning_step_states(
            current_step=self.provisioning_step,
            has_recipe=bool(self.recipe_script),
            finished=self.status not in (ResourceStatus.PROVISIONING, ResourceStatus.FAILED),
            current_state="current" if self.status == ResourceStatus.PROVISIONING else "failed",
        )


class ResourceEvent(models.Model):
    """One change of a resource's status or provisioning step, with who made it and why."""

    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    step = models.CharField(max_length=24, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=64, help_text="'owner', 'staff', 'system' or a worker id.")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.from_status or '-'} -> {self.to_status} ({self.step})"
