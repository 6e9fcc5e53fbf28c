""""My resources" pages: list, create wizard, detail with live status, start, stop, delete, list on marketplace.

Every view looks resources up among the signed-in user's own, so another user's resource is a 404.
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from marketplace.models import Offering
from provisioning.forms import ResourceCreateForm, ResourceListForm
from provisioning.models import Backend, CloudAccount, Resource, ResourceStatus
from provisioning.resource_services import (
    ResourceInvalidTransition,
    ResourceRented,
    resource_create,
    resource_delete,
    resource_list,
    resource_live_rental,
    resource_start,
    resource_stop,
    resource_unlist,
)
from provisioning.views import _add_service_errors

logger = logging.getLogger(__name__)


def _own_resource(request: HttpRequest, public_id) -> Resource:
    return get_object_or_404(Resource.objects.select_related("cloud_account"), public_id=public_id, owner=request.user)


@login_required
def resource_list_view(request: HttpRequest) -> HttpResponse:
    resources = list(
        Resource.objects.filter(owner=request.user)
        .exclude(status=ResourceStatus.DELETED)
        .select_related("cloud_account", "listing")
        .order_by("-created_at", "-id")
    )
    return render(request, "provisioning/resources.html", {"resources": resources})


def _catalog_for(request: HttpRequest, account_id) -> tuple[object | None, str]:
    """Return the live catalog of the user's chosen cloud account, or None and an error message."""
    from marketplace.services.cloud_catalog import CatalogUnavailable, cloud_catalog_get

    if not str(account_id or "").isdigit():
        return None, ""
    account = CloudAccount.objects.filter(pk=int(account_id), owner=request.user).exclude(backend=Backend.AGENT).first()
    if account is None:
        return None, ""
    try:
        catalog, _cached = cloud_catalog_get(account)
    except CatalogUnavailable as exc:
        return None, exc.message
    return catalog, ""


@login_required
@require_http_methods(["GET", "POST"])
def resource_create_view(request: HttpRequest) -> HttpResponse:
    """Show the wizard (its fields only for htmx, after a cloud account was chosen), or create the resource."""
    data = request.POST if request.method == "POST" else None
    account_id = (data or request.GET).get("cloud_account", "")
    catalog, catalog_error = _catalog_for(request, account_id)
    initial = {"cloud_account": account_id} if account_id else {}
    form = ResourceCreateForm(data, user=request.user, catalog=catalog, initial=initial)

    if data is not None and catalog is None:
        # Without a catalog only the cloud account's own error is meaningful.
        form.is_valid()
        for name in ("location_code", "server_type", "image"):
            form.errors.pop(name, None)
    elif data is not None and form.is_valid():
        resource = _create_from_wizard(request, form)
        if resource is not None:
            messages.success(request, f"Creating {resource.name}; this page shows its progress.")
            return redirect(resource.get_absolute_url())

    context = {"form": form, "catalog": catalog, "catalog_error": catalog_error}
    if request.htmx:
        return render(request, "provisioning/partials/resource_wizard_fields.html", context)
    return render(request, "provisioning/resource_create.html", context, status=400 if data is not None else 200)


def _create_from_wizard(request: HttpRequest, form: ResourceCreateForm) -> Resource | None:
    """Create the resource from a valid wizard form; on a service error, attach it to the form and return None."""
    try:
        return resource_create(
            owner=request.user,
            cloud_account=form.cleaned_data["cloud_account"],
            name=form.cleaned_data["name"],
            location_code=form.cleaned_data["location_code"],
            server_type=form.cleaned_data["server_type"],
            image=form.cleaned_data["image"],
            ssh_public_key=form.public_key(),
            recipe_version=form.cleaned_data["recipe_version"],
        )
    except ValidationError as exc:
        _add_service_errors(form, exc)
        return None


def _live_context(resource: Resource) -> dict:
    rental = resource_live_rental(resource)
    recipe_run = resource.recipe_runs.order_by("-started_at", "-id").first()
    return {
        "resource": resource,
        "recipe_run": recipe_run,
        "recipe_output": recipe_run.output if recipe_run is not None else "",
        "steps": resource.step_states() if resource.status in (ResourceStatus.PROVISIONING, ResourceStatus.FAILED) else [],
        "polling": resource.is_busy,
        "rental": rental,
    }


@login_required
def resource_detail_view(request: HttpRequest, public_id) -> HttpResponse:
    resource = _own_resource(request, public_id)
    offering = Offering.objects.filter(resource=resource).first()
    context = _live_context(resource)
    context.update(
        {
            "offering": offering,
            "list_form": ResourceListForm(
                needs_country=not resource.country,
                initial={
                    "name": offering.name if offering else resource.name,
                    "description": offering.description if offering else "",
                    "price": (offering.price_cents / 100) if offering else None,
                    "currency": offering.currency if offering else "EUR",
                    "remove_owner_keys": resource.remove_owner_keys_while_rented,
                    "country": offering.country if offering else "",
                }
            ),
            "events": list(resource.events.order_by("-created_at", "-id")[:20]),
        }
    )
    return render(request, "provisioning/resource_detail.html", context)


@login_required
def resource_status_view(request: HttpRequest, public_id) -> HttpResponse:
    """Render the polled part of the resource page; a changed status reloads the whole page."""
    resource = _own_resource(request, public_id)
    response = render(request, "provisioning/partials/resource_status.html", _live_context(resource))
    shown = request.GET.get("shown", "")
    if shown and shown != resource.status and request.htmx:
        response["HX-Refresh"] = "true"
    return response


def _run_action(request: HttpRequest, resource: Resource, action, success: str) -> HttpResponse:
    try:
        action(resource=resource, actor=request.user)
    except (ResourceInvalidTransition, ResourceRented) as exc:
        logger.info("Resource %s: %s by user %s rejected: %s", resource.pk, action.__name__, request.user.pk, exc)
        messages.error(request, str(exc))
    else:
        messages.success(request, success)
    return redirect(resource.get_absolute_url())


@login_required
@require_POST
def resource_start_view(request: HttpRequest, public_id) -> HttpResponse:
    resource = _own_resource(request, public_id)
    return _run_action(request, resource, resource_start, f"Starting {resource.name}.")


def _confirmed_action(request: HttpRequest, public_id, *, action_name: str, service, success: str) -> HttpResponse:
    """Show the confirmation page on GET; run `service` on POST."""
    resource = _own_resource(request, public_id)
    if request.method == "GET":
        return render(request, "provisioning/resource_confirm.html", {"resource": resource, "action": action_name})
    return _run_action(request, resource, service, success.format(name=resource.name))


@login_required
@require_http_methods(["GET", "POST"])
def resource_stop_view(request: HttpRequest, public_id) -> HttpResponse:
    return _confirmed_action(request, public_id, action_name="stop", service=resource_stop, success="Stopping {name}.")


@login_required
@require_http_methods(["GET", "POST"])
def resource_delete_view(request: HttpRequest, public_id) -> HttpResponse:
    return _confirmed_action(
        request, public_id, action_name="delete", service=resource_delete, success="Deleting {name} and its server."
    )


@login_required
@require_POST
def resource_list_on_marketplace_view(request: HttpRequest, public_id) -> HttpResponse:
    resource = _own_resource(request, public_id)
    form = ResourceListForm(request.POST, needs_country=not resource.country)
    if form.is_valid():
        try:
            offering = resource_list(
                resource=resource,
                actor=request.user,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                price_cents=form.price_cents(),
                currency=form.cleaned_data["currency"],
                remove_owner_keys=form.cleaned_data["remove_owner_keys"],
                country=form.cleaned_data.get("country", ""),
            )
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"{resource.name} is listed on the marketplace as {offering.name}.")
            return redirect(resource.get_absolute_url())
    context = _live_context(resource)
    context.update({"offering": Offering.objects.filter(resource=resource).first(), "list_form": form, "events": []})
    return render(request, "provisioning/resource_detail.html", context, status=400)


@login_required
@require_POST
def resource_unlist_view(request: HttpRequest, public_id) -> HttpResponse:
    resource = _own_resource(request, public_id)
    resource_unlist(resource=resource, actor=request.user)
    messages.success(request, f"{resource.name} is no longer listed; a running rental goes on until it ends.")
    return redirect(resource.get_absolute_url())
