"""Encrypted secrets: binding to column and row, the data migration that binds old values, and key rotation."""

from __future__ import annotations

import base64
import importlib
import os
import threading
import time

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from marketplace.models import Contract
from provisioning import crypto
from provisioning.encrypted_fields import (
    CLOUD_ACCOUNT_TOKEN,
    CONTRACT_HOST_KEY,
    CONTRACT_PLATFORM_KEY,
    encrypted_fields_rotate,
)
from provisioning.models import Backend, CloudAccount
from provisioning.pipeline import _ensure_keys, host_private_key, platform_private_key
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_user,
)

OLD_KEY = os.urandom(32)
NEW_KEY = os.urandom(32)

binding_migration = importlib.import_module("provisioning.migrations.0006_bind_secrets_to_rows")


def use_keys(settings, *names: str) -> None:
    """Configure FIELD_ENCRYPTION_KEYS with the named test keys, the first one encrypting."""
    available = {"old": OLD_KEY, "new": NEW_KEY}
    settings.FIELD_ENCRYPTION_KEYS = {name: available[name] for name in names}
    settings.FIELD_ENCRYPTION_KEY_ID = names[0]


def hetzner_account(owner=None, *, token: str) -> CloudAccount:
    account = make_cloud_account(owner=owner or make_user(), backend=Backend.HETZNER, token=token)
    return CloudAccount.all_objects.get(pk=account.pk)


def contract_with_keys() -> Contract:
    provider = make_provider()
    contract = make_contract(tenant=make_user(), offering=make_offering(provider=provider))
    _ensure_keys(contract)
    return Contract.objects.get(pk=contract.pk)


# --- binding -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_unsaved_token_bound_after_save():
    account = CloudAccount(owner=make_user(), backend=Backend.HETZNER, label="New")
    account.set_token("token-before-save")

    unsaved_ciphertext = account.token_ciphertext
    account.save()
    stored = CloudAccount.objects.get(pk=account.pk)

    assert unsaved_ciphertext == ""
    assert stored.has_token
    assert stored.get_token() == "token-before-save"
    sealed = crypto.EncryptedValue(stored.token_ciphertext, stored.token_key_id)
    assert crypto.decrypt(sealed, associated_data=f"provisioning.CloudAccount.token:{stored.pk}") == "token-before-save"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(sealed, associated_data="provisioning.CloudAccount.token")


@pytest.mark.django_db
def test_tampered_token_fails_to_decrypt():
    account = hetzner_account(token="secret-token")
    raw = bytearray(base64.b64decode(account.token_ciphertext))
    raw[-1] ^= 0x01
    CloudAccount.objects.filter(pk=account.pk).update(token_ciphertext=base64.b64encode(bytes(raw)).decode())

    account.refresh_from_db()

    with pytest.raises(crypto.DecryptionError):
        account.get_token()


@pytest.mark.django_db
def test_token_copied_to_other_row_fails():
    victim = hetzner_account(token="victim-token")
    attacker = hetzner_account(token="attacker-token")
    CloudAccount.objects.filter(pk=attacker.pk).update(
        token_ciphertext=victim.token_ciphertext, token_key_id=victim.token_key_id
    )

    attacker.refresh_from_db()

    with pytest.raises(crypto.DecryptionError):
        attacker.get_token()
    assert victim.get_token() == "victim-token"


@pytest.mark.django_db
def test_row_moved_to_other_pk_fails():
    account = hetzner_account(token="moving-token")
    new_pk = account.pk + 1000
    CloudAccount.all_objects.filter(pk=account.pk).update(id=new_pk)

    moved = CloudAccount.objects.get(pk=new_pk)

    with pytest.raises(crypto.DecryptionError):
        moved.get_token()


@pytest.mark.django_db
def test_contract_keys_bound_to_column_and_row():
    first = contract_with_keys()
    second = contract_with_keys()
    first_platform_key = platform_private_key(first)
    Contract.objects.filter(pk=second.pk).update(
        platform_key_ciphertext=first.platform_key_ciphertext, platform_key_key_id=first.platform_key_key_id
    )
    Contract.objects.filter(pk=first.pk).update(
        host_key_ciphertext=first.platform_key_ciphertext, host_key_key_id=first.platform_key_key_id
    )
    first.refresh_from_db()
    second.refresh_from_db()

    assert first_platform_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert platform_private_key(first) == first_platform_key
    with pytest.raises(crypto.DecryptionError):
        platform_private_key(second)
    with pytest.raises(crypto.DecryptionError):
        host_private_key(first)


# --- data migration -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_migration_binds_legacy_values_to_rows(settings):
    use_keys(settings, "old")
    account = hetzner_account(token="legacy-token")
    contract = contract_with_keys()
    platform_key = platform_private_key(contract)
    legacy_token = crypto.encrypt("legacy-token", associated_data="provisioning.CloudAccount.token")
    legacy_key = crypto.encrypt(platform_key, associated_data="marketplace.Contract.platform_key")
    CloudAccount.objects.filter(pk=account.pk).update(token_ciphertext=legacy_token.ciphertext, token_key_id="old")
    Contract.objects.filter(pk=contract.pk).update(platform_key_ciphertext=legacy_key.ciphertext)
    use_keys(settings, "new", "old")

    binding_migration.bind_to_rows(apps, None)
    account.refresh_from_db()
    contract.refresh_from_db()
    migrated_ciphertext = account.token_ciphertext
    binding_migration.bind_to_rows(apps, None)
    account.refresh_from_db()

    assert account.get_token() == "legacy-token"
    assert account.token_key_id == "new"
    assert platform_private_key(contract) == platform_key
    assert contract.platform_key_key_id == "new"
    assert contract.host_key_key_id == "old"
    assert host_private_key(contract).startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert account.token_ciphertext == migrated_ciphertext


@pytest.mark.django_db
def test_migration_reverse_restores_legacy_binding(settings):
    account = hetzner_account(token="bound-token")

    binding_migration.unbind_from_rows(apps, None)
    account.refresh_from_db()

    sealed = crypto.EncryptedValue(account.token_ciphertext, account.token_key_id)
    assert crypto.decrypt(sealed, associated_data="provisioning.CloudAccount.token") == "bound-token"
    with pytest.raises(crypto.DecryptionError):
        account.get_token()


@pytest.mark.django_db
def test_migration_leaves_undecryptable_value(settings):
    use_keys(settings, "old")
    account = hetzner_account(token="lost-token")
    use_keys(settings, "new")

    binding_migration.bind_to_rows(apps, None)

    fresh = CloudAccount.objects.get(pk=account.pk)
    assert fresh.token_ciphertext == account.token_ciphertext
    assert fresh.token_key_id == "old"


# --- rotation -------------------------------------------------------------------------------------


def _rotation_dataset(settings):
    use_keys(settings, "old")
    owner = make_user()
    accounts = [hetzner_account(owner, token=f"token-{index}") for index in range(3)]
    sandbox = make_cloud_account(owner=owner)
    contracts = [contract_with_keys() for _ in range(2)]
    plaintexts = {
        "tokens": {account.pk: account.get_token() for account in accounts},
        "platform": {contract.pk: platform_private_key(contract) for contract in contracts},
        "host": {contract.pk: host_private_key(contract) for contract in contracts},
    }
    return accounts, sandbox, contracts, plaintexts


def _assert_all_decrypt(plaintexts) -> None:
    for pk, token in plaintexts["tokens"].items():
        account = CloudAccount.all_objects.get(pk=pk)
        assert account.token_key_id == "new"
        assert account.get_token() == token
    for pk, key in plaintexts["platform"].items():
        contract = Contract.objects.get(pk=pk)
        assert contract.platform_key_key_id == "new"
        assert contract.host_key_key_id == "new"
        assert platform_private_key(contract) == key
        assert host_private_key(contract) == plaintexts["host"][pk]


@pytest.mark.django_db
def test_rotation_then_old_key_removed_everything_decrypts(settings, capsys):
    accounts, sandbox, contracts, plaintexts = _rotation_dataset(settings)
    use_keys(settings, "new", "old")
    written_after_switch = hetzner_account(token="already-new")

    call_command("rotate_encryption_keys", batch_size=2)
    output = capsys.readouterr().out
    use_keys(settings, "new")

    assert "provisioning.CloudAccount.token: 3 re-encrypted" in output
    assert "marketplace.Contract.platform_key: 2 re-encrypted" in output
    assert "marketplace.Contract.host_key: 2 re-encrypted" in output
    assert "provisioning.CloudAccount.token: 4 with key 'new'" in output
    assert "Every stored secret uses key 'new'" in output
    _assert_all_decrypt(plaintexts)
    assert CloudAccount.objects.get(pk=written_after_switch.pk).get_token() == "already-new"
    assert CloudAccount.objects.get(pk=sandbox.pk).token_ciphertext == ""


@pytest.mark.django_db
def test_rotation_again_changes_nothing(settings, capsys):
    accounts, _sandbox, _contracts, _plaintexts = _rotation_dataset(settings)
    use_keys(settings, "new", "old")
    call_command("rotate_encryption_keys")
    ciphertexts = list(CloudAccount.objects.order_by("pk").values_list("token_ciphertext", flat=True))
    capsys.readouterr()

    call_command("rotate_encryption_keys")
    output = capsys.readouterr().out

    assert "provisioning.CloudAccount.token: 0 re-encrypted" in output
    assert list(CloudAccount.objects.order_by("pk").values_list("token_ciphertext", flat=True)) == ciphertexts


@pytest.mark.django_db
def test_rotation_resumes_after_interruption(settings):
    accounts, _sandbox, _contracts, plaintexts = _rotation_dataset(settings)
    use_keys(settings, "new", "old")

    def interrupt(label, rotated):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encrypted_fields_rotate(batch_size=1, progress=interrupt)
    key_ids_after_interruption = sorted(
        CloudAccount.objects.exclude(token_ciphertext="").values_list("token_key_id", flat=True)
    )
    report = encrypted_fields_rotate(batch_size=1)
    use_keys(settings, "new")

    assert key_ids_after_interruption == ["new", "old", "old"]
    assert report.fields["provisioning.CloudAccount.token"].rotated == 2
    assert report.fields["marketplace.Contract.platform_key"].rotated == 2
    assert report.failed == 0
    _assert_all_decrypt(plaintexts)


@pytest.mark.django_db
def test_rotation_reports_tampered_and_moved_rows(settings, capsys):
    accounts, _sandbox, _contracts, _plaintexts = _rotation_dataset(settings)
    tampered, moved, intact = accounts
    raw = bytearray(base64.b64decode(tampered.token_ciphertext))
    raw[0] ^= 0xFF
    CloudAccount.objects.filter(pk=tampered.pk).update(token_ciphertext=base64.b64encode(bytes(raw)).decode())
    moved_pk = moved.pk + 5000
    CloudAccount.all_objects.filter(pk=moved.pk).update(id=moved_pk)
    use_keys(settings, "new", "old")

    with pytest.raises(CommandError, match="2 secret\\(s\\) failed to decrypt"):
        call_command("rotate_encryption_keys")
    output = capsys.readouterr().out

    assert f"provisioning.CloudAccount.token: 1 re-encrypted, 2 failed to decrypt (rows {tampered.pk}, {moved_pk})" in output
    assert CloudAccount.objects.get(pk=tampered.pk).token_key_id == "old"
    assert CloudAccount.objects.get(pk=moved_pk).token_key_id == "old"
    assert CloudAccount.objects.get(pk=intact.pk).get_token() == "token-2"


@pytest.mark.django_db
def test_rotation_dry_run_only_counts(settings, capsys):
    _rotation_dataset(settings)
    use_keys(settings, "new", "old")

    call_command("rotate_encryption_keys", dry_run=True)
    output = capsys.readouterr().out

    assert "provisioning.CloudAccount.token: 3 with key 'old'" in output
    assert "marketplace.Contract.host_key: 2 with key 'old'" in output
    assert set(CloudAccount.objects.exclude(token_ciphertext="").values_list("token_key_id", flat=True)) == {"old"}


@pytest.mark.django_db
def test_rotation_rejects_bad_batch_size():
    with pytest.raises(CommandError, match="--batch-size must be 1 or more, got 0"):
        call_command("rotate_encryption_keys", batch_size=0)


@pytest.mark.django_db(transaction=True)
def test_rotation_waits_for_a_concurrent_token_change(settings):
    use_keys(settings, "old")
    account = hetzner_account(token="before")
    use_keys(settings, "new", "old")
    locked = threading.Event()
    errors = []

    def replace_token_slowly():
        try:
            with transaction.atomic():
                row = CloudAccount.objects.select_for_update().get(pk=account.pk)
                locked.set()
                time.sleep(0.5)
                row.set_token("after")
                row.save(update_fields=["token_ciphertext", "token_key_id"])
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)
        finally:
            connection.close()

    writer = threading.Thread(target=replace_token_slowly)
    writer.start()
    assert locked.wait(timeout=10)
    report = encrypted_fields_rotate(fields=[CLOUD_ACCOUNT_TOKEN])
    writer.join(timeout=10)

    account.refresh_from_db()
    assert errors == []
    assert report.fields["provisioning.CloudAccount.token"].rotated == 0
    assert account.token_key_id == "new"
    assert account.get_token() == "after"


def test_binding_needs_a_primary_key():
    with pytest.raises(ValueError, match="save the row before encrypting"):
        CONTRACT_HOST_KEY.binding(None)
    assert CONTRACT_PLATFORM_KEY.binding(7) == "marketplace.Contract.platform_key:7"
