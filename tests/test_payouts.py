"""Payouts: monthly totals per beneficiary from the ledger, Stripe Connect onboarding and
transfers against the fake Stripe API, staff actions, and who may see and change what."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from celery import current_app
from django.conf import settings as django_settings
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from billing.ledger import ledger_record_payment, ledger_record_refund
from billing.models import (
    Dispute,
    LedgerEntry,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Payout,
    PayoutAccount,
    PayoutMethod,
    PayoutStatus,
    Refund,
)
from billing.payouts import (
    InvalidPayoutTransition,
    month_bounds,
    payout_account_onboarding_link,
    payout_mark_paid,
    payout_send_transfer,
    payout_transfer_retry,
    payouts_create_for_period,
    payouts_queue_stale_transfers,
    previous_month_bounds,
)
from billing.tasks import payouts_create_monthly_task
from marketplace.periods import add_months
from notifications.models import Event, Notification
from tests.factories import (
    make_contract,
    make_offering,
    make_provider,
    make_recipe,
    make_superuser,
    make_user,
)
from tests.peers.stripe_api import StripeApiServer

SECRET_KEY = "sk_test_local"
PRICE_CENTS = 500
# Shares of a 500-cent payment at the default rates: 20 % platform, 5 % recipe author.
PROVIDER_SHARE = 375
AUTHOR_SHARE = 25

LAST_MONTH = previous_month_bounds(timezone.now())
TWO_MONTHS_AGO = previous_month_bounds(LAST_MONTH[0])
THREE_MONTHS_AGO = previous_month_bounds(TWO_MONTHS_AGO[0])


@pytest.fixture
def stripe_api() -> Iterator[StripeApiServer]:
    with StripeApiServer(secret_key=SECRET_KEY) as server:
        yield server


@pytest.fixture
def connect(settings, stripe_api) -> StripeApiServer:
    """Turn Stripe Connect payouts on, against the fake Stripe API."""
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_API_BASE = stripe_api.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.STRIPE_CONNECT_ENABLED = True
    return stripe_api


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Run Celery tasks in this process, so a queued transfer is sent before the test checks it."""
    previous = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = previous


@pytest.fixture
def rental():
    """A paid rental of an offering whose recipe is by another user, so the author earns a share."""
    provider = make_provider(user=make_user(email="provider@example.com"))
    author = make_user(email="author@example.com")
    offering = make_offering(provider=provider, recipe_version=make_recipe(author=author), price_cents=PRICE_CENTS)
    contract = make_contract(tenant=make_user(email="tenant@example.com"), offering=offering)
    return {"provider": provider.user, "author": author, "contract": contract}


def card_payment(contract, *, start: dt.datetime) -> Payment:
    """Record a succeeded card payment for a one-month period from `start`, with its ledger split."""
    payment = Payment.objects.create(
        contract=contract,
        method=PaymentMethod.STRIPE,
        status=PaymentStatus.SUCCEEDED,
        amount_cents=contract.price_cents,
        currency=contract.currency,
        period_start=start,
        period_end=add_months(start, 1),
        reference=f"in_test_{start:%Y%m%d%H%M%S%f}",
    )
    ledger_record_payment(payment=payment)
    return payment


def card_refund(payment: Payment) -> Refund:
    """Record a succeeded full refund of `payment`, with its negative ledger entries."""
    refund = Refund.objects.create(
        payment=payment, amount_cents=payment.amount_cents, status=Refund.Status.SUCCEEDED, reason="Test refund."
    )
    ledger_record_refund(refund=refund)
    return refund


def run_month(bounds: tuple[dt.datetime, dt.datetime]) -> list[Payout]:
    return payouts_create_for_period(period_start=bounds[0], period_end=bounds[1])


def onboarded_account(stripe_api: StripeApiServer, user) -> PayoutAccount:
    """Create the user's Express account through the service and finish its onboarding at the fake."""
    payout_account_onboarding_link(user=user, return_url="http://127.0.0.1:9/r", refresh_url="http://127.0.0.1:9/f")
    account = PayoutAccount.objects.get(user=user)
    stripe_api.complete_onboarding(account.stripe_account_id)
    PayoutAccount.objects.filter(pk=account.pk).update(details_submitted=True, payouts_enabled=True)
    account.refresh_from_db()
    return account


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- creating payouts from the ledger ------------------------------------------------------------


@pytest.mark.django_db
def test_payout_per_beneficiary_and_month(rental):
    contract = rental["contract"]
    card_payment(contract, start=LAST_MONTH[0] + dt.timedelta(days=2))
    card_payment(contract, start=LAST_MONTH[0] + dt.timedelta(days=20))

    created = run_month(LAST_MONTH)

    by_user = {payout.beneficiary_id: payout for payout in created}
    provider_payout = by_user[rental["provider"].pk]
    author_payout = by_user[rental["author"].pk]
    assert len(created) == 2
    assert provider_payout.amount_cents == 2 * PROVIDER_SHARE
    assert author_payout.amount_cents == 2 * AUTHOR_SHARE
    assert provider_payout.currency == "EUR"
    assert provider_payout.period_start == LAST_MONTH[0]
    assert provider_payout.period_end == LAST_MONTH[1]
    assert provider_payout.method == PayoutMethod.MANUAL
    assert provider_payout.status == PayoutStatus.PENDING
    assert provider_payout.ledger_entries.aggregate(total=Sum("amount_cents"))["total"] == provider_payout.amount_cents
    assert provider_payout.events.get().to_status == PayoutStatus.PENDING


@pytest.mark.django_db
def test_sandbox_and_platform_entries_not_paid_out(rental):
    card_payment(rental["contract"], start=LAST_MONTH[0])

    run_month(LAST_MONTH)

    sandbox_entries = LedgerEntry.objects.filter(payment__method=PaymentMethod.SANDBOX)
    platform_entries = LedgerEntry.objects.filter(party="platform")
    assert sandbox_entries.exists()
    assert not sandbox_entries.filter(payout__isnull=False).exists()
    assert not platform_entries.filter(payout__isnull=False).exists()
    assert Payout.objects.count() == 2


@pytest.mark.django_db
def test_earlier_unpaid_month_joins_payout(rental):
    card_payment(rental["contract"], start=TWO_MONTHS_AGO[0])
    card_payment(rental["contract"], start=LAST_MONTH[0])

    run_month(LAST_MONTH)

    payout = Payout.objects.get(beneficiary=rental["provider"])
    assert payout.amount_cents == 2 * PROVIDER_SHARE
    assert payout.period_start == LAST_MONTH[0]


@pytest.mark.django_db
def test_refund_after_payout_nets_next_payout(rental):
    contract = rental["contract"]
    first = card_payment(contract, start=THREE_MONTHS_AGO[0])
    run_month(THREE_MONTHS_AGO)
    card_refund(first)

    nothing_two_months_ago = run_month(TWO_MONTHS_AGO)
    reversal = LedgerEntry.objects.get(beneficiary=rental["provider"], refund__isnull=False)
    card_payment(contract, start=LAST_MONTH[0])
    card_payment(contract, start=LAST_MONTH[0] + dt.timedelta(days=5))
    last_month = run_month(LAST_MONTH)

    provider_payouts = Payout.objects.filter(beneficiary=rental["provider"]).order_by("period_start")
    assert nothing_two_months_ago == []
    assert [payout.amount_cents for payout in provider_payouts] == [PROVIDER_SHARE, PROVIDER_SHARE]
    assert reversal.period_start == THREE_MONTHS_AGO[0]
    reversal.refresh_from_db()
    assert reversal.payout == provider_payouts[1]
    assert {payout.beneficiary_id for payout in last_month} == {rental["provider"].pk, rental["author"].pk}


@pytest.mark.django_db
def test_total_not_positive_carried_forward(rental):
    contract = rental["contract"]
    first = card_payment(contract, start=TWO_MONTHS_AGO[0])
    run_month(TWO_MONTHS_AGO)
    card_refund(first)
    card_payment(contract, start=LAST_MONTH[0])

    created = run_month(LAST_MONTH)

    unpaid = LedgerEntry.objects.filter(beneficiary=rental["provider"], payout__isnull=True, payment__method=PaymentMethod.STRIPE)
    assert created == []
    assert Payout.objects.filter(period_start=LAST_MONTH[0]).count() == 0
    assert unpaid.aggregate(total=Sum("amount_cents"))["total"] == 0
    assert unpaid.count() == 2


@pytest.mark.django_db
def test_period_must_be_closed_calendar_month():
    this_month = month_bounds(timezone.now().date())

    with pytest.raises(ValueError, match="expected a whole calendar month"):
        payouts_create_for_period(period_start=LAST_MONTH[0] + dt.timedelta(days=1), period_end=LAST_MONTH[1])
    with pytest.raises(ValueError, match="has not ended yet"):
        payouts_create_for_period(period_start=this_month[0], period_end=this_month[1])


@pytest.mark.django_db
def test_task_twice_pays_once(rental, connect, eager_celery, django_capture_on_commit_callbacks):
    onboarded_account(connect, rental["provider"])
    card_payment(rental["contract"], start=LAST_MONTH[0])

    with django_capture_on_commit_callbacks(execute=True):
        first = payouts_create_monthly_task.apply().get()
    with django_capture_on_commit_callbacks(execute=True):
        second = payouts_create_monthly_task.apply().get()

    assert len(first) == 2
    assert second == []
    assert Payout.objects.count() == 2
    assert len(connect.objects("transfer")) == 1
    assert django_settings.CELERY_BEAT_SCHEDULE["create-monthly-payouts"]["task"] == "billing.tasks.payouts_create_monthly_task"
    assert django_settings.CELERY_TASK_ROUTES["billing.tasks.payouts_create_monthly_task"] == {"queue": "periodic"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_pay_once(rental, connect, eager_celery):
    onboarded_account(connect, rental["provider"])
    onboarded_account(connect, rental["author"])
    for day in range(3):
        card_payment(rental["contract"], start=TWO_MONTHS_AGO[0] + dt.timedelta(days=day))
    for day in range(2):
        card_payment(rental["contract"], start=LAST_MONTH[0] + dt.timedelta(days=day))
    # Runs for two months at once compete for the older month's entries.
    months = [TWO_MONTHS_AGO, LAST_MONTH] * 3
    barrier = threading.Barrier(len(months))
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run(month) -> None:
        try:
            barrier.wait(timeout=10)
            results.append([payout.pk for payout in run_month(month)])
        except BaseException as exc:  # Reported by the assertions below.
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(month,)) for month in months]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    payouts = list(Payout.objects.order_by("pk"))
    totals = {
        user.pk: sum(payout.amount_cents for payout in payouts if payout.beneficiary_id == user.pk)
        for user in (rental["provider"], rental["author"])
    }
    transfers = connect.objects("transfer")
    assert errors == []
    assert sorted(pk for result in results for pk in result) == [payout.pk for payout in payouts]
    assert totals == {rental["provider"].pk: 5 * PROVIDER_SHARE, rental["author"].pk: 5 * AUTHOR_SHARE}
    for payout in payouts:
        assert payout.ledger_entries.aggregate(total=Sum("amount_cents"))["total"] == payout.amount_cents
        assert payout.status == PayoutStatus.PAID
    assert sum(transfer["amount"] for transfer in transfers) == 5 * (PROVIDER_SHARE + AUTHOR_SHARE)
    assert len(transfers) == len(payouts)


# --- Stripe Connect onboarding -----------------------------------------------------------------


@pytest.mark.django_db
def test_onboarding_round_trip(client, rental, connect):
    provider = rental["provider"]
    client.force_login(provider)

    before = client.get(reverse("billing:earnings"))
    setup = client.post(reverse("billing:payouts_setup"))
    account = PayoutAccount.objects.get(user=provider)
    stripe_account = connect.get(account.stripe_account_id)
    unfinished = client.get(reverse("billing:payouts_return"), follow=True)
    again = client.post(reverse("billing:payouts_setup"))
    connect.complete_onboarding(account.stripe_account_id)
    finished = client.get(reverse("billing:payouts_return"), follow=True)
    account.refresh_from_db()

    assert "Set up payouts" in before.text
    assert setup.status_code == 302
    assert setup["Location"].startswith(f"{connect.url}/connect/onboarding/{account.stripe_account_id}/")
    assert stripe_account["type"] == "express"
    assert stripe_account["email"] == "provider@example.com"
    assert stripe_account["metadata"] == {"user_id": str(provider.pk)}
    assert stripe_account["capabilities"] == {"transfers": "inactive"}
    link_request = next(r for r in connect.requests if r.path == "/v1/account_links")
    assert link_request.params["return_url"].endswith(reverse("billing:payouts_return"))
    assert link_request.params["refresh_url"].endswith(reverse("billing:payouts_refresh"))
    assert "Continue setup" in unfinished.text
    assert any("setup not finished" in message for message in messages_of(unfinished))
    assert again.status_code == 302
    assert len(connect.objects("account")) == 1
    assert account.details_submitted is True
    assert account.payouts_enabled is True
    assert "Ready for payouts" in finished.text
    assert "Continue setup" not in finished.text


@pytest.mark.django_db
def test_refresh_link_redirects_existing_account_only(client, rental, connect):
    client.force_login(rental["provider"])

    without_account = client.get(reverse("billing:payouts_refresh"))
    client.post(reverse("billing:payouts_setup"))
    with_account = client.get(reverse("billing:payouts_refresh"))

    assert without_account["Location"] == reverse("billing:earnings")
    assert with_account["Location"].startswith(f"{connect.url}/connect/onboarding/")
    assert len(connect.objects("account")) == 1


@pytest.mark.django_db
def test_setup_without_connect_shows_error(client, rental):
    client.force_login(rental["provider"])

    page = client.get(reverse("billing:earnings"))
    response = client.post(reverse("billing:payouts_setup"), follow=True)

    assert "Set up payouts" not in page.text
    assert any("not enabled" in message for message in messages_of(response))
    assert not PayoutAccount.objects.exists()


@pytest.mark.django_db
def test_setup_stripe_error_shown(client, rental, connect, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_wrong_key_0000"
    client.force_login(rental["provider"])

    response = client.post(reverse("billing:payouts_setup"), follow=True)

    assert response.status_code == 200
    assert any("Stripe could not create your payout account" in message for message in messages_of(response))
    assert not PayoutAccount.objects.exclude(stripe_account_id="").exists()


# --- Stripe transfers ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_transfer_success(rental, connect, eager_celery, django_capture_on_commit_callbacks):
    account = onboarded_account(connect, rental["provider"])
    card_payment(rental["contract"], start=LAST_MONTH[0])

    with django_capture_on_commit_callbacks(execute=True):
        run_month(LAST_MONTH)

    payout = Payout.objects.get(beneficiary=rental["provider"])
    author_payout = Payout.objects.get(beneficiary=rental["author"])
    transfer = connect.get(payout.stripe_transfer_id)
    create_request = next(r for r in connect.requests if r.path == "/v1/transfers" and r.method == "POST")
    assert payout.method == PayoutMethod.STRIPE_TRANSFER
    assert payout.status == PayoutStatus.PAID
    assert payout.paid_at is not None
    assert transfer["amount"] == PROVIDER_SHARE
    assert transfer["currency"] == "eur"
    assert transfer["destination"] == account.stripe_account_id
    assert transfer["transfer_group"] == f"payout-{payout.pk}"
    assert transfer["metadata"]["payout_id"] == str(payout.pk)
    assert create_request.headers["Idempotency-Key"] == f"payout-{payout.pk}-1"
    assert author_payout.method == PayoutMethod.MANUAL
    assert author_payout.status == PayoutStatus.PENDING
    assert Notification.objects.filter(event=Event.PAYOUT_SENT, recipient=rental["provider"]).count() == 1


@pytest.mark.django_db
def test_send_finds_transfer_made_before_crash(rental, connect):
    account = onboarded_account(connect, rental["provider"])
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])
    assert payout.status == PayoutStatus.PENDING
    earlier = connect.create_transfer(
        {"amount": payout.amount_cents, "currency": "eur", "destination": account.stripe_account_id, "transfer_group": f"payout-{payout.pk}"}
    )

    payout_send_transfer(payout_id=payout.pk)
    payout_send_transfer(payout_id=payout.pk)

    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PAID
    assert payout.stripe_transfer_id == earlier["id"]
    assert len(connect.objects("transfer")) == 1


@pytest.mark.django_db
def test_stale_pending_transfer_queued_again(rental, connect, eager_celery):
    onboarded_account(connect, rental["provider"])
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])

    too_early = payouts_queue_stale_transfers(now=timezone.now())
    queued = payouts_queue_stale_transfers(now=timezone.now() + dt.timedelta(hours=2))

    payout.refresh_from_db()
    assert too_early == []
    assert queued == [payout.pk]
    assert payout.status == PayoutStatus.PAID
    assert len(connect.objects("transfer")) == 1


@pytest.mark.django_db
def test_transfer_failure_then_staff_retry(rental, connect, eager_celery, django_capture_on_commit_callbacks):
    onboarded_account(connect, rental["provider"])
    staff = make_superuser(email="staff@example.com")
    staff_client = Client()
    staff_client.force_login(staff)
    card_payment(rental["contract"], start=LAST_MONTH[0])
    connect.fail_next_transfer(code="balance_insufficient")

    with django_capture_on_commit_callbacks(execute=True):
        run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])
    failed_error = payout.error
    failed_status = payout.status
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("admin:billing_payout_changelist"), {"action": "retry_transfer", "_selected_action": [payout.pk]}
        )
    payout.refresh_from_db()

    keys = [r.headers.get("Idempotency-Key") for r in connect.requests if r.path == "/v1/transfers" and r.method == "POST"]
    history = list(payout.events.values_list("from_status", "to_status", "actor_id"))
    assert failed_status == PayoutStatus.FAILED
    assert "balance_insufficient" in failed_error
    assert Notification.objects.filter(event=Event.PAYOUT_FAILED, recipient=staff).count() == 1
    assert response.status_code == 302
    assert any(f"payout(s) {payout.pk}" in message for message in messages_of(response))
    assert payout.status == PayoutStatus.PAID
    assert payout.transfer_attempt == 2
    assert payout.error == ""
    assert keys == [f"payout-{payout.pk}-1", f"payout-{payout.pk}-2"]
    assert len(connect.objects("transfer")) == 1
    assert history == [
        ("", PayoutStatus.PENDING, None),
        (PayoutStatus.PENDING, PayoutStatus.FAILED, None),
        (PayoutStatus.FAILED, PayoutStatus.PENDING, staff.pk),
        (PayoutStatus.PENDING, PayoutStatus.PAID, None),
    ]


@pytest.mark.django_db
def test_retry_rejects_payout_not_failed(rental, connect):
    staff_client = Client()
    staff_client.force_login(make_superuser(email="staff@example.com"))
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])

    response = staff_client.post(
        reverse("admin:billing_payout_changelist"), {"action": "retry_transfer", "_selected_action": [payout.pk]}
    )

    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PENDING
    assert payout.transfer_attempt == 1
    assert any(f"Payout {payout.pk} cannot be retried" in message for message in messages_of(response))


# --- manual payouts by staff ---------------------------------------------------------------------


def staff_and_provider_payout(rental) -> tuple:
    """Return a staff user, a client signed in as them, and the provider's pending payout of last month."""
    staff = make_superuser(email="staff@example.com")
    staff_client = Client()
    staff_client.force_login(staff)
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    return staff, staff_client, Payout.objects.get(beneficiary=rental["provider"])


@pytest.mark.django_db
def test_mark_paid_out_admin_action(rental, django_capture_on_commit_callbacks):
    staff, staff_client, payout = staff_and_provider_payout(rental)
    url = reverse("admin:billing_payout_changelist")

    form_page = staff_client.post(url, {"action": "mark_paid_out", "_selected_action": [payout.pk]})
    empty_note = staff_client.post(url, {"action": "mark_paid_out", "_selected_action": [payout.pk], "apply": "1", "note": " "})
    still_pending = Payout.objects.get(pk=payout.pk).status
    with django_capture_on_commit_callbacks(execute=False):
        done = staff_client.post(
            url, {"action": "mark_paid_out", "_selected_action": [payout.pk], "apply": "1", "note": "SEPA ref 2026-0042"}
        )
    payout.refresh_from_db()

    assert form_page.status_code == 200
    assert "provider@example.com" in form_page.text
    assert 'name="note"' in form_page.text
    assert empty_note.status_code == 200
    assert "This field is required." in empty_note.text
    assert still_pending == PayoutStatus.PENDING
    assert done.status_code == 302
    assert payout.status == PayoutStatus.PAID
    assert payout.method == PayoutMethod.MANUAL
    assert payout.marked_by == staff
    assert payout.note == "SEPA ref 2026-0042"
    assert payout.paid_at is not None
    assert payout.events.last().actor == staff
    assert Notification.objects.filter(event=Event.PAYOUT_SENT, recipient=rental["provider"]).exists()


@pytest.mark.django_db
def test_mark_paid_out_form_counts_crlf_once(rental, django_capture_on_commit_callbacks):
    # Found by a review: a note within the textarea's limit was rejected because browsers send CRLF.
    _staff, staff_client, payout = staff_and_provider_payout(rental)
    note = "line\r\n" * 399 + "end"

    with django_capture_on_commit_callbacks(execute=False):
        response = staff_client.post(
            reverse("admin:billing_payout_changelist"),
            {"action": "mark_paid_out", "_selected_action": [payout.pk], "apply": "1", "note": note},
        )

    payout.refresh_from_db()
    assert response.status_code == 302
    assert payout.status == PayoutStatus.PAID
    assert payout.note == note.replace("\r\n", "\n")


@pytest.mark.django_db
def test_mark_paid_rejects_paid_and_empty_note(rental):
    staff = make_superuser(email="staff@example.com")
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])
    author_payout = Payout.objects.get(beneficiary=rental["author"])
    payout_mark_paid(payout=payout, staff_user=staff, note="Bank transfer.")

    with pytest.raises(InvalidPayoutTransition, match="cannot be marked paid out: it is paid"):
        payout_mark_paid(payout=payout, staff_user=staff, note="Again.")
    with pytest.raises(ValidationError, match="Missing note"):
        payout_mark_paid(payout=author_payout, staff_user=staff, note="  ")
    author_payout.refresh_from_db()
    assert author_payout.status == PayoutStatus.PENDING


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("note", "message"),
    [
        # Found by a review: a right-to-left override made the note read differently in admin.
        ("SEPA ref \u202e2400-FER", r"U\+202E"),
        ("ref " + "x" * 2000, "2004 characters, the limit is 2000"),
    ],
    ids=["bidi-override", "too-long"],
)
def test_mark_paid_rejects_bad_note(rental, note, message):
    staff = make_superuser(email="staff@example.com")
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])

    with pytest.raises(ValidationError, match=message):
        payout_mark_paid(payout=payout, staff_user=staff, note=note)

    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PENDING
    assert payout.note == ""


@pytest.mark.django_db
def test_mark_paid_rejects_pending_stripe_payout(rental, connect):
    staff = make_superuser(email="staff@example.com")
    onboarded_account(connect, rental["provider"])
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])

    with pytest.raises(InvalidPayoutTransition, match="it is pending"):
        payout_mark_paid(payout=payout, staff_user=staff, note="Paid by bank.")

    payout.refresh_from_db()
    assert payout.method == PayoutMethod.STRIPE_TRANSFER
    assert payout.status == PayoutStatus.PENDING


@pytest.mark.django_db
def test_mark_paid_failed_transfer_checks_stripe(rental, connect, eager_celery, django_capture_on_commit_callbacks):
    staff = make_superuser(email="staff@example.com")
    account = onboarded_account(connect, rental["provider"])
    card_payment(rental["contract"], start=LAST_MONTH[0])
    connect.fail_next_transfer(code="api_error")
    with django_capture_on_commit_callbacks(execute=True):
        run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])
    assert payout.status == PayoutStatus.FAILED
    # The request failed for the platform but, as after a lost response, Stripe made the transfer.
    transfer_at_stripe = connect.create_transfer(
        {"amount": payout.amount_cents, "currency": "eur", "destination": account.stripe_account_id, "transfer_group": f"payout-{payout.pk}"}
    )

    with pytest.raises(InvalidPayoutTransition, match=f"Stripe transfer {transfer_at_stripe['id']} already paid it"):
        payout_mark_paid(payout=payout, staff_user=staff, note="Paid by bank.")
    with django_capture_on_commit_callbacks(execute=True):
        payout_transfer_retry(payout=payout, staff_user=staff)

    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PAID
    assert payout.method == PayoutMethod.STRIPE_TRANSFER
    assert payout.stripe_transfer_id == transfer_at_stripe["id"]
    assert len(connect.objects("transfer")) == 1


@pytest.mark.django_db
def test_mark_paid_failed_transfer_without_transfer(rental, connect, eager_celery, django_capture_on_commit_callbacks):
    staff = make_superuser(email="staff@example.com")
    onboarded_account(connect, rental["provider"])
    card_payment(rental["contract"], start=LAST_MONTH[0])
    connect.fail_next_transfer()
    with django_capture_on_commit_callbacks(execute=True):
        run_month(LAST_MONTH)
    payout = Payout.objects.get(beneficiary=rental["provider"])

    payout_mark_paid(payout=payout, staff_user=staff, note="Paid by bank after the transfer failed.")

    payout.refresh_from_db()
    assert payout.status == PayoutStatus.PAID
    assert payout.method == PayoutMethod.MANUAL
    assert payout.stripe_transfer_id == ""
    assert connect.objects("transfer") == []


# --- authorization -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_non_staff_cannot_mark_paid(rental):
    card_payment(rental["contract"], start=LAST_MONTH[0])
    payout = Payout.objects.get(pk=run_month(LAST_MONTH)[0].pk)
    provider_client = Client()
    provider_client.force_login(rental["provider"])

    with pytest.raises(PermissionDenied):
        payout_mark_paid(payout=payout, staff_user=rental["provider"], note="I paid myself.")
    response = provider_client.post(
        reverse("admin:billing_payout_changelist"),
        {"action": "mark_paid_out", "_selected_action": [payout.pk], "apply": "1", "note": "I paid myself."},
    )

    payout.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert payout.status == PayoutStatus.PENDING


@pytest.mark.django_db
def test_api_lists_own_payouts_only(rental):
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    provider_payout = Payout.objects.get(beneficiary=rental["provider"])
    author_payout = Payout.objects.get(beneficiary=rental["author"])
    provider_api = APIClient()
    provider_api.force_authenticate(rental["provider"])

    listed = provider_api.get("/api/v1/billing/payouts/")
    own = provider_api.get(f"/api/v1/billing/payouts/{provider_payout.pk}/")
    other = provider_api.get(f"/api/v1/billing/payouts/{author_payout.pk}/")
    anonymous = APIClient().get("/api/v1/billing/payouts/")

    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["results"]] == [provider_payout.pk]
    assert own.json()["amount_cents"] == PROVIDER_SHARE
    assert own.json()["month"] == f"{LAST_MONTH[0]:%Y-%m}"
    assert own.json()["status"] == "pending"
    assert other.status_code == 404
    assert anonymous.status_code == 401


@pytest.mark.django_db
def test_api_payouts_query_count(rental, django_assert_num_queries):
    for month in (THREE_MONTHS_AGO, TWO_MONTHS_AGO, LAST_MONTH):
        card_payment(rental["contract"], start=month[0])
        run_month(month)
    provider_api = APIClient()
    provider_api.force_authenticate(rental["provider"])

    # Count and page of payouts.
    with django_assert_num_queries(2):
        response = provider_api.get("/api/v1/billing/payouts/")

    assert response.json()["count"] == 3


@pytest.mark.django_db
def test_api_onboarding_link(rental, connect):
    provider_api = APIClient()
    provider_api.force_authenticate(rental["provider"])

    response = provider_api.post("/api/v1/billing/payouts/onboarding-link/")

    account = PayoutAccount.objects.get(user=rental["provider"])
    assert response.status_code == 201
    assert response.json()["url"].startswith(f"{connect.url}/connect/onboarding/{account.stripe_account_id}/")
    assert response.json()["payouts_enabled"] is False


@pytest.mark.django_db
def test_api_onboarding_link_without_connect(rental):
    provider_api = APIClient()
    provider_api.force_authenticate(rental["provider"])

    response = provider_api.post("/api/v1/billing/payouts/onboarding-link/")
    anonymous = APIClient().post("/api/v1/billing/payouts/onboarding-link/")

    assert response.status_code == 409
    assert "not enabled" in response.json()["detail"]
    assert anonymous.status_code == 401


# --- earnings page -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_earnings_page_shows_payouts(client, rental):
    staff = make_superuser(email="staff@example.com")
    card_payment(rental["contract"], start=TWO_MONTHS_AGO[0])
    run_month(TWO_MONTHS_AGO)
    card_payment(rental["contract"], start=LAST_MONTH[0])
    run_month(LAST_MONTH)
    paid = Payout.objects.get(beneficiary=rental["provider"], period_start=TWO_MONTHS_AGO[0])
    payout_mark_paid(payout=paid, staff_user=staff, note="SEPA ref 77")
    stranger = make_user(email="stranger@example.com")
    client.force_login(rental["provider"])

    page = client.get(reverse("billing:earnings")).text
    client.force_login(stranger)
    stranger_page = client.get(reverse("billing:earnings")).text

    assert "Payouts" in page
    assert TWO_MONTHS_AGO[0].strftime("%B %Y") in page
    assert "SEPA ref 77" in page
    assert "Manual (by staff)" in page
    assert ">Paid<" in page
    assert ">Pending<" in page
    assert "Month not over" in page
    assert "No payouts yet." in stranger_page
    assert "SEPA ref 77" not in stranger_page



@pytest.mark.django_db
def test_shares_of_disputed_payment_held_until_dispute_closes(rental):
    contract = rental["contract"]
    disputed = card_payment(contract, start=TWO_MONTHS_AGO[0])
    dispute = Dispute.objects.create(
        payment=disputed, dispute_id="dp_held", amount_cents=disputed.amount_cents, currency="EUR", status="needs_response"
    )

    while_open = run_month(TWO_MONTHS_AGO)
    Dispute.objects.filter(pk=dispute.pk).update(status="won")
    card_payment(contract, start=LAST_MONTH[0])
    after_close = run_month(LAST_MONTH)

    held = LedgerEntry.objects.get(payment=disputed, beneficiary=rental["provider"])
    provider_payout = Payout.objects.get(beneficiary=rental["provider"])
    assert while_open == []
    assert provider_payout in after_close
    assert provider_payout.amount_cents == 2 * PROVIDER_SHARE
    assert held.payout == provider_payout


@pytest.mark.django_db
def test_open_dispute_holds_only_the_disputed_payment(rental):
    contract = rental["contract"]
    disputed = card_payment(contract, start=LAST_MONTH[0])
    card_payment(contract, start=LAST_MONTH[0] + dt.timedelta(days=3))
    Dispute.objects.create(
        payment=disputed, dispute_id="dp_open", amount_cents=disputed.amount_cents, currency="EUR", status="under_review"
    )

    run_month(LAST_MONTH)

    assert Payout.objects.get(beneficiary=rental["provider"]).amount_cents == PROVIDER_SHARE
    assert not LedgerEntry.objects.filter(payment=disputed, payout__isnull=False).exists()
