"""EU VAT id normalisation and format checks per member state."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from billing.vat import (
    EU_COUNTRY_CODES,
    VAT_FORMATS,
    normalize_vat_id,
    validate_vat_id,
    vat_country,
    vat_id_is_valid,
)


def test_formats_cover_the_27_member_states():
    assert len(VAT_FORMATS) == 27
    assert "EL" in VAT_FORMATS
    assert "GR" not in VAT_FORMATS
    assert "GR" in EU_COUNTRY_CODES
    assert "GB" not in EU_COUNTRY_CODES


@pytest.mark.parametrize("prefix", sorted(VAT_FORMATS))
def test_every_example_is_valid(prefix):
    example = VAT_FORMATS[prefix].example

    assert example.startswith(prefix)
    assert validate_vat_id(example) == example


@pytest.mark.parametrize(
    "vat_id",
    [
        "DE123456789", "ATU12345678", "BE0123456789", "BE1234567890", "FR12345678901", "FRXX345678901",
        "FRA1345678901", "EL123456789", "ESA1234567B", "ES12345678Z", "IE1234567T", "IE1234567WA", "IE1A23456B",
        "NL123456789B01", "SE123456789001", "RO12", "LT123456789012", "CY12345678L", "CZ1234567890", "BG1234567890",
    ],
)
def test_valid_vat_ids(vat_id):
    assert vat_id_is_valid(vat_id)


@pytest.mark.parametrize(
    "vat_id",
    [
        "DE12345", "DE1234567890", "DEABCDEFGHI", "AT12345678", "BE2123456789", "FR1234567890", "FR1234567890A",
        "EL12345678", "NL123456789A01", "SE12345678901", "ES123456789", "RO0123", "LT1234567890", "XX123456789", "", "D",
    ],
)
def test_invalid_vat_ids(vat_id):
    assert not vat_id_is_valid(vat_id)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("de 123 456 789", "DE123456789"), ("FR-12.345.678.901", "FR12345678901"), ("  nl123456789b01\t", "NL123456789B01")],
)
def test_normalize(raw, normalized):
    assert normalize_vat_id(raw) == normalized
    assert validate_vat_id(raw) == normalized


def test_greece_uses_el_prefix():
    assert vat_country("EL123456789") == "GR"

    with pytest.raises(ValidationError) as error:
        validate_vat_id("GR123456789")

    assert "'GR123456789'" in error.value.messages[0]
    assert "EL" in error.value.messages[0]


def test_error_names_value_and_format():
    with pytest.raises(ValidationError) as error:
        validate_vat_id("DE12345")

    message = error.value.messages[0]
    assert "'DE12345'" in message
    assert "DE followed by 9 digits" in message
    assert "DE123456789" in message


def test_unknown_prefix_error():
    with pytest.raises(ValidationError) as error:
        validate_vat_id("US123456789")

    assert "'US123456789'" in error.value.messages[0]
    assert "EU member state" in error.value.messages[0]
