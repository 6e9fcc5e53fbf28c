"""Admin tests: every page renders, the cloud token stays hidden, and the staff actions work."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.ledger import ledger_record_payment
from billing.models import Payment, PaymentMethod, PaymentStatus, PayoutAccount
from billing.payouts import payouts_create_for_period, previous_month_bounds
from billing.profiles import billing_profile_save
from marketplace.models import Contract, ContractEvent, ContractStatus
from marketplace.services.contracts import contract_activate, contract_reject
from marketplace.services.offering_csv import offering_import_create
from marketplace.services.offerings import offering_visibility_set
from marketplace.services.ssh_keys import ssh_key_create
from notifications.models import DeliveryStatus, Notification
from provisioning.health import health_check_record, health_rollups_update
from provisioning.models import (
    CloudAccount,
    HealthSource,
    OrphanServer,
    SandboxServer,
    ServerMissingReport,
    ValidationStatus,
)
from provisioning.resource_services import resource_create
from recipes.models import RecipeLogChunk, RecipeRun, RecipeRunStatus
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_recipe,
    make_superuser,
    make_user,
    ssh_public_key,
)

pytestmark = pytest.mark.django_db

PROJECT_APPS = ("marketplace", "provisioning", "recipes", "billing", "notifications")
PLAINTEXT_TOKEN = "plaintext-admin-token-must-never-be-rendered-abcdef"


@pytest.fixture
def staff_client() -> Client:
    client = Client()
    client.force_login(make_superuser(email="staff@example.com"))
    return client


@pytest.fixture
def dataset():
    """At least one row of every project model, built through the services where they exist."""
    provider = make_provider(display_name="Acme Cloud")
    sandbox = make_cloud_account(owner=provider.user, label="Acme sandbox")
    hetzner = make_cloud_account(owner=provider.user, backend="hetzner", label="Acme prod", token=PLAINTEXT_TOKEN)
    recipe = make_recipe(author=provider.user, name="Nginx", script="#!/bin/sh\necho '<installing nginx>'\n")
    offering = make_offering(provider=provider, cloud_account=sandbox, slug="acme-nginx", recipe_version=recipe)
    tenant = make_user(email="tenant@example.com")
    ssh_key_create(user=tenant, name="laptop", public_key=ssh_public_key())
    billing_profile_save(
        user=tenant, actor=tenant, legal_name="Example Tenant GmbH", address_line1="Hauptstraße 1", city="Berlin",
        country="DE",
    )

    provisioning = make_contract(tenant=tenant, offering=offering)
    run = RecipeRun.objects.create(contract=provisioning, status=RecipeRunStatus.RUNNING, timeout_seconds=60)
    RecipeLogChunk.objects.create(run=run, sequence=1, text="<step one> done\n")
    SandboxServer.objects.create(
        account=sandbox, name="cm-1", server_type="cx22", image="ubuntu-24.04", location="fsn1",
        labels={"cloudmarket-contract": str(provisioning.pk)}, ipv4="203.0.113.2", boot_seconds=1.0,
    )
    OrphanServer.objects.create(
        account=sandbox, server_id="999", name="stray", labels={"cloudmarket-deployment": "local"},
        reason="no_contract_label", first_seen_at=timezone.now(), last_seen_at=timezone.now(),
    )
    ServerMissingReport.objects.create(contract=provisioning, cloud_server_id="998", detected_at=timezone.now())
    health_check_record(
        contract=provisioning, source=HealthSource.PLATFORM, up=True, latency_ms=4.5,
        checked_at=timezone.now() - timedelta(hours=3),
    )
    health_check_record(
        contract=provisioning, source=HealthSource.AGENT, up=False, latency_ms=None, checked_at=timezone.now(),
        hypervisor_state="stopped", detail="example: connection refused",
    )
    health_rollups_update()
    resource_create(
        owner=provider.user, cloud_account=sandbox, name="Acme build box", location_code="fsn1", server_type="cx22",
        image="ubuntu-24.04", ssh_public_key=ssh_public_key(),
    )

    manual = make_provider(display_name="Careful Cloud", auto_accept=False)
    rejected = make_contract(tenant=tenant, offering=make_offering(provider=manual))
    contract_reject(contract=rejected, actor=manual.user, reason="No capacity.")
    offering_import_create(
        user=provider.user, filename="offerings.csv", data=b"slug,price_cents\r\nacme-nginx,600\r\n"
    )
    offering_visibility_set(
        offering=make_offering(provider=provider, cloud_account=sandbox, slug="acme-friends"),
        user=provider.user, visibility="shared", allowlist=["friend@example.com"], hide_confirmed=True,
    )
    # Card-payment records, as the Stripe webhook handlers store them.
    from billing.models import CheckoutSession, Dispute, StripeCustomer, Subscription, WebhookEvent

    StripeCustomer.objects.create(user=tenant, customer_id="cus_example")
    CheckoutSession.objects.create(
        contract=provisioning, session_id="cs_test_example", url="https://checkout.example.com/cs_test_example",
        expires_at=timezone.now(),
    )
    Subscription.objects.create(contract=provisioning, subscription_id="sub_example", customer_id="cus_example", status="active")
    WebhookEvent.objects.create(
        event_id="evt_example", type="invoice.paid", contract=provisioning, outcome="<b>recorded</b>",
        payload={"id": "evt_example", "type": "invoice.paid"},
    )
    Dispute.objects.create(
        payment=provisioning.payments.first(), dispute_id="du_example", amount_cents=574, currency="EUR", reason="fraudulent"
    )

    # A card payment last month, paid out; the provider has a Stripe payout account row.
    last_month_start, last_month_end = previous_month_bounds(timezone.now())
    card = Payment.objects.create(
        contract=provisioning, method=PaymentMethod.STRIPE, status=PaymentStatus.SUCCEEDED, amount_cents=500,
        currency="EUR", period_start=last_month_start, period_end=last_month_end, reference="in_admin_test",
    )
    ledger_record_payment(payment=card)
    payouts_create_for_period(period_start=last_month_start, period_end=last_month_end)
    PayoutAccount.objects.create(user=provider.user, stripe_account_id="acct_admin_test")
    # An agent pool with one agent that used its setup token.
    from tests.agent_helpers import make_agent, make_pool

    _agent_provider, pool, _agent_offering = make_pool(name="Acme rack")
    make_agent(pool)
    return {"provisioning": provisioning, "rejected": rejected, "hetzner": hetzner, "run": run}


def project_models() -> list:
    return [model for label in PROJECT_APPS for model in apps.get_app_config(label).get_models()]


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- every page renders --------------------------------------------------------------------


def test_every_project_model_is_registered() -> None:
    unregistered = [model._meta.label for model in project_models() if not admin.site.is_registered(model)]

    assert unregistered == []


@pytest.mark.parametrize("model", project_models(), ids=lambda model: model._meta.label)
def test_admin_pages_render(staff_client, dataset, model) -> None:
    instance = model._default_manager.order_by("pk").first()
    model_admin = admin.site._registry[model]

    changelist = staff_client.get(admin_url(model, "changelist"))
    searched = staff_client.get(admin_url(model, "changelist"), {"q": "example"})
    change = staff_client.get(admin_url(model, "change", instance.pk))

    assert instance is not None, "the dataset fixture has no row of this model"
    assert changelist.status_code == 200
    assert searched.status_code == 200
    assert change.status_code == 200
    if model_admin.has_add_permission(changelist.wsgi_request):
        assert staff_client.get(admin_url(model, "add")).status_code == 200


def test_user_add_form_creates_email_user(staff_client) -> None:
    response = staff_client.post(
        reverse("admin:marketplace_user_add"),
        {"email": "new@example.com", "usable_password": "true", "password1": "a-long-pass-phrase-9", "password2": "a-long-pass-phrase-9"},
    )

    assert response.status_code == 302
    assert apps.get_model("marketplace", "User").objects.get(email="new@example.com").check_password("a-long-pass-phrase-9")


def test_contract_page_is_read_only_with_inlines(staff_client, dataset) -> None:
    contract = dataset["provisioning"]

    html = staff_client.get(admin_url(Contract, "change", contract.pk)).content.decode()

    assert 'name="_save"' not in html
    assert "Provisioning</span>" in html  # The status badge.
    assert "&lt;step one&gt; done" in html  # Recipe output, escaped.
    assert "Accepted automatically." in html  # History row.
    assert "sandbox-" in html  # Payment reference.
    assert "platform_key_ciphertext" not in html


def test_contract_changelist_search_by_tenant_email(staff_client, dataset) -> None:
    response = staff_client.get(admin_url(Contract, "changelist"), {"q": "tenant@example.com"})

    assert response.status_code == 200
    assert response.context["cl"].result_count == 2


def test_contract_changelist_search_by_public_id(staff_client, dataset) -> None:
    contract = dataset["provisioning"]

    response = staff_client.get(admin_url(Contract, "changelist"), {"q": str(contract.public_id)})

    assert [row.pk for row in response.context["cl"].result_list] == [contract.pk]


# --- cloud account token -------------------------------------------------------------------


def test_cloud_account_pages_never_show_token(staff_client, dataset) -> None:
    account = dataset["hetzner"]

    pages = [
        staff_client.get(admin_url(CloudAccount, "change", account.pk)),
        staff_client.get(admin_url(CloudAccount, "changelist")),
    ]

    for page in pages:
        assert PLAINTEXT_TOKEN.encode() not in page.content
        assert account.token_ciphertext.encode() not in page.content
        assert b"token_ciphertext" not in page.content
    assert b'name="new_token"' in pages[0].content


def test_cloud_account_new_token_replaces_and_validates_token(staff_client, dataset, hetzner_api) -> None:
    account = dataset["hetzner"]
    CloudAccount.objects.filter(pk=account.pk).update(validation_status=ValidationStatus.INVALID, last_error="401")

    response = staff_client.post(
        admin_url(CloudAccount, "change", account.pk),
        {"label": account.label, "new_token": TEST_HCLOUD_TOKEN, "_save": "Save"},
    )

    account.refresh_from_db()
    assert response.status_code == 302
    assert account.get_token() == TEST_HCLOUD_TOKEN
    assert account.validation_status == ValidationStatus.VALID
    assert account.last_error == ""
    assert account.validated_at is not None
    assert any("credentials are valid" in message for message in messages_of(response))


def test_cloud_account_rejected_new_token_is_invalid(staff_client, dataset, hetzner_api) -> None:
    account = dataset["hetzner"]

    response = staff_client.post(
        admin_url(CloudAccount, "change", account.pk),
        {"label": account.label, "new_token": "revoked-token-456", "_save": "Save"},
    )

    account.refresh_from_db()
    warnings = [str(message) for message in get_messages(response.wsgi_request) if message.level_tag == "warning"]
    assert response.status_code == 302
    assert account.validation_status == ValidationStatus.INVALID
    assert account.last_error.startswith("Hetzner rejected this API token (HTTP 401: unable to authenticate).")
    assert len(warnings) == 1
    assert "credentials are invalid" in warnings[0]
    assert "Security > API tokens" in warnings[0]


def test_cloud_account_added_in_admin_is_validated(staff_client, hetzner_api) -> None:
    owner = make_user()

    response = staff_client.post(
        admin_url(CloudAccount, "add"),
        {
            "owner": owner.pk,
            "backend": "hetzner",
            "label": "Ops project",
            "new_token": TEST_HCLOUD_TOKEN,
            "_save": "Save",
        },
    )

    account = CloudAccount.objects.get(owner=owner)
    assert response.status_code == 302
    assert account.validation_status == ValidationStatus.VALID
    assert account.get_token() == TEST_HCLOUD_TOKEN


def test_cloud_account_token_unreachable_api_keeps_unchecked(staff_client, dataset) -> None:
    # No fake Hetzner here: the endpoint is a closed loopback port, so the check is inconclusive.
    account = dataset["hetzner"]

    response = staff_client.post(
        admin_url(CloudAccount, "change", account.pk),
        {"label": account.label, "new_token": "replacement-token-123", "_save": "Save"},
    )

    account.refresh_from_db()
    assert response.status_code == 302
    assert account.validation_status == ValidationStatus.UNCHECKED
    assert account.last_error.startswith("Could not check the token")
    assert any("Validate credentials" in message for message in messages_of(response))


def test_cloud_account_label_with_bidi_control_is_rejected(staff_client, dataset) -> None:
    account = dataset["hetzner"]

    response = staff_client.post(
        admin_url(CloudAccount, "change", account.pk),
        {"label": "Prod \u202egnp.exe", "new_token": "", "_save": "Save"},
    )

    account.refresh_from_db()
    assert response.status_code == 200
    assert "U+202E" in response.content.decode()
    assert account.label == "Acme prod"


def test_cloud_account_empty_new_token_keeps_token(staff_client, dataset) -> None:
    account = dataset["hetzner"]

    staff_client.post(admin_url(CloudAccount, "change", account.pk), {"label": "Renamed", "new_token": "", "_save": "Save"})

    account.refresh_from_db()
    assert account.label == "Renamed"
    assert account.get_token() == PLAINTEXT_TOKEN


def test_cloud_account_validate_action(staff_client) -> None:
    account = make_cloud_account(owner=make_user(), validation_status=ValidationStatus.UNCHECKED)

    response = staff_client.post(
        admin_url(CloudAccount, "changelist"), {"action": "validate_credentials", "_selected_action": [account.pk]}
    )

    account.refresh_from_db()
    assert response.status_code == 302
    assert account.validation_status == ValidationStatus.VALID
    assert any("credentials are valid" in message for message in messages_of(response))


# --- contract actions ----------------------------------------------------------------------


def test_retry_provisioning_clears_lease_and_queues_task(staff_client, dataset, django_capture_on_commit_callbacks) -> None:
    contract = dataset["provisioning"]
    Contract.objects.filter(pk=contract.pk).update(lease_owner="dead-worker:1:abc", lease_expires_at=contract.created_at)

    with django_capture_on_commit_callbacks() as callbacks:
        response = staff_client.post(
            admin_url(Contract, "changelist"), {"action": "retry_provisioning", "_selected_action": [contract.pk]}
        )

    contract.refresh_from_db()
    event = contract.events.order_by("-id").first()
    assert response.status_code == 302
    assert contract.status == ContractStatus.PROVISIONING
    assert contract.lease_owner == ""
    assert contract.lease_expires_at is None
    assert event.actor_label == "staff"
    assert event.reason == "Provisioning retried by staff."
    assert len(callbacks) == 1
    assert any("Provisioning re-queued" in message for message in messages_of(response))


def test_retry_provisioning_reports_wrong_state(staff_client, dataset, django_capture_on_commit_callbacks) -> None:
    rejected = dataset["rejected"]
    events_before = ContractEvent.objects.filter(contract=rejected).count()

    with django_capture_on_commit_callbacks() as callbacks:
        response = staff_client.post(
            admin_url(Contract, "changelist"), {"action": "retry_provisioning", "_selected_action": [rejected.pk]}
        )

    assert callbacks == []
    assert ContractEvent.objects.filter(contract=rejected).count() == events_before
    assert any("cannot retry provisioning" in message for message in messages_of(response))


def test_terminate_now_starts_termination(staff_client, dataset, django_capture_on_commit_callbacks) -> None:
    contract = dataset["provisioning"]
    Contract.objects.filter(pk=contract.pk).update(cloud_server_id="7", ip_address="203.0.113.7")
    contract_activate(contract_id=contract.pk, worker="test-worker")

    with django_capture_on_commit_callbacks() as callbacks:
        response = staff_client.post(
            admin_url(Contract, "changelist"), {"action": "terminate_now", "_selected_action": [contract.pk]}
        )

    contract.refresh_from_db()
    event = contract.events.order_by("-id").first()
    assert contract.status == ContractStatus.TERMINATING
    assert event.actor_label == "staff"
    assert event.reason == "Terminated by staff."
    assert len(callbacks) == 1
    assert any("Termination started" in message for message in messages_of(response))


def test_terminate_now_reports_successes_and_failures(staff_client, dataset, django_capture_on_commit_callbacks) -> None:
    active = dataset["provisioning"]
    Contract.objects.filter(pk=active.pk).update(cloud_server_id="7", ip_address="203.0.113.7")
    contract_activate(contract_id=active.pk, worker="test-worker")
    rejected = dataset["rejected"]

    with django_capture_on_commit_callbacks() as callbacks:
        response = staff_client.post(
            admin_url(Contract, "changelist"), {"action": "terminate_now", "_selected_action": [active.pk, rejected.pk]}
        )

    messages = messages_of(response)
    assert Contract.objects.get(pk=active.pk).status == ContractStatus.TERMINATING
    assert Contract.objects.get(pk=rejected.pk).status == ContractStatus.REJECTED
    assert len(callbacks) == 1
    assert any(f"contract(s) {active.pk}" in message for message in messages)
    assert any(f"Rental {rejected.public_id} cannot be terminated" in message for message in messages)


# --- notifications -------------------------------------------------------------------------


def test_retry_sending_queues_unsent_notifications(staff_client, dataset, django_capture_on_commit_callbacks) -> None:
    pending = Notification.objects.filter(status=DeliveryStatus.PENDING).order_by("pk")
    sent = pending.first()
    Notification.objects.filter(pk=sent.pk).update(status=DeliveryStatus.SENT)
    selected = list(Notification.objects.values_list("pk", flat=True))

    with django_capture_on_commit_callbacks() as callbacks:
        response = staff_client.post(
            admin_url(Notification, "changelist"), {"action": "retry_sending", "_selected_action": selected}
        )

    messages = messages_of(response)
    assert len(callbacks) == len(selected) - 1
    assert any(f"Queued {len(selected) - 1} notification(s)" in message for message in messages)
    assert any(f"Skipped notification(s) {sent.pk}" in message for message in messages)


def test_agent_revoke_action(staff_client) -> None:
    from provisioning.models import Agent
    from tests.agent_helpers import make_agent, make_pool

    _provider, pool, _offering = make_pool()
    agent, _credential = make_agent(pool)

    response = staff_client.post(admin_url(Agent, "changelist"), {"action": "revoke", "_selected_action": [agent.pk]})

    agent.refresh_from_db()
    assert response.status_code == 302
    assert agent.revoked_at is not None
    assert agent.revoked_by.email == "staff@example.com"


def test_agent_change_page_hides_credential_hash(staff_client) -> None:
    from provisioning.models import Agent
    from tests.agent_helpers import make_agent, make_pool

    _provider, pool, _offering = make_pool()
    agent, _credential = make_agent(pool)

    page = staff_client.get(admin_url(Agent, "change", agent.pk)).content.decode()

    assert agent.credential_hash not in page
    assert agent.credential_prefix in page
