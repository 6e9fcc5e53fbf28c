"""Marketplace API views: catalog, rentals, provider decisions, provider offerings and profile, SSH keys.

Views parse input with a serializer, call a service and serialize the result. Objects of other
users are looked up through per-user querysets, so they return 404, not 403.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch
from django.http import Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from billing.services import PaymentFailed
from billing.stripe_billing import CheckoutUnavailable, checkout_open
from marketplace import offering_csv_format as csv_format
from marketplace.api.parsers import CsvBodyParser
from marketplace.api.serializers import (
    CatalogErrorSerializer,
    CloudCatalogSerializer,
    ErrorSerializer,
    OfferingCsvReportSerializer,
    OfferingCsvUploadSerializer,
    OfferingSerializer,
    OfferingVisibilitySerializer,
    OnboardingSerializer,
    ProviderOfferingSerializer,
    ProviderProfileSerializer,
    ProviderRentalSerializer,
    RecipeLogSerializer,
    RecipeRunSummarySerializer,
    RentalCreateSerializer,
    RentalDetailSerializer,
    RentalListSerializer,
    RentalRejectSerializer,
    SshKeySerializer,
    latest_recipe_run,
)
from marketplace.filters import OfferingFilter, ProviderRentalFilter
from marketplace.models import (
    Contract,
    ContractEvent,
    ContractStatus,
    Offering,
    ProviderProfile,
    SshKey,
)
from marketplace.selectors import (
    catalog_offerings,
    contract_visible_to,
    contracts_for_tenant,
    offering_allowlist,
    offering_running_rental_count,
    offering_visible_to,
    rental_requests_for_provider,
)
from marketplace.services import contracts as contract_services
from marketplace.services import offering_csv, onboarding
from marketplace.services import offerings as offering_services
from marketplace.services import providers as provider_services
from marketplace.services import ssh_keys as ssh_key_services
from marketplace.services.cloud_catalog import CatalogUnavailable, cloud_catalog_get
from marketplace.uploads import SizeLimitedUploadHandler
from provisioning.api.serializers import RentalHealthSerializer
from provisioning.models import CloudAccount
from provisioning.uptime import contract_health

logger = logging.getLogger(__name__)

UUID_PATTERN = r"[0-9a-fA-F-]{32,36}"

ERROR_RESPONSES = {
    400: OpenApiResponse(description="Invalid input: a JSON object mapping each field to its messages."),
    401: OpenApiResponse(ErrorSerializer, description="Not signed in, or the API token is invalid or revoked."),
    403: OpenApiResponse(ErrorSerializer, description="Not allowed to do this."),
    404: OpenApiResponse(ErrorSerializer, description="Not found, or not yours."),
}
CONFLICT_RESPONSE = {409: OpenApiResponse(ErrorSerializer, description="The rental is not in a state that allows this.")}


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The payment processor did not respond; try again in a minute."
    default_code = "payment_processor_unavailable"


class PaymentRequired(APIException):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_detail = "The payment was declined."
    default_code = "payment_declined"


# --- catalog --------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        summary="Browse the catalog",
        description="Public offerings, plus those shared with you, filtered and sorted like the catalog page.",
    ),
    retrieve=extend_schema(
        summary="Show an offering",
        description="Public offerings, offerings shared with you, and your own; anything else is 404.",
    ),
)
class OfferingViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = OfferingSerializer
    permission_classes = (AllowAny,)
    lookup_field = "slug"
    filterset_class = OfferingFilter

    def get_queryset(self):
        if self.action == "list":
            return catalog_offerings(user=self.request.user)
        return offering_visible_to(user=self.request.user)

    def filter_queryset(self, queryset):
        if self.action != "list":
            return queryset
        return super().filter_queryset(queryset)


# --- rentals (tenant) ----------------------------------------------------------------------


def rental_detail_queryset(queryset):
    """Add the prefetches the rental detail serializer reads."""
    return queryset.prefetch_related(
        Prefetch("events", queryset=ContractEvent.objects.order_by("created_at", "id")),
        "recipe_runs",
    )


@extend_schema_view(
    list=extend_schema(summary="List your rentals", description="Rentals where you are the tenant, newest first."),
    retrieve=extend_schema(
        summary="Show a rental",
        description="Visible to its tenant, its provider and staff; anyone else gets 404.",
        responses={200: RentalDetailSerializer, **ERROR_RESPONSES},
    ),
)
class RentalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Contract.objects.none()  # For schema generation; get_queryset() scopes to the user.
    permission_classes = (IsAuthenticated,)
    lookup_field = "public_id"
    lookup_value_regex = UUID_PATTERN
    # Applies only to `create`: get_throttles() adds the scoped throttle for that action.
    throttle_scope = "rent"

    def get_queryset(self):
        if self.action == "list":
            return contracts_for_tenant(user=self.request.user).order_by("-created_at", "-id")
        return rental_detail_queryset(contract_visible_to(user=self.request.user))

    def get_serializer_class(self):
        if self.action == "list":
            return RentalListSerializer
        if self.action == "create":
            return RentalCreateSerializer
        return RentalDetailSerializer

    def get_throttles(self):
        throttles = super().get_throttles()
        if self.action == "create":
            throttles.append(ScopedRateThrottle())
        return throttles

    @extend_schema(
        summary="Rent an offering",
        description=(
            "Creates the rental and pays for the first month. Returns 201 with the new rental, or 200 "
            "with the existing one when the idempotency key was used before for the same offering, "
            "also while a concurrent request with that key is still paying it. Send expected_price_cents, "
            "expected_currency and expected_recipe_version_id to get 400 instead of a rental when the offering changed "
            "since you read it."
        ),
        request=RentalCreateSerializer,
        responses={
            201: RentalDetailSerializer,
            200: RentalDetailSerializer,
            402: OpenApiResponse(ErrorSerializer, description="The payment was declined."),
            **ERROR_RESPONSES,
            **CONFLICT_RESPONSE,
        },
    )
    def create(self, request, *args, **kwargs):
        serializer = RentalCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        offering: Offering = data["offering"]
        idempotency_key = data.get("idempotency_key") or contract_services.new_idempotency_key()
        # contract_create rejects this case too, but without a field; checking first lets the
        # error name idempotency_key.
        reused = (
            Contract.objects.filter(tenant=request.user, idempotency_key=idempotency_key)
            .exclude(offering=offering)
            .exists()
        )
        if reused:
            raise serializers.ValidationError(
                {"idempotency_key": "This idempotency key was already used to rent another offering; use a new key."}
            )

        try:
            contract, created = contract_services.contract_create(
                tenant=request.user,
                offering=offering,
                ssh_public_key=data["ssh_public_key"],
                idempotency_key=idempotency_key,
                expected_price_cents=data.get("expected_price_cents"),
                expected_currency=data.get("expected_currency"),
                expected_recipe_version_id=data.get("expected_recipe_version_id"),
            )
        except DjangoValidationError as exc:
            if hasattr(exc, "error_dict"):
                raise
            raise serializers.ValidationError(_changed_terms_fields(offering, data) or {"offering": exc.messages}) from exc

        if contract.status == ContractStatus.REQUESTED and contract.pays_by_card:
            self._open_checkout(contract)
        elif contract.status == ContractStatus.REQUESTED:
            try:
                contract = contract_services.contract_pay(contract=contract, actor=request.user)
            except contract_services.InvalidTransition as exc:
                # A concurrent request with the same idempotency key paid it between our read and
                # our lock, so this request returns that rental like any other replay.
                logger.info("Contract %s was paid by a concurrent request: %s", contract.pk, exc)
            except PaymentFailed as exc:
                logger.info("Contract %s: payment declined: %s", contract.pk, exc)
                raise PaymentRequired(str(exc) or None) from exc

        contract = rental_detail_queryset(contract_visible_to(user=request.user)).get(pk=contract.pk)
        body = RentalDetailSerializer(contract, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        summary="Show a rental's recipe output",
        description="The newest recipe run of the rental and its output so far.",
        responses={200: RecipeLogSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["get"], url_path="recipe-log")
    def recipe_log(self, request, public_id=None):
        contract = self.get_object()
        run = latest_recipe_run(contract)
        return Response(
            {
                "run": RecipeRunSummarySerializer(run).data if run is not None else None,
                "output": run.output if run is not None else "",
            }
        )

    @extend_schema(
        summary="Show a rental's health checks and uptime",
        description=(
            "Uptime over the last 1, 7 and 30 days, time-weighted: each check covers the time until the "
            "next one, for at most HEALTH_CHECK_MAX_COVER_SECONDS, and longer gaps count as unknown. "
            "uptime_percent is null while checks cover too little of the period. Also returns the mean "
            "latency per hour of the last 24 hours and the newest checks. The tenant, the provider and "
            "staff may read it."
        ),
        responses={200: RentalHealthSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["get"])
    def health(self, request, public_id=None):
        contract = self.get_object()
        return Response(RentalHealthSerializer(contract_health(contract=contract)).data)

    @extend_schema(
        summary="Cancel a rental",
        description=(
            "Before payment the request is dropped; after payment but before acceptance it is refunded; "
            "an active rental ends at the end of its paid period. Only the tenant (or staff) may cancel."
        ),
        request=None,
        responses={200: RentalDetailSerializer, **ERROR_RESPONSES, **CONFLICT_RESPONSE},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, public_id=None):
        contract = self.get_object()
        contract = contract_services.contract_cancel(contract=contract, actor=request.user)
        return self._detail_response(contract.pk)

    @extend_schema(
        summary="Pay an unpaid card rental",
        description=(
            "Opens (or reuses) a Stripe Checkout page for a rental that is waiting for card payment and "
            "returns the rental with `payment.checkout_url`. The rental becomes paid when Stripe confirms "
            "the payment. Only the tenant may pay."
        ),
        request=None,
        responses={200: RentalDetailSerializer, **ERROR_RESPONSES, **CONFLICT_RESPONSE},
    )
    @action(detail=True, methods=["post"])
    def pay(self, request, public_id=None):
        contract = self.get_object()
        if contract.tenant_id != request.user.pk:
            raise PermissionError(f"User {request.user.pk} is not the tenant of contract {contract.pk}.")
        if contract.status != ContractStatus.REQUESTED or not contract.pays_by_card:
            raise contract_services.InvalidTransition(contract, "be paid by card")
        self._open_checkout(contract)
        return self._detail_response(contract.pk)

    def _open_checkout(self, contract: Contract) -> None:
        rental_url = self.request.build_absolute_uri(contract.get_absolute_url())
        try:
            checkout_open(
                contract=contract,
                actor=self.request.user,
                success_url=f"{rental_url}?checkout=success",
                cancel_url=f"{rental_url}?checkout=cancelled",
            )
        except CheckoutUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc

    def _detail_response(self, contract_id: int) -> Response:
        contract = rental_detail_queryset(contract_visible_to(user=self.request.user)).get(pk=contract_id)
        return Response(RentalDetailSerializer(contract, context=self.get_serializer_context()).data)


def _changed_terms_fields(offering: Offering, data: dict) -> dict[str, list[str]]:
    """Return an error per expected_* field that no longer matches the offering; empty if none.

    contract_create's error carries no field, so the view re-reads the offering to name the
    field whose value is out of date.
    """
    current = Offering.objects.only("price_cents", "currency", "recipe_version_id").get(pk=offering.pk)
    errors: dict[str, list[str]] = {}
    expected_price = data.get("expected_price_cents")
    if expected_price is not None and expected_price != current.price_cents:
        errors["expected_price_cents"] = [
            f"The offering's price is {current.price_cents} ({current.currency} cents per month) now, not "
            f"{expected_price}; review it and send the new price to confirm."
        ]
    expected_currency = data.get("expected_currency")
    if expected_currency and expected_currency.upper() != current.currency:
        errors["expected_currency"] = [
            f"The offering's currency is {current.currency} now, not {expected_currency.upper()}; review the price "
            "and send the new currency to confirm."
        ]
    expected_version = data.get("expected_recipe_version_id")
    current_version = current.recipe_version_id or 0
    if expected_version is not None and expected_version != current_version:
        now = f"recipe version {current_version}" if current_version else "no recipe (0)"
        errors["expected_recipe_version_id"] = [
            f"The offering runs {now} now, not {expected_version}; review the offering and send the new value to confirm."
        ]
    return errors


# --- rentals (provider) --------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        summary="List rental requests of your offerings",
        description=(
            "Newest first, with the tenant's email address and SSH key fingerprint. Filter with "
            "?status=paid for the rentals waiting for your decision; each has a response_deadline after "
            "which it is rejected and refunded automatically."
        ),
    ),
)
class ProviderRentalViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    queryset = Contract.objects.none()  # For schema generation; get_queryset() scopes to the user.
    permission_classes = (IsAuthenticated,)
    lookup_field = "public_id"
    lookup_value_regex = UUID_PATTERN
    serializer_class = ProviderRentalSerializer
    filterset_class = ProviderRentalFilter

    def get_queryset(self):
        return rental_requests_for_provider(user=self.request.user)

    @extend_schema(
        summary="Accept a paid rental",
        request=None,
        responses={200: RentalDetailSerializer, **ERROR_RESPONSES, **CONFLICT_RESPONSE},
    )
    @action(detail=True, methods=["post"])
    def accept(self, request, public_id=None):
        contract = self.get_object()
        contract = contract_services.contract_accept(contract=contract, actor=request.user)
        return self._detail_response(contract.pk)

    @extend_schema(
        summary="Reject a paid rental",
        description="A full refund to the tenant is started, and the tenant sees the reason.",
        request=RentalRejectSerializer,
        responses={200: RentalDetailSerializer, **ERROR_RESPONSES, **CONFLICT_RESPONSE},
    )
    @action(detail=True, methods=["post"])
    def reject(self, request, public_id=None):
        contract = self.get_object()
        serializer = RentalRejectSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        contract = contract_services.contract_reject(
            contract=contract, actor=request.user, reason=serializer.validated_data.get("reason", "")
        )
        return self._detail_response(contract.pk)

    def _detail_response(self, contract_id: int) -> Response:
        contract = rental_detail_queryset(contract_visible_to(user=self.request.user)).get(pk=contract_id)
        return Response(RentalDetailSerializer(contract, context=self.get_serializer_context()).data)


# --- provider offerings and profile --------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List your offerings"),
    retrieve=extend_schema(summary="Show one of your offerings", responses={200: ProviderOfferingSerializer, **ERROR_RESPONSES}),
    create=extend_schema(
        summary="Create an offering",
        description="Server type, location and image are checked against the cloud account's backend.",
        responses={201: ProviderOfferingSerializer, **ERROR_RESPONSES},
    ),
    partial_update=extend_schema(
        summary="Change one of your offerings",
        description="Existing rentals keep the terms they were created with.",
        responses={200: ProviderOfferingSerializer, **ERROR_RESPONSES},
    ),
)
class ProviderOfferingViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Offering.objects.none()  # For schema generation; get_queryset() scopes to the user.
    permission_classes = (IsAuthenticated,)
    serializer_class = ProviderOfferingSerializer
    lookup_field = "slug"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return (
            Offering.objects.filter(provider__user=self.request.user)
            .select_related("cloud_account", "recipe_version")
            .order_by("name", "id")
        )

    def perform_create(self, serializer) -> None:
        values = dict(serializer.validated_data)
        values.pop("confirm_visibility", None)
        serializer.instance = offering_services.offering_save(user=self.request.user, values=values)

    def perform_update(self, serializer) -> None:
        values = dict(serializer.validated_data)
        confirmed = values.pop("confirm_visibility", False)
        try:
            serializer.instance = offering_services.offering_save(
                user=self.request.user, values=values, offering=serializer.instance, hide_confirmed=confirmed
            )
        except offering_services.HideConfirmationRequired as exc:
            raise serializers.ValidationError({"confirm_visibility": [_hide_confirmation_error(exc)]}) from exc

    @extend_schema(
        summary="Duplicate one of your offerings",
        description="Copies the offering, its allowlist included, as a private draft with a new slug.",
        request=None,
        responses={201: ProviderOfferingSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"])
    def duplicate(self, request, slug=None):
        copy = offering_services.offering_duplicate(offering=self.get_object(), user=request.user)
        return Response(self.get_serializer(copy).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        methods=["GET"],
        summary="Show who may see and rent one of your offerings",
        responses={200: OfferingVisibilitySerializer, **ERROR_RESPONSES},
    )
    @extend_schema(
        methods=["PATCH"],
        summary="Change who may see and rent one of your offerings",
        description=(
            "public: in the catalog for everyone. shared: in the catalog, on its page and rentable only for "
            "signed-in users whose email address is in allowlist; everyone else gets 404. private: only you. "
            "Changing a public offering to shared or private needs confirm_visibility: true; without it the "
            "response is 400 naming confirm_visibility and the number of running rentals, which keep running."
        ),
        request=OfferingVisibilitySerializer,
        responses={200: OfferingVisibilitySerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["get", "patch"])
    def visibility(self, request, slug=None):
        offering = self.get_object()
        if request.method == "PATCH":
            serializer = OfferingVisibilitySerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
            try:
                offering = offering_services.offering_visibility_set(
                    offering=offering,
                    user=request.user,
                    visibility=data["visibility"],
                    allowlist=data.get("allowlist"),
                    hide_confirmed=data["confirm_visibility"],
                )
            except offering_services.HideConfirmationRequired as exc:
                raise serializers.ValidationError({"confirm_visibility": [_hide_confirmation_error(exc)]}) from exc
        body = {
            "visibility": offering.visibility,
            "allowlist": offering_allowlist(offering=offering),
            "running_rentals": offering_running_rental_count(offering=offering),
        }
        return Response(OfferingVisibilitySerializer(body).data)


def _hide_confirmation_error(exc: offering_services.HideConfirmationRequired) -> str:
    return f"{exc} Send confirm_visibility: true to confirm."


@extend_schema(
    summary="List a cloud account's server types, locations and images",
    description=(
        "The server types (with their specs), locations and images the account's backend offers for an "
        "offering's server_type, location_code and image. The result is cached per account and credentials "
        "for OFFERING_CATALOG_CACHE_SECONDS (60 by default). Creating or changing an offering always checks "
        "against a fresh copy. When the backend fails, the response is 502 with the account's "
        "validation_status, and a rejected token marks the account invalid."
    ),
    responses={
        200: CloudCatalogSerializer,
        502: OpenApiResponse(CatalogErrorSerializer, description="The cloud account's backend did not respond or failed."),
        **ERROR_RESPONSES,
    },
)
class CloudAccountCatalogView(APIView):
    permission_classes = (IsAuthenticated,)

    def get(self, request, pk: int):
        account = CloudAccount.objects.filter(owner=request.user, pk=pk).first()
        if account is None:
            raise Http404("No such cloud account.")
        try:
            catalog, cached = cloud_catalog_get(account)
        except CatalogUnavailable as exc:
            return Response(
                {
                    "detail": exc.message,
                    "validation_status": exc.account.validation_status,
                    "last_error": exc.account.last_error,
                },
                status=status.HTTP_502_BAD_GATEWAY,
            )
        return Response(CloudCatalogSerializer(catalog, context={"cached": cached}).data)


class ProviderProfileView(GenericAPIView):
    """The signed-in user's provider profile."""

    permission_classes = (IsAuthenticated,)
    serializer_class = ProviderProfileSerializer

    def get_object(self) -> ProviderProfile:
        profile = ProviderProfile.objects.filter(user=self.request.user).first()
        if profile is None:
            raise Http404("You have no provider profile yet; create one with POST.")
        return profile

    @extend_schema(summary="Show your provider profile", responses={200: ProviderProfileSerializer, **ERROR_RESPONSES})
    def get(self, request):
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(
        summary="Become a provider",
        description="Creates your provider profile; the slug is derived from the display name.",
        responses={201: ProviderProfileSerializer, **ERROR_RESPONSES},
    )
    def post(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        profile = provider_services.provider_profile_create(user=request.user, **serializer.validated_data)
        return Response(self.get_serializer(profile).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change your provider profile",
        description="The slug stays the same.",
        responses={200: ProviderProfileSerializer, **ERROR_RESPONSES},
    )
    def patch(self, request):
        profile = self.get_object()
        serializer = self.get_serializer(profile, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        values = {name: getattr(profile, name) for name in ("display_name", "description", "website", "country", "auto_accept")}
        values.update(serializer.validated_data)
        profile = provider_services.provider_profile_update(profile=profile, actor=request.user, **values)
        return Response(self.get_serializer(profile).data)


@extend_schema(
    summary="Show your provider setup steps",
    description=(
        "The four steps of becoming a provider, each with done: true or false, read from your data on every "
        "request. profile: you have a provider profile. cloud_account: you have a cloud account that passed "
        "validation. offering: you have an offering. publish: an offering of yours is public or shared and its "
        "cloud account is not invalid, so a catalog lists it. Works before you have a provider profile."
    ),
    responses={200: OnboardingSerializer, **ERROR_RESPONSES},
)
class ProviderOnboardingView(APIView):
    permission_classes = (IsAuthenticated,)

    def get(self, request):
        state = onboarding.provider_onboarding_state(user=request.user)
        body = {
            "complete": state.complete,
            "current_step": state.current.key if state.current is not None else None,
            "steps": state.steps,
        }
        return Response(OnboardingSerializer(body).data)


# --- provider offerings as CSV -------------------------------------------------------------

CSV_IMPORT_DESCRIPTION = """Creates or updates your offerings from a CSV file, matched by the `slug` column.

Send the file as multipart field `file`, or as the request body with `Content-Type: text/csv`.
`dry_run=true` checks every row and saves nothing. `dry_run=false` saves every valid row, each in
its own transaction, and skips rows with errors. The file must be UTF-8 (a byte order mark is
allowed) and start with a header row. Columns may come in any order, header names ignore letter
case and spaces, and unknown columns are ignored with a warning. Columns are separated by
commas, semicolons or tabs. Prices are whole cents in `price_cents`. A slug of another
provider's offering and a slug that appears twice in the file are row errors. Row numbers count
the header row as row 1. The export's leading apostrophe before = + - @ is removed.

A file over the size limit gets 413; an empty file, a file without offering rows or with more
rows than the limit, and bytes that are not UTF-8 get 400 with the reason under `file`."""


def _provider_of_request(user) -> ProviderProfile:
    profile = ProviderProfile.objects.filter(user=user).first()
    if profile is None:
        raise Http404("You have no provider profile; create one with POST /api/v1/provider/profile/.")
    return profile


def _dry_run_flag(request) -> bool:
    """Return the dry_run query parameter (or multipart field) as a boolean; raise 400 when missing or invalid."""
    value = request.query_params.get("dry_run")
    if value is None and hasattr(request.data, "get"):
        value = request.data.get("dry_run")
    if value is None:
        raise serializers.ValidationError(
            {"dry_run": ["dry_run is required: true to preview the changes, false to apply them."]}
        )
    normalized = str(value).strip().lower()
    if normalized in {"true", "1", "yes"}:
        return True
    if normalized in {"false", "0", "no"}:
        return False
    raise serializers.ValidationError({"dry_run": [f"dry_run must be true or false, got {value!r}."]})


class ProviderOfferingCsvExportView(APIView):
    """Your offerings as a CSV file."""

    permission_classes = (IsAuthenticated,)

    def perform_content_negotiation(self, request, force=False):
        # The export returns a plain HttpResponse, so every DRF response here is JSON,
        # including errors for a client that sent "Accept: text/csv".
        return (JSONRenderer(), JSONRenderer.media_type)

    @extend_schema(
        summary="Export your offerings as CSV",
        description=(
            "UTF-8 without a byte order mark, one row per offering ordered by slug, with the columns the "
            "import takes. Cells a spreadsheet would run as a formula (starting with = + - @, tab or "
            "carriage return) start with an apostrophe, which the import removes."
        ),
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY, description="The CSV file."),
            **ERROR_RESPONSES,
        },
    )
    def get(self, request):
        profile = _provider_of_request(request.user)
        text = offering_csv.offering_csv_export(provider=profile)
        response = HttpResponse(text.encode("utf-8"), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{offering_csv.offering_csv_filename(profile)}"'
        return response


class ProviderOfferingCsvImportView(APIView):
    """Create or update your offerings from a CSV file, or preview what that would do."""

    permission_classes = (IsAuthenticated,)
    parser_classes = (MultiPartParser, CsvBodyParser)

    def initialize_request(self, request, *args, **kwargs):
        # Installed before DRF or the CSRF check reads the body, so an oversized file is dropped
        # while it is read instead of being buffered.
        self.upload_handler = SizeLimitedUploadHandler(request, max_bytes=settings.OFFERING_CSV_MAX_BYTES)
        request.upload_handlers = [self.upload_handler]
        return super().initialize_request(request, *args, **kwargs)

    def _uploaded_bytes(self, request) -> bytes:
        if isinstance(request.data, bytes):
            return request.data
        if self.upload_handler.too_large:
            raise csv_format.csv_file_too_large()
        upload = request.FILES.get("file")
        if upload is None:
            raise serializers.ValidationError(
                {"file": ["A CSV file is required: send it as multipart field 'file' or as a text/csv request body."]}
            )
        return upload.read()

    @extend_schema(
        summary="Import offerings from CSV",
        description=CSV_IMPORT_DESCRIPTION,
        parameters=[
            OpenApiParameter(
                "dry_run",
                OpenApiTypes.BOOL,
                OpenApiParameter.QUERY,
                required=True,
                description="true: check the rows and save nothing. false: save the valid rows.",
            )
        ],
        request={"multipart/form-data": OfferingCsvUploadSerializer, "text/csv": OpenApiTypes.BINARY},
        responses={
            200: OfferingCsvReportSerializer,
            **ERROR_RESPONSES,
            413: OpenApiResponse(description="The file is larger than the limit; the message names it."),
        },
    )
    def post(self, request):
        _provider_of_request(request.user)
        dry_run = _dry_run_flag(request)
        try:
            data = self._uploaded_bytes(request)
            text = csv_format.csv_decode(data)
            report = offering_csv.offering_csv_import(user=request.user, text=text, dry_run=dry_run)
        except csv_format.CsvFileTooLarge as exc:
            return Response({"file": [exc.message]}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        except csv_format.CsvFileError as exc:
            logger.info("Offerings CSV of user %s rejected: %s", request.user.pk, exc.message)
            return Response({"file": [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(OfferingCsvReportSerializer(report.as_dict()).data)


# --- SSH keys -------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List your saved SSH keys"),
    retrieve=extend_schema(summary="Show a saved SSH key", responses={200: SshKeySerializer, **ERROR_RESPONSES}),
    create=extend_schema(summary="Save an SSH public key", responses={201: SshKeySerializer, **ERROR_RESPONSES}),
    destroy=extend_schema(
        summary="Delete a saved SSH key",
        description="Rentals keep their own copy of the key, so running servers are not affected.",
        responses={204: None, **ERROR_RESPONSES},
    ),
)
class SshKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = SshKey.objects.none()  # For schema generation; get_queryset() scopes to the user.
    permission_classes = (IsAuthenticated,)
    serializer_class = SshKeySerializer

    def get_queryset(self):
        return SshKey.objects.filter(user=self.request.user).order_by("name", "id")

    def perform_create(self, serializer) -> None:
        serializer.instance = ssh_key_services.ssh_key_create(
            user=self.request.user,
            name=serializer.validated_data["name"],
            public_key=serializer.validated_data["public_key"],
        )

    def perform_destroy(self, instance: SshKey) -> None:
        ssh_key_services.ssh_key_delete(user=self.request.user, key_id=instance.pk)
