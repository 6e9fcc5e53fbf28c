"""Cloud accounts pages: list, add (Hetzner, Proxmox VE, Sandbox), rename, replace token, re-validate, delete.

Every view looks accounts up among the signed-in user's own, so another user's account is a 404.
"""

from __future__ import annotations

import logging

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from marketplace.redirects import safe_next_url
from provisioning.forms import (
    HetznerAccountForm,
    ProxmoxAccountForm,
    RenameForm,
    ReplaceProxmoxTokenForm,
    ReplaceTokenForm,
    SandboxAccountForm,
)
from provisioning.models import Backend, CloudAccount, ValidationStatus
from provisioning.selectors import cloud_account_dependents, cloud_accounts_for_owner
from provisioning.services import (
    CloudAccountInUse,
    ValidationRateLimited,
    cloud_account_create,
    cloud_account_create_proxmox,
    cloud_account_delete,
    cloud_account_rename,
    cloud_account_replace_token,
    cloud_account_revalidate,
)

logger = logging.getLogger(__name__)

ADD_FORMS: dict[str, type[forms.Form]] = {
    Backend.HETZNER: HetznerAccountForm,
    Backend.PROXMOX: ProxmoxAccountForm,
    Backend.SANDBOX: SandboxAccountForm,
}

# Service error keys (model field names) -> form field names.
_FORM_FIELD_OF = {
    "proxmox_api_url": "api_url",
    "proxmox_token_id": "token_id",
    "proxmox_node": "node",
    "proxmox_verify_tls": "verify_tls",
    "proxmox_vmid_min": "vmid_min",
}


def _add_service_errors(form: forms.Form, exc: ValidationError) -> None:
    """Attach a service's ValidationError to the form field it names, or to the form as a whole."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for key, errors in exc.message_dict.items():
        name = _FORM_FIELD_OF.get(key, key)
        form.add_error(name if name in form.fields else None, errors)


def _own_account(request: HttpRequest, pk: int) -> CloudAccount:
    return get_object_or_404(CloudAccount.objects.select_related("owner"), pk=pk, owner=request.user)


def _render_list(request: HttpRequest, *, bound: forms.Form | None = None, backend: str = "", status: int = 200) -> HttpResponse:
    add_forms = {name: form_class(prefix=name) for name, form_class in ADD_FORMS.items()}
    if bound is not None:
        add_forms[backend] = bound
    context = {
        "accounts": list(cloud_accounts_for_owner(user=request.user)),
        "hetzner_form": add_forms[Backend.HETZNER],
        "proxmox_form": add_forms[Backend.PROXMOX],
        "sandbox_form": add_forms[Backend.SANDBOX],
        "open_form": backend,
        "next_url": safe_next_url(request, ""),
    }
    return render(request, "provisioning/cloud_accounts.html", context, status=status)


@login_required
@require_http_methods(["GET"])
def cloud_accounts(request: HttpRequest) -> HttpResponse:
    """Render the user's cloud accounts with their status and usage, and the forms that add one."""
    return _render_list(request)


@login_required
@require_POST
def cloud_account_add(request: HttpRequest, backend: str) -> HttpResponse:
    """Check the submitted account against its backend's API and save it, or show what is wrong.

    After saving, the page goes to `next` when the form carries one, else to the account's page.
    """
    form_class = ADD_FORMS.get(backend)
    if form_class is None:
        raise Http404(f"Unknown cloud backend {backend!r}.")
    form = form_class(request.POST, prefix=backend)
    if form.is_valid():
        data = form.cleaned_data
        try:
            if backend == Backend.PROXMOX:
                account = cloud_account_create_proxmox(
                    owner=request.user,
                    label=data["label"],
                    api_url=data["api_url"],
                    token_id=data["token_id"],
                    token_secret=data["token"],
                    node=data["node"],
                    verify_tls=data["verify_tls"],
                    vmid_min=data["vmid_min"],
                    vmid_max=data["vmid_max"],
                )
            else:
                account = cloud_account_create(
                    owner=request.user, backend=backend, label=data["label"], token=data.get("token", "")
                )
        except ValidationError as exc:
            logger.info("Cloud account (%s) of user %s not created: %s", backend, request.user.pk, exc.messages)
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Cloud account {account.label!r} added; the {account.get_backend_display()} API accepted it.")
            if account.backend == Backend.PROXMOX and not account.proxmox_verify_tls:
                messages.warning(
                    request,
                    f"TLS verification is off for {account.label!r}: the platform does not check who answers at "
                    f"{account.proxmox_api_url}. Install a certificate from a trusted CA and turn verification on.",
                )
            return redirect(safe_next_url(request, reverse("provisioning:cloud_account", kwargs={"pk": account.pk})))
    return _render_list(request, bound=form, backend=backend)


def _render_detail(request: HttpRequest, account: CloudAccount, **forms_in) -> HttpResponse:
    token_form_class = ReplaceProxmoxTokenForm if account.backend == Backend.PROXMOX else ReplaceTokenForm
    dependents = cloud_account_dependents(account=account)
    context = {
        "account": account,
        "offerings": dependents.offerings,
        "rentals": dependents.rentals,
        "rename_form": forms_in.get("rename_form") or RenameForm(initial={"label": account.label}, prefix="rename"),
        "token_form": (
            forms_in.get("token_form") or (token_form_class(prefix="token") if account.backend not in (Backend.SANDBOX, Backend.AGENT) else None)
        ),
    }
    return render(request, "provisioning/cloud_account_detail.html", context)


@login_required
@require_http_methods(["GET"])
def cloud_account_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Render one account: status, settings, what uses it, and its actions."""
    return _render_detail(request, _own_account(request, pk))


@login_required
@require_POST
def cloud_account_rename_view(request: HttpRequest, pk: int) -> HttpResponse:
    account = _own_account(request, pk)
    form = RenameForm(request.POST, prefix="rename")
    if form.is_valid():
        try:
            account = cloud_account_rename(account=account, actor=request.user, label=form.cleaned_data["label"])
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Renamed to {account.label!r}.")
            return redirect("provisioning:cloud_account", pk=account.pk)
    return _render_detail(request, account, rename_form=form)


@login_required
@require_POST
def cloud_account_token_view(request: HttpRequest, pk: int) -> HttpResponse:
    account = _own_account(request, pk)
    if account.backend in (Backend.SANDBOX, Backend.AGENT):
        messages.error(request, f"A {account.get_backend_display()} account has no API token to replace.")
        return redirect("provisioning:cloud_account", pk=account.pk)
    form_class = ReplaceProxmoxTokenForm if account.backend == Backend.PROXMOX else ReplaceTokenForm
    form = form_class(request.POST, prefix="token")
    if form.is_valid():
        try:
            account = cloud_account_replace_token(
                account=account,
                actor=request.user,
                token=form.cleaned_data["token"],
                proxmox_token_id=form.cleaned_data.get("token_id", ""),
            )
        except ValidationError as exc:
            logger.info("Token of cloud account %s not replaced: %s", account.pk, exc.messages)
            _add_service_errors(form, exc)
        else:
            messages.success(request, "Token replaced; the API accepted it and the account is valid.")
            return redirect("provisioning:cloud_account", pk=account.pk)
    return _render_detail(request, account, token_form=form)


@login_required
@require_POST
def cloud_account_validate_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Check the stored token against the backend now (rate-limited) and report the outcome."""
    account = _own_account(request, pk)
    try:
        account = cloud_account_revalidate(account=account, actor=request.user)
    except ValidationRateLimited as exc:
        messages.warning(request, str(exc))
    else:
        if account.validation_status == ValidationStatus.VALID and not account.last_error:
            messages.success(request, f"{account.label!r} is valid: the API accepted the token.")
        elif account.validation_status == ValidationStatus.INVALID:
            messages.error(request, f"{account.label!r} is invalid: {account.last_error}")
        else:
            messages.warning(request, f"{account.label!r}: {account.last_error} The status is unchanged; try again later.")
    if request.POST.get("from") == "list":
        return redirect("provisioning:cloud_accounts")
    return redirect("provisioning:cloud_account", pk=account.pk)


@login_required
@require_http_methods(["GET", "POST"])
def cloud_account_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask for confirmation (GET), then delete (POST); an account in use is never deleted."""
    account = _own_account(request, pk)
    status = 200
    if request.method == "POST":
        label = account.label
        try:
            cloud_account_delete(account=account, actor=request.user)
        except CloudAccountInUse as exc:
            messages.error(request, str(exc))
            status = 409
        else:
            messages.success(request, f"Cloud account {label!r} deleted; its token was erased.")
            return redirect("provisioning:cloud_accounts")
    dependents = cloud_account_dependents(account=account)
    context = {
        "account": account,
        "offerings": dependents.offerings,
        "rentals": dependents.rentals,
    }
    return render(request, "provisioning/cloud_account_delete.html", context, status=status)
