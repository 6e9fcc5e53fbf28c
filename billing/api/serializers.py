"""Serializers of the billing API: earnings, payments, invoices, credit notes and billing details."""

from __future__ import annotations

import datetime as dt

from django.urls import reverse
from rest_framework import serializers

from billing.models import (
    BillingProfile,
    CreditNote,
    Invoice,
    Payment,
    PaymentStatus,
    Payout,
    PayoutMethod,
    PayoutStatus,
)
from billing.profiles import PROFILE_FIELDS, billing_profile_errors
from marketplace.validators import validate_country_code


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
class DocumentLineSerializer(serializers.Serializer):
    """One line of an invoice or credit note; amounts in cents, negative on credit notes."""

    description = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    net_cents = serializers.IntegerField()
    tax_cents = serializers.IntegerField()
    gross_cents = serializers.IntegerField()

    def to_representation(self, instance: dict) -> dict:
        # Lines store their periods as ISO 8601 strings; parse them so they print like every other time.
        line = dict(instance)
        for name in ("period_start", "period_end"):
            if line.get(name):
                line[name] = dt.datetime.fromisoformat(line[name])
        return super().to_representation(line)


_DOCUMENT_FIELDS = (
    "number", "issued_at", "is_sandbox", "currency", "net_cents", "tax_cents", "gross_cents", "tax_rate_bps",
    "tax_source", "reverse_charge", "notes", "lines",
    "seller_name", "seller_address", "seller_country", "seller_vat_id", "seller_email",
    "buyer_name", "buyer_email", "buyer_address_line1", "buyer_address_line2", "buyer_postal_code", "buyer_city",
    "buyer_country", "buyer_vat_id", "buyer_is_business",
)


class InvoiceSerializer(serializers.ModelSerializer):
    """An invoice made out to you: the details as issued, which never change."""

    lines = DocumentLineSerializer(many=True, read_only=True)
    payment = serializers.IntegerField(source="payment_id", read_only=True)
    pdf_url = serializers.SerializerMethodField()

    class Meta:
        model = Invoice
        fields = (*_DOCUMENT_FIELDS, "payment", "pdf_url")
        read_only_fields = fields

    def get_pdf_url(self, invoice: Invoice) -> str:
        return reverse("api-billing-invoice-pdf", args=[invoice.number])


class CreditNoteSerializer(serializers.ModelSerializer):
    """A credit note made out to you for a refund; amounts are negative."""

    lines = DocumentLineSerializer(many=True, read_only=True)
    invoice = serializers.CharField(source="invoice.number", read_only=True, help_text="Number of the invoice credited.")
    pdf_url = serializers.SerializerMethodField()

    class Meta:
        model = CreditNote
        fields = (*_DOCUMENT_FIELDS, "invoice", "pdf_url")
        read_only_fields = fields

    def get_pdf_url(self, credit_note: CreditNote) -> str:
        return reverse("api-billing-credit-note-pdf", args=[credit_note.number])


class BillingProfileSerializer(serializers.ModelSerializer):
    """Your billing details; invoices issued after a change use the new details."""

    country = serializers.CharField(max_length=2, help_text="ISO 3166-1 code, for example DE or FR.")

    class Meta:
        model = BillingProfile
        fields = (*PROFILE_FIELDS, "updated_at")
        read_only_fields = ("updated_at",)

    def validate_country(self, value: str) -> str:
        country = value.strip().upper()
        validate_country_code(country)
        return country

    def validate(self, attrs: dict) -> dict:
        errors = billing_profile_errors(
            country=attrs.get("country", ""),
            is_business=attrs.get("is_business", False),
            vat_id=attrs.get("vat_id", ""),
            vat_id_label="vat_id",
        )
        if errors:
            raise serializers.ValidationError(errors)
        return attrs
