"""Forms of the billing admin actions."""

from __future__ import annotations

from django import forms


class MarkPaidOutForm(forms.Form):
    """The note staff give when recording a payout they paid outside Stripe."""

    note = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="How the money was paid, for example the bank transfer reference. The beneficiary sees this note.",
    )
