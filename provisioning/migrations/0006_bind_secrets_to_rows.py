"""Re-encrypt stored secrets so their associated data names the row's primary key.

Before this migration the associated data was only the model and field, for example
"provisioning.CloudAccount.token". Each value is decrypted with that and encrypted again with
the current key and the row-bound associated data of `provisioning.encrypted_fields`. A value
that already decrypts with the row-bound data is left as it is, so the migration can run twice.
A value that decrypts with neither (its key is not configured) is left unchanged and logged.
"""

import logging

from django.db import migrations

from provisioning import crypto

logger = logging.getLogger(__name__)

# (app label, model name, field name); the columns are <field>_ciphertext and <field>_key_id.
SECRETS = (
    ("provisioning", "CloudAccount", "token"),
    ("marketplace", "Contract", "platform_key"),
    ("marketplace", "Contract", "host_key"),
)


def _legacy_binding(app_label, model_name, field_name, pk):
    return f"{app_label}.{model_name}.{field_name}"


def _row_binding(app_label, model_name, field_name, pk):
    return f"{app_label}.{model_name}.{field_name}:{pk}"


def _rebind(apps, *, source, target):
    for app_label, model_name, field_name in SECRETS:
        model = apps.get_model(app_label, model_name)
        ciphertext_attribute = f"{field_name}_ciphertext"
        key_id_attribute = f"{field_name}_key_id"
        rows = model._base_manager.exclude(**{ciphertext_attribute: ""}).order_by("pk")
        for pk, ciphertext, key_id in rows.values_list("pk", ciphertext_attribute, key_id_attribute).iterator():
            value = crypto.EncryptedValue(ciphertext, key_id)
            try:
                crypto.decrypt(value, associated_data=target(app_label, model_name, field_name, pk))
                continue
            except crypto.DecryptionError:
                pass
            try:
                plaintext = crypto.decrypt(value, associated_data=source(app_label, model_name, field_name, pk))
            except crypto.DecryptionError as exc:
                logger.warning("%s.%s.%s of row %s left unchanged: %s", app_label, model_name, field_name, pk, exc)
                continue
            sealed = crypto.encrypt(plaintext, associated_data=target(app_label, model_name, field_name, pk))
            model._base_manager.filter(pk=pk).update(
                **{ciphertext_attribute: sealed.ciphertext, key_id_attribute: sealed.key_id}
            )


def bind_to_rows(apps, schema_editor):
    _rebind(apps, source=_legacy_binding, target=_row_binding)


def unbind_from_rows(apps, schema_editor):
    _rebind(apps, source=_row_binding, target=_legacy_binding)


class Migration(migrations.Migration):

    dependencies = [
        ("provisioning", "0005_cloudaccount_deleted_at"),
        ("marketplace", "0011_offering_import"),
    ]

    operations = [
        migrations.RunPython(bind_to_rows, unbind_from_rows),
    ]
