"""Redirect targets that a request names in its `next` parameter."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def safe_next_url(request: HttpRequest, default: str) -> str:
    """Return the request's `next` URL (POST before GET) if it stays on this site, else `default`.

    A URL to another host, or an http URL on an https request, is replaced by `default`.
    """
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default
