"""Cloud accounts pages: list, add against the fake Hetzner and Proxmox VE APIs, rename, token, re-validate, delete."""

from __future__ import annotations

import threading

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.urls import reverse

from marketplace.models import Contract, ContractStatus
from provisioning.models import Backend, CloudAccount, ValidationStatus
from tests.conftest import TEST_HCLOUD_TOKEN, TEST_PROXMOX_TOKEN_ID, TEST_PROXMOX_TOKEN_SECRET
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_user,
)

LIST_URL = reverse("provisioning:cloud_accounts")


def add_url(backend: str) -> str:
    return reverse("provisioning:cloud_account_add", kwargs={"backend": backend})


def account_url(name: str, account: CloudAccount) -> str:
    return reverse(f"provisioning:{name}", kwargs={"pk": account.pk})


def message_texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def hetzner_data(**overrides) -> dict:
    data = {"hetzner-label": "Hetzner project A", "hetzner-token": TEST_HCLOUD_TOKEN}
    data.update({f"hetzner-{name}": value for name, value in overrides.items()})
    return data


def proxmox_data(api, **overrides) -> dict:
    data = {
        "proxmox-label": "Rack 1",
        "proxmox-api_url": api.url,
        "proxmox-token_id": TEST_PROXMOX_TOKEN_ID,
        "proxmox-token": TEST_PROXMOX_TOKEN_SECRET,
        "proxmox-node": "pve",
        "proxmox-verify_tls": "on",
        "proxmox-vmid_min": "",
        "proxmox-vmid_max": "",
    }
    for name, value in overrides.items():
        if value is None:
            data.pop(f"proxmox-{name}", None)
        else:
            data[f"proxmox-{name}"] = value
    return data


@pytest.fixture
def user(db):
    return make_user()


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


# --- list ---------------------------------------------------------------------------------------


def test_list_shows_status_usage_and_errors(client, user):
    provider = make_provider(user=user)
    used = make_cloud_account(owner=user, label="Used account")
    make_cloud_account(
        owner=user, label="Broken account", backend=Backend.HETZNER, token="x" * 20, validation_status=ValidationStatus.INVALID
    )
    CloudAccount.objects.filter(label="Broken account").update(last_error="Hetzner rejected this API token (HTTP 401).")
    offering = make_offering(provider=provider, cloud_account=used)
    make_offering(provider=provider, cloud_account=used)
    make_contract(tenant=make_user(), offering=offering)
    ended = make_contract(tenant=make_user(), offering=offering)
    Contract.objects.filter(pk=ended.pk).update(status=ContractStatus.TERMINATED)

    response = client.get(LIST_URL)

    html = response.content.decode()
    rows = {account.label: account for account in response.context["accounts"]}
    assert response.status_code == 200
    assert rows["Used account"].offering_count == 2
    assert rows["Used account"].live_rental_count == 1
    assert rows["Broken account"].offering_count == 0
    assert "Hetzner rejected this API token (HTTP 401)." in html
    assert "badge-red" in html
    assert "Invalid" in html
    assert "x" * 20 not in html


def test_list_query_count_does_not_grow(client, user, django_assert_num_queries):
    provider = make_provider(user=user)
    for index in range(2):
        account = make_cloud_account(owner=user, label=f"Account {index}")
        make_contract(tenant=make_user(), offering=make_offering(provider=provider, cloud_account=account))
    client.get(LIST_URL)  # Warm the session and content type caches.

    with django_assert_num_queries(3):
        client.get(LIST_URL)
    for index in range(2, 6):
        account = make_cloud_account(owner=user, label=f"Account {index}")
        make_contract(tenant=make_user(), offering=make_offering(provider=provider, cloud_account=account))
    with django_assert_num_queries(3):
        response = client.get(LIST_URL)

    assert len(response.context["accounts"]) == 6


def test_list_is_linked_from_nav_and_provider_dashboard(client, user):
    make_provider(user=user)

    dashboard = client.get(reverse("marketplace:provider_dashboard")).content.decode()
    page = client.get(LIST_URL).content.decode()

    assert f'href="{LIST_URL}"' in dashboard
    assert "Manage cloud accounts" in dashboard
    assert f'<a href="{LIST_URL}" aria-current="page">Cloud accounts</a>' in page


def test_list_needs_sign_in(db):
    response = Client().get(LIST_URL)

    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


# --- add Hetzner ---------------------------------------------------------------------------------


def test_add_hetzner_checks_token_against_api(client, user, hetzner_api):
    response = client.post(add_url("hetzner"), hetzner_data())

    account = CloudAccount.objects.get(owner=user)
    detail = client.get(account_url("cloud_account", account)).content.decode()
    assert response.status_code == 302
    assert response["Location"] == account_url("cloud_account", account)
    assert account.backend == Backend.HETZNER
    assert account.validation_status == ValidationStatus.VALID
    assert account.validated_at is not None
    assert account.get_token() == TEST_HCLOUD_TOKEN
    assert [request.path for request in hetzner_api.requests] == ["/locations"]
    assert TEST_HCLOUD_TOKEN not in detail
    assert account.token_ciphertext not in detail
    assert "stored encrypted (not shown)" in detail


def test_add_hetzner_rejected_token_names_problem(client, user, hetzner_api):
    response = client.post(add_url("hetzner"), hetzner_data(token="revoked-token-0123"))

    form = response.context["hetzner_form"]
    html = response.content.decode()
    assert response.status_code == 200
    assert "Hetzner rejected this API token (HTTP 401" in form.errors["token"][0]
    assert "revoked-token-0123" not in html
    assert response.context["open_form"] == "hetzner"
    assert not CloudAccount.objects.exists()


def test_add_hetzner_unreachable_api_saves_nothing(client, user):
    # Without the hetzner_api fixture the endpoint is a closed loopback port.
    response = client.post(add_url("hetzner"), hetzner_data())

    errors = response.context["hetzner_form"].non_field_errors()
    assert response.status_code == 200
    assert "Could not check the token against the Hetzner Cloud API" in errors[0]
    assert "try again" in errors[0]
    assert not CloudAccount.objects.exists()


@pytest.mark.parametrize(
    ("label", "token", "field", "message"),
    [
        ("Prod", "", "token", "This field is required."),
        ("Prod", "   ", "token", "This field is required."),
        ("Prod", "abc def", "token", "space or a character other than printable ASCII at position 4"),
        ("Prod", "tök" + "e" * 20, "token", "position 2"),
        ("Prod", "t" * 501, "token", "at most 500 characters"),
        ("", TEST_HCLOUD_TOKEN, "label", "This field is required."),
        ("x" * 81, TEST_HCLOUD_TOKEN, "label", "at most 80 characters"),
        ("Prod\u202e", TEST_HCLOUD_TOKEN, "label", "U+202E"),
        ("Prod\x00", TEST_HCLOUD_TOKEN, "label", "Null characters are not allowed."),
    ],
    ids=["empty-token", "blank-token", "space-in-token", "non-ascii-token", "huge-token", "empty-label", "huge-label",
         "bidi-label", "nul-label"],
)
def test_add_hetzner_bad_input_is_form_error(client, hetzner_api, label, token, field, message):
    response = client.post(add_url("hetzner"), hetzner_data(label=label, token=token))

    errors = response.context["hetzner_form"].errors
    assert response.status_code == 200
    assert message in " ".join(errors[field])
    assert not CloudAccount.objects.exists()
    assert hetzner_api.requests == []


def test_add_unicode_label_is_kept(client, user, hetzner_api):
    label = "Projekt München – 東京 🚀"

    response = client.post(add_url("hetzner"), hetzner_data(label=label))

    assert response.status_code == 302
    assert CloudAccount.objects.get(owner=user).label == label
    assert label in client.get(LIST_URL).content.decode()


def test_add_twice_in_a_row_creates_one_account(client, user, hetzner_api):
    first = client.post(add_url("hetzner"), hetzner_data())
    second = client.post(add_url("hetzner"), hetzner_data())

    assert first.status_code == 302
    assert second.status_code == 200
    assert "already have a cloud account labelled 'Hetzner project A'" in second.context["hetzner_form"].errors["label"][0]
    assert CloudAccount.objects.filter(owner=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_add_submitted_twice_at_once_creates_one_account(hetzner_api):
    user = make_user()
    barrier = threading.Barrier(2)
    responses = []

    def submit():
        client = Client()
        client.force_login(user)
        barrier.wait()
        try:
            responses.append(client.post(add_url("hetzner"), hetzner_data()))
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    statuses = sorted(response.status_code for response in responses)
    rejected = [response for response in responses if response.status_code == 200]
    assert statuses == [200, 302]
    assert "already have a cloud account labelled" in rejected[0].context["hetzner_form"].errors["label"][0]
    assert CloudAccount.objects.filter(owner=user).count() == 1


def test_add_unknown_backend_is_404(client):
    response = client.post(add_url("digitalocean"), {"digitalocean-label": "x"})

    assert response.status_code == 404


def test_add_sandbox_needs_only_label(client, user):
    response = client.post(add_url("sandbox"), {"sandbox-label": "Playground"})

    account = CloudAccount.objects.get(owner=user)
    assert response.status_code == 302
    assert account.backend == Backend.SANDBOX
    assert account.validation_status == ValidationStatus.VALID
    assert not account.has_token


# --- add Proxmox VE ----------------------------------------------------------------------------


def test_add_proxmox_checks_token_and_node(client, user, proxmox_api):
    response = client.post(add_url("proxmox"), proxmox_data(proxmox_api, vmid_min="7000", vmid_max="7999"))

    account = CloudAccount.objects.get(owner=user)
    detail = client.get(account_url("cloud_account", account)).content.decode()
    assert response.status_code == 302
    assert account.backend == Backend.PROXMOX
    assert account.validation_status == ValidationStatus.VALID
    assert account.proxmox_verify_tls is True
    assert (account.proxmox_vmid_min, account.proxmox_vmid_max) == (7000, 7999)
    assert account.get_token() == TEST_PROXMOX_TOKEN_SECRET
    assert [request.path for request in proxmox_api.requests] == ["/version", "/nodes", "/nodes/pve/status"]
    assert TEST_PROXMOX_TOKEN_SECRET not in detail
    assert TEST_PROXMOX_TOKEN_ID in detail
    assert "7000-7999" in detail
    assert "TLS verification is off" not in detail


def test_add_proxmox_form_has_tls_verification_on(client):
    form = client.get(LIST_URL).context["proxmox_form"]

    assert form["verify_tls"].value() is True
    assert str(form["verify_tls"]).endswith(" checked>")


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"token": "wrong-secret"}, "token", "invalid token value"),
        ({"token": ""}, "token", "secret is required"),
        ({"api_url": ""}, "api_url", "The API URL is missing"),
        ({"label": ""}, "label", "The label is empty"),
        ({"token_id": "root@pam"}, "token_id", "USER@REALM!TOKENNAME"),
        ({"node": "pve7"}, "node", "'pve7' was not found; the token sees these nodes: pve"),
        ({"node": "bad node!"}, "node", "is invalid"),
        ({"api_url": "http://pve.example.com:8006"}, "api_url", "unencrypted; use https://"),
        ({"api_url": "ftp://127.0.0.1:8006"}, "api_url", "must start with https://"),
        ({"api_url": "http://127.0.0.1:9"}, "api_url", "the connection failed"),
        ({"vmid_min": "10", "vmid_max": "20"}, "vmid_min", "between 100"),
        ({"vmid_min": "7000", "vmid_max": ""}, "vmid_min", "both ends"),
        ({"vmid_min": "seven"}, "vmid_min", "Enter a whole number."),
    ],
    ids=["wrong-secret", "empty-secret", "empty-url", "empty-label", "bad-token-id", "unknown-node", "invalid-node", "http-remote", "ftp",
         "unreachable", "vmid-range", "half-range", "vmid-text"],
)
def test_add_proxmox_error_names_problem(client, proxmox_api, overrides, field, message):
    response = client.post(add_url("proxmox"), proxmox_data(proxmox_api, **overrides))

    errors = response.context["proxmox_form"].errors
    html = response.content.decode()
    assert response.status_code == 200
    assert message in " ".join(errors[field])
    assert response.context["open_form"] == "proxmox"
    assert "wrong-secret" not in html
    assert TEST_PROXMOX_TOKEN_SECRET not in html
    assert not CloudAccount.objects.exists()


def test_add_proxmox_tls_failure_then_verification_off_warns(client, user):
    from tests.peers.proxmox_api import ProxmoxApiServer

    with ProxmoxApiServer(tokens={TEST_PROXMOX_TOKEN_ID: TEST_PROXMOX_TOKEN_SECRET}, tls=True) as api:
        rejected = client.post(add_url("proxmox"), proxmox_data(api))
        accepted = client.post(add_url("proxmox"), proxmox_data(api, verify_tls=None), follow=True)

    account = CloudAccount.objects.get(owner=user)
    tls_errors = rejected.context["proxmox_form"].errors["verify_tls"]
    assert "TLS certificate of https://127.0.0.1" in tls_errors[0]
    assert "could not be verified" in tls_errors[0]
    assert account.proxmox_verify_tls is False
    assert any("TLS verification is off" in text for text in message_texts(accepted))
    assert "TLS verification is off for this account" in accepted.content.decode()
    assert "TLS verification off" in client.get(LIST_URL).content.decode()


def test_add_proxmox_reports_all_mistakes_at_once(client, proxmox_api):
    response = client.post(
        add_url("proxmox"), proxmox_data(proxmox_api, api_url="http://pve.example.com", token_id="x", token="")
    )

    errors = response.context["proxmox_form"].errors
    assert "use https://" in errors["api_url"][0]
    assert "USER@REALM!TOKENNAME" in errors["token_id"][0]
    assert "secret is required" in errors["token"][0]
    assert proxmox_api.requests == []


def test_proxmox_error_shows_tls_off_warning(client, proxmox_api):
    response = client.post(add_url("proxmox"), proxmox_data(proxmox_api, verify_tls=None, node="pve7"))

    assert "TLS verification is off: the platform will send the token secret" in response.content.decode()


# --- rename ---------------------------------------------------------------------------------------


def test_rename_changes_label(client, user):
    account = make_cloud_account(owner=user, label="Old name")

    response = client.post(account_url("cloud_account_rename", account), {"rename-label": "  New name  "})

    account.refresh_from_db()
    assert response.status_code == 302
    assert account.label == "New name"


@pytest.mark.parametrize(
    ("label", "message"),
    [("Taken", "already have a cloud account labelled 'Taken'"), ("", "This field is required."), ("x" * 200, "at most 80")],
    ids=["taken", "empty", "huge"],
)
def test_rename_rejects_bad_label(client, user, label, message):
    account = make_cloud_account(owner=user, label="Mine")
    make_cloud_account(owner=user, label="Taken")

    response = client.post(account_url("cloud_account_rename", account), {"rename-label": label})

    account.refresh_from_db()
    assert response.status_code == 200
    assert message in " ".join(response.context["rename_form"].errors["label"])
    assert account.label == "Mine"


# --- replace token ------------------------------------------------------------------------------


def test_replace_token_checks_new_token_first(client, user, hetzner_api):
    account = make_cloud_account(
        owner=user, backend=Backend.HETZNER, token="revoked-old-token", validation_status=ValidationStatus.INVALID
    )
    url = account_url("cloud_account_token", account)

    rejected = client.post(url, {"token-token": "another-wrong-token"})
    account.refresh_from_db()
    token_after_rejection = account.get_token()
    accepted = client.post(url, {"token-token": TEST_HCLOUD_TOKEN})
    account.refresh_from_db()

    assert rejected.status_code == 200
    assert "Hetzner rejected this API token" in rejected.context["token_form"].errors["token"][0]
    assert "another-wrong-token" not in rejected.content.decode()
    assert token_after_rejection == "revoked-old-token"
    assert accepted.status_code == 302
    assert account.get_token() == TEST_HCLOUD_TOKEN
    assert account.validation_status == ValidationStatus.VALID
    assert account.last_error == ""


def test_replace_proxmox_token_with_new_token_id(client, user, proxmox_api):
    client.post(add_url("proxmox"), proxmox_data(proxmox_api))
    account = CloudAccount.objects.get(owner=user)
    proxmox_api.tokens = {"cloudmarket@pve!rotated": "5f0c7a1e-1111-4c8e-9a77-3e1f2d4c5b6a"}

    response = client.post(
        account_url("cloud_account_token", account),
        {"token-token_id": "cloudmarket@pve!rotated", "token-token": "5f0c7a1e-1111-4c8e-9a77-3e1f2d4c5b6a"},
    )

    account.refresh_from_db()
    assert response.status_code == 302
    assert account.proxmox_token_id == "cloudmarket@pve!rotated"
    assert account.get_token() == "5f0c7a1e-1111-4c8e-9a77-3e1f2d4c5b6a"


def test_sandbox_account_has_no_token_form(client, user):
    account = make_cloud_account(owner=user)

    page = client.get(account_url("cloud_account", account))
    post = client.post(account_url("cloud_account_token", account), {"token-token": "abc"})

    assert page.context["token_form"] is None
    assert post.status_code == 302
    assert "has no API token" in message_texts(post)[0]


# --- re-validate ------------------------------------------------------------------------------------


def test_revalidate_records_revoked_token(client, user, hetzner_api):
    client.post(add_url("hetzner"), hetzner_data())
    account = CloudAccount.objects.get(owner=user)
    hetzner_api.tokens.clear()

    response = client.post(account_url("cloud_account_validate", account), follow=True)

    account.refresh_from_db()
    assert account.validation_status == ValidationStatus.INVALID
    assert "Hetzner rejected this API token (HTTP 401" in account.last_error
    assert any("is invalid" in text for text in message_texts(response))
    assert "Hetzner rejected this API token" in response.content.decode()


def test_revalidate_is_rate_limited(client, user, hetzner_api, settings):
    settings.CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS = 60
    client.post(add_url("hetzner"), hetzner_data())
    account = CloudAccount.objects.get(owner=user)
    hetzner_api.requests.clear()

    first = client.post(account_url("cloud_account_validate", account), {"from": "list"})
    second = client.post(account_url("cloud_account_validate", account), {"from": "list"})

    assert first["Location"] == LIST_URL
    assert second.status_code == 302
    assert "was checked less than 60 seconds ago; try again in" in message_texts(second)[-1]
    assert [request.path for request in hetzner_api.requests] == ["/locations"]


def test_revalidate_unreachable_api_keeps_status(client, user, settings):
    account = make_cloud_account(owner=user, backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)

    response = client.post(account_url("cloud_account_validate", account))

    account.refresh_from_db()
    assert account.validation_status == ValidationStatus.VALID
    assert "Could not check the token" in account.last_error
    assert "The status is unchanged" in message_texts(response)[0]


def test_revalidate_is_post_only(client, user):
    account = make_cloud_account(owner=user)

    response = client.get(account_url("cloud_account_validate", account))

    assert response.status_code == 405


# --- delete ------------------------------------------------------------------------------------------


def test_delete_blocked_by_offering_and_live_rental(client, user):
    provider = make_provider(user=user)
    account = make_cloud_account(owner=user, label="Busy")
    offering = make_offering(provider=provider, cloud_account=account, name="Tiny box")
    make_contract(tenant=make_user(), offering=offering)

    confirm = client.get(account_url("cloud_account_delete", account))
    response = client.post(account_url("cloud_account_delete", account))

    text = message_texts(response)[0]
    assert confirm.status_code == 200
    assert "cannot be deleted while these use it" in confirm.content.decode()
    assert 'type="submit" class="danger"' not in confirm.content.decode()
    assert response.status_code == 409
    assert "Cloud account 'Busy' is still used by offering 'Tiny box' and live rental 'Tiny box'" in text
    assert "move the offerings to another cloud account and wait until the rentals have ended" in text
    assert CloudAccount.objects.filter(pk=account.pk).exists()


def test_delete_after_confirmation_removes_unused_account(client, user):
    account = make_cloud_account(owner=user, label="Spare", backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)

    confirm = client.get(account_url("cloud_account_delete", account))
    response = client.post(account_url("cloud_account_delete", account))

    assert "Delete Spare" in confirm.content.decode()
    assert response.status_code == 302
    assert response["Location"] == LIST_URL
    assert not CloudAccount.all_objects.filter(pk=account.pk).exists()


def test_delete_keeps_row_for_ended_rentals(client, user):
    provider = make_provider(user=user)
    old = make_cloud_account(owner=user, label="Old", backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)
    spare = make_cloud_account(owner=user, label="Spare")
    offering = make_offering(provider=provider, cloud_account=old)
    contract = make_contract(tenant=make_user(), offering=offering)
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.TERMINATED)
    offering.cloud_account = spare
    offering.save(update_fields=["cloud_account"])

    response = client.post(account_url("cloud_account_delete", old))
    readded = client.post(add_url("sandbox"), {"sandbox-label": "Old"})

    row = CloudAccount.all_objects.get(pk=old.pk)
    contract.refresh_from_db()
    assert response.status_code == 302
    assert row.deleted_at is not None
    assert row.token_ciphertext == ""
    assert not row.is_usable
    assert contract.cloud_account == row
    assert not CloudAccount.objects.filter(pk=old.pk).exists()
    assert "Old" not in [account.label for account in client.get(LIST_URL).context["accounts"] if account.pk == old.pk]
    assert client.get(account_url("cloud_account", old)).status_code == 404
    assert readded.status_code == 302
    assert CloudAccount.objects.filter(owner=user, label="Old").count() == 1


def test_deleted_account_cannot_be_used_in_offering(client, user):
    provider = make_provider(user=user)
    account = make_cloud_account(owner=user, label="Gone")
    make_contract(tenant=make_user(), offering=make_offering(provider=provider, cloud_account=make_cloud_account(owner=user)))
    contract = make_contract(tenant=make_user(), offering=make_offering(provider=provider, cloud_account=account))
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.CANCELLED)
    contract.offering.cloud_account = make_cloud_account(owner=user)
    contract.offering.save(update_fields=["cloud_account"])
    client.post(account_url("cloud_account_delete", account))

    form_page = client.get(reverse("marketplace:offering_create"))

    choices = [value for value, _label in form_page.context["form"].fields["cloud_account"].choices if value]
    assert account.pk not in [int(str(value)) for value in choices]
