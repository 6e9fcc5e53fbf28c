"""Reconciliation between cloud servers and contracts, against the fake Hetzner API and the Sandbox.

The reconciler runs in this process. Active contracts are provisioned in this process through the
real pipeline, against the fake Hetzner API and the loopback sshd.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery import current_app
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from notifications.models import Notification
from provisioning import pipeline
from provisioning.models import (
    Backend,
    CloudAccount,
    OrphanReason,
    OrphanServer,
    OrphanStatus,
    SandboxServer,
    ServerMissingReport,
    ValidationStatus,
)
from provisioning.reconcile import reconcile_account
from provisioning.tasks import reconcile_cloud_accounts_task
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_superuser,
    make_user,
)

pytestmark = pytest.mark.django_db

GRACE_SECONDS = 600
T0 = timezone.now().replace(microsecond=0)


@pytest.fixture(autouse=True)
def _fast_peers(settings):
    settings.RECONCILE_ORPHAN_GRACE_SECONDS = GRACE_SECONDS
    settings.PROVISIONING_POLL_INTERVAL = 0.1
    settings.SANDBOX_BOOT_SECONDS = 0.0
    settings.SANDBOX_STEP_SECONDS = 0.0


@pytest.fixture
def eager_celery():
    """Run Celery tasks in this process, so after-commit notification sends reach `mail.outbox`."""
    previous = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = previous


@pytest.fixture
def hetzner_account(hetzner_api) -> CloudAccount:
    provider = make_provider()
    return make_cloud_account(owner=provider.user, backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)


@pytest.fixture
def sandbox_account() -> CloudAccount:
    provider = make_provider()
    return make_cloud_account(owner=provider.user, backend=Backend.SANDBOX)


def our_labels(**extra: str) -> dict[str, str]:
    from django.conf import settings

    return {"cloudmarket-deployment": settings.DEPLOYMENT_NAME, **extra}


def rent(account: CloudAccount) -> Contract:
    """Rent an offering of `account` and return the contract, provisioning at the create step."""
    offering = make_offering(provider=account.owner.provider_profile, cloud_account=account)
    contract = make_contract(tenant=make_user(), offering=offering)
    assert contract.status == ContractStatus.PROVISIONING
    return contract


def provision(contract: Contract) -> Contract:
    """Run the real provisioning pipeline in this process until the contract is active."""
    lease = pipeline.lease_claim(contract_id=contract.pk, owner="test-worker")
    assert lease is not None
    contract = pipeline.provision(lease=lease)
    assert contract.status == ContractStatus.ACTIVE
    return contract


def hetzner_server_ids(hetzner_api) -> set[str]:
    return {str(server_id) for server_id in hetzner_api.servers}


def live_sandbox_ids(account: CloudAccount) -> set[str]:
    return {
        str(pk)
        for pk in SandboxServer.objects.filter(
            account=account, deleted_at__isnull=True
        ).values_list("pk", flat=True)
    }


# --- orphans at Hetzner ----------------------------------------------------------------------


def test_orphan_deleted_only_after_grace(hetzner_api, hetzner_account):
    server = hetzner_api.create_server_behind_back(
        labels=our_labels(**{"cloudmarket-contract": "999999"})
    )
    server_id = str(server["id"])

    first = reconcile_account(account=hetzner_account, now=T0)

    assert first.orphans_reported == [server_id]
    orphan = OrphanServer.objects.get(account=hetzner_account, server_id=server_id)
    assert orphan.status == OrphanStatus.REPORTED
    assert orphan.reason == OrphanReason.UNKNOWN_CONTRACT
    assert orphan.first_seen_at == T0
    assert orphan.labels["cloudmarket-contract"] == "999999"
    assert server_id in hetzner_server_ids(hetzner_api)

    before_grace = reconcile_account(
        account=hetzner_account, now=T0 + timedelta(seconds=GRACE_SECONDS - 1)
    )

    assert before_grace.orphans_reported == []
    assert before_grace.orphans_deleted == []
    assert server_id in hetzner_server_ids(hetzner_api)
    orphan.refresh_from_db()
    assert orphan.status == OrphanStatus.REPORTED
    assert orphan.first_seen_at == T0
    assert orphan.last_seen_at == T0 + timedelta(seconds=GRACE_SECONDS - 1)

    after_grace = reconcile_account(
        account=hetzner_account, now=T0 + timedelta(seconds=GRACE_SECONDS)
    )

    assert after_grace.orphans_deleted == [server_id]
    assert server_id not in hetzner_server_ids(hetzner_api)
    assert hetzner_api.requests_matching("DELETE", rf"/servers/{server_id}", status=200)
    orphan.refresh_from_db()
    assert orphan.status == OrphanStatus.DELETED
    assert orphan.deleted_at == T0 + timedelta(seconds=GRACE_SECONDS)
    assert orphan.deleted_by is None
    assert orphan.delete_error == ""


def test_server_without_our_deployment_label_ignored(hetzner_api, hetzner_account):
    other_deployment = hetzner_api.create_server_behind_back(
        labels={"cloudmarket-deployment": "someone-else", "cloudmarket-contract": "999999"}
    )
    unlabelled = hetzner_api.create_server_behind_back(labels={"cloudmarket-contract": "999999"})

    reconcile_account(account=hetzner_account, now=T0)
    report = reconcile_account(account=hetzner_account, now=T0 + timedelta(days=30))

    assert report.servers_seen == 0
    assert not OrphanServer.objects.exists()
    assert str(other_deployment["id"]) in hetzner_server_ids(hetzner_api)
    assert str(unlabelled["id"]) in hetzner_server_ids(hetzner_api)
    assert hetzner_api.requests_matching("DELETE", r"/servers/\d+") == []


def test_server_without_contract_label_is_orphan(hetzner_api, hetzner_account):
    server = hetzner_api.create_server_behind_back(labels=our_labels())
    server_id = str(server["id"])

    reconcile_account(account=hetzner_account, now=T0)
    report = reconcile_account(account=hetzner_account, now=T0 + timedelta(seconds=GRACE_SECONDS))

    assert OrphanServer.objects.get(server_id=server_id).reason == OrphanReason.NO_CONTRACT_LABEL
    assert report.orphans_deleted == [server_id]
    # Without a contract label there are no labels that only this server's objects carry.
    assert hetzner_api.requests_matching("GET", r"/ssh_keys") == []


def test_ended_contract_server_is_orphan(hetzner_api, hetzner_account):
    contract = rent(hetzner_account)
    contract_services.contract_fail(contract_id=contract.pk, reason="Test failure.")
    server = hetzner_api.create_server_behind_back(labels=pipeline.contract_labels(contract))

    report = reconcile_account(account=hetzner_account, now=T0)

    orphan = OrphanServer.objects.get(server_id=str(server["id"]))
    assert report.orphans_reported == [str(server["id"])]
    assert orphan.reason == OrphanReason.CONTRACT_ENDED
    assert orphan.contract_id == contract.pk


def test_in_flight_provisioning_server_kept(hetzner_api, hetzner_account):
    contract = rent(hetzner_account)
    assert contract.cloud_server_id == ""
    server = hetzner_api.create_server_behind_back(labels=pipeline.contract_labels(contract))

    reconcile_account(account=hetzner_account, now=T0)
    report = reconcile_account(account=hetzner_account, now=T0 + timedelta(days=1))

    assert report.servers_seen == 1
    assert report.orphans_reported == []
    assert not OrphanServer.objects.exists()
    assert str(server["id"]) in hetzner_server_ids(hetzner_api)
    assert not ServerMissingReport.objects.exists()


def test_duplicate_of_active_contract_deleted(hetzner_api, hetzner_account, session_sshd):
    contract = provision(rent(hetzner_account))
    duplicate = hetzner_api.create_server_behind_back(
        name="duplicate", labels=pipeline.contract_labels(contract)
    )
    duplicate_id = str(duplicate["id"])

    first = reconcile_account(account=hetzner_account, now=T0)
    second = reconcile_account(account=hetzner_account, now=T0 + timedelta(seconds=GRACE_SECONDS))

    assert first.orphans_reported == [duplicate_id]
    assert (
        OrphanServer.objects.get(server_id=duplicate_id).reason == OrphanReason.NOT_CONTRACT_SERVER
    )
    assert second.orphans_deleted == [duplicate_id]
    assert hetzner_server_ids(hetzner_api) == {contract.cloud_server_id}
    # The contract's SSH keys carry the same labels and must survive too.
    assert hetzner_api.requests_matching("DELETE", r"/ssh_keys/\d+") == []
    assert not ServerMissingReport.objects.exists()


def test_failed_delete_recorded_and_retried(hetzner_api, hetzner_account):
    server = hetzner_api.create_server_behind_back(
        labels=our_labels(**{"cloudmarket-contract": "999999"})
    )
    server_id = str(server["id"])
    reconcile_account(account=hetzner_account, now=T0)
    hetzner_api.add_fault("DELETE", r"/servers/\d+", status=503)

    failed = reconcile_account(account=hetzner_account, now=T0 + timedelta(seconds=GRACE_SECONDS))

    orphan = OrphanServer.objects.get(server_id=server_id)
    assert failed.orphans_deleted == []
    assert server_id in failed.delete_errors
    assert orphan.status == OrphanStatus.REPORTED
    assert "delete_server" in orphan.delete_error
    assert server_id in hetzner_server_ids(hetzner_api)

    retried = reconcile_account(
        account=hetzner_account, now=T0 + timedelta(seconds=GRACE_SECONDS + 60)
    )

    orphan.refresh_from_db()
    assert retried.orphans_deleted == [server_id]
    assert orphan.status == OrphanStatus.DELETED
    assert orphan.delete_error == ""


def test_orphan_gone_before_grace(hetzner_api, hetzner_account):
    server = hetzner_api.create_server_behind_back(labels=our_labels())
    reconcile_account(account=hetzner_account, now=T0)
    hetzner_api.delete_server_behind_back(server["id"])

    report = reconcile_account(account=hetzner_account, now=T0 + timedelta(seconds=60))

    assert report.orphans_gone == [str(server["id"])]
    assert OrphanServer.objects.get(server_id=str(server["id"])).status == OrphanStatus.GONE


# --- live contracts whose server vanished ------------------------------------------------------


def test_missing_server_flagged_and_notified_once(
    hetzner_api, hetzner_account, session_sshd, eager_celery, django_capture_on_commit_callbacks
):
    contract = provision(rent(hetzner_account))
    hetzner_api.delete_server_behind_back(int(contract.cloud_server_id))
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        first = reconcile_account(account=hetzner_account, now=T0)

    assert first.missing_flagged == [contract.pk]
    report = ServerMissingReport.objects.get(contract=contract)
    assert report.cloud_server_id == contract.cloud_server_id
    assert report.detected_at == T0
    assert report.resolved_at is None
    notified = Notification.objects.filter(contract=contract, event="server_missing")
    assert set(notified.values_list("recipient_id", flat=True)) == {
        contract.tenant_id,
        contract.provider.user_id,
    }
    assert set(notified.values_list("status", flat=True)) == {"sent"}
    assert sorted(message.to[0] for message in mail.outbox) == sorted(
        [contract.tenant.email, contract.provider.user.email]
    )
    assert any("is missing" in message.subject for message in mail.outbox)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.ACTIVE

    with django_capture_on_commit_callbacks(execute=True):
        second = reconcile_account(account=hetzner_account, now=T0 + timedelta(seconds=60))

    assert second.missing_flagged == []
    assert ServerMissingReport.objects.filter(contract=contract).count() == 1
    assert notified.count() == 2
    assert len(mail.outbox) == 2
    # The vanished server is not an orphan, and the contract's labels match no server now.
    assert not OrphanServer.objects.exists()


def test_missing_report_resolved_when_contract_ends(hetzner_api, hetzner_account, session_sshd):
    contract = provision(rent(hetzner_account))
    hetzner_api.delete_server_behind_back(int(contract.cloud_server_id))
    reconcile_account(account=hetzner_account, now=T0)
    contract = contract_services.contract_terminate(
        contract=contract, actor=None, actor_label="staff", reason="Server lost."
    )
    contract_services.contract_mark_terminated(contract_id=contract.pk, worker="test-worker")

    report = reconcile_account(account=hetzner_account, now=T0 + timedelta(seconds=60))

    assert report.missing_resolved == [contract.pk]
    assert ServerMissingReport.objects.get(contract=contract).resolved_at == T0 + timedelta(
        seconds=60
    )


# --- accounts --------------------------------------------------------------------------------


def test_invalid_account_skipped(hetzner_api, caplog):
    provider = make_provider()
    account = make_cloud_account(
        owner=provider.user,
        backend=Backend.HETZNER,
        token=TEST_HCLOUD_TOKEN,
        validation_status=ValidationStatus.INVALID,
    )
    hetzner_api.create_server_behind_back(labels=our_labels())

    with caplog.at_level("INFO", logger="provisioning.reconcile"):
        report = reconcile_account(account=account, now=T0)

    assert report.skipped_reason
    assert not OrphanServer.objects.exists()
    assert hetzner_api.requests_matching("GET", r"/servers") == []
    assert f"Cloud account {account.pk}: credentials marked invalid" in caplog.text


def test_rejected_token_marks_account_invalid(hetzner_api):
    provider = make_provider()
    account = make_cloud_account(
        owner=provider.user, backend=Backend.HETZNER, token="revoked-token"
    )

    report = reconcile_account(account=account, now=T0)

    account.refresh_from_db()
    assert report.error
    assert account.validation_status == ValidationStatus.INVALID
    assert (
        Notification.objects.filter(recipient=account.owner, event="credentials_invalid").count()
        == 1
    )


def test_task_reconciles_every_account(hetzner_api, hetzner_account, sandbox_account):
    invalid = make_cloud_account(
        owner=make_provider().user, validation_status=ValidationStatus.INVALID
    )
    hetzner_api.create_server_behind_back(labels=our_labels())
    SandboxServer.objects.create(
        account=sandbox_account,
        name="stray",
        server_type="cx22",
        image="ubuntu-24.04",
        location="fsn1",
        labels=our_labels(),
        ipv4="203.0.113.9",
        boot_seconds=0.0,
    )
    SandboxServer.objects.create(
        account=invalid,
        name="stray-invalid",
        server_type="cx22",
        image="ubuntu-24.04",
        location="fsn1",
        labels=our_labels(),
        ipv4="203.0.113.10",
        boot_seconds=0.0,
    )

    reconcile_cloud_accounts_task()

    assert set(OrphanServer.objects.values_list("account_id", flat=True)) == {
        hetzner_account.pk,
        sandbox_account.pk,
    }


# --- Sandbox ---------------------------------------------------------------------------------


def test_sandbox_orphans_and_missing_server(sandbox_account):
    contract = provision(rent(sandbox_account))
    duplicate = SandboxServer.objects.create(
        account=sandbox_account,
        name="duplicate",
        server_type="cx22",
        image="ubuntu-24.04",
        location="fsn1",
        labels=pipeline.contract_labels(contract),
        ipv4="203.0.113.9",
        boot_seconds=0.0,
    )
    ended = rent(sandbox_account)
    contract_services.contract_fail(contract_id=ended.pk, reason="Test failure.")
    leftover = SandboxServer.objects.create(
        account=sandbox_account,
        name="leftover",
        server_type="cx22",
        image="ubuntu-24.04",
        location="fsn1",
        labels=pipeline.contract_labels(ended),
        ipv4="203.0.113.10",
        boot_seconds=0.0,
    )

    first = reconcile_account(account=sandbox_account, now=T0)

    assert sorted(first.orphans_reported) == sorted([str(duplicate.pk), str(leftover.pk)])
    assert live_sandbox_ids(sandbox_account) == {
        contract.cloud_server_id,
        str(duplicate.pk),
        str(leftover.pk),
    }

    second = reconcile_account(account=sandbox_account, now=T0 + timedelta(seconds=GRACE_SECONDS))

    assert sorted(second.orphans_deleted) == sorted([str(duplicate.pk), str(leftover.pk)])
    assert live_sandbox_ids(sandbox_account) == {contract.cloud_server_id}
    assert second.missing_flagged == []

    SandboxServer.objects.filter(pk=int(contract.cloud_server_id)).update(deleted_at=timezone.now())
    third = reconcile_account(
        account=sandbox_account, now=T0 + timedelta(seconds=GRACE_SECONDS + 60)
    )

    assert third.missing_flagged == [contract.pk]
    assert Notification.objects.filter(contract=contract, event="server_missing").count() == 2


# --- admin -----------------------------------------------------------------------------------


def test_admin_delete_now_skips_grace(client, hetzner_api, hetzner_account):
    server = hetzner_api.create_server_behind_back(labels=our_labels())
    reconcile_account(account=hetzner_account, now=timezone.now())
    orphan = OrphanServer.objects.get(server_id=str(server["id"]))
    staff = make_superuser()
    client.force_login(staff)

    response = client.post(
        reverse("admin:provisioning_orphanserver_changelist"),
        {"action": "delete_now", "_selected_action": [orphan.pk]},
        follow=True,
    )

    assert response.status_code == 200
    orphan.refresh_from_db()
    assert orphan.status == OrphanStatus.DELETED
    assert orphan.deleted_by == staff
    assert str(server["id"]) not in hetzner_server_ids(hetzner_api)
    assert f"Server {server['id']} at" in response.content.decode()


def test_admin_lists_reports(client, hetzner_api, hetzner_account):
    hetzner_api.create_server_behind_back(labels=our_labels())
    reconcile_account(account=hetzner_account, now=T0)
    client.force_login(make_superuser())

    orphans = client.get(
        reverse("admin:provisioning_orphanserver_changelist"), {"status__exact": "reported"}
    )
    reports = client.get(reverse("admin:provisioning_servermissingreport_changelist"))

    assert orphans.status_code == 200
    assert "No contract label" in orphans.content.decode()
    assert reports.status_code == 200


def test_admin_change_pages_render(client, hetzner_api, hetzner_account, session_sshd):
    contract = provision(rent(hetzner_account))
    hetzner_api.delete_server_behind_back(int(contract.cloud_server_id))
    hetzner_api.create_server_behind_back(labels=our_labels())
    reconcile_account(account=hetzner_account, now=T0)
    orphan = OrphanServer.objects.get()
    report = ServerMissingReport.objects.get()
    client.force_login(make_superuser())

    orphan_page = client.get(reverse("admin:provisioning_orphanserver_change", args=[orphan.pk]))
    report_page = client.get(
        reverse("admin:provisioning_servermissingreport_change", args=[report.pk])
    )
    open_reports = client.get(
        reverse("admin:provisioning_servermissingreport_changelist"),
        {"resolved_at__isnull": "True"},
    )

    assert orphan_page.status_code == 200
    assert report_page.status_code == 200
    assert open_reports.status_code == 200
    assert contract.cloud_server_id in open_reports.content.decode()
