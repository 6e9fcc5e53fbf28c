"""The encrypted columns of the database, how each is bound to its row, and key rotation.

Every secret is stored in two columns, `<name>_ciphertext` and `<name>_key_id`, and encrypted
with AES-256-GCM (see `provisioning.crypto`). The associated data names the model, the field
and the row's primary key, for example "provisioning.CloudAccount.token:42". A ciphertext
copied into another column or another row, or a row whose primary key was changed, therefore
fails to decrypt.

A new encrypted column is added to `ENCRYPTED_FIELDS`, so that `rotate_encryption_keys`
re-encrypts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.apps import apps
from django.conf import settings
from django.db import models, transaction
from django.db.models import Q

from provisioning import crypto

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncryptedField:
    """One encrypted secret of a model: the `<name>_ciphertext` and `<name>_key_id` columns."""

    model_label: str
    name: str

    @property
    def ciphertext_attribute(self) -> str:
        return f"{self.name}_ciphertext"

    @property
    def key_id_attribute(self) -> str:
        return f"{self.name}_key_id"

    def binding(self, pk) -> str:
        """Return the associated data of the value stored in row `pk`."""
        if pk is None:
            raise ValueError(f"{self.model_label}.{self.name} is bound to its row; save the row before encrypting.")
        return f"{self.model_label}.{self.name}:{pk}"

    def seal(self, row: models.Model, plaintext: str) -> list[str]:
        """Encrypt `plaintext` with the current key into `row`'s columns and return the changed attribute names."""
        sealed = crypto.encrypt(plaintext, associated_data=self.binding(row.pk))
        setattr(row, self.ciphertext_attribute, sealed.ciphertext)
        setattr(row, self.key_id_attribute, sealed.key_id)
        return [self.ciphertext_attribute, self.key_id_attribute]

    def open(self, row: models.Model) -> str:
        """Decrypt the value stored in `row`; an empty column gives "". Raises `crypto.DecryptionError`."""
        ciphertext = getattr(row, self.ciphertext_attribute)
        if not ciphertext:
            return ""
        value = crypto.EncryptedValue(ciphertext, getattr(row, self.key_id_attribute))
        return crypto.decrypt(value, associated_data=self.binding(row.pk))

    def stale_q(self, key_id: str) -> Q:
        """Return the filter for rows whose value of this field is not encrypted with `key_id`."""
        return ~Q(**{self.ciphertext_attribute: ""}) & ~Q(**{self.key_id_attribute: key_id})


CLOUD_ACCOUNT_TOKEN = EncryptedField("provisioning.CloudAccount", "token")
CONTRACT_PLATFORM_KEY = EncryptedField("marketplace.Contract", "platform_key")
CONTRACT_HOST_KEY = EncryptedField("marketplace.Contract", "host_key")

RESOURCE_PLATFORM_KEY = EncryptedField("provisioning.Resource", "platform_key")
RESOURCE_HOST_KEY = EncryptedField("provisioning.Resource", "host_key")
ENCRYPTED_FIELDS: tuple[EncryptedField, ...] = (
    CLOUD_ACCOUNT_TOKEN, CONTRACT_PLATFORM_KEY, CONTRACT_HOST_KEY, RESOURCE_PLATFORM_KEY, RESOURCE_HOST_KEY
)


# --- key rotation ----------------------------------------------------------------------------


@dataclass
class FieldRotation:
    """The counts of one rotation run for one encrypted field."""

    label: str
    rotated: int = 0
    failed_pks: list = field(default_factory=list)


@dataclass
class RotationReport:
    """The outcome of `encrypted_fields_rotate`, per field."""

    key_id: str
    fields: dict[str, FieldRotation] = field(default_factory=dict)

    @property
    def rotated(self) -> int:
        return sum(item.rotated for item in self.fields.values())

    @property
    def failed(self) -> int:
        return sum(len(item.failed_pks) for item in self.fields.values())


def _fields_by_model(fields: Iterable[EncryptedField]) -> dict[str, list[EncryptedField]]:
    grouped: dict[str, list[EncryptedField]] = {}
    for item in fields:
        grouped.setdefault(item.model_label, []).append(item)
    return grouped


def encrypted_fields_count_by_key(*, fields: Iterable[EncryptedField] = ENCRYPTED_FIELDS) -> dict[str, dict[str, int]]:
    """Return, per field, how many stored values each key id encrypted."""
    counts: dict[str, dict[str, int]] = {}
    for item in fields:
        model = apps.get_model(item.model_label)
        rows = (
            model._base_manager.exclude(**{item.ciphertext_attribute: ""})
            .values_list(item.key_id_attribute)
            .annotate(total=models.Count("pk"))
            .order_by(item.key_id_attribute)
        )
        counts[f"{item.model_label}.{item.name}"] = {key_id: total for key_id, total in rows}
    return counts


def encrypted_fields_rotate(
    *,
    batch_size: int = 100,
    fields: Iterable[EncryptedField] = ENCRYPTED_FIELDS,
    progress: Callable[[str, int], None] | None = None,
) -> RotationReport:
    """Re-encrypt every stored secret that another key encrypted with the current key.

    The current key is the first of FIELD_ENCRYPTION_KEYS. Rows are read in primary-key order,
    `batch_size` ids at a time, and each row is re-encrypted in its own transaction under
    `SELECT ... FOR UPDATE`, so the application keeps running and a concurrent writer either
    waits for the row or has already stored a value under the current key. A value that fails
    to decrypt is left unchanged and reported in `failed_pks`. Running the rotation again
    re-encrypts only what is left, so an interrupted run can be restarted.
    `progress(label, rotated_so_far)` is called after each batch.
    """
    key_id = settings.FIELD_ENCRYPTION_KEY_ID
    report = RotationReport(key_id=key_id)
    for model_label, model_fields in _fields_by_model(fields).items():
        for item in model_fields:
            report.fields[f"{model_label}.{item.name}"] = FieldRotation(label=f"{model_label}.{item.name}")
        _rotate_model(apps.get_model(model_label), model_fields, key_id, batch_size, report, progress)
    return report


def _rotate_model(model, model_fields: list[EncryptedField], key_id: str, batch_size: int, report: RotationReport, progress) -> None:
    stale = Q()
    for item in model_fields:
        stale |= item.stale_q(key_id)
    last_pk = None
    while True:
        candidates = model._base_manager.filter(stale).order_by("pk")
        if last_pk is not None:
            candidates = candidates.filter(pk__gt=last_pk)
        batch = list(candidates.values_list("pk", flat=True)[:batch_size])
        if not batch:
            return
        for pk in batch:
            _rotate_row(model, pk, model_fields, key_id, report)
        last_pk = batch[-1]
        if progress is not None:
            for item in model_fields:
                label = f"{item.model_label}.{item.name}"
                progress(label, report.fields[label].rotated)


def _rotate_row(model, pk, model_fields: list[EncryptedField], key_id: str, report: RotationReport) -> None:
    with transaction.atomic():
        row = model._base_manager.select_for_update().filter(pk=pk).first()
        if row is None:
            return
        changes: dict[str, str] = {}
        for item in model_fields:
            label = f"{item.model_label}.{item.name}"
            if not getattr(row, item.ciphertext_attribute) or getattr(row, item.key_id_attribute) == key_id:
                continue
            try:
                plaintext = item.open(row)
            except crypto.DecryptionError as exc:
                logger.error("Key rotation: %s of row %s failed to decrypt and was left unchanged: %s", label, pk, exc)
                report.fields[label].failed_pks.append(pk)
                continue
            for attribute in item.seal(row, plaintext):
                changes[attribute] = getattr(row, attribute)
            report.fields[label].rotated += 1
        if changes:
            # A queryset update writes only these columns and runs no save() logic of the model.
            model._base_manager.filter(pk=pk).update(**changes)
