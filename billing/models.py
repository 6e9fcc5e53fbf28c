"""Payments and refunds recorded through the payment abstraction, and the invoices and credit notes issued for them."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse
from django.utils import timezone

from billing.vat import normalize_vat_id
from marketplace.validators import validate_country_code, validate_visible_text


def _new_key() -> str:
    return secrets.token_urlsafe(32)


class PaymentMethod(models.TextChoices):
    SANDBOX = "sandbox", "Sandbox (no real money)"
    FREE = "free", "Free self-rental"
    STRIPE = "stripe", "Card (Stripe)"


class PaymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Paid"
    REFUND_PENDING = "refund_pending", "Refund pending"
    REFUNDED = "refunded", "Refunded"
    REFUND_FAILED = "refund_failed", "Refund failed"
    FAILED = "failed", "Failed"


PAYMENT_STATUS_COLOURS = {
    PaymentStatus.PENDING: "grey",
    PaymentStatus.SUCCEEDED: "green",
    PaymentStatus.REFUND_PENDING: "orange",
    PaymentStatus.REFUNDED: "blue",
    PaymentStatus.REFUND_FAILED: "red",
    PaymentStatus.FAILED: "red",
}


class Payment(models.Model):
    """Money taken (or, for free self-rentals, explicitly not taken) for one contract period."""

    contract = models.ForeignKey("marketplace.Contract", on_delete=models.PROTECT, related_name="payments")
    method = models.CharField(max_length=16, choices=PaymentMethod.choices)
    status = models.CharField(max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING)
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    reference = models.CharField(max_length=120, blank=True, help_text="The payment processor's id, if any.")
    # Stripe objects that later calls (refunds, disputes, renewals) need.
    stripe_invoice_id = models.CharField(max_length=120, blank=True)
    stripe_payment_intent_id = models.CharField(max_length=120, blank=True)
    stripe_charge_id = models.CharField(max_length=120, blank=True)
    # Tax that the processor computed for this payment (Stripe Tax), included in amount_cents;
    # None when the processor computed none and the configured rate applies.
    processor_tax_cents = models.IntegerField(null=True, blank=True)
    # False for payments in Stripe's test mode, where no real money moves.
    livemode = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["stripe_invoice_id"], condition=~models.Q(stripe_invoice_id=""), name="payment_unique_stripe_invoice"
            ),
        ]

    def __str__(self) -> str:
        return f"Payment {self.pk}: {self.amount_cents / 100:.2f} {self.currency} ({self.get_status_display()})"

    @property
    def status_colour(self) -> str:
        return PAYMENT_STATUS_COLOURS.get(self.status, "grey")


class Refund(models.Model):
    """A refund of a payment, recorded before the processor is called and updated after."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.TextField()
    reference = models.CharField(max_length=120, blank=True)
    error = models.TextField(blank=True)
    # Sent with every Refund API call for this row, so a retry never refunds twice.
    idempotency_key = models.CharField(max_length=64, default=_new_key, editable=False)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="refund_status_next_attempt")]

    def __str__(self) -> str:
        return f"Refund {self.pk} of payment {self.payment_id}: {self.status}"


class StripeCustomer(models.Model):
    """The Stripe customer that pays for a user's rentals."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="stripe_customer")
    customer_id = models.CharField(max_length=120, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.customer_id} (user {self.user_id})"


class CheckoutSession(models.Model):
    """One Stripe Checkout Session opened to pay the first period of a rental."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"
        EXPIRED = "expired", "Expired"

    contract = models.ForeignKey("marketplace.Contract", on_delete=models.PROTECT, related_name="checkout_sessions")
    session_id = models.CharField(max_length=120, unique=True)
    url = models.URLField(max_length=2000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.session_id} ({self.status})"

    @property
    def is_usable(self) -> bool:
        return self.status == self.Status.OPEN and self.expires_at > timezone.now() and bool(self.url)


class Subscription(models.Model):
    """The Stripe subscription that bills one rental monthly."""

    contract = models.OneToOneField("marketplace.Contract", on_delete=models.PROTECT, related_name="subscription")
    subscription_id = models.CharField(max_length=120, unique=True)
    customer_id = models.CharField(max_length=120, blank=True)
    status = models.CharField(max_length=32, blank=True, help_text="Stripe's status: active, past_due, canceled ...")
    cancel_at_period_end = models.BooleanField(default=False)
    current_period_end = models.DateTimeField(null=True, blank=True)
    # Set when the platform asked Stripe to cancel (or to cancel at period end) and Stripe has
    # not confirmed yet; a periodic task retries.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_error = models.TextField(blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.subscription_id} ({self.status or 'unknown'})"


class WebhookEvent(models.Model):
    """A Stripe event the webhook endpoint processed; its unique id makes replays no-ops."""

    event_id = models.CharField(max_length=120, unique=True)
    type = models.CharField(max_length=80)
    livemode = models.BooleanField(default=False)
    stripe_created_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    outcome = models.TextField(blank=True, help_text="What the handler did, for staff.")
    contract = models.ForeignKey(
        "marketplace.Contract", null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_events"
    )
    payload = models.JSONField()

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.type})"


class Dispute(models.Model):
    """A chargeback opened by the card holder's bank on one payment."""

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="disputes")
    dispute_id = models.CharField(max_length=120, unique=True)
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=60, blank=True)
    status = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Dispute {self.dispute_id} on payment {self.payment_id} ({self.status})"


class LedgerParty(models.TextChoices):
    PLATFORM = "platform", "Platform commission"
    PROVIDER = "provider", "Provider earnings"
    AUTHOR = "author", "Recipe author share"


class LedgerEntry(models.Model):
    """One party's share of one payment (positive) or of its refund (negative), in cents.

    Append-only: corrections are new rows. The entries of a payment sum exactly to its amount,
    and a refund's reversal entries to minus the refunded amount.
    """

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="ledger_entries")
    refund = models.ForeignKey(Refund, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries")
    contract = models.ForeignKey("marketplace.Contract", on_delete=models.PROTECT, related_name="ledger_entries")
    party = models.CharField(max_length=16, choices=LedgerParty.choices)
    beneficiary = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries",
        help_text="The provider or recipe author credited; empty for the platform.",
    )
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    # The payout that paid this entry to its beneficiary; set once, so no entry is paid twice.
    payout = models.ForeignKey(
        "billing.Payout", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["beneficiary", "period_start"], name="ledger_beneficiary_period")]

    def __str__(self) -> str:
        return f"{self.get_party_display()}: {self.amount_cents} {self.currency} (payment {self.payment_id})"


class PayoutAccount(models.Model):
    """A beneficiary's Stripe Connect Express account, with the state last read from Stripe."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payout_account")
    stripe_account_id = models.CharField(max_length=64, blank=True)
    details_submitted = models.BooleanField(default=False, help_text="The user finished Stripe's onboarding form.")
    payouts_enabled = models.BooleanField(default=False, help_text="Stripe accepts transfers to this account.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["stripe_account_id"], condition=~models.Q(stripe_account_id=""), name="payout_account_unique_stripe_id"
            ),
        ]

    def __str__(self) -> str:
        return f"Payout account of {self.user} ({self.stripe_account_id or 'not created'})"

    @property
    def setup_label(self) -> str:
        """The onboarding state in words, for pages and admin."""
        if self.payouts_enabled:
            return "Ready for payouts"
        if self.details_submitted:
            return "Details submitted; Stripe is reviewing them"
        if self.stripe_account_id:
            return "Setup not finished"
        return "Not set up"


class PayoutMethod(models.TextChoices):
    STRIPE_TRANSFER = "stripe_transfer", "Stripe transfer"
    MANUAL = "manual", "Manual (by staff)"


class PayoutStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PAID = "paid", "Paid"
    FAILED = "failed", "Failed"


PAYOUT_STATUS_COLOURS = {
    PayoutStatus.PENDING: "orange",
    PayoutStatus.PAID: "green",
    PayoutStatus.FAILED: "red",
}


class Payout(models.Model):
    """Money owed to one beneficiary in one currency for one closed calendar month (UTC).

    Its ledger entries (`ledger_entries`) sum to `amount_cents`. They include entries of earlier
    months that were not paid out yet, such as refund reversals after an earlier payout or a month
    whose total was zero or less.
    """

    beneficiary = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payouts")
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField(help_text="First instant of the calendar month (UTC).")
    period_end = models.DateTimeField(help_text="First instant of the next month (UTC), exclusive.")
    amount_cents = models.BigIntegerField()
    method = models.CharField(max_length=16, choices=PayoutMethod.choices)
    status = models.CharField(max_length=16, choices=PayoutStatus.choices, default=PayoutStatus.PENDING)
    # Attempt number of the current Stripe transfer, part of its idempotency key. Each staff retry
    # raises it, so Stripe treats the retry as a new request instead of replaying the failure.
    transfer_attempt = models.PositiveIntegerField(default=1)
    stripe_transfer_id = models.CharField(max_length=64, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    marked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="payouts_marked",
        help_text="The staff user who marked a manual payout as paid.",
    )
    note = models.TextField(blank=True)
    error = models.TextField(blank=True, help_text="Why the last Stripe transfer failed.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["beneficiary", "currency", "period_start"], name="payout_unique_month"),
            models.CheckConstraint(condition=models.Q(amount_cents__gt=0), name="payout_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"Payout {self.pk}: {self.amount_cents / 100:.2f} {self.currency} to {self.beneficiary} ({self.status})"

    @property
    def status_colour(self) -> str:
        return PAYOUT_STATUS_COLOURS.get(self.status, "grey")

    def can_mark_paid(self) -> bool:
        # A pending Stripe payout may have a transfer in flight, so only its failure frees it.
        if self.status == PayoutStatus.PENDING:
            return self.method == PayoutMethod.MANUAL
        return self.status == PayoutStatus.FAILED

    def can_retry_transfer(self) -> bool:
        return self.status == PayoutStatus.FAILED and self.method == PayoutMethod.STRIPE_TRANSFER


class PayoutEvent(models.Model):
    """One status change of a payout, with who or what made it and why. Rows are only added."""

    payout = models.ForeignKey(Payout, on_delete=models.PROTECT, related_name="events")
    from_status = models.CharField(max_length=16, choices=PayoutStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=PayoutStatus.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The staff user; empty when the system acted.",
    )
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"Payout {self.payout_id}: {self.from_status or 'new'} -> {self.to_status}"
class BillingProfile(models.Model):
    """The legal name, address and optional EU VAT id a user's invoices are made out to."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="billing_profile")
    legal_name = models.CharField(
        max_length=200, validators=[validate_visible_text],
        help_text="Your full name, or your company's registered name when you buy as a business.",
    )
    address_line1 = models.CharField("address", max_length=200, validators=[validate_visible_text])
    address_line2 = models.CharField("address line 2", max_length=200, blank=True, validators=[validate_visible_text])
    postal_code = models.CharField(max_length=20, blank=True, validators=[validate_visible_text])
    city = models.CharField(max_length=100, validators=[validate_visible_text])
    country = models.CharField(
        max_length=2, validators=[validate_country_code], help_text="ISO 3166-1 code in capitals, for example DE or FR."
    )
    is_business = models.BooleanField(
        "buying as a business", default=False,
        help_text="Tick when you rent for a company; an EU VAT id then applies the reverse charge where the law allows.",
    )
    vat_id = models.CharField(
        "EU VAT id", max_length=20, blank=True,
        help_text="For businesses only: the prefix and the number, for example DE123456789 (EL for Greece).",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Billing profile of {self.legal_name} (user {self.user_id})"

    def clean(self) -> None:
        from billing.profiles import billing_profile_errors

        errors = billing_profile_errors(
            country=self.country, is_business=self.is_business, vat_id=self.vat_id, vat_id_label="vat_id"
        )
        if errors:
            raise ValidationError(errors)
        if self.vat_id:
            self.vat_id = normalize_vat_id(self.vat_id)


class ImmutableDocumentError(Exception):
    """An issued invoice or credit note cannot be changed or deleted."""


class ImmutableQuerySet(models.QuerySet):
    """Rejects bulk updates and deletes, which would bypass the model's save() and delete()."""

    def update(self, **kwargs):
        raise ImmutableDocumentError(f"{self.model.__name__} rows are immutable once issued; update() is not allowed.")

    def delete(self):
        raise ImmutableDocumentError(f"{self.model.__name__} rows are immutable once issued; delete() is not allowed.")


class DocumentSeries(models.TextChoices):
    INVOICE = "invoice", "Invoice"
    CREDIT_NOTE = "credit_note", "Credit note"
    SANDBOX_INVOICE = "sandbox_invoice", "Sandbox invoice"
    SANDBOX_CREDIT_NOTE = "sandbox_credit_note", "Sandbox credit note"


#: Number prefix of each series; a number is the prefix, the year and a 6-digit sequence.
SERIES_PREFIXES = {
    DocumentSeries.INVOICE: "",
    DocumentSeries.CREDIT_NOTE: "CN-",
    DocumentSeries.SANDBOX_INVOICE: "TEST-",
    DocumentSeries.SANDBOX_CREDIT_NOTE: "TEST-CN-",
}


class TaxSource(models.TextChoices):
    PROCESSOR = "processor", "Computed by the payment processor"
    CONFIGURED_RATE = "configured_rate", "Configured rate"
    REVERSE_CHARGE = "reverse_charge", "Reverse charge"


class DocumentCounter(models.Model):
    """The last number issued in one series and calendar year (UTC).

    Issuing locks this row with SELECT ... FOR UPDATE and inserts the document in the same
    transaction, so a rolled-back issue also rolls back its number and the series has no gaps.
    """

    series = models.CharField(max_length=32, choices=DocumentSeries.choices)
    year = models.PositiveSmallIntegerField()
    last_sequence = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["series", "year"], name="document_counter_series_year")]

    def __str__(self) -> str:
        return f"{self.get_series_display()} {self.year}: {self.last_sequence}"


class BillingDocument(models.Model):
    """Fields shared by invoices and credit notes: number, parties and amounts, frozen at issue."""

    number = models.CharField(max_length=32, unique=True)
    series = models.CharField(max_length=32, choices=DocumentSeries.choices)
    year = models.PositiveSmallIntegerField()
    sequence = models.PositiveIntegerField()
    issued_at = models.DateTimeField()
    is_sandbox = models.BooleanField(default=False, help_text="Issued for a sandbox payment: no money was charged.")
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    seller_name = models.CharField(max_length=200)
    seller_address = models.TextField(blank=True)
    seller_country = models.CharField(max_length=2, blank=True)
    seller_vat_id = models.CharField(max_length=20, blank=True)
    seller_email = models.CharField(max_length=254, blank=True)

    buyer_name = models.CharField(max_length=200)
    buyer_email = models.CharField(max_length=254)
    buyer_address_line1 = models.CharField(max_length=200, blank=True)
    buyer_address_line2 = models.CharField(max_length=200, blank=True)
    buyer_postal_code = models.CharField(max_length=20, blank=True)
    buyer_city = models.CharField(max_length=100, blank=True)
    buyer_country = models.CharField(max_length=2, blank=True)
    buyer_vat_id = models.CharField(max_length=20, blank=True)
    buyer_is_business = models.BooleanField(default=False)

    currency = models.CharField(max_length=3)
    # Totals in cents; net + tax == gross. Credit notes carry negative amounts.
    net_cents = models.BigIntegerField()
    tax_cents = models.BigIntegerField()
    gross_cents = models.BigIntegerField()
    tax_rate_bps = models.PositiveBigIntegerField(
        help_text="Tax rate in basis points; for tax computed by the processor, the effective rate rounded."
    )
    tax_source = models.CharField(max_length=16, choices=TaxSource.choices)
    reverse_charge = models.BooleanField(default=False)
    notes = models.TextField(blank=True, help_text="Printed on the document: reverse charge and sandbox notes.")
    # [{"description", "period_start", "period_end", "net_cents", "tax_cents", "gross_cents"}];
    # the periods are ISO 8601 strings and the amounts of all lines sum to the totals.
    lines = models.JSONField(default=list)

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["-issued_at", "-id"]

    def __str__(self) -> str:
        return self.number

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableDocumentError(f"{type(self).__name__} {self.number} is issued and cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableDocumentError(f"{type(self).__name__} {self.number} is issued and cannot be deleted.")

    @property
    def buyer_address_lines(self) -> list[str]:
        """The buyer's address as printed: street lines, postal code and city, country code."""
        city_line = " ".join(part for part in (self.buyer_postal_code, self.buyer_city) if part)
        lines = [self.buyer_address_line1, self.buyer_address_line2, city_line, self.buyer_country]
        return [line for line in lines if line]

    @property
    def seller_address_lines(self) -> list[str]:
        lines = [*self.seller_address.splitlines(), self.seller_country]
        return [line.strip() for line in lines if line.strip()]


class Invoice(BillingDocument):
    """The invoice for one succeeded payment of more than 0 cents; immutable once issued."""

    payment = models.OneToOneField(Payment, on_delete=models.PROTECT, related_name="invoice")

    class Meta(BillingDocument.Meta):
        constraints = [
            models.UniqueConstraint(fields=["series", "year", "sequence"], name="invoice_series_year_sequence"),
        ]
        indexes = [models.Index(fields=["buyer", "-issued_at"], name="invoice_buyer_issued")]

    def get_absolute_url(self) -> str:
        return reverse("billing:invoice", args=[self.number])

    def get_pdf_url(self) -> str:
        return reverse("billing:invoice_pdf", args=[self.number])


class CreditNote(BillingDocument):
    """The credit note for one succeeded refund, crediting part or all of an invoice; immutable once issued."""

    refund = models.OneToOneField(Refund, on_delete=models.PROTECT, related_name="credit_note")
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")

    class Meta(BillingDocument.Meta):
        constraints = [
            models.UniqueConstraint(fields=["series", "year", "sequence"], name="credit_note_series_year_sequence"),
        ]
        indexes = [models.Index(fields=["buyer", "-issued_at"], name="credit_note_buyer_issued")]

    def get_absolute_url(self) -> str:
        return reverse("billing:credit_note", args=[self.number])

    def get_pdf_url(self) -> str:
        return reverse("billing:credit_note_pdf", args=[self.number])
