"""Field validators shared by models, forms and API serializers: visible names, multi-line text, country and currency codes."""

from __future__ import annotations

import unicodedata

from django.core.exceptions import ValidationError

#: Characters that change the display direction of the text around them without being visible:
#: embeddings and overrides (U+202A-U+202E), isolates (U+2066-U+2069) and the marks
#: U+200E (left-to-right), U+200F (right-to-left) and U+061C (Arabic letter mark).
BIDI_CONTROL_CHARACTERS = frozenset(
    [chr(code) for code in range(0x202A, 0x202F)]
    + [chr(code) for code in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c"]
)

_ZERO_WIDTH_NON_JOINER = "\u200c"
_ZERO_WIDTH_JOINER = "\u200d"
_BLACK_FLAG = "\U0001f3f4"
# Tag characters spell the region of a subdivision flag emoji, for example the flag of Scotland.
_TAG_CHARACTERS = range(0xE0020, 0xE0080)


def _joiner_is_part_of_script_or_emoji(value: str, index: int) -> bool:
    """Return whether the joiner at `index` sits between two visible non-ASCII characters.

    Persian and Indic scripts use U+200C and emoji sequences use U+200D between two
    non-ASCII characters. Between ASCII letters a joiner only makes two names look the same.
    """
    if index == 0 or index == len(value) - 1:
        return False
    neighbours = (value[index - 1], value[index + 1])
    return all(
        ord(character) > 0x7F and not character.isspace() and unicodedata.category(character) not in {"Cf", "Cc"}
        for character in neighbours
    )


def _is_flag_tag(value: str, index: int) -> bool:
    """Return whether the tag character at `index` belongs to a sequence that starts with U+1F3F4."""
    start = index
    while start > 0 and ord(value[start - 1]) in _TAG_CHARACTERS:
        start -= 1
    return start > 0 and value[start - 1] == _BLACK_FLAG


def validate_visible_text(value: str) -> None:
    """Reject invisible characters that can disguise a name shown to other users.

    Raises ValidationError for text-direction controls, control characters, line and
    paragraph separators, and other invisible format characters (Unicode category Cf, for
    example U+200B or U+FEFF). Emoji sequences and right-to-left scripts such as Arabic and
    Hebrew stay allowed.
    """
    for index, character in enumerate(value):
        code = f"U+{ord(character):04X}"
        if character in BIDI_CONTROL_CHARACTERS:
            raise ValidationError(
                f"This name contains an invisible text-direction character ({code}); remove it.",
                code="bidi_control",
            )
        category = unicodedata.category(character)
        if category in {"Cc", "Zl", "Zp"}:
            raise ValidationError(
                f"This name contains a control character or line break ({code}); remove it.",
                code="control_character",
            )
        if category != "Cf":
            continue
        if character in {_ZERO_WIDTH_NON_JOINER, _ZERO_WIDTH_JOINER} and _joiner_is_part_of_script_or_emoji(
            value, index
        ):
            continue
        if ord(character) in _TAG_CHARACTERS and _is_flag_tag(value, index):
            continue
        raise ValidationError(
            f"This name contains an invisible formatting character ({code}); remove it.",
            code="invisible_character",
        )


#: Characters that reorder the display of the text after them: embeddings and overrides
#: (U+202A-U+202E) and isolates (U+2066-U+2069). Unlike the marks U+200E, U+200F and U+061C,
#: they have no use in ordinary mixed-direction prose, only in making text read differently
#: from how it is stored.
BIDI_EMBEDDING_CHARACTERS = frozenset(
    [chr(code) for code in range(0x202A, 0x202F)] + [chr(code) for code in range(0x2066, 0x206A)]
)


def validate_multiline_text(value: str) -> None:
    """Reject text-direction overrides and control characters in free text shown to other users.

    For descriptions and messages that may span lines: tab, newline and CRLF line ends (what
    browsers submit from a textarea) stay allowed, and so do the marks U+200E, U+200F and U+061C.
    Raises ValidationError for embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069),
    a carriage return not followed by a newline, and every other control character (C0, DEL, C1).
    """
    for index, character in enumerate(value):
        code = f"U+{ord(character):04X}"
        if character in BIDI_EMBEDDING_CHARACTERS:
            raise ValidationError(
                f"The text contains an invisible text-direction character ({code}) at position {index + 1}; remove it.",
                code="bidi_control",
            )
        if character in {"\n", "\t"}:
            continue
        if character == "\r" and value[index + 1 : index + 2] == "\n":
            continue
        if unicodedata.category(character) == "Cc":
            raise ValidationError(
                f"The text contains a control character ({code}) at position {index + 1}; remove it.",
                code="control_character",
            )


#: The 249 officially assigned ISO 3166-1 alpha-2 codes, copied from the Debian iso-codes 4.15.0
#: package (/usr/share/iso-codes/json/iso_3166-1.json), which follows the ISO 3166 Maintenance
#: Agency. Reserved and user-assigned codes such as EU, UK and XK are not included.
ISO_3166_ALPHA_2_CODES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """.split()
)


def validate_country_code(value: str) -> None:
    """Reject anything but an officially assigned ISO 3166-1 alpha-2 code in capitals, such as DE."""
    if value not in ISO_3166_ALPHA_2_CODES:
        raise ValidationError(
            f"{value!r} is not an ISO 3166-1 country code; use two capital letters, for example DE or FI.",
            code="invalid_country",
        )


#: Currencies an offering may be priced in: ISO 4217 codes with their names, as model choices.
#: Prices are stored in hundredths of one unit (price_cents), so every currency here has a minor
#: unit of two decimals in ISO 4217. Zero-decimal currencies such as JPY or KRW are left out
#: because a price of 5.00 JPY would not exist.
CURRENCIES = [
    ("EUR", "EUR – Euro"),
    ("USD", "USD – US dollar"),
    ("GBP", "GBP – Pound sterling"),
    ("CHF", "CHF – Swiss franc"),
    ("SEK", "SEK – Swedish krona"),
    ("NOK", "NOK – Norwegian krone"),
    ("DKK", "DKK – Danish krone"),
    ("PLN", "PLN – Polish złoty"),
    ("CZK", "CZK – Czech koruna"),
    ("CAD", "CAD – Canadian dollar"),
    ("AUD", "AUD – Australian dollar"),
]

CURRENCY_CODES = frozenset(code for code, _label in CURRENCIES)
