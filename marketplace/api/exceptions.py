"""API error responses: real HTTP status codes with a JSON body naming the field."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from marketplace.services.contracts import InvalidTransition

logger = logging.getLogger(__name__)


def api_exception_handler(exc, context):
    """Map service-layer errors to 400/403/409 JSON responses; DRF handles the rest."""
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
