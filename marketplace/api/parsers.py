"""Request body parsers of the REST API."""

from __future__ import annotations

import logging

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

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
