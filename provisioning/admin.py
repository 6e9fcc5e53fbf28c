"""Admin for cloud accounts and simulated Sandbox servers.

The API token of a cloud account is write-only: the admin form takes a new one and never
renders the stored token or its ciphertext.
"""

from __future__ import annotations

import logging

from django import forms
from django.contrib import admin, messages

from marketplace.admin import ReadOnlyAdminMixin, status_badge
from provisioning.models import CloudAccount, SandboxServer, ValidationStatus
from provisioning.services import cloud_account_validate

logger = logging.getLogger(__name__)


class CloudAccountAdminForm(forms.ModelForm):
    """Cloud account form with a write-only field for replacing the API token."""

    new_token = forms.CharField(
        label="New API token",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the stored token. A new token resets the validation status to "
        "'not checked yet'; run the 'Validate credentials' action afterwards.",
    )

    class Meta:
        model = CloudAccount
        # An allow-list, so the token ciphertext never becomes a form field.
        fields = ("owner", "backend", "label")


@admin.register(CloudAccount)
class CloudAccountAdmin(admin.ModelAdmin):
    form = CloudAccountAdminForm
    list_display = ("label", "owner", "backend", "validation_badge", "has_token_display", "validated_at", "created_at")
    list_filter = ("backend", "validation_status")
    list_select_related = ("owner",)
    search_fields = ("label", "owner__email")
    autocomplete_fields = ("owner",)
    date_hierarchy = "created_at"
    actions = ("validate_credentials",)

    def get_fields(self, request, obj=None):
        fields = ["owner", "backend", "label", "new_token", "has_token_display", "validation_status", "last_error"]
        return fields + ["validated_at", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        readonly = ["has_token_display", "validation_status", "last_error", "validated_at", "created_at"]
        if obj is not None:
            # Offerings and contracts point at this account; moving it to another owner or
            # backend would break them.
            readonly += ["owner", "backend"]
        return readonly

    def save_model(self, request, obj: CloudAccount, form, change: bool) -> None:
        token = form.cleaned_data.get("new_token") or ""
        if token:
            obj.set_token(token)
            obj.validation_status = ValidationStatus.UNCHECKED
            obj.last_error = ""
            obj.validated_at = None
            logger.info("Cloud account %s: token replaced by staff user %s", obj.pk or "(new)", request.user.pk)
        super().save_model(request, obj, form, change)

    @admin.display(description="Validation", ordering="validation_status")
    def validation_badge(self, obj: CloudAccount):
        return status_badge(obj.get_validation_status_display(), obj.status_colour)

    @admin.display(description="Has token", boolean=True)
    def has_token_display(self, obj: CloudAccount) -> bool:
        return obj.has_token

    @admin.action(description="Validate credentials", permissions=["change"])
    def validate_credentials(self, request, queryset) -> None:
        for account in queryset.order_by("pk"):
            account = cloud_account_validate(account=account)
            if account.validation_status == ValidationStatus.VALID:
                self.message_user(request, f"{account}: credentials are valid.", messages.SUCCESS)
            else:
                detail = account.last_error or account.get_validation_status_display()
                self.message_user(request, f"{account}: {detail}", messages.WARNING)


@admin.register(SandboxServer)
class SandboxServerAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Simulated servers, read-only: the Sandbox backend creates and deletes them."""

    list_display = ("name", "account", "server_type", "location", "ipv4", "created_at", "deleted_at")
    list_filter = ("location", "server_type", ("deleted_at", admin.EmptyFieldListFilter))
    list_select_related = ("account",)
    search_fields = ("name", "ipv4", "account__label")
    date_hierarchy = "created_at"
