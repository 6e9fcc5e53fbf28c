"""Validation of SSH public keys that users paste into their account.

Parsing uses asyncssh's OpenSSH key decoder. asyncssh 2.24 decodes the public key blobs of
security-key types (sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com) without the
optional fido2 package, which it needs only to sign with such keys.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

import asyncssh
from django.core.exceptions import ValidationError

from marketplace.validators import BIDI_CONTROL_CHARACTERS

MAX_INPUT_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
#: Longest key comment accepted, in characters; ssh-keygen's default comment (user@host) is far shorter.
MAX_COMMENT_LENGTH = 256

# Key type -> size in bits for types whose size the type fixes.
_FIXED_SIZE_BITS = {
    "ssh-ed25519": 256,
    "ecdsa-sha2-nistp256": 256,
    "ecdsa-sha2-nistp384": 384,
    "ecdsa-sha2-nistp521": 521,
    "sk-ssh-ed25519@openssh.com": 256,
    "sk-ecdsa-sha2-nistp256@openssh.com": 256,
}
ACCEPTED_KEY_TYPES = ("ssh-rsa", *_FIXED_SIZE_BITS)

_GENERATE_HINT = "Generate a new key with: ssh-keygen -t ed25519"
_PUBLIC_LINE_HINT = "Paste the public key, the line from your .pub file."
_BASE64_TOKEN = re.compile(r"AAAA[A-Za-z0-9+/]+={0,3}")
_BYTE_ORDER_MARK = "\ufeff"


@dataclass(frozen=True)
class ParsedPublicKey:
    """A validated SSH public key.

    `normalized` is the single line "<type> <base64> <comment>", without the trailing space
    when the comment is empty.
    """

    key_type: str
    bits: int | None
    fingerprint_sha256: str
    comment: str
    normalized: str


def parse_public_key(text: str) -> ParsedPublicKey:
    """Parse one OpenSSH public key line, or raise ValidationError saying what is wrong.

    Also accepts a key in the RFC 4716 format ("---- BEGIN SSH2 PUBLIC KEY ----") that PuTTYgen
    and some other tools save, and converts it to the OpenSSH line.
    """
    if len(text) > MAX_INPUT_BYTES or len(text.encode("utf-8")) > MAX_INPUT_BYTES:
        raise ValidationError(
            f"The key is longer than {MAX_INPUT_BYTES // 1024} KiB, so it is not a single "
            f"public key. {_PUBLIC_LINE_HINT}",
            code="too_long",
        )

    # Windows editors may save the .pub file with a UTF-8 byte-order mark, which str.strip() keeps.
    stripped = text.replace("\r\n", "\n").replace("\r", "\n").strip().lstrip(_BYTE_ORDER_MARK).strip()
    if not stripped:
        raise ValidationError(f"The key is empty. {_PUBLIC_LINE_HINT}", code="empty")
    if "PRIVATE KEY" in stripped or stripped.startswith("PuTTY-User-Key-File"):
        raise ValidationError(
            f"This is a private key. {_PUBLIC_LINE_HINT}",
            code="private_key",
        )
    _reject_pem_public_key(stripped)
    if stripped.startswith("---- BEGIN SSH2 PUBLIC KEY ----"):
        stripped = _convert_rfc4716(stripped)

    lines = stripped.split("\n")
    if len(lines) > 1:
        raise ValidationError(
            f"The text contains {len(lines)} lines. Add one key at a time. {_PUBLIC_LINE_HINT}",
            code="multiple_keys",
        )

    key_type, key_base64, comment = _split_line(lines[0])
    blob = _decode_base64(key_base64)
    key = _decode_blob(key_type, blob)
    bits = _key_bits(key_type, key)

    # Re-encoding gives the canonical base64 text of the blob.
    normalized = f"{key_type} {base64.b64encode(blob).decode('ascii')}"
    if comment:
        normalized = f"{normalized} {comment}"
    return ParsedPublicKey(
        key_type=key_type,
        bits=bits,
        fingerprint_sha256=key.get_fingerprint("sha256"),
        comment=comment,
        normalized=normalized,
    )


def _reject_pem_public_key(text: str) -> None:
    """Reject a PEM public key (what openssl writes) with the ssh-keygen command that converts it."""
    if text.startswith("-----BEGIN PUBLIC KEY-----"):
        raise ValidationError(
            "This is a PEM (PKCS#8) public key, the format openssl writes, not an OpenSSH public key. "
            "Convert it with: ssh-keygen -i -m PKCS8 -f key.pem, and paste the line it prints.",
            code="pem_public_key",
        )
    if text.startswith("-----BEGIN RSA PUBLIC KEY-----"):
        raise ValidationError(
            "This is a PEM (PKCS#1) RSA public key, not an OpenSSH public key. "
            "Convert it with: ssh-keygen -i -m PEM -f key.pem, and paste the line it prints.",
            code="pem_public_key",
        )


def _convert_rfc4716(text: str) -> str:
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as error:
        raise ValidationError(
            f"The SSH2 (RFC 4716) public key could not be read: {error}. {_PUBLIC_LINE_HINT}",
            code="invalid",
        ) from error
    return key.export_public_key("openssh").decode("utf-8").strip()


def _split_line(line: str) -> tuple[str, str, str]:
    """Split a key line into type, base64 data and comment, checking the type."""
    parts = line.split(None, 2)
    key_type = parts[0]
    if key_type not in ACCEPTED_KEY_TYPES:
        _reject_key_type(key_type, line.split())
    if len(parts) < 2:
        raise ValidationError(
            f"The {key_type} key has no key data after the type. {_PUBLIC_LINE_HINT}",
            code="invalid",
        )
    key_base64 = parts[1]
    comment = parts[2].strip() if len(parts) > 2 else ""
    # Two keys pasted without a newline between them put the second key in the comment.
    if any(f"{accepted} AAAA" in comment for accepted in ACCEPTED_KEY_TYPES):
        raise ValidationError(
            f"The text contains more than one key. Add one key at a time. {_PUBLIC_LINE_HINT}",
            code="multiple_keys",
        )
    _check_comment(comment)
    return key_type, key_base64, comment


def _check_comment(comment: str) -> None:
    """Reject a key comment that is too long or would change how the pages show the text after it.

    The comment is shown to the user and stored in the server's authorized_keys, so control
    characters (such as terminal escape sequences), line separators and text-direction
    characters are rejected.
    """
    if len(comment) > MAX_COMMENT_LENGTH:
        raise ValidationError(
            f"The key comment is {len(comment)} characters; shorten it to {MAX_COMMENT_LENGTH} or fewer.",
            code="comment_too_long",
        )
    for character in comment:
        code = f"U+{ord(character):04X}"
        if character in BIDI_CONTROL_CHARACTERS:
            raise ValidationError(
                f"The key comment contains an invisible text-direction character ({code}). "
                "Remove it from the comment, the text after the key data.",
                code="comment_bidi_control",
            )
        if unicodedata.category(character) in {"Cc", "Zl", "Zp"}:
            raise ValidationError(
                f"The key comment contains a control character or line break ({code}). "
                "Remove it from the comment, the text after the key data.",
                code="comment_control_character",
            )


def _reject_key_type(key_type: str, tokens: list[str]) -> None:
    if key_type == "ssh-dss":
        raise ValidationError(
            f"DSA (ssh-dss) keys are insecure and OpenSSH no longer accepts them. {_GENERATE_HINT}",
            code="dsa",
        )
    if "-cert-v01@openssh.com" in key_type:
        raise ValidationError(
            "This is an SSH certificate, not a public key. Paste the plain public key from the "
            ".pub file without -cert in its name.",
            code="certificate",
        )
    if _BASE64_TOKEN.fullmatch(key_type):
        raise ValidationError(
            f"The key type is missing before the key data. {_PUBLIC_LINE_HINT}",
            code="missing_type",
        )
    if any(token in ACCEPTED_KEY_TYPES for token in tokens[1:]):
        raise ValidationError(
            "The key starts with authorized_keys options. Remove everything before the key type "
            f"(such as {ACCEPTED_KEY_TYPES[1]}).",
            code="options",
        )
    shown = key_type if len(key_type) <= 40 else key_type[:40] + "..."
    raise ValidationError(
        f"Unknown or unsupported key type {shown!r}. Accepted types: "
        f"{', '.join(ACCEPTED_KEY_TYPES)}. {_GENERATE_HINT}",
        code="unknown_type",
    )


def _decode_base64(key_base64: str) -> bytes:
    try:
        return base64.b64decode(key_base64, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValidationError(
            "The key data is not valid base64, so the key may be cut off or changed by copying. "
            f"{_PUBLIC_LINE_HINT}",
            code="invalid_base64",
        ) from error


def _decode_blob(key_type: str, blob: bytes) -> asyncssh.SSHKey:
    # The blob starts with its own key type as an SSH string (uint32 length, then bytes).
    blob_type = _read_blob_type(blob)
    if blob_type is not None and blob_type != key_type:
        raise ValidationError(
            f"Key type mismatch: the line starts with {key_type} but the key data is a {blob_type} key. {_PUBLIC_LINE_HINT}",
            code="type_mismatch",
        )

    try:
        # The line form makes asyncssh decode `blob` as an OpenSSH key and nothing else.
        return asyncssh.import_public_key(f"{key_type} {base64.b64encode(blob).decode('ascii')}")
    except (asyncssh.KeyImportError, ValueError) as error:
        raise ValidationError(
            f"The {key_type} key data is invalid or cut off. {_PUBLIC_LINE_HINT}",
            code="invalid",
        ) from error


def _read_blob_type(blob: bytes) -> str | None:
    """Return the key type at the start of a key blob, or None if it is not readable text."""
    if len(blob) < 4:
        return None
    length = int.from_bytes(blob[:4], "big")
    if length > 64 or len(blob) < 4 + length:
        return None
    try:
        blob_type = blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None
    return blob_type if blob_type.isprintable() else None


def _key_bits(key_type: str, key: asyncssh.SSHKey) -> int:
    if key_type != "ssh-rsa":
        return _FIXED_SIZE_BITS[key_type]
    bits = key.pyca_key.key_size
    if bits < MIN_RSA_BITS:
        raise ValidationError(
            f"RSA key is {bits} bits; use at least {MIN_RSA_BITS}, or an ed25519 key. "
            f"{_GENERATE_HINT}",
            code="rsa_too_short",
        )
    return bits
