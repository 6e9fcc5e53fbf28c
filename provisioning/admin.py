"""Admin for cloud accounts, self-provisioned resources, Sandbox servers, reconciliation, health checks and agent pools.

The API token of a cloud account is write-only: the admin form takes a new one and never
renders the stored token or its ciphertext.
"""

from __future__ import annotations

import logging

from django import forms
from django.contrib import admin, messages

from marketplace.admin import ReadOnlyAdminMixin, status_badge
from marketplace.validators import validate_visible_text
from provisioning.agent_services import agent_revoke
from provisioning.backends.base import CloudError
from provisioning.models import (
    RESOURCE_STATUS_COLOURS,
    Agent,
    AgentPool,
    AgentSetupToken,
    Backend,
    CloudAccount,
    HealthCheck,
    HealthProbeState,
    HealthRollup,
    HealthRollupProgress,
    OrphanServer,
    Resource,
    ResourceEvent,
    SandboxServer,
    ServerMissingReport,
    ValidationStatus,
)
from provisioning.reconcile import OrphanNotDeletable, orphan_server_delete
from provisioning.services import cloud_account_validate

logger = logging.getLogger(__name__)

PROXMOX_FIELDS = (
    "proxmox_api_url",
    "proxmox_token_id",
    "proxmox_node",
    "proxmox_verify_tls",
    "proxmox_vmid_min",
    "proxmox_vmid_max",
    "proxmox_server_types",
    "proxmox_ipconfig0",
)


class CloudAccountAdminForm(forms.ModelForm):
    """Cloud account form with a write-only field for replacing the API token."""

    new_token = forms.CharField(
        label="New API token",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the stored token. For Proxmox VE, the API token's secret. A new token "
        "is checked against the backend's API when you save.",
    )

    class Meta:
        model = CloudAccount
        # An allow-list, so the token ciphertext never becomes a form field.
        fields = ("owner", "backend", "label", *PROXMOX_FIELDS)

    def clean_proxmox_server_types(self):
        # An emptied JSON field arrives as None; the model stores an empty list (the default sizes).
        return self.cleaned_data.get("proxmox_server_types") or []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "label" in self.fields:
            self.fields["label"].validators.append(validate_visible_text)


@admin.register(CloudAccount)
class CloudAccountAdmin(admin.ModelAdmin):
    form = CloudAccountAdminForm
    list_display = (
        "label", "owner", "backend", "validation_badge", "has_token_display", "validated_at", "created_at", "deleted_at",
    )
    list_filter = ("backend", "validation_status", ("deleted_at", admin.EmptyFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("label", "owner__email")
    autocomplete_fields = ("owner",)
    date_hierarchy = "created_at"
    actions = ("validate_credentials",)

    def get_queryset(self, request):
        # Staff also see accounts their owners deleted, which ended rentals still refer to.
        return CloudAccount.all_objects.all()

    def get_fieldsets(self, request, obj=None):
        fields = ["owner", "backend", "label", "new_token", "has_token_display", "validation_status", "last_error"]
        fieldsets = [(None, {"fields": fields + ["validated_at", "created_at", "deleted_at"]})]
        if obj is None or obj.backend == Backend.PROXMOX:
            fieldsets.append(
                ("Proxmox VE", {"fields": PROXMOX_FIELDS, "description": "Only for Proxmox VE accounts."})
            )
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        readonly = ["has_token_display", "validation_status", "last_error", "validated_at", "created_at", "deleted_at"]
        if obj is not None:
            # Offerings and contracts point at this account; moving it to another owner or
            # backend would break them.
            readonly += ["owner", "backend"]
        return readonly

    def save_model(self, request, obj: CloudAccount, form, change: bool) -> None:
        """Save the account; a new account or a replaced token is validated at once, like on the pages and API."""
        token = form.cleaned_data.get("new_token") or ""
        if token:
            obj.set_token(token)
            obj.validation_status = ValidationStatus.UNCHECKED
            obj.last_error = ""
            obj.validated_at = None
            logger.info("Cloud account %s: token replaced by staff user %s", obj.pk or "(new)", request.user.pk)
        settings_changed = change and any(name in form.changed_data for name in PROXMOX_FIELDS)
        super().save_model(request, obj, form, change)
        if token or not change or settings_changed:
            self._validate_and_report(request, obj)

    def _validate_and_report(self, request, account: CloudAccount) -> None:
        account = cloud_account_validate(account=account)
        if account.validation_status == ValidationStatus.VALID:
            self.message_user(request, f"{account}: credentials are valid.", messages.SUCCESS)
        elif account.validation_status == ValidationStatus.INVALID:
            self.message_user(request, f"{account}: credentials are invalid. {account.last_error}", messages.WARNING)
        else:
            detail = account.last_error or "The backend gave no clear answer."
            self.message_user(
                request, f"{account}: {detail} Run the 'Validate credentials' action again later.", messages.WARNING
            )

    @admin.display(description="Validation", ordering="validation_status")
    def validation_badge(self, obj: CloudAccount):
        return status_badge(obj.get_validation_status_display(), obj.status_colour)

    @admin.display(description="Has token", boolean=True)
    def has_token_display(self, obj: CloudAccount) -> bool:
        return obj.has_token

    @admin.action(description="Validate credentials", permissions=["change"])
    def validate_credentials(self, request, queryset) -> None:
        for account in queryset.order_by("pk"):
            self._validate_and_report(request, account)


@admin.register(SandboxServer)
class SandboxServerAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Simulated servers, read-only: the Sandbox backend creates and deletes them."""

    list_display = ("name", "account", "server_type", "location", "ipv4", "created_at", "deleted_at")
    list_filter = ("location", "server_type", ("deleted_at", admin.EmptyFieldListFilter))
    list_select_related = ("account",)
    search_fields = ("name", "ipv4", "account__label")
    date_hierarchy = "created_at"


# --- reconciliation --------------------------------------------------------------------------


@admin.register(OrphanServer)
class OrphanServerAdmin(admin.ModelAdmin):
    """Orphan servers found by the reconciler, with an action that deletes them at the cloud now.

    Rows are read-only. Deleting a row here would not delete the server, so only the action
    deletes anything.
    """

    list_display = (
        "server_id", "name", "account", "reason", "status_display", "contract", "first_seen_at", "last_seen_at",
        "deleted_at", "has_delete_error",
    )
    list_filter = ("status", "reason", "account__backend", "account", ("delete_error", admin.EmptyFieldListFilter))
    list_select_related = ("account", "contract")
    search_fields = ("server_id", "name", "account__label")
    date_hierarchy = "first_seen_at"
    readonly_fields = (
        "account", "server_id", "name", "labels", "reason", "contract", "status", "first_seen_at", "last_seen_at",
        "deleted_at", "deleted_by", "delete_error",
    )
    actions = ("delete_now",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_display(self, obj: OrphanServer):
        return status_badge(obj.get_status_display(), obj.status_colour)

    @admin.display(description="Delete error", boolean=True)
    def has_delete_error(self, obj: OrphanServer) -> bool:
        return bool(obj.delete_error)

    @admin.action(description="Delete now (skip the grace period)", permissions=["change"])
    def delete_now(self, request, queryset) -> None:
        for orphan in queryset.order_by("pk"):
            try:
                orphan = orphan_server_delete(orphan=orphan, actor=request.user)
            except OrphanNotDeletable as exc:
                self.message_user(request, f"Server {orphan.server_id}: not deleted: {exc}", messages.WARNING)
            except CloudError as exc:
                self.message_user(request, f"Server {orphan.server_id}: deleting failed: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"Server {orphan.server_id} at {orphan.account} deleted.", messages.SUCCESS)


@admin.register(ServerMissingReport)
class ServerMissingReportAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Live contracts whose cloud server was not found, read-only: the reconciler opens and resolves them."""

    list_display = ("contract", "cloud_server_id", "contract_status", "detected_at", "resolved_at")
    list_filter = (("resolved_at", admin.EmptyFieldListFilter), "contract__status", "contract__backend")
    list_select_related = ("contract",)
    search_fields = ("cloud_server_id", "contract__offering_name", "contract__tenant__email")
    date_hierarchy = "detected_at"

    @admin.display(description="Contract status", ordering="contract__status")
    def contract_status(self, obj: ServerMissingReport):
        return status_badge(obj.contract.get_status_display(), obj.contract.status_colour)


# --- health checks ---------------------------------------------------------------------------


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Health checks of contracts, read-only: the platform probe and agents record them."""

    list_display = ("checked_at", "contract", "source", "status_display", "latency_ms", "hypervisor_state", "detail")
    list_filter = ("status", "source", "contract__backend", "contract__status")
    list_select_related = ("contract",)
    search_fields = ("contract__offering_name", "contract__public_id", "contract__tenant__email", "detail")
    date_hierarchy = "checked_at"
    show_full_result_count = False

    @admin.display(description="Status", ordering="status")
    def status_display(self, obj: HealthCheck):
        return status_badge(obj.get_status_display(), obj.status_colour)


@admin.register(HealthProbeState)
class HealthProbeStateAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Per-contract probe schedule and failure streak, read-only: recording a check updates it."""

    list_display = ("contract", "next_probe_at", "last_checked_at", "consecutive_failures", "failing_since")
    list_filter = (("failing_since", admin.EmptyFieldListFilter), "contract__backend")
    list_select_related = ("contract",)
    search_fields = ("contract__offering_name", "contract__public_id")


@admin.register(HealthRollup)
class HealthRollupAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Hourly sums of health checks per contract, read-only: the rollup task writes them."""

    list_display = ("hour", "contract", "up_seconds", "down_seconds", "up_count", "down_count", "latency_max_ms")
    list_filter = ("contract__backend",)
    list_select_related = ("contract",)
    search_fields = ("contract__offering_name", "contract__public_id")
    date_hierarchy = "hour"
    show_full_result_count = False


@admin.register(HealthRollupProgress)
class HealthRollupProgressAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The end of the hours whose rollups are complete, read-only."""

    list_display = ("pk", "rolled_until")


# --- agent pools -----------------------------------------------------------------------------


class AgentInline(admin.TabularInline):
    model = Agent
    fields = ("name", "version", "last_heartbeat_at", "revoked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AgentPool)
class AgentPoolAdmin(admin.ModelAdmin):
    """Agent pools; the provider creates them, and staff can change region and provisioner type."""

    list_display = ("name", "owner", "region", "provisioner_type", "created_at")
    list_filter = ("provisioner_type",)
    list_select_related = ("cloud_account__owner",)
    search_fields = ("cloud_account__label", "region", "cloud_account__owner__email")
    fields = ("cloud_account", "region", "provisioner_type", "created_at")
    readonly_fields = ("cloud_account", "created_at")
    inlines = (AgentInline,)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    """Agents with their latest heartbeat; the credential hash is never shown, and revoking is an action."""

    list_display = ("name", "pool", "version", "last_heartbeat_at", "status_display", "credential_prefix")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "pool__provisioner_type")
    list_select_related = ("pool__cloud_account",)
    search_fields = ("name", "pool__cloud_account__label", "credential_prefix")
    fields = (
        "pool", "name", "version", "credential_prefix", "capabilities", "free_resources", "last_heartbeat_at",
        "created_at", "revoked_at", "revoked_by",
    )
    # Renaming and revoking go through the services, so every field is read-only here.
    readonly_fields = fields
    actions = ("revoke",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Status")
    def status_display(self, obj: Agent):
        return status_badge(obj.status_label, obj.status_colour)

    @admin.action(description="Revoke the credential", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        for agent in queryset.select_related("pool__cloud_account").order_by("pk"):
            agent_revoke(agent=agent, actor=request.user)
            self.message_user(request, f"Agent {agent.name} revoked; its next request is rejected.", messages.SUCCESS)


@admin.register(AgentSetupToken)
class AgentSetupTokenAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Setup tokens, read-only; only their hashes are stored."""

    list_display = ("pk", "pool", "created_by", "created_at", "expires_at", "used_at", "agent")
    list_select_related = ("pool__cloud_account", "created_by", "agent")
    exclude = ("token_hash",)


# --- self-provisioned resources ----------------------------------------------------------------


class ResourceEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ResourceEvent
    extra = 0
    fields = ("created_at", "from_status", "to_status", "step", "actor", "actor_label", "reason")
    readonly_fields = fields


@admin.register(ResourceEvent)
class ResourceEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Resource history rows; append-only."""

    list_display = ("created_at", "resource", "from_status", "to_status", "step", "actor_label", "actor")
    list_filter = ("to_status", "actor_label")
    list_select_related = ("resource", "actor")
    search_fields = ("resource__name", "resource__public_id", "actor__email", "reason")
    date_hierarchy = "created_at"


@admin.register(Resource)
class ResourceAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Users' own VMs, read-only; staff delete one with the action, which deletes its server."""

    list_display = ("name", "owner", "cloud_account", "status_badge", "server_type", "ip_address", "created_at")
    list_filter = ("status", "backend")
    list_select_related = ("owner", "cloud_account")
    search_fields = ("name", "owner__email", "cloud_server_id", "ip_address")
    date_hierarchy = "created_at"
    exclude = ("platform_key_ciphertext", "platform_key_key_id", "host_key_ciphertext", "host_key_key_id")
    inlines = (ResourceEventInline,)
    actions = ("delete_servers",)

    def has_change_permission(self, request, obj=None) -> bool:
        # Needed to run the action; every field stays read-only.
        return request.user.is_staff

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Resource._meta.fields if field.name not in self.exclude]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Resource):
        return status_badge(obj.get_status_display(), RESOURCE_STATUS_COLOURS.get(obj.status, "grey"))

    @admin.action(description="Delete the selected resources' servers", permissions=["change"])
    def delete_servers(self, request, queryset) -> None:
        from provisioning.resource_services import (
            ResourceInvalidTransition,
            ResourceRented,
            resource_delete,
        )

        for resource in queryset.order_by("pk"):
            try:
                resource_delete(resource=resource, actor=request.user)
            except (ResourceInvalidTransition, ResourceRented) as exc:
                self.message_user(request, str(exc), level=messages.ERROR)
            else:
                self.message_user(request, f"Deleting resource {resource.pk} ({resource.name}).")
