"""AES-256-GCM encryption of secrets stored in the database (API tokens, private keys).

Each value is stored as base64(nonce || ciphertext+tag) with the id of the key that encrypted
it, so keys can be rotated: new values use `FIELD_ENCRYPTION_KEY_ID`, old ones still decrypt
with the key their id names, and `manage.py rotate_encryption_keys` re-encrypts them with the
current key. The associated data binds a ciphertext to its column and row (for example
"provisioning.CloudAccount.token:42", see `provisioning.encrypted_fields`), so a value copied
into another column or row fails to decrypt.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

NONCE_BYTES = 12


class DecryptionError(Exception):
    """A stored secret could not be decrypted (unknown key id, tampering or wrong binding)."""


@dataclass(frozen=True)
class EncryptedValue:
    """A ciphertext with the id of the key that produced it."""

    ciphertext: str
    key_id: str


def encrypt(plaintext: str, *, associated_data: str) -> EncryptedValue:
    key_id = settings.FIELD_ENCRYPTION_KEY_ID
    key = settings.FIELD_ENCRYPTION_KEYS[key_id]
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), associated_data.encode("utf-8"))
    return EncryptedValue(base64.b64encode(nonce + sealed).decode("ascii"), key_id)


def decrypt(value: EncryptedValue, *, associated_data: str) -> str:
    key = settings.FIELD_ENCRYPTION_KEYS.get(value.key_id)
    if key is None:
        raise DecryptionError(f"Encryption key {value.key_id!r} is not configured in FIELD_ENCRYPTION_KEYS.")
    try:
        raw = base64.b64decode(value.ciphertext)
        plaintext = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data.encode("utf-8"))
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError(f"Stored secret failed to decrypt with key {value.key_id!r}.") from exc
    return plaintext.decode("utf-8")
