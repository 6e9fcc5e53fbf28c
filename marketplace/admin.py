"""Admin for users, provider profiles, SSH keys, offerings and contracts.

Contracts are read-only here: staff change their state only through the admin actions, which
call the contract services.
"""

from __future__ import annotations

import logging
from datetime import UTC

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.shortcuts import render
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

from billing.models import Payment
from marketplace.models import (
    CONTRACT_STATUS_COLOURS,
    Contract,
    ContractEvent,
    ContractStatus,
    Offering,
    OfferingAllowlistEntry,
    OfferingImport,
    ProviderProfile,
    ProvisioningQueueEntry,
    SshKey,
    User,
)
from marketplace.services import contracts as contract_services
from marketplace.services.staff import contract_force_terminate, contract_retry_provisioning
from recipes.models import RecipeRun

logger = logging.getLogger(__name__)

#: CSS colour per badge colour name used in the `*_STATUS_COLOURS` tables.
BADGE_CSS_COLOURS = {
    "grey": "#6c757d",
    "blue": "#0d6efd",
    "green": "#198754",
    "orange": "#fd7e14",
    "red": "#dc3545",
}


def status_badge(label: str, colour: str):
    """Render a status label as a coloured admin badge; `colour` is a name from a colours table."""
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:10px;white-space:nowrap">{}</span>',
        BADGE_CSS_COLOURS.get(colour, BADGE_CSS_COLOURS["grey"]),
        label,
    )


class NoAddPageMixin:
    """Render a plain 403 page for the add page of an admin without add permission.

    Django's admin raises PermissionDenied there, and Django logs that with its full traceback.
    A bookmarked or guessed add URL is an ordinary 403, so the one line "Forbidden: <path>" that
    django.request writes for every 4xx response is enough.
    """

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            return render(request, "403.html", status=403)
        return super().add_view(request, form_url, extra_context)


class ReadOnlyAdminMixin(NoAddPageMixin):
    """Admin that shows rows but never adds, edits or deletes them (history, ledgers)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- users ----------------------------------------------------------------------------------


class EmailUserCreationForm(AdminUserCreationForm):
    """The admin's add-user form for the email-login user model."""

    class Meta:
        model = User
        fields = ("email",)


class EmailUserChangeForm(UserChangeForm):
    """The admin's change-user form for the email-login user model."""

    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Django's user admin with the email address in place of the username."""

    form = EmailUserChangeForm
    add_form = EmailUserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Personal info"), {"fields": ("first_name", "last_name")}),
        (
            _("Permissions"),
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        (_("Important dates"), {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "usable_password", "password1", "password2"),
            },
        ),
    )
    list_display = ("email", "first_name", "last_name", "is_provider_display", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    list_select_related = ("provider_profile",)
    search_fields = ("email", "first_name", "last_name")
    ordering = ("email",)
    date_hierarchy = "date_joined"
    readonly_fields = ("last_login", "date_joined")

    @admin.display(boolean=True, description="Provider")
    def is_provider_display(self, obj: User) -> bool:
        return obj.is_provider


# --- providers, keys and offerings ---------------------------------------------------------


@admin.register(ProviderProfile)
class ProviderProfileAdmin(admin.ModelAdmin):
    list_display = ("display_name", "user", "slug", "country", "auto_accept", "created_at")
    list_filter = ("auto_accept", "country")
    list_select_related = ("user",)
    search_fields = ("display_name", "slug", "user__email")
    autocomplete_fields = ("user",)
    readonly_fields = ("created_at",)
    date_hierarchy = "created_at"


@admin.register(SshKey)
class SshKeyAdmin(NoAddPageMixin, admin.ModelAdmin):
    """Saved SSH keys. Users add keys themselves, so the key data is read-only here; staff may delete."""

    list_display = ("name", "user", "key_type", "fingerprint", "created_at")
    list_filter = ("key_type",)
    list_select_related = ("user",)
    search_fields = ("name", "fingerprint", "user__email")
    readonly_fields = ("user", "name", "public_key", "key_type", "fingerprint", "created_at")
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False


class OfferingAllowlistEntryInline(admin.TabularInline):
    model = OfferingAllowlistEntry
    fields = ("email", "created_at")
    readonly_fields = ("created_at",)
    extra = 0


@admin.register(OfferingAllowlistEntry)
class OfferingAllowlistEntryAdmin(admin.ModelAdmin):
    list_display = ("email", "offering", "created_at")
    list_select_related = ("offering",)
    search_fields = ("email", "offering__name", "offering__slug")
    autocomplete_fields = ("offering",)
    readonly_fields = ("created_at",)


@admin.register(Offering)
class OfferingAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "provider",
        "product_type",
        "price_display",
        "visibility",
        "stock_status",
        "backend_display",
        "country",
        "created_at",
    )
    list_filter = ("product_type", "visibility", "stock_status", "cloud_account__backend", "country")
    list_select_related = ("provider", "cloud_account")
    search_fields = ("name", "slug", "provider__display_name", "server_type", "city")
    autocomplete_fields = ("provider", "cloud_account", "recipe_version")
    readonly_fields = ("created_at", "updated_at")
    date_hierarchy = "created_at"
    inlines = (OfferingAllowlistEntryInline,)

    @admin.display(description="Price / month", ordering="price_cents")
    def price_display(self, obj: Offering) -> str:
        return f"{obj.price_cents / 100:.2f} {obj.currency}"

    @admin.display(description="Backend", ordering="cloud_account__backend")
    def backend_display(self, obj: Offering) -> str:
        return obj.cloud_account.backend


# --- contracts ------------------------------------------------------------------------------


class ContractEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ContractEvent
    fields = ("created_at", "from_status", "to_status", "step", "actor_label", "actor", "reason")
    readonly_fields = fields
    ordering = ("created_at", "id")
    extra = 0


class RecipeRunInline(ReadOnlyAdminMixin, admin.StackedInline):
    model = RecipeRun
    fields = (
        "status",
        "executed",
        "exit_code",
        "timed_out",
        "started_at",
        "finished_at",
        "duration_seconds",
        "output_bytes",
        "truncated",
        "error",
        "output_display",
    )
    readonly_fields = fields
    extra = 0

    @admin.display(description="Output")
    def output_display(self, obj: RecipeRun):
        return recipe_output_html(obj)


class PaymentInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Payment
    fields = ("created_at", "method", "status", "amount_cents", "currency", "period_start", "period_end", "reference")
    readonly_fields = fields
    extra = 0
    show_change_link = True


def recipe_output_html(run: RecipeRun):
    """Render a recipe run's output as a scrollable preformatted block."""
    return format_html(
        '<pre style="max-height:30em;overflow:auto;white-space:pre-wrap">{}</pre>', run.output or "(no output)"
    )


@admin.register(Contract)
class ContractAdmin(NoAddPageMixin, admin.ModelAdmin):
    """Contracts, read-only; "Retry provisioning" and "Terminate now" are the only changes."""

    list_display = (
        "id",
        "public_id",
        "offering_name",
        "tenant",
        "provider",
        "status_badge",
        "provisioning_step",
        "backend",
        "is_self_rental",
        "created_at",
    )
    list_filter = ("status", "backend", "provisioning_step", "is_self_rental")
    list_select_related = ("tenant", "provider")
    search_fields = ("public_id", "tenant__email", "offering__name", "offering_name", "cloud_server_id")
    date_hierarchy = "created_at"
    inlines = (ContractEventInline, RecipeRunInline, PaymentInline)
    actions = ("retry_provisioning", "terminate_now")
    # Secrets (encrypted private keys) stay out of the page even though they are ciphertext.
    exclude = ("platform_key_ciphertext", "host_key_ciphertext")

    def get_readonly_fields(self, request, obj=None):
        hidden = set(self.exclude or ())
        return [field.name for field in Contract._meta.fields if field.name not in hidden] + ["status_badge"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Without an object this gates the actions; every change page is view-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Contract):
        return status_badge(obj.get_status_display(), CONTRACT_STATUS_COLOURS.get(obj.status, "grey"))

    @admin.action(description="Retry provisioning", permissions=["change"])
    def retry_provisioning(self, request, queryset) -> None:
        succeeded: list[int] = []
        failed: list[str] = []
        for contract in queryset.order_by("pk"):
            try:
                contract_retry_provisioning(contract_id=contract.pk, actor=request.user)
            except contract_services.InvalidTransition as exc:
                failed.append(str(exc))
            else:
                succeeded.append(contract.pk)
        self._report(request, "Provisioning re-queued", succeeded, failed)

    @admin.action(description="Force terminate (stop provisioning, or terminate now)", permissions=["change"])
    def terminate_now(self, request, queryset) -> None:
        succeeded: list[int] = []
        failed: list[str] = []
        for contract in queryset.order_by("pk"):
            try:
                contract_force_terminate(contract_id=contract.pk, actor=request.user)
            except contract_services.InvalidTransition as exc:
                failed.append(str(exc))
            else:
                succeeded.append(contract.pk)
        self._report(request, "Termination started", succeeded, failed)

    def _report(self, request, done: str, succeeded: list[int], failed: list[str]) -> None:
        if succeeded:
            ids = ", ".join(str(pk) for pk in succeeded)
            self.message_user(request, f"{done} for contract(s) {ids}.", messages.SUCCESS)
        for message in failed:
            self.message_user(request, message, messages.WARNING)


@admin.register(ProvisioningQueueEntry)
class ProvisioningQueueAdmin(ContractAdmin):
    """Work in flight: the worker with each contract's lease, since when, at which step, how many tries."""

    # Six short columns, so the list fits a 1400 px window beside the admin's navigation and
    # filter sidebars. Status and step share a column, the worker id is shortened (the tooltip
    # shows all of it) and the error is cut short. The change page shows every field.
    list_display = ("id", "offering_name", "status_display", "lease_display", "attempts", "last_error_short")
    list_filter = ("status", "provisioning_step", "backend")
    list_select_related = ()
    date_hierarchy = None
    inlines = (ContractEventInline,)
    ordering = ("updated_at",)

    def get_queryset(self, request):
        live = {ContractStatus.PROVISIONING, ContractStatus.TERMINATING, ContractStatus.TERMINATION_FAILED}
        return super().get_queryset(request).filter(status__in=live)

    @admin.display(description="Status", ordering="status")
    def status_display(self, obj: Contract):
        return format_html(
            "{}<br><small>{}</small><br><small>updated {} UTC</small>",
            status_badge(obj.get_status_display(), CONTRACT_STATUS_COLOURS.get(obj.status, "grey")),
            obj.get_provisioning_step_display() or "no step",
            _time_utc(obj.updated_at),
        )

    @admin.display(description="Lease (UTC)", ordering="lease_expires_at")
    def lease_display(self, obj: Contract):
        if not obj.lease_owner:
            return "(unclaimed)"
        return format_html(
            '<span title="{}">{}</span><br><small>claimed {}</small><br><small>expires {}</small>',
            obj.lease_owner,
            _short_worker_id(obj.lease_owner),
            _time_utc(obj.lease_claimed_at),
            _time_utc(obj.lease_expires_at),
        )

    @admin.display(description="Last error")
    def last_error_short(self, obj: Contract):
        text = (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error
        return format_html('<span style="overflow-wrap:anywhere">{}</span>', text)


def _short_worker_id(worker_id: str):
    """Return a worker id ("host:pid:task id") with the task id cut to 8 characters and line-break points after each colon."""
    parts = worker_id.split(":")
    if len(parts) == 3 and len(parts[2]) > 8:
        parts[2] = parts[2][:8] + "…"
    return format_html_join(mark_safe(":<wbr>"), "{}", ((part,) for part in parts))


def _time_utc(value) -> str:
    """Format a datetime as "MM-DD HH:MM:SS" in UTC, or "—" when it is not set."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%m-%d %H:%M:%S")


@admin.register(OfferingImport)
class OfferingImportAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Uploaded offering CSV files with their preview and apply reports, deleted by the first upload after they expire."""

    list_display = ("created_at", "provider", "uploaded_by", "filename", "applied_at", "expires_at")
    list_filter = ("applied_at",)
    list_select_related = ("provider", "uploaded_by")
    search_fields = ("public_id", "provider__display_name", "uploaded_by__email", "filename")
    date_hierarchy = "created_at"


@admin.register(ContractEvent)
class ContractEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Contract history rows; append-only."""

    list_display = ("created_at", "contract", "from_status", "to_status", "step", "actor_label", "actor")
    list_filter = ("to_status", "actor_label", "step")
    list_select_related = ("contract", "actor")
    search_fields = ("contract__public_id", "actor__email", "reason")
    date_hierarchy = "created_at"
