"""The provider's rental requests: the list page and API with status filters, accept and reject,
and the deadline after which the periodic task rejects and refunds an unanswered paid rental."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import current_app
from django.conf import settings as django_settings
from django.core import mail
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import Payment, PaymentStatus, Refund
from marketplace.models import Contract, ContractEvent, ContractStatus
from marketplace.tasks import reject_unanswered_rentals_task
from notifications.models import Notification
from tests.factories import make_contract, make_offering, make_provider, make_user

pytestmark = pytest.mark.django_db

LIST_URL = reverse("marketplace:provider_rentals")


@pytest.fixture
def provider():
    return make_provider(display_name="Manual Compute", auto_accept=False)


@pytest.fixture
def offering(provider):
    return make_offering(provider=provider, name="Hand-checked box", price_cents=700)


@pytest.fixture
def tenant():
    return make_user(email="tenant@example.com")


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Run Celery tasks in this process, so queued notifications are sent before the test checks them."""
    previous = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = previous


def age_payment(contract: Contract, *, hours: float) -> Contract:
    """Move the contract's payment time `hours` into the past."""
    Contract.objects.filter(pk=contract.pk).update(paid_at=timezone.now() - timedelta(hours=hours))
    contract.refresh_from_db()
    return contract


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


# --- the page -------------------------------------------------------------------------------


def test_page_lists_incoming_rentals(client, provider, offering, tenant):
    waiting = make_contract(tenant=tenant, offering=offering)
    unpaid = make_contract(tenant=make_user(email="later@example.com"), offering=offering, pay=False)
    client.force_login(provider.user)

    response = client.get(LIST_URL)

    html = response.content.decode()
    deadline = waiting.paid_at + timedelta(hours=24)
    assert response.status_code == 200
    assert "tenant@example.com" in html
    assert "later@example.com" in html
    assert "Hand-checked box" in html
    assert waiting.ssh_key_fingerprint in html
    assert unpaid.ssh_key_fingerprint in html
    assert "Paid, awaiting provider" in html
    assert "Awaiting payment" in html
    assert deadline.strftime("%Y-%m-%d %H:%M") in html
    assert "1 paid rental waits for your decision." in html
    assert html.count("Reject and refund") == 1


def test_page_filters_by_status(client, provider, offering):
    make_contract(tenant=make_user(email="paid@example.com"), offering=offering)
    make_contract(tenant=make_user(email="unpaid@example.com"), offering=offering, pay=False)
    client.force_login(provider.user)

    paid = client.get(LIST_URL, {"status": "paid"}).content.decode()
    invalid = client.get(LIST_URL, {"status": "bogus"})

    assert "paid@example.com" in paid
    assert "unpaid@example.com" not in paid
    assert invalid.status_code == 200
    assert "Invalid filter values were ignored" in invalid.content.decode()


def test_page_query_count_is_fixed(client, provider, offering, django_assert_num_queries):
    for index in range(6):
        make_contract(tenant=make_user(email=f"t{index}@example.com"), offering=offering)
    client.force_login(provider.user)

    # Session, user, profile, waiting count, page count and one SELECT with tenant and offering joined.
    with django_assert_num_queries(6):
        response = client.get(LIST_URL)

    assert response.content.decode().count("Reject and refund") == 6


def test_page_shows_only_own_rentals(client, offering, tenant):
    make_contract(tenant=tenant, offering=offering)
    other = make_provider(display_name="Other Compute")
    client.force_login(other.user)

    html = client.get(LIST_URL).content.decode()

    assert "tenant@example.com" not in html
    assert "No rental requests yet" in html


def test_page_without_profile_redirects(client):
    client.force_login(make_user())

    response = client.get(LIST_URL)

    assert response.status_code == 302
    assert response["Location"] == reverse("marketplace:provider_dashboard")


def test_accept_from_list_returns_to_list(client, provider, offering, tenant, django_capture_on_commit_callbacks):
    contract = make_contract(tenant=tenant, offering=offering)
    client.force_login(provider.user)
    next_url = f"{LIST_URL}?status=paid"

    with django_capture_on_commit_callbacks():
        response = client.post(
            reverse("marketplace:rental_accept", kwargs={"public_id": contract.public_id}), {"next": next_url}
        )

    contract.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"] == next_url
    assert contract.status == ContractStatus.PROVISIONING


def test_reject_from_list_with_message_refunds(client, provider, offering, tenant):
    contract = make_contract(tenant=tenant, offering=offering)
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:rental_reject", kwargs={"public_id": contract.public_id}),
        {"reason": "No capacity this week.", "next": LIST_URL},
    )

    contract.refresh_from_db()
    assert response["Location"] == LIST_URL
    assert contract.status == ContractStatus.REJECTED
    assert contract.status_reason == "No capacity this week."
    assert Payment.objects.get(contract=contract).status == PaymentStatus.REFUNDED


# --- the deadline ---------------------------------------------------------------------------


def test_task_rejects_unanswered_paid_rental_with_refund(
    offering, provider, tenant, eager_celery, django_capture_on_commit_callbacks
):
    overdue = age_payment(make_contract(tenant=tenant, offering=offering), hours=24.5)
    recent = age_payment(make_contract(tenant=make_user(email="recent@example.com"), offering=offering), hours=23)

    with django_capture_on_commit_callbacks(execute=True):
        rejected = reject_unanswered_rentals_task.apply().get()

    overdue.refresh_from_db()
    recent.refresh_from_db()
    payment = Payment.objects.get(contract=overdue)
    refund = Refund.objects.get(payment=payment)
    event = ContractEvent.objects.filter(contract=overdue).latest("id")
    assert rejected == [overdue.pk]
    assert overdue.status == ContractStatus.REJECTED
    assert "within 24 hours of payment" in overdue.status_reason
    assert overdue.ended_at is not None
    assert (event.from_status, event.to_status, event.actor_label) == ("paid", "rejected", "system")
    assert payment.status == PaymentStatus.REFUNDED
    assert (refund.status, refund.amount_cents) == (Refund.Status.SUCCEEDED, 700)
    assert recent.status == ContractStatus.PAID
    notified = Notification.objects.filter(contract=overdue, event="rental_request_expired")
    assert sorted(notified.values_list("recipient__email", flat=True)) == sorted([tenant.email, provider.user.email])
    subjects = sorted(message.subject for message in mail.outbox if "Hand-checked box" in message.subject and "rejected" in message.subject)
    assert subjects == [
        "Rental of Hand-checked box rejected and refunded",
        "Rental of Hand-checked box rejected: no answer in time",
    ]


def test_task_leaves_answered_and_auto_accepted_rentals(offering, tenant, django_capture_on_commit_callbacks):
    answered = age_payment(make_contract(tenant=tenant, offering=offering), hours=30)
    Contract.objects.filter(pk=answered.pk).update(status=ContractStatus.PROVISIONING)
    auto_provider = make_provider(display_name="Auto Compute")
    auto = age_payment(make_contract(tenant=tenant, offering=make_offering(provider=auto_provider)), hours=30)

    with django_capture_on_commit_callbacks(execute=False):
        rejected = reject_unanswered_rentals_task.apply().get()

    assert rejected == []
    assert Contract.objects.get(pk=answered.pk).status == ContractStatus.PROVISIONING
    assert Contract.objects.get(pk=auto.pk).status == ContractStatus.PROVISIONING


def test_deadline_follows_setting(offering, tenant, settings, django_capture_on_commit_callbacks):
    settings.PROVIDER_RESPONSE_DEADLINE_HOURS = 2
    contract = age_payment(make_contract(tenant=tenant, offering=offering), hours=3)

    with django_capture_on_commit_callbacks(execute=False):
        rejected = reject_unanswered_rentals_task.apply().get()

    assert contract.response_deadline == contract.paid_at + timedelta(hours=2)
    assert rejected == [contract.pk]


def test_task_is_scheduled_on_periodic_queue():
    schedule = django_settings.CELERY_BEAT_SCHEDULE["reject-unanswered-rentals"]

    assert schedule["task"] == "marketplace.tasks.reject_unanswered_rentals_task"
    assert schedule["options"]["expires"] < 300
    assert current_app.amqp.router.route({}, schedule["task"])["queue"].name == "periodic"


def test_deadline_shown_to_tenant_and_provider(client, provider, offering, tenant):
    contract = make_contract(tenant=tenant, offering=offering)
    deadline = (contract.paid_at + timedelta(hours=24)).strftime("%Y-%m-%d %H:%M")

    client.force_login(tenant)
    tenant_page = client.get(contract.get_absolute_url()).content.decode()
    tenant_rentals = client.get(reverse("marketplace:dashboard")).content.decode()
    client.force_login(provider.user)
    provider_page = client.get(contract.get_absolute_url()).content.decode()

    assert f"{deadline} UTC; without an answer the rental is rejected and refunded in full" in tenant_page
    assert f"provider answers by {deadline} UTC" in tenant_rentals
    assert f"Answer by {deadline} UTC, or it is rejected and refunded automatically." in provider_page
    paid_email = Notification.objects.get(contract=contract, event="rental_paid", recipient=provider.user)
    assert f"Answer by {deadline} UTC" in paid_email.body


# --- API ------------------------------------------------------------------------------------


def test_api_lists_rental_requests_with_filter(provider, offering, tenant):
    contract = make_contract(tenant=tenant, offering=offering)
    make_contract(tenant=make_user(email="unpaid@example.com"), offering=offering, pay=False)
    client = api_client(provider.user)

    everything = client.get("/api/v1/provider/rentals/")
    waiting = client.get("/api/v1/provider/rentals/", {"status": "paid"})
    invalid = client.get("/api/v1/provider/rentals/", {"status": "bogus"})

    rows = waiting.json()["results"]
    assert everything.json()["count"] == 2
    assert len(rows) == 1
    assert rows[0]["public_id"] == str(contract.public_id)
    assert rows[0]["tenant_email"] == "tenant@example.com"
    assert rows[0]["ssh_key_fingerprint"] == contract.ssh_key_fingerprint
    assert rows[0]["can_accept"] is True
    assert rows[0]["paid_at"] is not None
    assert rows[0]["response_deadline"].startswith((contract.paid_at + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M"))
    assert invalid.status_code == 400
    assert "status" in invalid.json()


def test_api_rental_requests_of_others_are_hidden(offering, tenant):
    contract = make_contract(tenant=tenant, offering=offering)
    other = api_client(make_provider(display_name="Other Compute").user)

    listing = other.get("/api/v1/provider/rentals/")
    accept = other.post(f"/api/v1/provider/rentals/{contract.public_id}/accept/")

    assert listing.json()["results"] == []
    assert accept.status_code == 404


def test_api_tenant_sees_deadline(offering, tenant):
    contract = make_contract(tenant=tenant, offering=offering)

    body = api_client(tenant).get(f"/api/v1/rentals/{contract.public_id}/").json()

    assert body["response_deadline"].startswith((contract.paid_at + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M"))


def test_api_can_accept_only_for_provider(provider, offering, tenant):
    # Found by a review: the tenant's view of a paid request returned can_accept true.
    contract = make_contract(tenant=tenant, offering=offering)
    url = f"/api/v1/rentals/{contract.public_id}/"

    tenant_view = api_client(tenant).get(url).json()
    provider_view = api_client(provider.user).get(url).json()

    assert tenant_view["can_accept"] is False
    assert provider_view["can_accept"] is True


def test_api_rental_requests_query_count(provider, offering, django_assert_num_queries):
    for index in range(5):
        make_contract(tenant=make_user(email=f"q{index}@example.com"), offering=offering)
    client = api_client(provider.user)

    # Session, user, COUNT and one SELECT with tenant, offering and provider joined.
    with django_assert_num_queries(4):
        response = client.get("/api/v1/provider/rentals/")

    assert response.json()["count"] == 5
