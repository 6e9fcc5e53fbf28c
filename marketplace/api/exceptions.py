"""API error responses: real HTTP status codes with a JSON body naming the field."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from rest_framework import status
from rest_framework.exceptions import ErrorDetail, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

from marketplace.services.contracts import InvalidTransition

logger = logging.getLogger(__name__)


def _megabytes(size: int) -> str:
    """Return `size` bytes in units of 1024 * 1024, for example 2621440 -> "2.5 MB" as Django's docs write it."""
    return f"{size / (1024 * 1024):g} MB"


def api_exception_handler(exc, context):
    """Map service-layer errors to 400/403/409/413 JSON responses; DRF handles the rest."""
    if isinstance(exc, RequestDataTooBig):
        request = context.get("request")
        logger.info(
            "API request body of %s bytes rejected on %s: %s",
            request.META.get("CONTENT_LENGTH", "?") if request is not None else "?",
            request.path if request is not None else "?",
            exc,
        )
        limit = _megabytes(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        return Response(
            {"detail": f"Request body too large: the limit is {limit}."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            body = {field: [m for error in errors for m in error.messages] for field, errors in exc.error_dict.items()}
        else:
            body = {"detail": " ".join(exc.messages)}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, InvalidTransition):
        return Response({"detail": str(exc), "status": exc.contract.status}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, (PermissionError, DjangoPermissionDenied)):
        return Response({"detail": "You do not have permission to perform this action."}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, ValidationError):
        request = context.get("request")
        _add_lengths(exc.detail, getattr(request, "data", None))
    return exception_handler(exc, context)


def _add_lengths(detail, data) -> None:
    """Add the length received to DRF's "no more than N characters" errors of top-level fields.

    The stock message names only the limit; a client that sent 300 characters is better served by
    "...no more than 80 characters; this value has 300.".
    """
    if not isinstance(detail, dict) or not hasattr(data, "get"):
        return
    for field, errors in detail.items():
        value = data.get(field)
        if not isinstance(value, str) or not isinstance(errors, list):
            continue
        for index, error in enumerate(errors):
            if isinstance(error, ErrorDetail) and error.code == "max_length":
                text = str(error).rstrip(".")
                errors[index] = ErrorDetail(f"{text}; this value has {len(value)}.", code=error.code)


def api_not_found(request, *args, **kwargs):
    """JSON 404 for any path under /api/ that no route matches, instead of the HTML error page."""
    return JsonResponse(
        {"detail": f"No API endpoint at {request.path!r}. The endpoints are listed at /api/docs/."},
        status=404,
    )
