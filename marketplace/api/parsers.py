"""Request body parsers of the REST API."""

from __future__ import annotations

import logging

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser, JSONParser

from marketplace.offering_csv_format import csv_file_too_large

logger = logging.getLogger(__name__)


class NestingSafeJSONParser(JSONParser):
    """DRF's JSON parser, with a 400 instead of a 500 for JSON nested deeper than Python can decode.

    Python's json module decodes nested arrays and objects recursively, so a body such as
    '{"a":' repeated 5000 times raises RecursionError, which DRF does not catch.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type=media_type, parser_context=parser_context)
        except RecursionError as exc:
            request = (parser_context or {}).get("request")
            logger.info("JSON body rejected on %s: nested too deeply", request.path if request is not None else "?")
            raise ParseError("JSON nested too deeply.") from exc


class CsvBodyTooLarge(APIException):
    """A text/csv request body over the size limit. Its error names the `file` field, as for a multipart upload."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "file_too_large"

    def __init__(self):
        super().__init__({"file": [csv_file_too_large().message]})


class CsvBodyParser(BaseParser):
    """Read a text/csv request body as bytes, up to OFFERING_CSV_MAX_BYTES.

    A larger body is rejected by its Content-Length before reading, or after reading one byte
    over the limit when the length is not sent, so it is never read whole into memory.
    """

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        limit = settings.OFFERING_CSV_MAX_BYTES
        request = (parser_context or {}).get("request")
        content_length = request.META.get("CONTENT_LENGTH", "") if request is not None else ""
        if content_length.isdigit() and int(content_length) > limit:
            logger.info("text/csv body of %s bytes rejected: the limit is %s bytes", content_length, limit)
            raise CsvBodyTooLarge()
        if stream is None:
            return b""
        data = stream.read(limit + 1)
        if len(data) > limit:
            logger.info("text/csv body rejected after %s bytes: the limit is %s bytes", len(data), limit)
            raise CsvBodyTooLarge()
        return data
