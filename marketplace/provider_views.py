"""Provider workspace pages: the offering form with its live catalog and preview, duplicating
offerings, and the rental requests list.

The offering form works without JavaScript: its "Load options" button reloads the page with the
chosen account's server types, locations and images. With htmx, changing the account or server
type swaps in the partial `offering_catalog_options` renders, and every change re-renders the
catalog card preview.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from marketplace import selectors
from marketplace.filters import ProviderRentalFilter
from marketplace.forms import (
    REJECT_REASON_MAX_LENGTH,
    OfferingForm,
    ProviderProfileForm,
    parse_whole_number,
)
from marketplace.models import ContractStatus, Offering, ProviderProfile, Visibility
from marketplace.redirects import safe_next_url
from marketplace.services import onboarding
from marketplace.services.cloud_catalog import (
    SPEC_FIELDS,
    CatalogUnavailable,
    CloudCatalog,
    cloud_catalog_get,
)
from marketplace.services.offerings import (
    HideConfirmationRequired,
    offering_duplicate,
    offering_publish,
    offering_save,
)
from marketplace.services.providers import MAX_PRICE_CENTS
from provisioning.models import CloudAccount

logger = logging.getLogger(__name__)

RENTAL_REQUESTS_PAGE_SIZE = 50

#: Maximum number of offerings listed on one onboarding step; the dashboard lists them all.
ONBOARDING_LIST_SIZE = 20

#: Fields of the cloud configuration partial, sent by its htmx requests.
CLOUD_CONFIG_FIELDS = ("cloud_account", "server_type", "location_code", "image", *SPEC_FIELDS)

#: Form actions that re-render the form without saving.
_RELOAD_ACTIONS = frozenset({"load_options", "edit"})


# --- the live catalog -------------------------------------------------------------------------


def _catalog_for(account: CloudAccount | None) -> tuple[CloudCatalog | None, CatalogUnavailable | None]:
    """Return the account's (cached) catalog, or the error that loading it raised."""
    if account is None:
        return None, None
    try:
        catalog, _from_cache = cloud_catalog_get(account)
    except CatalogUnavailable as exc:
        return None, exc
    return catalog, None


def _fill_specs(values: dict, catalog: CloudCatalog | None, *, server_type_changed: bool) -> dict:
    """Copy the chosen server type's vCPU, memory and disk into `values`.

    A spec the backend fixes is always copied; an editable one only when the server type just
    changed or the field is empty. `values` is a plain dict of strings and is changed in place.
    """
    if catalog is None:
        return values
    server_type = catalog.server_type(values.get("server_type") or "")
    if server_type is None:
        return values
    for name in SPEC_FIELDS:
        fixed = name not in catalog.editable_spec_fields
        if fixed or server_type_changed or not str(values.get(name) or "").strip():
            values[name] = str(getattr(server_type, name))
    return values


def _cloud_config_context(form: OfferingForm, catalog_error: CatalogUnavailable | None) -> dict:
    account = form.selected_account()
    if catalog_error is not None:
        # The error may have marked the account invalid; show the status it has now.
        account = catalog_error.account
    return {"form": form, "account": account, "catalog_error": catalog_error}


@login_required
@require_GET
def offering_catalog_options(request: HttpRequest) -> HttpResponse:
    """Render the cloud configuration fields for the chosen account (the htmx partial).

    Query parameters are the partial's own fields plus `changed`, the field that changed. A
    cloud account id that is not one of the user's accounts gets 404.
    """
    values = {name: request.GET.get(name, "") for name in CLOUD_CONFIG_FIELDS}
    form = OfferingForm(user=request.user, initial=values)
    if values["cloud_account"] and form.selected_account() is None:
        raise Http404("No such cloud account.")
    catalog, catalog_error = _catalog_for(form.selected_account())
    changed = request.GET.get("changed", "")
    if catalog is not None:
        form = OfferingForm(
            user=request.user,
            initial=_fill_specs(values, catalog, server_type_changed=changed == "server_type"),
            catalog=catalog,
        )
    response = render(
        request, "marketplace/partials/offering_cloud_config.html", _cloud_config_context(form, catalog_error)
    )
    # The preview listens for this event and re-renders with the new values.
    response["HX-Trigger"] = "offering-form-changed"
    return response


# --- the offering form ----------------------------------------------------------------------


def _own_offering(request: HttpRequest, slug: str) -> Offering:
    return get_object_or_404(
        Offering.objects.select_related("provider", "cloud_account"), slug=slug, provider__user=request.user
    )


def _submitted_values(data: QueryDict) -> dict:
    """Return the submitted form values as a dict of strings, without the form's control fields."""
    return {key: data.get(key) for key in data if key not in ("csrfmiddlewaretoken", "action", "next")}


def _render_form(
    request: HttpRequest,
    form: OfferingForm,
    offering: Offering | None,
    catalog_error: CatalogUnavailable | None,
) -> HttpResponse:
    context = {
        "offering": offering,
        "next_url": safe_next_url(request, ""),
        "preview": _preview_offering(form, request.user),
        **_cloud_config_context(form, catalog_error),
    }
    return render(request, "marketplace/offering_form.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def offering_edit(request: HttpRequest, slug: str | None = None) -> HttpResponse:
    """Create (no slug) or edit an offering; only its provider may edit it.

    POST with action=load_options (or edit, from the confirmation step) re-renders the form
    with the chosen account's catalog and saves nothing. Hiding a public offering shows a
    confirmation step first.
    """
    profile = ProviderProfile.objects.filter(user=request.user).first()
    if profile is None:
        messages.info(request, "Create your provider profile before you add offerings.")
        return redirect("marketplace:provider_dashboard")
    offering = _own_offering(request, slug) if slug is not None else None

    if request.method == "GET":
        form = OfferingForm(instance=offering, user=request.user)
        catalog, catalog_error = _catalog_for(form.selected_account())
        if catalog is not None:
            form.use_catalog(catalog)
        return _render_form(request, form, offering, catalog_error)

    values = _submitted_values(request.POST)
    probe = OfferingForm(user=request.user, initial=values)
    catalog, catalog_error = _catalog_for(probe.selected_account())
    action = request.POST.get("action", "save")
    if action in _RELOAD_ACTIONS:
        # Going back from the confirmation step is no confirmation, so the next save shows that step again.
        values.pop("confirmed_visibility", None)
        initial = _fill_specs(values, catalog, server_type_changed=False) if action == "load_options" else values
        form = OfferingForm(instance=offering, user=request.user, initial=initial, catalog=catalog)
        return _render_form(request, form, offering, catalog_error)

    # Blank specs are filled in from the chosen server type in the cached catalog. Saving checks
    # them against a fresh copy, so a catalog that changed since is reported, not saved.
    data = request.POST.copy()
    for name, value in _fill_specs(dict(values), catalog, server_type_changed=False).items():
        if name in SPEC_FIELDS and not (data.get(name) or "").strip():
            data[name] = value
    form = OfferingForm(data, instance=offering, user=request.user, catalog=catalog)
    if form.is_valid():
        visibility = form.cleaned_data.get("visibility")
        try:
            saved = offering_save(
                user=request.user,
                values=form.service_values(),
                offering=offering,
                allowlist=form.allowlist(),
                hide_confirmed=bool(visibility) and form.cleaned_data.get("confirmed_visibility") == visibility,
            )
        except HideConfirmationRequired as exc:
            return _render_hide_confirmation(request, offering, data, exc)
        except ValidationError as exc:
            logger.info("Offering form of user %s rejected: %s", request.user.pk, exc.messages)
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Offering {saved.name!r} saved.")
            return redirect(safe_next_url(request, saved.get_absolute_url()))
    return _render_form(request, form, offering, catalog_error)


def _render_hide_confirmation(
    request: HttpRequest, offering: Offering, data: QueryDict, exc: HideConfirmationRequired
) -> HttpResponse:
    """Render the confirmation step shown before a public offering leaves the catalog.

    The page re-posts every submitted value with confirmed_visibility set, so confirming saves
    exactly what the provider submitted.
    """
    hidden = [
        (key, value)
        for key, values in data.lists()
        if key not in ("csrfmiddlewaretoken", "action", "confirmed_visibility")
        for value in values
    ]
    context = {
        "offering": offering,
        "hidden_fields": hidden,
        "visibility": exc.visibility,
        "visibility_label": Visibility(exc.visibility).label,
        "running_rentals": exc.running_rentals,
        "message": str(exc),
    }
    return render(request, "marketplace/offering_visibility_confirm.html", context)


def _add_service_errors(form: OfferingForm, exc: ValidationError) -> None:
    """Attach a service's ValidationError to the form; price_cents and allowlist errors go on their fields."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    targets = {"price_cents": "price", "allowlist": "shared_with"}
    for field, errors in exc.message_dict.items():
        target = targets.get(field, field)
        form.add_error(target if target in form.fields else None, errors)


# --- the catalog card preview -----------------------------------------------------------------


def _whole_number(raw) -> int:
    return parse_whole_number(str(raw if raw is not None else "")) or 0


def _cents(raw) -> int:
    try:
        amount = Decimal(str(raw).strip())
    except (InvalidOperation, ValueError):
        return 0
    # Compared before scaling, because scaling an exponent such as 1e999999 overflows.
    if not amount.is_finite() or not 0 <= amount <= Decimal(MAX_PRICE_CENTS) / 100:
        return 0
    return int(amount * 100)


def _preview_offering(form: OfferingForm, user) -> Offering:
    """Build an unsaved offering from the form's current values, for the card preview.

    Invalid or missing values get neutral placeholders. A blank country or city is taken from
    the chosen location when the account's catalog is loaded.
    """
    if form.is_bound:
        form.is_valid()

    def text(name: str, default: str = "") -> str:
        if form.is_bound and name in form.cleaned_data:
            raw = form.cleaned_data[name]
        else:
            raw = form.current_value(name) if not form.is_bound else ""
        raw = "" if raw is None else str(raw).strip()
        return raw or default

    preview = Offering(provider=ProviderProfile.objects.filter(user=user).first())
    preview.name = text("name", "Untitled offering")
    preview.product_type = text("product_type", "vm")
    for name in ("vcpu", "memory_mib", "disk_gb", "gpu_count"):
        setattr(preview, name, _whole_number(form.current_value(name)))
    preview.gpu_model = text("gpu_model")
    preview.price_cents = _cents(form.current_value("price"))
    preview.currency = text("currency", "EUR").upper()
    preview.stock_status = text("stock_status", "in_stock")
    preview.visibility = text("visibility", Visibility.PUBLIC)
    preview.server_type = form.current_value("server_type")
    preview.location_code = form.current_value("location_code")
    preview.country = text("country").upper()
    preview.city = text("city")
    account = form.selected_account()
    if account is not None:
        preview.cloud_account = account
    recipe_version_id = parse_whole_number(form.current_value("recipe_version"))
    if recipe_version_id is not None:
        preview.recipe_version = form.fields["recipe_version"].queryset.filter(pk=recipe_version_id).first()
    location = form.catalog.location(preview.location_code) if form.catalog is not None else None
    if location is not None:
        preview.country = preview.country or location.country.upper()
        preview.city = preview.city or location.city
    return preview


@login_required
@require_POST
def offering_preview(request: HttpRequest) -> HttpResponse:
    """Render the catalog card of the submitted form values (the htmx partial), saving nothing."""
    form = OfferingForm(request.POST, user=request.user)
    catalog, _error = _catalog_for(form.selected_account())
    if catalog is not None:
        form.use_catalog(catalog)
    return render(request, "marketplace/partials/offering_preview.html", {"preview": _preview_offering(form, request.user)})


# --- duplicate ------------------------------------------------------------------------------


@login_required
@require_POST
def offering_duplicate_view(request: HttpRequest, slug: str) -> HttpResponse:
    """Copy one of the user's offerings as a private draft and open the copy's form."""
    offering = _own_offering(request, slug)
    try:
        copy = offering_duplicate(offering=offering, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("marketplace:provider_dashboard")
    messages.success(
        request, f"Copied {offering.name!r} as a private draft. Change what you need, then make it public."
    )
    return redirect("marketplace:offering_edit", slug=copy.slug)


# --- publish ---------------------------------------------------------------------------------


@login_required
@require_POST
def offering_publish_view(request: HttpRequest, slug: str) -> HttpResponse:
    """Make one of the user's offerings public, then go to `next` (by default the offering's page)."""
    offering = _own_offering(request, slug)
    try:
        offering = offering_publish(offering=offering, user=request.user)
    except ValidationError as exc:
        logger.info("Offering %s not published by user %s: %s", offering.pk, request.user.pk, exc.messages)
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{offering.name!r} is public now, and the catalog lists it for everyone.")
    return redirect(safe_next_url(request, offering.get_absolute_url()))


# --- onboarding -------------------------------------------------------------------------------


def render_onboarding(
    request: HttpRequest, *, step_key: str = "", profile_form: ProviderProfileForm | None = None
) -> HttpResponse:
    """Render the guided provider setup at `step_key`, by default at the first step not done.

    With every step done and no step requested, the page shows that setup is complete.
    """
    state = onboarding.provider_onboarding_state(user=request.user)
    if step_key not in onboarding.STEP_KEYS:
        step_key = state.current.key if state.current is not None else ""
    flow_url = reverse("marketplace:provider_onboarding")
    index = onboarding.STEP_KEYS.index(step_key) if step_key else len(onboarding.STEP_KEYS)
    context = {
        "state": state,
        "step": state.step(step_key) if step_key else None,
        "ready": state.previous_done(step_key) if step_key else True,
        "previous_step": state.steps[index - 1] if 0 < index <= len(state.steps) else None,
        "next_step": state.steps[index + 1] if index + 1 < len(state.steps) else None,
        "flow_url": flow_url,
        "profile": ProviderProfile.objects.filter(user=request.user).first(),
    }
    if step_key == onboarding.STEP_PROFILE:
        context["profile_form"] = profile_form or ProviderProfileForm(prefix="profile")
    elif step_key == onboarding.STEP_CLOUD_ACCOUNT:
        context["cloud_accounts"] = list(CloudAccount.objects.filter(owner=request.user).order_by("label", "id"))
    elif step_key == onboarding.STEP_OFFERING:
        context["offerings"] = list(
            Offering.objects.filter(provider__user=request.user).order_by("-created_at", "-id")[:ONBOARDING_LIST_SIZE]
        )
    elif step_key == onboarding.STEP_PUBLISH:
        context["candidates"] = list(onboarding.publish_candidates(user=request.user)[:ONBOARDING_LIST_SIZE])
        context["listed"] = list(
            onboarding.listed_offerings(user=request.user).order_by("-created_at", "-id")[:ONBOARDING_LIST_SIZE]
        )
    return render(request, "marketplace/provider_onboarding.html", context)


@login_required
@require_GET
def provider_onboarding(request: HttpRequest) -> HttpResponse:
    """Render the guided provider setup: profile, cloud account, first offering, publish.

    `?step=` opens a step, for going back; without it the page opens the first step not done.
    """
    return render_onboarding(request, step_key=request.GET.get("step", ""))


# --- rental requests ------------------------------------------------------------------------


@login_required
@require_GET
def provider_rentals(request: HttpRequest) -> HttpResponse:
    """List the rentals of the provider's offerings, filtered by status, with accept and reject."""
    profile = ProviderProfile.objects.filter(user=request.user).first()
    if profile is None:
        messages.info(request, "Create your provider profile first; rental requests of your offerings appear here.")
        return redirect("marketplace:provider_dashboard")
    filterset = ProviderRentalFilter(request.GET or None, queryset=selectors.rental_requests_for_provider(user=request.user))
    if filterset.is_bound and not filterset.is_valid():
        logger.info("Rental requests of user %s: invalid filter values ignored: %s", request.user.pk, filterset.errors.as_json())
    paginator = Paginator(filterset.qs, RENTAL_REQUESTS_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "profile": profile,
        "filterset": filterset,
        "page": page,
        "paginator": paginator,
        "querystring": query.urlencode(),
        "waiting_count": selectors.rental_requests_for_provider(user=request.user)
        .filter(status=ContractStatus.PAID)
        .count(),
        "reject_max_length": REJECT_REASON_MAX_LENGTH,
        "deadline_hours": settings.PROVIDER_RESPONSE_DEADLINE_HOURS,
        "next_url": request.get_full_path(),
        "list_url": reverse("marketplace:provider_rentals"),
    }
    return render(request, "marketplace/provider_rentals.html", context)
