"""Read-only billing API: your earnings statements and your payments as tenant."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors
from billing.api.serializers import PaymentSerializer, StatementSerializer
from billing.models import Payment


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
