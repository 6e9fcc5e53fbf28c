"""Server-rendered marketplace pages: catalog, offerings, renting, rentals and dashboards.

Views parse input with a form, call a service and render. htmx polling requests of the rental
page get a partial.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from billing.models import CheckoutSession, Payment, PaymentMethod, Subscription
from billing.services import PaymentFailed, contract_refund_state, payment_method_check
from billing.stripe_billing import CheckoutUnavailable, checkout_open
from marketplace import offering_csv_format as csv_format
from marketplace import selectors
from marketplace.api import tokens as token_services
from marketplace.filters import OfferingFilter
from marketplace.forms import (
    CloudAccountForm,
    OfferingCsvUploadForm,
    ProviderProfileForm,
    RejectForm,
    RentForm,
    SshKeyForm,
    expected_terms,
)
from marketplace.models import (
    Contract,
    ContractStatus,
    Offering,
    OfferingImport,
    ProviderProfile,
    ProvisioningStep,
    SshKey,
)
from marketplace.pagination import CappedCountPaginator
from marketplace.provider_views import render_onboarding
from marketplace.redirects import safe_next_url
from marketplace.services import contracts as contract_services
from marketplace.services import offering_csv
from marketplace.services.onboarding import STEP_PROFILE, provider_onboarding_state
from marketplace.services.providers import (
    provider_profile_create,
    provider_profile_update,
)
from marketplace.services.ssh_keys import ssh_key_create, ssh_key_delete
from marketplace.sshkeys import parse_public_key
from marketplace.uploads import SizeLimitedUploadHandler
from provisioning.health_chart import health_panel_context
from provisioning.models import Backend, CloudAccount
from provisioning.services import cloud_account_create
from provisioning.uptime import (
    contract_latency_series,
    contract_uptime,
    provider_latency_series,
    provider_uptime,
)
from recipes.models import RecipeRun, RecipeRunStatus

logger = logging.getLogger(__name__)

CATALOG_PAGE_SIZE = 24

#: Contract statuses in which the rental page polls for changes every 2 seconds.
POLLING_STATUSES = frozenset(
    {ContractStatus.REQUESTED, ContractStatus.PAID, ContractStatus.PROVISIONING, ContractStatus.TERMINATING}
)

# Names of the country codes the bundled catalog uses; any other code is shown as the code.
COUNTRY_NAMES = {
    "DE": "Germany",
    "FI": "Finland",
    "FR": "France",
    "GB": "United Kingdom",
    "NL": "Netherlands",
    "SG": "Singapore",
    "US": "United States",
}


# --- catalog and offerings ------------------------------------------------------------------


def catalog(request: HttpRequest) -> HttpResponse:
    """Render the marketplace list with filters, sort and pagination, all kept in the query string."""
    base = selectors.catalog_offerings(user=request.user)
    filter_params = request.GET.copy()
    filter_params.pop("page", None)
    active_params = {key: value for key, value in filter_params.items() if value.strip()}

    filterset = OfferingFilter(filter_params if active_params else None, queryset=base)
    if filterset.is_bound and not filterset.is_valid():
        logger.info("Catalog: invalid filter values ignored: %s", filterset.errors.as_json())
    # Cards need neither long texts nor secrets; a recipe script alone can be 200 KB.
    results = filterset.qs.defer(
        "description", "recipe_version__script", "recipe_version__changelog", "recipe_version__recipe__description",
        "provider__description", "cloud_account__token_ciphertext", "cloud_account__last_error",
    )
    paginator = CappedCountPaginator(results, CATALOG_PAGE_SIZE, max_count=settings.CATALOG_COUNT_CAP)
    page = paginator.get_page(request.GET.get("page"))

    countries = selectors.catalog_countries()
    # The total is only needed to tell "no offerings at all" from "nothing matches".
    catalog_is_empty = paginator.count == 0 and (not active_params or not base.exists())
    # The filter set ignores invalid values, and sort orders without filtering. So the heading
    # reads "match your filters" only when at least one valid filter value narrowed the list.
    applied_filters = sorted(
        name
        for name in active_params
        if name in filterset.filters and name != "sort" and name not in filterset.form.errors
    )

    context = {
        "filterset": filterset,
        "form": filterset.form,
        "page": page,
        "paginator": paginator,
        "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
        "ellipsis": Paginator.ELLIPSIS,
        "querystring": filter_params.urlencode(),
        "has_filters": bool(active_params),
        "filters_applied": bool(applied_filters),
        "catalog_is_empty": catalog_is_empty,
        "countries": [(code, COUNTRY_NAMES.get(code, code)) for code in countries],
        "selected_country": (filterset.form["country"].value() or "").strip().upper(),
    }
    return render(request, "marketplace/catalog.html", context)


def _payment_method(offering: Offering, user) -> str:
    """The payment method `user` would rent `offering` with, or "" when refused or signed out."""
    if not user.is_authenticated:
        return ""
    try:
        return payment_method_check(offering=offering, tenant=user)
    except ValidationError:
        return ""


def _payment_refusal(offering: Offering, user) -> str:
    """Return why `user` cannot pay for `offering` with the payment methods set up, or "".

    The rent button and form are replaced by this notice, so a tenant learns it before filling
    in the form. A provider's rental of their own offering is free and never refused.
    """
    try:
        payment_method_check(offering=offering, tenant=user)
    except ValidationError as exc:
        return " ".join(exc.messages)
    return ""


def offering_detail(request: HttpRequest, slug: str) -> HttpResponse:
    offering = get_object_or_404(selectors.offering_visible_to(user=request.user), slug=slug)
    is_owner = request.user.is_authenticated and offering.provider.user_id == request.user.pk
    return render(
        request,
        "marketplace/offering_detail.html",
        {
            "offering": offering,
            "is_owner": is_owner,
            "rentable": offering.is_rentable(),
            "payment_refusal": _payment_refusal(offering, request.user),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def rent(request: HttpRequest, slug: str) -> HttpResponse:
    """Rent form: SSH key, price summary, pay. The hidden idempotency key makes resubmits safe."""
    offering = get_object_or_404(selectors.offering_visible_to(user=request.user), slug=slug)
    is_self_rental = offering.provider.user_id == request.user.pk
    payment_refusal = _payment_refusal(offering, request.user)

    if request.method == "POST" and payment_refusal:
        # The page showed the notice instead of the form; a stale form submit gets the notice again.
        logger.info("Rent of offering %s by user %s refused: %s", offering.pk, request.user.pk, payment_refusal)
        form = RentForm(user=request.user)
    elif request.method == "POST":
        form = RentForm(request.POST, user=request.user)
        if form.is_valid():
            contract, next_url = _create_and_pay(request, form=form, offering=offering)
            if contract is not None:
                return redirect(next_url)
            # Show the current terms in the hidden fields, so the next submit confirms what the
            # page shows now (the error names the new price).
            form.data = form.data.copy()
            for name, value in expected_terms(offering).items():
                form.data[name] = str(value)
    else:
        # Pre-selecting the first saved key is safe: a pasted key takes precedence (see RentForm).
        first_key = SshKey.objects.filter(user=request.user).first()
        form = RentForm(
            user=request.user,
            initial={
                "idempotency_key": contract_services.new_idempotency_key(),
                "saved_key": first_key.pk if first_key else None,
                **expected_terms(offering),
            },
        )

    return render(
        request,
        "marketplace/rent.html",
        {
            "offering": offering,
            "form": form,
            "is_self_rental": is_self_rental,
            "is_sandbox": offering.cloud_account.backend == Backend.SANDBOX,
            "rentable": offering.is_rentable(),
            "payment_refusal": payment_refusal,
            "payment_method": _payment_method(offering, request.user),
        },
    )


def _create_and_pay(request: HttpRequest, *, form: RentForm, offering: Offering) -> tuple[Contract | None, str]:
    """Create (or find) the contract for this submit and pay it once.

    Returns (contract, where to go next): the rental page, or Stripe's checkout page for a card
    rental; (None, "") after a form error.
    """
    idempotency_key = form.cleaned_data["idempotency_key"]
    try:
        contract, created = contract_services.contract_create(
            tenant=request.user,
            offering=offering,
            ssh_public_key=form.public_key_text,
            idempotency_key=idempotency_key,
            expected_price_cents=form.cleaned_data.get("expected_price_cents"),
            expected_currency=form.cleaned_data.get("expected_currency") or None,
            expected_recipe_version_id=form.cleaned_data.get("expected_recipe_version_id"),
        )
    except ValidationError as exc:
        logger.info("Rent of offering %s by user %s rejected: %s", offering.pk, request.user.pk, exc.messages)
        form.add_error(None, exc)
        return None, ""

    if not created:
        logger.info("Rent resubmitted by user %s: contract %s already exists", request.user.pk, contract.pk)

    _save_key_from_form(request, form=form, contract=contract, created=created)
    if contract.status == ContractStatus.REQUESTED and contract.pays_by_card:
        return contract, _checkout_redirect(request, contract)
    # Pay only a contract that still waits for payment, so a resubmit never pays twice.
    if contract.status == ContractStatus.REQUESTED:
        try:
            contract = contract_services.contract_pay(contract=contract, actor=request.user)
        except contract_services.InvalidTransition:
            # A concurrent submit with the same key paid it between our read and our lock.
            logger.info("Contract %s was paid by a concurrent request", contract.pk)
        except PaymentFailed as exc:
            logger.warning("Payment of contract %s failed: %s", contract.pk, exc)
            messages.error(request, "The payment failed, so the rental is waiting for payment. Try again or cancel it.")
    return contract, contract.get_absolute_url()


def _save_key_from_form(request: HttpRequest, *, form: RentForm, contract: Contract, created: bool) -> None:
    save_as = form.cleaned_data.get("save_as", "").strip()
    if created and save_as and form.parsed_key is not None:
        try:
            ssh_key_create(user=request.user, name=save_as, public_key=form.parsed_key.normalized)
        except ValidationError as exc:
            logger.info("Key of contract %s not saved for user %s: %s", contract.pk, request.user.pk, exc.messages)
            messages.info(request, "The key was not saved: " + " ".join(exc.messages))
        else:
            messages.success(request, f"Saved the key as {save_as!r}.")


def _checkout_redirect(request: HttpRequest, contract: Contract) -> str:
    """Open (or reuse) the card checkout of a requested rental; return the URL to send the tenant to."""
    rental_url = request.build_absolute_uri(contract.get_absolute_url())
    try:
        session = checkout_open(
            contract=contract,
            actor=request.user,
            success_url=f"{rental_url}?checkout=success",
            cancel_url=f"{rental_url}?checkout=cancelled",
        )
    except CheckoutUnavailable as exc:
        messages.error(request, str(exc))
        return contract.get_absolute_url()
    return session.url


# --- rentals --------------------------------------------------------------------------------


def _get_contract(request: HttpRequest, public_id) -> Contract:
    return get_object_or_404(selectors.contract_visible_to(user=request.user), public_id=public_id)


def _fingerprint(public_key: str) -> str:
    if not public_key.strip():
        return ""
    try:
        return parse_public_key(public_key).fingerprint_sha256
    except ValidationError:
        return ""


def _card_payment_state(contract: Contract, *, returned_from_checkout: bool) -> str:
    """For a card rental awaiting payment: "waiting" for Stripe's confirmation or "unpaid"."""
    if contract.status != ContractStatus.REQUESTED or not contract.pays_by_card:
        return ""
    latest = contract.checkout_sessions.first()
    if latest is not None and latest.status == CheckoutSession.Status.COMPLETE:
        return "waiting"
    if returned_from_checkout and latest is not None and latest.status == CheckoutSession.Status.OPEN:
        return "waiting"
    return "unpaid"


def _live_context(contract: Contract, *, returned_from_checkout: bool = False) -> dict:
    """Context of the part of the rental page that polls: status, steps, connection, recipe log."""
    recipe_run = RecipeRun.objects.filter(contract=contract).order_by("-started_at", "-id").first()
    card_payment = _card_payment_state(contract, returned_from_checkout=returned_from_checkout)
    polling = (contract.status in POLLING_STATUSES and card_payment != "unpaid") or (
        recipe_run is not None and recipe_run.status == RecipeRunStatus.RUNNING
    )
    # An ended rental that never reached provisioning (rejected, cancelled before acceptance)
    # has no progress to show; listing every step as pending would suggest it may still start.
    started = bool(contract.provisioning_step) or contract.activated_at is not None
    return {
        "contract": contract,
        "steps": contract.step_states() if started or not contract.is_ended else [],
        "polling": polling,
        "recipe_run": recipe_run,
        "recipe_output": recipe_run.output if recipe_run is not None else "",
        "host_key_fingerprint": _fingerprint(contract.host_public_key),
        "card_payment": card_payment,
        "returned_from_checkout": returned_from_checkout,
    }


def _status_label(value: str) -> str:
    try:
        return ContractStatus(value).label
    except ValueError:
        return value


def _step_label(value: str) -> str:
    try:
        return ProvisioningStep(value).label
    except ValueError:
        return value


#: Role shown to tenants and providers in the history's "By" column, per stored actor label.
def _event_rows(contract: Contract, *, show_raw_actor: bool) -> list[dict]:
    """History rows with status and step labels instead of stored values.

    Staff (`show_raw_actor`) see the stored actor label; others see `ContractEvent.public_actor`.
    """
    return [
        {
            "created_at": event.created_at,
            "from_label": _status_label(event.from_status) if event.from_status else "",
            "to_label": _status_label(event.to_status),
            "changed": bool(event.from_status) and event.from_status != event.to_status,
            "step_label": _step_label(event.step) if event.step else "",
            "actor_label": event.actor_label if show_raw_actor else event.public_actor,
            "reason": event.reason,
        }
        for event in contract.events.order_by("created_at", "id")
    ]


def _rental_nav_section(*, is_tenant: bool, is_provider: bool) -> str:
    """Return the main-menu entry to highlight on a rental page ("" for staff viewing others' rentals).

    The provider of an incoming rental reached it from the provider dashboard; a self-rental is
    the viewer's own rental first.
    """
    if is_tenant:
        return "rentals"
    if is_provider:
        return "provider"
    return ""


@login_required
def rental_detail(request: HttpRequest, public_id) -> HttpResponse:
    contract = _get_contract(request, public_id)
    return _render_rental_page(request, contract)


def _card_past_due(contract: Contract) -> bool:
    """Return whether Stripe reports the running rental's subscription as past due (a renewal payment failed)."""
    if not contract.pays_by_card or contract.is_ended:
        return False
    subscription = Subscription.objects.filter(contract=contract).only("status").first()
    return subscription is not None and subscription.status in ("past_due", "unpaid")


def _render_rental_page(request: HttpRequest, contract: Contract, *, reject_form: RejectForm | None = None) -> HttpResponse:
    is_tenant = contract.tenant_id == request.user.pk
    is_provider = contract.provider.user_id == request.user.pk
    payments = list(
        Payment.objects.filter(contract=contract)
        .select_related("invoice")
        .prefetch_related("invoice__credit_notes")
        .order_by("created_at", "id")
    )
    context = _live_context(contract, returned_from_checkout=request.GET.get("checkout") == "success")
    context.update(
        {
            "is_tenant": is_tenant,
            "is_provider": is_provider,
            "can_decide": (is_provider or request.user.is_staff) and contract.can_accept(),
            "can_cancel": (is_tenant or request.user.is_staff) and contract.can_cancel(),
            "ends_now": contract.status != ContractStatus.ACTIVE or contract.cancel_ends_now,
            "refund_state": contract_refund_state(contract),
            "card_past_due": _card_past_due(contract),
            "payments": payments,
            "paid_with_sandbox": bool(payments) and all(payment.method == PaymentMethod.SANDBOX for payment in payments),
            "events": _event_rows(contract, show_raw_actor=request.user.is_staff),
            "nav_section": _rental_nav_section(is_tenant=is_tenant, is_provider=is_provider),
            "reject_form": reject_form or RejectForm(auto_id="reject-%s"),
            # A rental that ended before it became active paid for no period it could use.
            "show_paid_until": contract.paid_until is not None
            and not (contract.is_ended and contract.activated_at is None),
        }
    )
    # Only a server that ran has health checks to show.
    if contract.activated_at is not None:
        context["health"] = health_panel_context(
            windows=contract_uptime(contract=contract),
            series=contract_latency_series(contract=contract),
            subject="this rental's server",
            probed=contract.backend != Backend.SANDBOX,
            by_agent=contract.backend == Backend.AGENT,
        )
    return render(request, "marketplace/rental_detail.html", context)


@login_required
def rental_status(request: HttpRequest, public_id) -> HttpResponse:
    """Render the polled part of the rental page, without hx-trigger once the rental settled.

    When the status differs from the `shown` status the page was rendered with, the response
    sets HX-Refresh so htmx reloads the whole page and actions, payments and history match.
    """
    contract = _get_contract(request, public_id)
    context = _live_context(contract, returned_from_checkout=request.GET.get("checkout") == "success")
    response = render(request, "marketplace/partials/rental_status.html", context)
    shown = request.GET.get("shown", "")
    if shown and shown != contract.status and request.htmx:
        response["HX-Refresh"] = "true"
    return response


def _run_contract_action(request: HttpRequest, contract: Contract, action, success: str, **kwargs) -> HttpResponse:
    try:
        action(contract=contract, actor=request.user, **kwargs)
    except PermissionError as exc:
        logger.info("Contract %s: %s by user %s forbidden: %s", contract.pk, action.__name__, request.user.pk, exc)
        # Rendered here, not raised as PermissionDenied, because Django logs a raised
        # PermissionDenied with its full traceback; an ordinary 403 needs one log line.
        return render(request, "403.html", status=403)
    except contract_services.InvalidTransition as exc:
        logger.info("Contract %s: %s by user %s: %s", contract.pk, action.__name__, request.user.pk, exc)
        messages.error(request, f"Nothing changed: the rental is {contract.get_status_display().lower()} now.")
    except ValidationError as exc:
        logger.info("Contract %s: %s by user %s invalid: %s", contract.pk, action.__name__, request.user.pk, exc.messages)
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, success)
    return redirect(safe_next_url(request, contract.get_absolute_url()))


@login_required
@require_POST
def rental_cancel(request: HttpRequest, public_id) -> HttpResponse:
    contract = _get_contract(request, public_id)
    if request.POST.get("confirm") != "yes":
        messages.error(request, "Tick the confirmation box to cancel the rental.")
        return redirect(contract.get_absolute_url())
    return _run_contract_action(request, contract, contract_services.contract_cancel, "The rental was cancelled.")


@login_required
@require_POST
def rental_pay(request: HttpRequest, public_id) -> HttpResponse:
    """Send the tenant to the card checkout of a rental that is not paid yet ("Retry payment")."""
    contract = _get_contract(request, public_id)
    if contract.tenant_id != request.user.pk:
        return render(request, "403.html", status=403)
    if contract.status != ContractStatus.REQUESTED or not contract.pays_by_card:
        messages.error(request, f"Nothing to pay: the rental is {contract.get_status_display().lower()}.")
        return redirect(contract.get_absolute_url())
    return redirect(_checkout_redirect(request, contract))


@login_required
@require_POST
def rental_accept(request: HttpRequest, public_id) -> HttpResponse:
    contract = _get_contract(request, public_id)
    return _run_contract_action(
        request, contract, contract_services.contract_accept, "Accepted: the server is being created."
    )


@login_required
@require_POST
def rental_reject(request: HttpRequest, public_id) -> HttpResponse:
    contract = _get_contract(request, public_id)
    form = RejectForm(request.POST, auto_id="reject-%s")
    if not form.is_valid():
        logger.info("Reject of contract %s by user %s invalid: %s", contract.pk, request.user.pk, form.errors.as_json())
        if contract.can_accept():
            return _render_rental_page(request, contract, reject_form=form)
        messages.error(request, f"Nothing changed: the rental is {contract.get_status_display().lower()} now.")
        return redirect(contract.get_absolute_url())
    return _run_contract_action(
        request,
        contract,
        contract_services.contract_reject,
        "Rejected: a full refund to the tenant was started.",
        reason=form.cleaned_data["reason"],
    )


# --- dashboards -----------------------------------------------------------------------------


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Render the tenant's rentals."""
    rentals = selectors.contracts_for_tenant(user=request.user).order_by("-created_at", "-id")
    return render(request, "marketplace/dashboard.html", {"rentals": rentals})


def _provider_dashboard_context(request: HttpRequest, profile: ProviderProfile, **forms) -> dict:
    incoming = selectors.contracts_for_provider(user=request.user).order_by("-created_at", "-id")
    return {
        "profile": profile,
        "offerings": profile.offerings.select_related("cloud_account", "recipe_version__recipe").order_by("name"),
        "incoming": incoming,
        "cloud_accounts": CloudAccount.objects.filter(owner=request.user).order_by("label"),
        "profile_form": forms.get("profile_form") or ProviderProfileForm(instance=profile, prefix="profile"),
        "cloud_form": forms.get("cloud_form") or CloudAccountForm(prefix="cloud"),
        "onboarding": provider_onboarding_state(user=request.user),
    }


@login_required
def provider_dashboard(request: HttpRequest) -> HttpResponse:
    """Render the provider's offerings, incoming rentals, cloud accounts and profile.

    Without a provider profile the page shows the guided setup's first step, the profile form.
    """
    profile = ProviderProfile.objects.filter(user=request.user).first()
    if profile is None:
        return render_onboarding(request, step_key=STEP_PROFILE)
    return render(request, "marketplace/provider_dashboard.html", _provider_dashboard_context(request, profile))


@login_required
@require_POST
def provider_profile_save(request: HttpRequest) -> HttpResponse:
    """Create the provider profile, or update it when it exists, then go to `next`.

    Without `next`, a new profile continues the guided setup and an update returns to the dashboard.
    """
    profile = ProviderProfile.objects.filter(user=request.user).first()
    form = ProviderProfileForm(request.POST, instance=profile, prefix="profile")
    if form.is_valid():
        values = {name: form.cleaned_data[name] for name in form._meta.fields}
        try:
            if profile is None:
                provider_profile_create(user=request.user, **values)
                messages.success(request, "You are a provider now. Add a cloud account, then your first offering.")
            else:
                provider_profile_update(profile=profile, actor=request.user, **values)
                messages.success(request, "Profile saved.")
        except ValidationError as exc:
            logger.info("Provider profile of user %s not saved: %s", request.user.pk, exc.messages)
            form.add_error(None, exc)
        else:
            default = reverse("marketplace:provider_onboarding" if profile is None else "marketplace:provider_dashboard")
            return redirect(safe_next_url(request, default))

    if profile is None:
        return render_onboarding(request, step_key=STEP_PROFILE, profile_form=form)
    context = _provider_dashboard_context(request, profile, profile_form=form)
    return render(request, "marketplace/provider_dashboard.html", context)


@login_required
@require_POST
def cloud_account_add(request: HttpRequest) -> HttpResponse:
    profile = ProviderProfile.objects.filter(user=request.user).first()
    if profile is None:
        return redirect("marketplace:provider_dashboard")
    form = CloudAccountForm(request.POST, prefix="cloud")
    if form.is_valid():
        try:
            account = cloud_account_create(
                owner=request.user,
                backend=form.cleaned_data["backend"],
                label=form.cleaned_data["label"],
                token=form.cleaned_data["token"],
            )
        except ValidationError as exc:
            logger.info("Cloud account of user %s not created: %s", request.user.pk, exc.messages)
            form.add_error(None, exc)
        else:
            messages.success(request, f"Cloud account {account.label!r} added.")
            return redirect(reverse("marketplace:provider_dashboard") + "#cloud-accounts")
    context = _provider_dashboard_context(request, profile, cloud_form=form)
    return render(request, "marketplace/provider_dashboard.html", context)


# --- offerings as CSV ------------------------------------------------------------------------


def _own_provider_profile(request: HttpRequest) -> ProviderProfile:
    profile = ProviderProfile.objects.filter(user=request.user).first()
    if profile is None:
        raise Http404("You have no provider profile.")
    return profile


def _csv_help_context() -> dict:
    return {
        "columns": csv_format.COLUMNS,
        "max_bytes_text": csv_format.max_bytes_text(),
        "max_rows": settings.OFFERING_CSV_MAX_ROWS,
        "preview_minutes": settings.OFFERING_CSV_PREVIEW_SECONDS // 60,
    }


@login_required
@require_http_methods(["GET"])
def offering_csv_download(request: HttpRequest) -> HttpResponse:
    """Download the provider's offerings as CSV, with a byte order mark so Excel reads it as UTF-8."""
    profile = _own_provider_profile(request)
    text = offering_csv.offering_csv_export(provider=profile, byte_order_mark=True)
    response = HttpResponse(text.encode("utf-8"), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{offering_csv.offering_csv_filename(profile)}"'
    return response


@csrf_exempt
@login_required
def offering_csv_upload(request: HttpRequest) -> HttpResponse:
    """Show the CSV upload form; an upload is checked and shown as a preview to apply."""
    # The CSRF check reads the request body, so the size-limited upload handler has to be in
    # place before it runs. That is why this view is exempt and csrf_protect checks below.
    handler = SizeLimitedUploadHandler(request, max_bytes=settings.OFFERING_CSV_MAX_BYTES)
    request.upload_handlers = [handler]
    return _offering_csv_upload(request, handler)


@csrf_protect
@require_http_methods(["GET", "POST"])
def _offering_csv_upload(request: HttpRequest, handler: SizeLimitedUploadHandler) -> HttpResponse:
    profile = _own_provider_profile(request)
    if request.method == "POST":
        # Reading FILES runs the upload handlers, which record a file over the size limit.
        files = request.FILES
        too_large_message = csv_format.csv_file_too_large().message if handler.too_large else ""
        form = OfferingCsvUploadForm(request.POST, files, too_large_message=too_large_message)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                offering_import = offering_csv.offering_import_create(
                    user=request.user, filename=upload.name or "", data=upload.read()
                )
            except csv_format.CsvFileError as exc:
                logger.info("Offerings CSV of user %s rejected: %s", request.user.pk, exc.message)
                form.add_error("file", exc.message)
            else:
                return redirect(offering_import.get_absolute_url())
    else:
        form = OfferingCsvUploadForm()
    context = {"form": form, "profile": profile, **_csv_help_context()}
    return render(request, "marketplace/offering_csv_import.html", context)


#: Labels of the row actions on the preview page, before and after "Apply".
_PREVIEW_ROW_LABELS = {
    offering_csv.RowAction.CREATE: "To create",
    offering_csv.RowAction.UPDATE: "To update",
    offering_csv.RowAction.UNCHANGED: "Unchanged",
    offering_csv.RowAction.ERROR: "With errors",
}
_APPLIED_ROW_LABELS = {
    offering_csv.RowAction.CREATE: "Created",
    offering_csv.RowAction.UPDATE: "Updated",
    offering_csv.RowAction.UNCHANGED: "Unchanged",
    offering_csv.RowAction.ERROR: "Not saved",
}


@login_required
@require_http_methods(["GET"])
def offering_import_preview(request: HttpRequest, public_id) -> HttpResponse:
    """Show an uploaded file's dry-run preview, or the result once it was applied."""
    offering_import = get_object_or_404(OfferingImport, public_id=public_id, provider__user=request.user)
    applied = offering_import.result is not None
    report = offering_import.result if applied else offering_import.preview
    labels = _APPLIED_ROW_LABELS if applied else _PREVIEW_ROW_LABELS
    rows = [
        {**row, "colour": offering_csv.ROW_ACTION_COLOURS[row["action"]], "label": labels[row["action"]]}
        for row in report["rows"]
    ]
    summary_badges = [
        {"colour": offering_csv.ROW_ACTION_COLOURS[action], "label": f"{report['summary'][action]} {labels[action].lower()}"}
        for action in offering_csv.RowAction
    ]
    context = {
        "offering_import": offering_import,
        "report": report,
        "rows": rows,
        "summary_badges": summary_badges,
        "applied": applied,
        "changes_to_apply": report["summary"]["create"] + report["summary"]["update"],
    }
    return render(request, "marketplace/offering_csv_preview.html", context)


@login_required
@require_POST
def offering_import_apply(request: HttpRequest, public_id) -> HttpResponse:
    """Apply an uploaded file: its rows are parsed and validated again, not taken from the preview."""
    offering_import = get_object_or_404(OfferingImport, public_id=public_id, provider__user=request.user)
    try:
        report = offering_csv.offering_import_apply(user=request.user, offering_import=offering_import)
    except (offering_csv.ImportNotApplicable, csv_format.CsvFileError) as exc:
        messages.error(request, str(exc))
        return redirect(offering_import.get_absolute_url())
    summary = report.summary
    text = (
        f"Import applied: {summary['create']} created, {summary['update']} updated, "
        f"{summary['unchanged']} unchanged, {summary['error']} rows with errors not saved."
    )
    if summary["error"]:
        messages.warning(request, text)
    else:
        messages.success(request, text)
    return redirect(offering_import.get_absolute_url())


# --- providers and SSH keys -----------------------------------------------------------------


def provider_detail(request: HttpRequest, slug: str) -> HttpResponse:
    profile = get_object_or_404(ProviderProfile, slug=slug)
    offerings = selectors.catalog_offerings(user=request.user).filter(provider=profile).order_by("price_cents", "id")
    # The page is public and a provider's uptime reads every contract's hourly sums, so it is
    # cached for a few minutes.
    windows = cache.get_or_set(
        f"provider-uptime:{profile.pk}",
        lambda: provider_uptime(provider=profile),
        settings.HEALTH_PROVIDER_UPTIME_CACHE_SECONDS,
    )
    health = health_panel_context(
        windows=windows,
        series=provider_latency_series(provider=profile),
        subject="this provider's rented servers",
        many_servers=True,
    )
    return render(request, "marketplace/provider_detail.html", {"profile": profile, "offerings": offerings, "health": health})


@login_required
@require_http_methods(["GET", "POST"])
def ssh_keys(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = SshKeyForm(request.POST)
        if form.is_valid():
            try:
                key = ssh_key_create(
                    user=request.user, name=form.cleaned_data["name"], public_key=form.cleaned_data["public_key"]
                )
            except ValidationError as exc:
                logger.info("SSH key of user %s not saved: %s", request.user.pk, exc.messages)
                form.add_error(None, exc)
            else:
                messages.success(request, f"Saved the key {key.name!r}.")
                return redirect("marketplace:ssh_keys")
    else:
        form = SshKeyForm()
    keys = SshKey.objects.filter(user=request.user).order_by("name", "id")
    return render(request, "marketplace/ssh_keys.html", {"form": form, "keys": keys})


@login_required
@require_POST
def ssh_key_remove(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        ssh_key_delete(user=request.user, key_id=key_id)
    except SshKey.DoesNotExist as exc:
        raise Http404("No such SSH key.") from exc
    messages.success(request, "The key was deleted. Rentals that use it keep working.")
    return redirect("marketplace:ssh_keys")


# --- API token ------------------------------------------------------------------------------

#: Session key of a newly created API token, kept until the token page has shown it once.
_NEW_TOKEN_SESSION_KEY = "api_token_new_key"

_TOKEN_ACTIONS = {
    "create": (token_services.api_token_create, "Token created. Copy it now: it is shown only once."),
    "regenerate": (
        token_services.api_token_regenerate,
        "New token created; the old one no longer works. Copy the new one now: it is shown only once.",
    ),
}


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def api_token(request: HttpRequest) -> HttpResponse:
    """Create, regenerate or revoke the user's REST API token.

    The key is shown on the first page load after it was created and never again, so a later
    visitor of the open page cannot read it.
    """
    if request.method == "POST":
        action = request.POST.get("action", "")
        if action == "revoke":
            if token_services.api_token_revoke(user=request.user):
                messages.success(request, "Token revoked: requests with it now get 401 Unauthorized.")
        elif action in _TOKEN_ACTIONS:
            service, success = _TOKEN_ACTIONS[action]
            try:
                token = service(user=request.user)
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
            else:
                request.session[_NEW_TOKEN_SESSION_KEY] = token.key
                messages.success(request, success)
        else:
            messages.error(request, "Unknown action; use the buttons on this page.")
        return redirect("marketplace:api_token")

    token = token_services.api_token_for(user=request.user)
    new_key = request.session.pop(_NEW_TOKEN_SESSION_KEY, None)
    if token is None or not token_services.api_token_matches(token=token, key=new_key or ""):
        new_key = None
    return render(request, "marketplace/api_token.html", {"token": token, "new_key": new_key})
