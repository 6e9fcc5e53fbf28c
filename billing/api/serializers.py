"""Serializers of the read-only billing API."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import Payment, PaymentStatus, Payout, PayoutMethod, PayoutStatus


class StatementSerializer(serializers.Serializer):
    """One month's earnings in one currency; amounts in cents, `reversed_cents` zero or negative."""

    month = serializers.CharField(source="month_key", help_text="Calendar month (UTC) of the paid periods, YYYY-MM.")
    currency = serializers.CharField()
    gross_cents = serializers.IntegerField(help_text="Sum of your shares of payments.")
    reversed_cents = serializers.IntegerField(help_text="Sum of refund reversals; zero or negative.")
    net_cents = serializers.IntegerField()
    entry_count = serializers.IntegerField()


class PaymentSerializer(serializers.ModelSerializer):
    """A payment for one period of one of your rentals."""

    rental = serializers.UUIDField(source="contract.public_id", read_only=True)
    offering_name = serializers.CharField(source="contract.offering_name", read_only=True)
    # NOTE: documented as a plain string, because drf-spectacular names every enum on a field
    # called "status" StatusEnum and these values would collide with the rental status enum.
    status = serializers.CharField(read_only=True, help_text="One of: " + ", ".join(PaymentStatus.values) + ".")
    moves_real_money = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = (
            "id", "rental", "offering_name", "method", "moves_real_money", "status", "amount_cents",
            "currency", "period_start", "period_end", "created_at",
        )
        read_only_fields = fields

    def get_moves_real_money(self, payment: Payment) -> bool:
        return payment.method == "stripe"


class PayoutSerializer(serializers.ModelSerializer):
    """A payout of your earnings in one currency for one calendar month (UTC), with the amount in cents."""

    month = serializers.SerializerMethodField(help_text="Calendar month (UTC) the payout closes, YYYY-MM.")
    # Plain strings, because drf-spectacular would name these enums MethodEnum and StatusEnum,
    # which other serializers' enums already use.
    method = serializers.CharField(read_only=True, help_text="One of: " + ", ".join(PayoutMethod.values) + ".")
    status = serializers.CharField(read_only=True, help_text="One of: " + ", ".join(PayoutStatus.values) + ".")

    class Meta:
        model = Payout
        fields = (
            "id", "month", "currency", "amount_cents", "method", "status", "period_start", "period_end",
            "stripe_transfer_id", "paid_at", "note", "created_at",
        )
        read_only_fields = fields

    def get_month(self, payout: Payout) -> str:
        return f"{payout.period_start:%Y-%m}"


class OnboardingLinkSerializer(serializers.Serializer):
    """A single-use link to Stripe's payout setup form, and the account state stored so far."""

    url = serializers.URLField(help_text="Open this in the user's browser; it expires after a few minutes.")
    details_submitted = serializers.BooleanField()
    payouts_enabled = serializers.BooleanField()
