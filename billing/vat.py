"""EU VAT identification numbers: normalisation and a format check per member state.

Only the format is checked, not whether the number is registered. The formats are those of the
"VAT identification number structure" table in the European Commission's VIES FAQ, checked
against a copy of that table. A VAT id starts with its member state's prefix, which is the
ISO 3166-1 code except for Greece, whose prefix is EL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError


@dataclass(frozen=True)
class VatFormat:
    """The part of a member state's VAT id after the prefix: a pattern and its description."""

    pattern: re.Pattern[str]
    description: str
    example: str


def _format(pattern: str, description: str, example: str) -> VatFormat:
    # ASCII: \d must not match other scripts' digits (full-width, Arabic-Indic ...).
    return VatFormat(re.compile(rf"(?:{pattern})", re.ASCII), description, example)


#: VAT id formats of the 27 EU member states, keyed by VAT prefix.
VAT_FORMATS: dict[str, VatFormat] = {
    "AT": _format(r"U\d{8}", "U followed by 8 digits", "ATU12345678"),
    "BE": _format(r"[01]\d{9}", "10 digits starting with 0 or 1", "BE0123456789"),
    "BG": _format(r"\d{9,10}", "9 or 10 digits", "BG123456789"),
    "CY": _format(r"\d{8}[A-Z]", "8 digits and a letter", "CY12345678X"),
    "CZ": _format(r"\d{8,10}", "8 to 10 digits", "CZ12345678"),
    "DE": _format(r"\d{9}", "9 digits", "DE123456789"),
    "DK": _format(r"\d{8}", "8 digits", "DK12345678"),
    "EE": _format(r"\d{9}", "9 digits", "EE123456789"),
    "EL": _format(r"\d{9}", "9 digits", "EL123456789"),
    "ES": _format(
        r"[A-Z]\d{7}[A-Z0-9]|\d{8}[A-Z]",
        "9 characters: a letter or digit, 7 digits, a letter or digit, not both ends digits",
        "ESX1234567X",
    ),
    "FI": _format(r"\d{8}", "8 digits", "FI12345678"),
    "FR": _format(r"[0-9A-Z]{2}\d{9}", "2 letters or digits and 9 digits", "FR12345678901"),
    "HR": _format(r"\d{11}", "11 digits", "HR12345678901"),
    "HU": _format(r"\d{8}", "8 digits", "HU12345678"),
    "IE": _format(
        r"\d{7}[A-W][A-I]?|\d[A-Z+*]\d{5}[A-W]",
        "7 digits and 1 or 2 letters, or a digit, a letter, + or *, 5 digits and a letter",
        "IE1234567WA",
    ),
    "IT": _format(r"\d{11}", "11 digits", "IT12345678901"),
    "LT": _format(r"\d{9}|\d{12}", "9 or 12 digits", "LT123456789"),
    "LU": _format(r"\d{8}", "8 digits", "LU12345678"),
    "LV": _format(r"\d{11}", "11 digits", "LV12345678901"),
    "MT": _format(r"\d{8}", "8 digits", "MT12345678"),
    "NL": _format(r"\d{9}B\d{2}", "9 digits, the letter B and 2 digits", "NL123456789B01"),
    "PL": _format(r"\d{10}", "10 digits", "PL1234567890"),
    "PT": _format(r"\d{9}", "9 digits", "PT123456789"),
    "RO": _format(r"[1-9]\d{1,9}", "2 to 10 digits, not starting with 0", "RO1234567890"),
    "SE": _format(r"\d{12}", "12 digits", "SE123456789001"),
    "SI": _format(r"\d{8}", "8 digits", "SI12345678"),
    "SK": _format(r"\d{10}", "10 digits", "SK1234567890"),
}

#: ISO 3166-1 codes of the EU member states (Greece is GR here, EL only in VAT ids).
EU_COUNTRY_CODES = frozenset("GR" if prefix == "EL" else prefix for prefix in VAT_FORMATS)

_SEPARATORS = re.compile(r"[\s.\-]+")


def normalize_vat_id(value: str) -> str:
    """Remove spaces, dots and dashes and uppercase: "de 123.456-789" -> "DE123456789"."""
    return _SEPARATORS.sub("", value).upper()


def vat_country(vat_id: str) -> str:
    """Return the ISO 3166-1 country of a normalised VAT id's prefix ("EL..." -> "GR")."""
    prefix = vat_id[:2]
    return "GR" if prefix == "EL" else prefix


def is_eu_country(country: str) -> bool:
    return country in EU_COUNTRY_CODES


def vat_id_is_valid(vat_id: str) -> bool:
    """Return whether a normalised VAT id has the format of its member state's prefix."""
    vat_format = VAT_FORMATS.get(vat_id[:2])
    return vat_format is not None and vat_format.pattern.fullmatch(vat_id[2:]) is not None


def validate_vat_id(value: str) -> str:
    """Normalise `value` and return it, or raise ValidationError naming the value and the expected format."""
    vat_id = normalize_vat_id(value)
    prefix = vat_id[:2]
    if prefix == "GR":
        raise ValidationError(
            f"VAT id {value!r} starts with GR, but Greek VAT ids use the prefix EL: enter EL followed by 9 digits, "
            "for example EL123456789.",
            code="invalid_vat_id",
        )
    vat_format = VAT_FORMATS.get(prefix)
    if vat_format is None:
        raise ValidationError(
            f"VAT id {value!r} does not start with the prefix of an EU member state; enter the two-letter prefix "
            "and the number, for example DE123456789, or leave the field empty if you have no EU VAT id.",
            code="invalid_vat_id",
        )
    if not vat_id_is_valid(vat_id):
        raise ValidationError(
            f"VAT id {value!r} is invalid for {prefix}: expected {prefix} followed by {vat_format.description}, "
            f"for example {vat_format.example}.",
            code="invalid_vat_id",
        )
    return vat_id
