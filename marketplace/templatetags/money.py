"""Template filter that formats an amount in cents as a price, for example "€4.59"."""

from __future__ import annotations

from decimal import Decimal

from django import template

register = template.Library()

# Currencies shown with a symbol in front; any other ISO 4217 code follows the amount.
CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£"}


@register.filter
def money(cents, currency: str = "EUR") -> str:
    """Format `cents` (minor units, two decimals) in `currency`: 459, "EUR" -> "€4.59".

    Returns "" for a missing amount, so templates can show their own placeholder.
    """
    if cents is None or cents == "":
        return ""
    try:
        amount = Decimal(int(cents)) / 100
    except (TypeError, ValueError):
        return ""
    code = (currency or "").upper()
    sign = "-" if amount < 0 else ""
    number = f"{abs(amount):,.2f}"
    symbol = CURRENCY_SYMBOLS.get(code)
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {code}".strip()
