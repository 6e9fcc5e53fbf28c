"""Billing API: your earnings statements, payouts and payout setup, and as tenant your payments,
invoices, credit notes and billing details."""

from __future__ import annotations

from django.http import Http404, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import GenericAPIView, ListAPIView, RetrieveAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import payouts, selectors
from billing.api.serializers import (
    BillingProfileSerializer,
    CreditNoteSerializer,
    InvoiceSerializer,
    OnboardingLinkSerializer,
    PaymentSerializer,
    PayoutSerializer,
    StatementSerializer,
)
from billing.models import BillingProfile, CreditNote, Invoice, Payment, Payout
from billing.pdf import render_document_pdf
from billing.profiles import billing_profile_save
from marketplace.api.views import ERROR_RESPONSES


class EarningsView(APIView):
    """Monthly earnings statements of the signed-in user as provider and recipe author."""

    permission_classes = (IsAuthenticated,)

    @extend_schema(
        summary="List your monthly earnings",
        responses={200: StatementSerializer(many=True)},
        description=(
            "Your ledger shares grouped by calendar month (UTC) of the paid period and by currency, "
            "newest first. Sandbox payments move no real money."
        ),
    )
    def get(self, request, *args, **kwargs):
        statements = selectors.earnings_statements(user=request.user)
        return Response(StatementSerializer(statements, many=True).data)


@extend_schema(summary="List your payments", description="Payments for your rentals as tenant, newest first.")
class PaymentListView(ListAPIView):
    """Payments for the signed-in user's rentals."""

    permission_classes = (IsAuthenticated,)
    serializer_class = PaymentSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Payment.objects.none()
        return selectors.tenant_payments(user=self.request.user)


class _OwnPayoutsMixin:
    permission_classes = (IsAuthenticated,)
    serializer_class = PayoutSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Payout.objects.none()
        return selectors.beneficiary_payouts(user=self.request.user)


@extend_schema(
    summary="List your payouts",
    description=(
        "Payouts of your earnings, newest month first. Each closed calendar month (UTC) turns your "
        "unpaid earnings into one payout per currency, sent by Stripe transfer when your payout "
        "account is set up and otherwise paid out by staff."
    ),
)
class PayoutListView(_OwnPayoutsMixin, ListAPIView):
    """Payouts to the signed-in user."""


@extend_schema(summary="Show one of your payouts", description="Another user's payout is 404.")
class PayoutDetailView(_OwnPayoutsMixin, RetrieveAPIView):
    """One payout to the signed-in user."""


class PayoutOnboardingLinkView(APIView):
    """A Stripe Connect onboarding link for the signed-in user's payout account."""

    permission_classes = (IsAuthenticated,)

    @extend_schema(
        summary="Start or continue payout setup",
        request=None,
        responses={
            201: OnboardingLinkSerializer,
            409: OpenApiResponse(description="Stripe Connect payouts are not enabled on this installation."),
            502: OpenApiResponse(description="Stripe rejected the request or could not be reached."),
        },
        description=(
            "Creates your Stripe Express account on the first call and returns a new single-use link "
            "to Stripe's setup form. After the form, Stripe sends the browser to the earnings page, "
            "which reads the account state."
        ),
    )
    def post(self, request, *args, **kwargs):
        try:
            url = payouts.payout_account_onboarding_link(
                user=request.user,
                return_url=request.build_absolute_uri(reverse("billing:payouts_return")),
                refresh_url=request.build_absolute_uri(reverse("billing:payouts_refresh")),
            )
        except payouts.PayoutsUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except payouts.PayoutStripeError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        account = selectors.payout_account_of(user=request.user)
        body = {"url": url, "details_submitted": account.details_submitted, "payouts_enabled": account.payouts_enabled}
        return Response(OnboardingLinkSerializer(body).data, status=status.HTTP_201_CREATED)
class _DocumentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Invoices or credit notes made out to the signed-in user, looked up by number, with a PDF action."""

    permission_classes = (IsAuthenticated,)
    lookup_field = "number"
    lookup_value_regex = r"[A-Z0-9-]+"
    filename_prefix = ""

    def perform_content_negotiation(self, request, force=False):
        # The PDF action returns a plain HttpResponse, so every DRF response here is JSON,
        # including errors for a client that sent "Accept: application/pdf".
        return (JSONRenderer(), JSONRenderer.media_type)

    @extend_schema(
        summary="Download as PDF",
        responses={
            (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="The PDF document."),
            **ERROR_RESPONSES,
        },
    )
    @action(detail=True, methods=["get"])
    def pdf(self, request, number=None):
        document = self.get_object()
        response = HttpResponse(render_document_pdf(document), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{self.filename_prefix}-{document.number}.pdf"'
        return response


@extend_schema_view(
    list=extend_schema(summary="List your invoices", description="Invoices made out to you, newest first."),
    retrieve=extend_schema(summary="Show an invoice", responses={200: InvoiceSerializer, **ERROR_RESPONSES}),
)
class InvoiceViewSet(_DocumentViewSet):
    """Invoices for your payments: one per paid period; sandbox invoices are numbered TEST-..."""

    serializer_class = InvoiceSerializer
    filename_prefix = "invoice"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invoice.objects.none()
        return selectors.tenant_invoices(user=self.request.user)


@extend_schema_view(
    list=extend_schema(summary="List your credit notes", description="Credit notes for your refunds, newest first."),
    retrieve=extend_schema(summary="Show a credit note", responses={200: CreditNoteSerializer, **ERROR_RESPONSES}),
)
class CreditNoteViewSet(_DocumentViewSet):
    """Credit notes for your refunds, each crediting part or all of one invoice."""

    serializer_class = CreditNoteSerializer
    filename_prefix = "credit-note"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CreditNote.objects.none()
        return selectors.tenant_credit_notes(user=self.request.user)


class BillingProfileView(GenericAPIView):
    """The signed-in user's billing details, which invoices are made out to."""

    permission_classes = (IsAuthenticated,)
    serializer_class = BillingProfileSerializer

    @extend_schema(summary="Show your billing details", responses={200: BillingProfileSerializer, **ERROR_RESPONSES})
    def get(self, request):
        profile = BillingProfile.objects.filter(user=request.user).first()
        if profile is None:
            raise Http404("You have no billing details yet; set them with PUT.")
        return Response(self.get_serializer(profile).data)

    @extend_schema(
        summary="Set your billing details",
        description=(
            "Creates or replaces your billing details; omitted optional fields are cleared. Invoices "
            "already issued keep the details they were issued with."
        ),
        responses={200: BillingProfileSerializer, 201: BillingProfileSerializer, **ERROR_RESPONSES},
    )
    def put(self, request):
        existing = BillingProfile.objects.filter(user=request.user).first()
        serializer = self.get_serializer(existing, data=request.data)
        serializer.is_valid(raise_exception=True)
        values = {"address_line2": "", "postal_code": "", "is_business": False, "vat_id": ""}
        values.update(serializer.validated_data)
        profile = billing_profile_save(user=request.user, actor=request.user, **values)
        return Response(
            self.get_serializer(profile).data, status=status.HTTP_200_OK if existing else status.HTTP_201_CREATED
        )
