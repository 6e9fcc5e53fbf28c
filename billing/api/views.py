"""Billing API: your earnings statements, payouts and payout setup, and your payments as tenant."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import payouts, selectors
from billing.api.serializers import (
    OnboardingLinkSerializer,
    PaymentSerializer,
    PayoutSerializer,
    StatementSerializer,
)
from billing.models import Payment, Payout


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
