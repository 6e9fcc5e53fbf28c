"""An upload handler that keeps small files in memory and drops files over a size limit."""

from __future__ import annotations

import io
import logging

from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile

logger = logging.getLogger(__name__)


class SizeLimitedUploadHandler(FileUploadHandler):
    """Keep each uploaded file in memory up to `max_bytes`; skip the rest of a larger file.

    A skipped file is missing from `request.FILES` and its field name is in `too_large`, so the
    view can name the limit. Django reads the rest of the skipped part in chunks and discards
    them, so memory use stays at about `max_bytes` plus one chunk whatever the upload's size.
    Install it as the only handler, before anything reads `request.POST` or `request.FILES`.
    """

    def __init__(self, request=None, *, max_bytes: int):
        super().__init__(request)
        self.max_bytes = max_bytes
        self.too_large: list[str] = []
        self._buffer = io.BytesIO()
        self._received = 0

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self._buffer = io.BytesIO()
        self._received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int):
        self._received += len(raw_data)
        if self._received > self.max_bytes:
            logger.info(
                "Upload of %r in field %r skipped: more than %s bytes", self.file_name, self.field_name, self.max_bytes
            )
            self.too_large.append(self.field_name)
            raise SkipFile()
        self._buffer.write(raw_data)
        return None

    def file_complete(self, file_size: int):
        self._buffer.seek(0)
        return InMemoryUploadedFile(
            file=self._buffer,
            field_name=self.field_name,
            name=self.file_name,
            content_type=self.content_type,
            size=file_size,
            charset=self.charset,
            content_type_extra=self.content_type_extra,
        )
