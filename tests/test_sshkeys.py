"""Tests for marketplace.sshkeys.parse_public_key with keys generated in the test."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.exceptions import ValidationError

from marketplace.sshkeys import MAX_INPUT_BYTES, ParsedPublicKey, parse_public_key


def _ssh_string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _public_line(algorithm: str, comment: str = "user@laptop", **options: object) -> str:
    key = asyncssh.generate_private_key(algorithm, comment=comment, **options)
    return key.export_public_key("openssh").decode("utf-8").strip()


def _sk_ed25519_line(comment: str = "user@yubikey") -> str:
    """Build a sk-ssh-ed25519@openssh.com public key line by hand.

    The blob layout (key type, 32-byte ed25519 public key, application string) is the one in
    OpenSSH's PROTOCOL.u2f. Generating a real security key needs hardware.
    """
    blob = (
        _ssh_string(b"sk-ssh-ed25519@openssh.com")
        + _ssh_string(os.urandom(32))
        + _ssh_string(b"ssh:")
    )
    return f"sk-ssh-ed25519@openssh.com {base64.b64encode(blob).decode()} {comment}"


def _sk_ecdsa_line(comment: str = "user@yubikey") -> str:
    """Build a sk-ecdsa-sha2-nistp256@openssh.com public key line around a real P-256 point."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    blob = (
        _ssh_string(b"sk-ecdsa-sha2-nistp256@openssh.com")
        + _ssh_string(b"nistp256")
        + _ssh_string(point)
        + _ssh_string(b"ssh:")
    )
    return f"sk-ecdsa-sha2-nistp256@openssh.com {base64.b64encode(blob).decode()} {comment}"


ACCEPTED_CASES = [
    pytest.param(lambda: _public_line("ssh-ed25519"), "ssh-ed25519", 256, id="ed25519"),
    pytest.param(lambda: _public_line("ssh-rsa", key_size=2048), "ssh-rsa", 2048, id="rsa-2048"),
    pytest.param(lambda: _public_line("ssh-rsa", key_size=4096), "ssh-rsa", 4096, id="rsa-4096"),
    pytest.param(
        lambda: _public_line("ecdsa-sha2-nistp256"), "ecdsa-sha2-nistp256", 256, id="ecdsa-256"
    ),
    pytest.param(
        lambda: _public_line("ecdsa-sha2-nistp384"), "ecdsa-sha2-nistp384", 384, id="ecdsa-384"
    ),
    pytest.param(
        lambda: _public_line("ecdsa-sha2-nistp521"), "ecdsa-sha2-nistp521", 521, id="ecdsa-521"
    ),
    pytest.param(_sk_ed25519_line, "sk-ssh-ed25519@openssh.com", 256, id="sk-ed25519"),
    pytest.param(_sk_ecdsa_line, "sk-ecdsa-sha2-nistp256@openssh.com", 256, id="sk-ecdsa"),
]


@pytest.mark.parametrize(("make_line", "key_type", "bits"), ACCEPTED_CASES)
def test_parse_accepts_key_type(make_line, key_type: str, bits: int) -> None:
    line = make_line()

    parsed = parse_public_key(line)

    assert isinstance(parsed, ParsedPublicKey)
    assert parsed.key_type == key_type
    assert parsed.bits == bits
    assert parsed.normalized == line
    assert parsed.comment == line.split(" ", 2)[2]
    assert parsed.fingerprint_sha256.startswith("SHA256:")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
@pytest.mark.parametrize(("make_line", "key_type", "bits"), ACCEPTED_CASES)
def test_fingerprint_matches_ssh_keygen(
    make_line, key_type: str, bits: int, tmp_path: Path
) -> None:
    line = make_line()
    key_file = tmp_path / "key.pub"
    key_file.write_text(line + "\n")

    listing = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(key_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    parsed = parse_public_key(line)
    assert parsed.fingerprint_sha256 == listing[1]
    assert parsed.bits == int(listing[0])


def test_parse_tolerates_whitespace_and_crlf() -> None:
    line = _public_line("ssh-ed25519", comment="me@laptop")

    parsed = parse_public_key(f"  \t{line}\r\n\r\n")

    assert parsed.normalized == line
    assert parsed.comment == "me@laptop"


def test_parse_keeps_unicode_comment() -> None:
    comment = "José’s clé 🔑 Ключ"
    line = _public_line("ssh-ed25519", comment=comment)

    parsed = parse_public_key(line)

    assert parsed.comment == comment
    assert parsed.normalized.endswith(" " + comment)


def test_parse_without_comment() -> None:
    key_type, key_base64 = _public_line("ssh-ed25519").split()[:2]

    parsed = parse_public_key(f"{key_type} {key_base64}")

    assert parsed.comment == ""
    assert parsed.normalized == f"{key_type} {key_base64}"


def test_parse_collapses_spaces_around_fields() -> None:
    key_type, key_base64, comment = _public_line("ssh-ed25519", comment="a b").split(" ", 2)

    parsed = parse_public_key(f"{key_type}   {key_base64}\t {comment}  ")

    assert parsed.normalized == f"{key_type} {key_base64} {comment}"


def test_parse_converts_rfc4716_key() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="putty")
    openssh_line = key.export_public_key("openssh").decode().strip()
    rfc4716_text = key.export_public_key("rfc4716").decode()

    parsed = parse_public_key(rfc4716_text)

    assert parsed.key_type == "ssh-ed25519"
    assert parsed.normalized.split()[:2] == openssh_line.split()[:2]


def _certificate_line() -> str:
    ca_key = asyncssh.generate_private_key("ssh-ed25519")
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    certificate = ca_key.generate_user_certificate(user_key, "user", principals=["user"])
    return certificate.export_certificate("openssh").decode().strip()


def _ed25519_parts() -> tuple[str, str, str]:
    key_type, key_base64, comment = _public_line("ssh-ed25519").split(" ", 2)
    return key_type, key_base64, comment


def _truncated_blob_line() -> str:
    key_type, key_base64, _ = _ed25519_parts()
    blob = base64.b64decode(key_base64)
    return f"{key_type} {base64.b64encode(blob[:-8]).decode()}"


def _mismatched_type_line() -> str:
    _, key_base64, comment = _ed25519_parts()
    return f"ssh-rsa {key_base64} {comment}"


def _two_lines() -> str:
    return _public_line("ssh-ed25519") + "\n" + _public_line("ssh-ed25519")


def _two_keys_one_line() -> str:
    return _public_line("ssh-ed25519") + " " + _public_line("ecdsa-sha2-nistp256")


def _private_openssh() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh").decode()


def _private_pkcs1() -> str:
    key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    return key.export_private_key("pkcs1-pem").decode()


def _private_pkcs8() -> str:
    key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    return key.export_private_key("pkcs8-pem").decode()


REJECTED_CASES = [
    pytest.param(lambda: "", "The key is empty", id="empty"),
    pytest.param(lambda: "  \r\n\t ", "The key is empty", id="whitespace-only"),
    pytest.param(
        _private_openssh,
        "This is a private key. Paste the public key, the line from your .pub file.",
        id="private-openssh",
    ),
    pytest.param(_private_pkcs1, "This is a private key.", id="private-pkcs1"),
    pytest.param(_private_pkcs8, "This is a private key.", id="private-pkcs8"),
    pytest.param(
        lambda: _public_line("ssh-rsa", key_size=1024),
        "RSA key is 1024 bits; use at least 2048, or an ed25519 key",
        id="rsa-1024",
    ),
    pytest.param(lambda: _public_line("ssh-dss"), "DSA (ssh-dss) keys are insecure", id="dsa"),
    pytest.param(
        lambda: "ssh-foo AAAAB3NzaC1yc2E= me",
        "Unknown or unsupported key type 'ssh-foo'",
        id="unknown",
    ),
    pytest.param(
        lambda: _public_line("ssh-ed448"), "Unknown or unsupported key type 'ssh-ed448'", id="ed448"
    ),
    pytest.param(lambda: "hello world", "Unknown or unsupported key type 'hello'", id="garbage"),
    pytest.param(
        lambda: "ssh-ed25519 not*base64! me", "The key data is not valid base64", id="bad-base64"
    ),
    pytest.param(
        lambda: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB",
        "The key data is not valid base64",
        id="bad-padding",
    ),
    pytest.param(_truncated_blob_line, "key data is invalid or cut off", id="truncated-blob"),
    pytest.param(
        _mismatched_type_line,
        "the line starts with ssh-rsa but the key data is a ssh-ed25519 key",
        id="type-mismatch",
    ),
    pytest.param(lambda: "ssh-ed25519", "has no key data after the type", id="type-only"),
    pytest.param(
        lambda: _ed25519_parts()[1], "The key type is missing before the key data", id="no-type"
    ),
    pytest.param(_two_lines, "The text contains 2 lines. Add one key at a time", id="two-lines"),
    pytest.param(_two_keys_one_line, "The text contains more than one key", id="two-keys-one-line"),
    pytest.param(
        _certificate_line, "This is an SSH certificate, not a public key", id="certificate"
    ),
    pytest.param(
        lambda: 'command="uptime" ' + _public_line("ssh-ed25519"),
        "The key starts with authorized_keys options",
        id="options",
    ),
    pytest.param(
        lambda: "ssh-ed25519 " + "A" * (MAX_INPUT_BYTES + 1), "longer than 16 KiB", id="too-long"
    ),
    pytest.param(
        lambda: "ssh-ed25519 AAAA " + "é" * (MAX_INPUT_BYTES // 2 + 1),
        "longer than 16 KiB",
        id="too-long-in-bytes",
    ),
]


@pytest.mark.parametrize(("make_text", "expected_message"), REJECTED_CASES)
def test_parse_rejects(make_text, expected_message: str) -> None:
    text = make_text()

    with pytest.raises(ValidationError) as raised:
        parse_public_key(text)

    assert expected_message in raised.value.messages[0]
