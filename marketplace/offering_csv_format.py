"""The offerings CSV file format: columns, formula escaping, decoding and header parsing.

`marketplace.services.offering_csv` uses these to export and import offerings; nothing here
reads or writes the database.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from typing import Literal

from django.conf import settings

from marketplace.models import ProductType, StockStatus, Visibility
from marketplace.validators import CURRENCIES

# --- columns --------------------------------------------------------------------------------

ColumnKind = Literal["slug", "text", "integer", "choice", "cloud_account", "recipe_slug", "recipe_version"]


@dataclass(frozen=True)
class CsvColumn:
    """One column of the offerings CSV file."""

    name: str
    kind: ColumnKind
    help: str
    # A new offering needs a non-blank value in this column.
    required: bool = False
    # (value, label) pairs of a "choice" column. The import accepts either in any letter case.
    choices: tuple[tuple[str, str], ...] = ()
    # Explains the unit after "must be a whole number" errors of an "integer" column.
    unit_hint: str = ""


COLUMNS: tuple[CsvColumn, ...] = (
    CsvColumn(
        "slug",
        "slug",
        "The offering's name in its URL; a row updates your offering with this slug. "
        "Leave it empty to create a new offering with a slug made from the name.",
    ),
    CsvColumn("name", "text", "The name tenants see.", required=True),
    CsvColumn("description", "text", "Optional free text; line breaks are kept."),
    CsvColumn(
        "product_type",
        "choice",
        "One of " + ", ".join(ProductType.values) + ". A new offering without this column is vm.",
        choices=tuple(ProductType.choices),
    ),
    CsvColumn("cloud_account_label", "cloud_account", "The label of one of your cloud accounts.", required=True),
    CsvColumn("server_type", "text", "The backend's server type, for example cx22.", required=True),
    CsvColumn("image", "text", "The image to boot, for example ubuntu-24.04.", required=True),
    CsvColumn("location_code", "text", "The backend's location code, for example fsn1.", required=True),
    CsvColumn("country", "text", "Two-letter ISO code; leave empty to take it from the location."),
    CsvColumn("city", "text", "Leave empty to take it from the location."),
    CsvColumn("vcpu", "integer", "Number of virtual CPUs, 1 to 1024.", required=True),
    CsvColumn(
        "memory_mib",
        "integer",
        "Memory in MiB as a whole number: 4096 for 4 GiB.",
        required=True,
        unit_hint="memory is in MiB, for example 16384 for 16 GiB",
    ),
    CsvColumn(
        "disk_gb",
        "integer",
        "Disk size in GB as a whole number.",
        required=True,
        unit_hint="the disk size is in GB, for example 40",
    ),
    CsvColumn("gpu_model", "text", "For example NVIDIA L4; empty when there is no GPU."),
    CsvColumn("gpu_count", "integer", "0 to 64; an empty cell means 0."),
    CsvColumn(
        "price_cents",
        "integer",
        "Monthly price in cents (the currency's minor unit) as a whole number: 459 for 4.59. 0 makes it free.",
        required=True,
        unit_hint="the price is in cents, for example 459 for 4.59",
    ),
    CsvColumn(
        "currency",
        "choice",
        "ISO 4217 code, one of " + ", ".join(code for code, _label in CURRENCIES) + ". "
        "A new offering without this column is priced in EUR.",
        choices=tuple((code, code) for code, _label in CURRENCIES),
    ),
    CsvColumn(
        "visibility",
        "choice",
        "One of " + ", ".join(Visibility.values) + ". A new offering without this column is public.",
        choices=tuple(Visibility.choices),
    ),
    CsvColumn(
        "stock_status",
        "choice",
        "One of " + ", ".join(StockStatus.values) + ". A new offering without this column is in_stock.",
        choices=tuple(StockStatus.choices),
    ),
    CsvColumn("recipe_slug", "recipe_slug", "The slug of the recipe to run on each rented VM; empty for a plain VM."),
    CsvColumn("recipe_version", "recipe_version", "The recipe's version number; required when recipe_slug is set."),
)

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)
COLUMNS_BY_NAME = {column.name: column for column in COLUMNS}

#: Hints for header names people commonly use instead of a column of this file.
_UNKNOWN_COLUMN_HINTS = {
    "price": "prices go in price_cents as whole cents, for example 459 for 4.59",
    "memory": "memory goes in memory_mib as MiB, for example 4096 for 4 GiB",
    "memory_gb": "memory goes in memory_mib as MiB, for example 4096 for 4 GiB",
    "memory_gib": "memory goes in memory_mib as MiB, for example 4096 for 4 GiB",
    "cloud_account": "the cloud account goes in cloud_account_label as the account's label",
}

#: First characters after which spreadsheets may read a cell as a formula: = + - @ tab and NUL
#: as OWASP ASVS 5.0 requirement 1.2.10 lists them, plus carriage return.
FORMULA_START_CHARACTERS = frozenset("=+-@\t\r\x00")
FORMULA_ESCAPE = "'"

_INTEGER = re.compile(r"^[+-]?[0-9]+$")
# Django's IntegerField accepts "42.0" and "42." as 42; the import accepts the same.
_ZERO_DECIMALS = re.compile(r"\.0*$")
_HEADER_SEPARATORS = re.compile(r"[\s\-]+")
_CANDIDATE_DELIMITERS = (",", ";", "\t")


def formula_escape(value: str) -> str:
    """Return `value` with a leading apostrophe if a spreadsheet could run it as a formula.

    A value that `formula_unescape` would change (an apostrophe before a formula character or
    another apostrophe) gets one too, so `formula_unescape(formula_escape(v)) == v` for every v.
    """
    if value and (value[0] in FORMULA_START_CHARACTERS or formula_unescape(value) != value):
        return FORMULA_ESCAPE + value
    return value


def formula_unescape(value: str) -> str:
    """Remove the apostrophe that `formula_escape` added, if there is one."""
    if len(value) > 1 and value[0] == FORMULA_ESCAPE and value[1] in FORMULA_START_CHARACTERS | {FORMULA_ESCAPE}:
        return value[1:]
    return value


# --- file checks ----------------------------------------------------------------------------


class CsvFileError(Exception):
    """An error of the uploaded file as a whole, with a message that names the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class CsvFileTooLarge(CsvFileError):
    """The uploaded file is larger than OFFERING_CSV_MAX_BYTES."""


EMPTY_FILE_MESSAGE = (
    "The file is empty. Download your offerings as CSV to get a file with the header row, "
    "then add one row per offering."
)


def max_bytes_text() -> str:
    """Return the upload size limit for messages, for example "2 MB" (1 MB = 1024 * 1024 bytes)."""
    limit = settings.OFFERING_CSV_MAX_BYTES
    if limit >= 1024 * 1024:
        return f"{limit / (1024 * 1024):.3g} MB"
    if limit >= 1024:
        return f"{limit / 1024:.3g} KB"
    return f"{limit} bytes"


def csv_file_too_large() -> CsvFileTooLarge:
    return CsvFileTooLarge(
        f"The file is larger than the limit of {max_bytes_text()}. "
        f"Split it into files of at most {settings.OFFERING_CSV_MAX_ROWS} offerings each."
    )


def csv_decode(data: bytes) -> str:
    """Decode an uploaded CSV file as UTF-8, without a leading byte order mark.

    Raises CsvFileTooLarge over the size limit, and CsvFileError for an empty or UTF-16 file,
    bytes that are not UTF-8, or a NUL byte, naming the byte offset and line of the first bad byte.
    """
    if len(data) > settings.OFFERING_CSV_MAX_BYTES:
        raise csv_file_too_large()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CsvFileError(
            "The file is UTF-16, not UTF-8. Save it as \"CSV UTF-8\" (Excel) or as CSV with the "
            "character set \"Unicode (UTF-8)\" (LibreOffice) and upload it again."
        )
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise CsvFileError(
            f"The file is not valid UTF-8: byte 0x{data[offset]:02X} at byte offset {offset} (line {line}) "
            "cannot be decoded. Save the file as \"CSV UTF-8\" (Excel) or as CSV with the character set "
            "\"Unicode (UTF-8)\" (LibreOffice) and upload it again."
        ) from exc
    if not text.strip():
        raise CsvFileError(EMPTY_FILE_MESSAGE)
    nul_offset = data.find(b"\x00")
    if nul_offset >= 0:
        line = data.count(b"\n", 0, nul_offset) + 1
        raise CsvFileError(
            f"The file contains a NUL byte at byte offset {nul_offset} (line {line}), so it is not a CSV text "
            "file. Save it as \"CSV UTF-8\" and upload it again."
        )
    return text


def normalize_header(name: str) -> str:
    return _HEADER_SEPARATORS.sub("_", name.strip().lower())


def _first_record(text: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    except csv.Error:
        return []


def _detect_delimiter(text: str) -> str:
    """Return the delimiter (comma, semicolon or tab) under which the header names the most known columns."""
    known = set(COLUMN_NAMES)
    best, best_count = ",", 0
    for delimiter in _CANDIDATE_DELIMITERS:
        header = _first_record(text, delimiter)
        count = sum(1 for name in header if normalize_header(name) in known)
        if count > best_count:
            best, best_count = delimiter, count
    if best_count == 0:
        header_line = text.splitlines()[0][:200] if text.splitlines() else ""
        raise CsvFileError(
            f"The first row names no known column (it reads {header_line!r}). The first row must be a header "
            f"row with column names such as {', '.join(COLUMN_NAMES[:4])}; columns are separated by commas, "
            "semicolons or tabs. Download your offerings as CSV for a complete example."
        )
    return best


@dataclass
class ParsedFile:
    """A CSV file split into its header mapping and its non-empty data records."""

    delimiter: str
    # Column name -> index of the cell in each record.
    positions: dict[str, int]
    cell_count: int
    warnings: list[str]
    # (row number counting the header as row 1, cells) for every record that is not blank.
    records: list[tuple[int, list[str]]]


def csv_parse(text: str) -> ParsedFile:
    """Split CSV text into header and records. Raises CsvFileError for problems of the whole file."""
    delimiter = _detect_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    max_rows = settings.OFFERING_CSV_MAX_ROWS
    records: list[tuple[int, list[str]]] = []
    header: list[str] = []
    try:
        for row_number, cells in enumerate(reader, start=1):
            if row_number == 1:
                header = cells
                continue
            if not any(cell.strip() for cell in cells):
                continue
            records.append((row_number, cells))
            if len(records) > max_rows:
                raise CsvFileError(
                    f"The file has more than {max_rows} offering rows. Split it into files of at most "
                    f"{max_rows} rows, each with the header row."
                )
    except csv.Error as exc:
        raise CsvFileError(
            f"Line {reader.line_num} of the file is not valid CSV: {exc}. Check that cells containing the "
            "delimiter, quotes or line breaks are enclosed in double quotes, with quotes inside doubled (\"\")."
        ) from exc

    positions: dict[str, int] = {}
    warnings: list[str] = []
    for index, raw_name in enumerate(header):
        name = normalize_header(raw_name)
        if not name:
            warnings.append(f"Column {index + 1} has no name in the header row and was ignored.")
            continue
        if name in positions:
            raise CsvFileError(
                f"Column {name!r} appears twice in the header row (columns {positions[name] + 1} and {index + 1}). "
                "Remove one of them."
            )
        if name not in COLUMNS_BY_NAME:
            hint = _UNKNOWN_COLUMN_HINTS.get(name)
            warnings.append(
                f"Column {raw_name.strip()!r} (column {index + 1}) is not a known column and was ignored"
                + (f"; {hint}." if hint else f". Known columns: {', '.join(COLUMN_NAMES)}.")
            )
            continue
        positions[name] = index
    if ("recipe_slug" in positions) != ("recipe_version" in positions):
        missing = "recipe_version" if "recipe_slug" in positions else "recipe_slug"
        raise CsvFileError(
            f"The header row has no {missing!r} column: recipe_slug and recipe_version go together. "
            "Add the missing column or remove both."
        )
    if not records:
        raise CsvFileError(
            "The file has a header row but no offering rows. Add one row per offering below the header row."
        )
    if delimiter != ",":
        warnings.append(f"Columns are separated by {'tabs' if delimiter == chr(9) else repr(delimiter)}.")
    return ParsedFile(
        delimiter=delimiter, positions=positions, cell_count=len(header), warnings=warnings, records=records
    )


def whole_number_error(column: CsvColumn, value: str) -> str:
    message = f"must be a whole number, got {value!r}"
    return f"{message}; {column.unit_hint}" if column.unit_hint else message


def parse_integer(value: str) -> int | None:
    value = _ZERO_DECIMALS.sub("", value)
    if not _INTEGER.match(value):
        return None
    return int(value)




def read_cell(parsed: ParsedFile, cells: list[str], name: str) -> str:
    """Return the stripped, formula-unescaped cell of column `name`, or "" if the file has no such column."""
    index = parsed.positions.get(name)
    if index is None or index >= len(cells):
        return ""
    return formula_unescape(cells[index].strip())
