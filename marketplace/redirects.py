"""Redirect targets that a request names in its `next` parameter."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def safe_next_url(request: HttpRequest, default: str) -> str:
    """Return the request's `next` URL (POST before GET) if it stays on this site, else `default`.

    A URL to another host, an http URL on an https request, and a value that is neither an
    absolute path nor an absolute URL are replaced by `default`. The last rule matters because
    Django's redirect() looks up a value without "/" or "." as a view name, so `next=-1` would
    raise NoReverseMatch.
    """
    target = request.POST.get("next") or request.GET.get("next") or ""
    if not target or not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return default
    if target.startswith("/") or urlsplit(target).netloc:
        return target
    return default
