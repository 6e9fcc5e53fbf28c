"""The one place that builds the Stripe API client from settings."""

from __future__ import annotations

import stripe
from django.conf import settings


class StripeNotConfigured(Exception):
    """STRIPE_SECRET_KEY is not set, so nothing can be sent to Stripe."""


def stripe_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def stripe_client() -> stripe.StripeClient:
    """Return a client for the configured Stripe account (or the loopback fake in tests)."""
    if not settings.STRIPE_SECRET_KEY:
        raise StripeNotConfigured("Card payments are not set up: STRIPE_SECRET_KEY is empty.")
    base = settings.STRIPE_API_BASE.rstrip("/")
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": base, "connect": base, "files": base},
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
    )
