"""API error responses: real HTTP status codes with a JSON body naming the field."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
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
    return exception_handler(exc, context)
