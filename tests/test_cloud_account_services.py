"""Cloud account services against the fake Hetzner API: failures while checking, races, owner checks, messages."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404

from provisioning.models import Backend, CloudAccount, ValidationStatus
from provisioning.services import (
    CloudAccountInUse,
    cloud_account_create,
    cloud_account_delete,
    cloud_account_rename,
    cloud_account_replace_token,
    cloud_account_revalidate,
    cloud_account_validate,
)
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.factories import make_cloud_account, make_offering, make_provider, make_user


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "expected"),
    [(503, "HTTP 503"), (429, "HTTP 429"), (500, "HTTP 500")],
    ids=["unavailable", "rate-limited", "server-error"],
)
def test_create_hetzner_api_error_saves_nothing(hetzner_api, status, expected):
    hetzner_api.add_fault("GET", "/locations", status=status)

    with pytest.raises(ValidationError) as caught:
        cloud_account_create(owner=make_user(), backend=Backend.HETZNER, label="Prod", token=TEST_HCLOUD_TOKEN)

    message = " ".join(caught.value.messages)
    assert "Could not check the token against the Hetzner Cloud API" in message
    assert expected in message
    assert TEST_HCLOUD_TOKEN not in message
    assert not CloudAccount.objects.exists()


@pytest.mark.django_db
def test_create_hetzner_dropped_connection_saves_nothing(hetzner_api):
    hetzner_api.add_fault("GET", "/locations", drop_connection=True)

    with pytest.raises(ValidationError, match="Could not check the token"):
        cloud_account_create(owner=make_user(), backend=Backend.HETZNER, label="Prod", token=TEST_HCLOUD_TOKEN)

    assert not CloudAccount.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_validate_outcome_dropped_when_token_replaced_meanwhile(hetzner_api):
    owner = make_user()
    account = make_cloud_account(owner=owner, backend=Backend.HETZNER, token="old-token-being-checked")

    def replace_token():
        try:
            cloud_account_replace_token(account=CloudAccount.objects.get(pk=account.pk), actor=owner, token=TEST_HCLOUD_TOKEN)
        finally:
            connection.close()

    # The check of the old token gets 401, but only after the token was replaced by a valid one.
    hetzner_api.add_fault("GET", "/locations", status=401, before=replace_token)

    result = cloud_account_validate(account=account)

    stored = CloudAccount.objects.get(pk=account.pk)
    assert stored.validation_status == ValidationStatus.VALID
    assert stored.get_token() == TEST_HCLOUD_TOKEN
    assert result.validation_status == ValidationStatus.VALID


@pytest.mark.django_db
def test_services_reject_other_users():
    account = make_cloud_account(owner=make_user(), label="Theirs")
    intruder = make_user()

    for call in (
        lambda: cloud_account_rename(account=account, actor=intruder, label="Mine"),
        lambda: cloud_account_replace_token(account=account, actor=intruder, token="x"),
        lambda: cloud_account_revalidate(account=account, actor=intruder),
        lambda: cloud_account_delete(account=account, actor=intruder),
    ):
        with pytest.raises(PermissionError):
            call()

    account.refresh_from_db()
    assert account.label == "Theirs"


@pytest.mark.django_db
def test_in_use_message_truncates_names():
    provider = make_provider()
    account = make_cloud_account(owner=provider.user, label="Busy")
    for index in range(12):
        make_offering(provider=provider, cloud_account=account, name=f"Box {index:02d}")

    with pytest.raises(CloudAccountInUse) as caught:
        cloud_account_delete(account=account, actor=provider.user)

    message = str(caught.value)
    assert message.startswith("Cloud account 'Busy' is still used by offerings 'Box 00', 'Box 01'")
    assert "'Box 09' and 2 more." in message
    assert "'Box 10'" not in message
    assert "move the offerings to another cloud account." in message
    assert len(caught.value.offerings) == 12


# --- an account deleted by a concurrent request -------------------------------------------------


def _deleted_meanwhile(**fields) -> CloudAccount:
    """Return an account instance whose row another request has just deleted."""
    account = make_cloud_account(owner=make_user(), **fields)
    CloudAccount.objects.filter(pk=account.pk).delete()
    return account


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        lambda account: cloud_account_delete(account=account, actor=account.owner),
        lambda account: cloud_account_rename(account=account, actor=account.owner, label="New label"),
    ],
    ids=["delete", "rename"],
)
def test_change_of_deleted_account_is_404(change):
    account = _deleted_meanwhile()

    with pytest.raises(Http404):
        change(account)


@pytest.mark.django_db
def test_token_replace_of_deleted_account_is_404(hetzner_api):
    account = _deleted_meanwhile(backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)

    with pytest.raises(Http404):
        cloud_account_replace_token(account=account, actor=account.owner, token=TEST_HCLOUD_TOKEN)


@pytest.mark.django_db
def test_revalidate_of_deleted_account_is_404(hetzner_api):
    account = _deleted_meanwhile(backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)

    with pytest.raises(Http404):
        cloud_account_revalidate(account=account, actor=account.owner)
