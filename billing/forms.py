"""Forms of the billing pages (billing details for invoices) and of the billing admin actions."""

from __future__ import annotations

from django import forms

from billing.models import BillingProfile
from billing.payouts import PAYOUT_NOTE_MAX_CHARS
from billing.profiles import PROFILE_FIELDS
from marketplace.forms import MultilineCharField
from marketplace.validators import validate_multiline_text


class MarkPaidOutForm(forms.Form):
    """The note staff give when recording a payout they paid outside Stripe."""

    note = MultilineCharField(
        max_length=PAYOUT_NOTE_MAX_CHARS,
        validators=[validate_multiline_text],
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="How the money was paid, for example the bank transfer reference. The beneficiary sees this note.",
    )


class BillingProfileForm(forms.ModelForm):
    """Billing details; the model's clean() checks the VAT id format, business flag and country."""

    class Meta:
        model = BillingProfile
        fields = PROFILE_FIELDS
        widgets = {
            "country": forms.TextInput(attrs={"size": 2, "autocomplete": "country", "placeholder": "DE"}),
            "legal_name": forms.TextInput(attrs={"autocomplete": "organization"}),
            "address_line1": forms.TextInput(attrs={"autocomplete": "address-line1"}),
            "address_line2": forms.TextInput(attrs={"autocomplete": "address-line2"}),
            "postal_code": forms.TextInput(attrs={"autocomplete": "postal-code"}),
            "city": forms.TextInput(attrs={"autocomplete": "address-level2"}),
            "vat_id": forms.TextInput(attrs={"spellcheck": "false", "placeholder": "DE123456789"}),
        }

    def _post_clean(self) -> None:
        if "country" in self.errors:
            # The model's VAT check compares the VAT id with the country. The submitted country is
            # invalid, so the stored one must not appear in that message.
            self.instance.country = ""
        super()._post_clean()

    def clean_country(self) -> str:
        return (self.cleaned_data.get("country") or "").strip().upper()
