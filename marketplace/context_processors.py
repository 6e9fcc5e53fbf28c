from django.conf import settings


def platform(request):
    """Expose platform-wide facts templates need (payment mode, site name)."""
    return {
        "PAYMENT_METHOD": settings.PAYMENT_METHOD,
        "SITE_NAME": "Cloudmarket",
    }
