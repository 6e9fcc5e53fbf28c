"""Payouts of ledger earnings to providers and recipe authors.

Each closed calendar month (UTC), the unpaid ledger entries of each beneficiary and currency
become one `Payout`. With Stripe Connect enabled and the beneficiary's Express account ready,
a worker sends it as a Stripe transfer after commit. Otherwise staff pay it outside the platform
and mark it paid out. Every status change writes a `PayoutEvent`.

Only entries of payments that moved real money (card payments through Stripe) are paid out.
Sandbox payments are simulated, so their shares never become a payout.
"""

from __future__ import annotations

import datetime as dt
import logging

import stripe
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.gateway import StripeNotConfigured, stripe_client, stripe_enabled
from billing.models import (
    Dispute,
    LedgerEntry,
    PaymentMethod,
    Payout,
    PayoutAccount,
    PayoutEvent,
    PayoutMethod,
    PayoutStatus,
)
from marketplace.validators import validate_multiline_text
from notifications.models import Event
from notifications.services import notify

logger = logging.getLogger(__name__)

# Payment methods whose ledger shares are paid out. Sandbox and free payments move no money.
PAYABLE_PAYMENT_METHODS = (PaymentMethod.STRIPE,)
# Stripe's dispute statuses that end a dispute. Shares of a payment with any other dispute are
# held: the bank may still take the money back, and a lost dispute reverses them in the ledger.
CLOSED_DISPUTE_STATUSES = ("won", "lost", "warning_closed")
PAYOUT_NOTE_MAX_CHARS = 2000
# The monthly payout task queues the transfer of a pending Stripe payout unchanged for this long
# again, in case its task message was lost.
# NOTE: so a lost transfer task waits up to a month unless staff look at pending payouts.
STALE_TRANSFER_AGE = dt.timedelta(hours=1)


class PayoutsUnavailable(Exception):
    """Stripe Connect payouts are not enabled on this installation."""


class PayoutStripeError(Exception):
    """A Stripe call for a payout account failed; the message is safe to show the user."""


class InvalidPayoutTransition(Exception):
    """The payout is not in a status from which the requested change is allowed."""

    def __init__(self, payout: Payout, action: str, reason: str = ""):
        reason = reason or f"it is {payout.get_status_display().lower()}"
        super().__init__(f"Payout {payout.pk} cannot {action}: {reason}.")
        self.payout = payout


def connect_enabled() -> bool:
    """Return whether payouts go through Stripe Connect (STRIPE_CONNECT_ENABLED and a secret key)."""
    return settings.STRIPE_CONNECT_ENABLED and stripe_enabled()


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Return the first instant of `month` and of the month after, in UTC."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def previous_month_bounds(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Return the bounds of the calendar month (UTC) before the one containing `now`."""
    current = now.astimezone(dt.UTC)
    first_of_current = dt.date(current.year, current.month, 1)
    return month_bounds(first_of_current - dt.timedelta(days=1))


# -- payout accounts (Stripe Connect Express) ---------------------------------------------------


def _require_connect() -> None:
    if not connect_enabled():
        raise PayoutsUnavailable(
            "Stripe Connect payouts are not enabled on this installation, so staff pay out earnings manually."
        )


def payout_account_update_from_stripe(*, stripe_account) -> PayoutAccount | None:
    """Store the onboarding state of a Stripe account object (retrieved, or from `account.updated`).

    Returns the updated row, or None when no user has this account id.
    """
    account = PayoutAccount.objects.filter(stripe_account_id=stripe_account["id"]).first()
    if account is None:
        logger.warning("Stripe account %s not found among payout accounts, so the update is ignored", stripe_account["id"])
        return None
    account.details_submitted = bool(stripe_account["details_submitted"])
    account.payouts_enabled = bool(stripe_account["payouts_enabled"])
    account.save(update_fields=["details_submitted", "payouts_enabled", "updated_at"])
    logger.info(
        "Payout account %s of user %s: details_submitted=%s payouts_enabled=%s",
        account.stripe_account_id, account.user_id, account.details_submitted, account.payouts_enabled,
    )
    return account


def _payout_account_ensure_stripe(*, user) -> PayoutAccount:
    """Return the user's payout account, creating its Express account at Stripe the first time.

    The Stripe call runs outside any transaction. Its idempotency key is per user, so two
    concurrent first requests, or a retry after a crash before the id was stored, get the same
    Stripe account back.
    """
    account, _ = PayoutAccount.objects.get_or_create(user=user)
    if account.stripe_account_id:
        return account
    try:
        created = stripe_client().v1.accounts.create(
            params={
                "type": "express",
                "email": user.email,
                "capabilities": {"transfers": {"requested": True}},
                "metadata": {"user_id": str(user.pk)},
            },
            options={"idempotency_key": f"payout-account-{user.pk}"},
        )
    except stripe.StripeError as exc:
        logger.warning("Creating the Stripe account of user %s failed: %s", user.pk, exc)
        raise PayoutStripeError(f"Stripe could not create your payout account: {exc.user_message or exc}") from exc
    PayoutAccount.objects.filter(pk=account.pk, stripe_account_id="").update(
        stripe_account_id=created.id,
        details_submitted=bool(created.details_submitted),
        payouts_enabled=bool(created.payouts_enabled),
        updated_at=timezone.now(),
    )
    account.refresh_from_db()
    logger.info("Stripe account %s created for user %s", account.stripe_account_id, user.pk)
    return account


def payout_account_onboarding_link(*, user, return_url: str, refresh_url: str) -> str:
    """Return the URL of a Stripe onboarding form for the user's Express account.

    Creates the account at Stripe on the first call. Account links are single-use and expire
    after a few minutes, so each call creates a new one. Raises PayoutsUnavailable when Connect
    is off and PayoutStripeError when Stripe rejects a call.
    """
    _require_connect()
    account = _payout_account_ensure_stripe(user=user)
    try:
        link = stripe_client().v1.account_links.create(
            params={
                "account": account.stripe_account_id,
                "type": "account_onboarding",
                "return_url": return_url,
                "refresh_url": refresh_url,
            }
        )
    except stripe.StripeError as exc:
        logger.warning("Account link for Stripe account %s of user %s failed: %s", account.stripe_account_id, user.pk, exc)
        raise PayoutStripeError(f"Stripe could not start payout setup: {exc.user_message or exc}") from exc
    logger.info("Onboarding link created for Stripe account %s of user %s", account.stripe_account_id, user.pk)
    return link.url


def payout_account_refresh(*, user) -> PayoutAccount | None:
    """Read the user's Express account from Stripe and store its onboarding state.

    Returns None when the user has no Stripe account yet.
    """
    _require_connect()
    account = PayoutAccount.objects.filter(user=user).exclude(stripe_account_id="").first()
    if account is None:
        return None
    try:
        stripe_account = stripe_client().v1.accounts.retrieve(account.stripe_account_id)
    except stripe.StripeError as exc:
        logger.warning("Reading Stripe account %s of user %s failed: %s", account.stripe_account_id, user.pk, exc)
        raise PayoutStripeError(f"Stripe could not report your payout account status: {exc.user_message or exc}") from exc
    return payout_account_update_from_stripe(stripe_account=stripe_account)


# -- creating payouts ---------------------------------------------------------------------------


def _record_event(payout: Payout, *, from_status: str, actor=None, reason: str) -> None:
    PayoutEvent.objects.create(payout=payout, from_status=from_status, to_status=payout.status, actor=actor, reason=reason)


def _method_for(beneficiary_id: int) -> str:
    if not connect_enabled():
        return PayoutMethod.MANUAL
    ready = PayoutAccount.objects.filter(user_id=beneficiary_id, payouts_enabled=True).exclude(stripe_account_id="")
    return PayoutMethod.STRIPE_TRANSFER if ready.exists() else PayoutMethod.MANUAL


def _queue_transfer(payout: Payout) -> None:
    from billing.tasks import payout_send_transfer_task

    payout_id = payout.pk
    transaction.on_commit(lambda: payout_send_transfer_task.delay(payout_id))


def _unpaid_entries(*, period_end: dt.datetime):
    """Unpaid beneficiary entries of paid periods starting before `period_end`, without disputed payments."""
    disputed = Dispute.objects.exclude(status__in=CLOSED_DISPUTE_STATUSES).values("payment_id")
    return LedgerEntry.objects.filter(
        beneficiary__isnull=False,
        payout__isnull=True,
        period_start__lt=period_end,
        payment__method__in=PAYABLE_PAYMENT_METHODS,
    ).exclude(payment_id__in=disputed)


def _payable_entries(*, beneficiary_id: int, currency: str, period_end: dt.datetime):
    return _unpaid_entries(period_end=period_end).filter(beneficiary_id=beneficiary_id, currency=currency)


def _payout_create(*, beneficiary_id: int, currency: str, period_start: dt.datetime, period_end: dt.datetime) -> Payout | None:
    """Create one payout from the unpaid entries of one beneficiary and currency, or return None.

    The entries are locked first. A concurrent run that waited on those locks finds them paid
    (PostgreSQL rechecks `payout IS NULL` on the locked rows) and creates nothing. The unique
    constraint on (beneficiary, currency, month) stops a second payout for the same month.
    """
    with transaction.atomic():
        entries = list(
            _payable_entries(beneficiary_id=beneficiary_id, currency=currency, period_end=period_end)
            .select_for_update(of=("self",))
            .order_by("pk")
            .values_list("pk", "amount_cents")
        )
        total = sum(amount for _, amount in entries)
        if not entries or total <= 0:
            if entries:
                logger.info(
                    "User %s has %s %s unpaid up to %s, not more than zero, so it is carried forward",
                    beneficiary_id, total, currency, period_end.date(),
                )
            return None
        if Payout.objects.filter(beneficiary_id=beneficiary_id, currency=currency, period_start=period_start).exists():
            logger.info(
                "User %s already has a %s payout for %s, so %s newer entries wait for the next one",
                beneficiary_id, currency, period_start.date(), len(entries),
            )
            return None
        try:
            with transaction.atomic():
                payout = Payout.objects.create(
                    beneficiary_id=beneficiary_id,
                    currency=currency,
                    period_start=period_start,
                    period_end=period_end,
                    amount_cents=total,
                    method=_method_for(beneficiary_id),
                )
        except IntegrityError:
            logger.info("Payout of user %s in %s for %s was created concurrently", beneficiary_id, currency, period_start.date())
            return None
        LedgerEntry.objects.filter(pk__in=[pk for pk, _ in entries]).update(payout=payout)
        reason = (
            "Created; the transfer is queued." if payout.method == PayoutMethod.STRIPE_TRANSFER
            else "Created; waiting for staff to pay it out."
        )
        _record_event(payout, from_status="", reason=reason)
        if payout.method == PayoutMethod.STRIPE_TRANSFER:
            _queue_transfer(payout)
    logger.info(
        "Payout %s created for user %s: %s %s from %s entries, method %s",
        payout.pk, beneficiary_id, total, currency, len(entries), payout.method,
    )
    return payout


def payouts_create_for_period(*, period_start: dt.datetime, period_end: dt.datetime) -> list[Payout]:
    """Create the payouts for one closed calendar month (UTC) and return them.

    For each beneficiary and currency, one payout sums every unpaid entry whose paid period
    starts before `period_end`, so entries of earlier months that were not paid out yet are
    included. A total of zero or less creates nothing and stays unpaid for the next month. Shares
    of a payment under an open dispute wait until the dispute is closed. Raises ValueError unless the bounds are a whole calendar month that has ended.
    """
    expected_start, expected_end = month_bounds(period_start.astimezone(dt.UTC).date())
    if period_start != expected_start or period_end != expected_end:
        raise ValueError(
            f"Invalid payout period {period_start.isoformat()} to {period_end.isoformat()}: expected a whole "
            f"calendar month in UTC, for example {expected_start.isoformat()} to {expected_end.isoformat()}."
        )
    if period_end > timezone.now():
        raise ValueError(f"The month starting {period_start:%Y-%m-%d} has not ended yet; pay it out after {period_end.isoformat()}.")
    groups = (
        _unpaid_entries(period_end=period_end)
        .values_list("beneficiary_id", "currency")
        .distinct()
        .order_by("beneficiary_id", "currency")
    )
    created = []
    for beneficiary_id, currency in list(groups):
        payout = _payout_create(beneficiary_id=beneficiary_id, currency=currency, period_start=period_start, period_end=period_end)
        if payout is not None:
            created.append(payout)
    logger.info("Payouts for %s: %s created", period_start.date(), len(created))
    return created


def payouts_queue_stale_transfers(*, now: dt.datetime | None = None) -> list[int]:
    """Queue the transfer of each pending Stripe payout untouched for STALE_TRANSFER_AGE again.

    Covers a transfer task that was lost before it ran. Sending twice is safe because a send
    first looks for a transfer of the payout and reuses the idempotency key of its attempt.
    """
    cutoff = (now or timezone.now()) - STALE_TRANSFER_AGE
    stale = list(
        Payout.objects.filter(
            method=PayoutMethod.STRIPE_TRANSFER, status=PayoutStatus.PENDING, updated_at__lt=cutoff
        ).order_by("pk").values_list("pk", flat=True)
    )
    from billing.tasks import payout_send_transfer_task

    for payout_id in stale:
        payout_send_transfer_task.delay(payout_id)
    if stale:
        logger.info("Queued stale payout transfers again: %s", stale)
    return stale


# -- Stripe transfers ---------------------------------------------------------------------------


def _transfer_group(payout: Payout) -> str:
    return f"payout-{payout.pk}"


def _find_transfer(payout: Payout):
    """Return the Stripe transfer already made for `payout`, or None; raises stripe.StripeError."""
    found = stripe_client().v1.transfers.list(params={"transfer_group": _transfer_group(payout), "limit": 1})
    return found.data[0] if found.data else None


def payout_send_transfer(*, payout_id: int) -> Payout | None:
    """Send a pending Stripe payout as a transfer to the beneficiary's Express account.

    Runs outside a transaction because it calls Stripe. It first looks for a transfer already
    made for this payout (its `transfer_group` is `payout-<id>`), so a send after a lost response
    never pays twice. The idempotency key `payout-<id>-<attempt>` makes concurrent sends of the
    same attempt one transfer. Success marks the payout paid; a Stripe error marks it failed
    and alerts staff, who can retry it.
    """
    payout = Payout.objects.filter(pk=payout_id).first()
    if payout is None:
        logger.info("Payout %s no longer exists; no transfer sent", payout_id)
        return None
    if payout.status != PayoutStatus.PENDING or payout.method != PayoutMethod.STRIPE_TRANSFER:
        logger.info("Payout %s is %s by %s; no transfer sent", payout.pk, payout.status, payout.method)
        return payout
    attempt = payout.transfer_attempt
    account = PayoutAccount.objects.filter(user_id=payout.beneficiary_id).first()
    if account is None or not account.stripe_account_id:
        return payout_transfer_fail(
            payout_id=payout.pk, attempt=attempt,
            error="The beneficiary has no Stripe account. Ask them to set up payouts, or mark the payout paid out manually.",
        )
    try:
        transfer = _find_transfer(payout)
        if transfer is not None:
            logger.info("Payout %s already has transfer %s, so it is recorded and none is created", payout.pk, transfer.id)
        else:
            transfer = stripe_client().v1.transfers.create(
                params={
                    "amount": payout.amount_cents,
                    "currency": payout.currency.lower(),
                    "destination": account.stripe_account_id,
                    "transfer_group": _transfer_group(payout),
                    "metadata": {"payout_id": str(payout.pk), "user_id": str(payout.beneficiary_id)},
                },
                options={"idempotency_key": f"payout-{payout.pk}-{attempt}"},
            )
    except (stripe.StripeError, StripeNotConfigured) as exc:
        logger.warning("Transfer of payout %s (attempt %s) to %s failed: %s", payout.pk, attempt, account.stripe_account_id, exc)
        return payout_transfer_fail(payout_id=payout.pk, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
    return payout_transfer_succeed(payout_id=payout.pk, attempt=attempt, transfer_id=transfer.id)


def _lock_attempt(payout_id: int, attempt: int) -> Payout | None:
    """Lock the payout and return it if it is still pending at `attempt`, else None."""
    payout = Payout.objects.select_for_update().get(pk=payout_id)
    if payout.status != PayoutStatus.PENDING or payout.transfer_attempt != attempt:
        logger.info(
            "Payout %s is %s at attempt %s; result of attempt %s not recorded",
            payout.pk, payout.status, payout.transfer_attempt, attempt,
        )
        return None
    return payout


def payout_transfer_succeed(*, payout_id: int, attempt: int, transfer_id: str) -> Payout:
    """Mark a pending Stripe payout paid by `transfer_id` and notify the beneficiary."""
    with transaction.atomic():
        payout = _lock_attempt(payout_id, attempt)
        if payout is None:
            return Payout.objects.get(pk=payout_id)
        payout.status = PayoutStatus.PAID
        payout.stripe_transfer_id = transfer_id
        payout.paid_at = timezone.now()
        payout.error = ""
        payout.save(update_fields=["status", "stripe_transfer_id", "paid_at", "error", "updated_at"])
        _record_event(payout, from_status=PayoutStatus.PENDING, reason=f"Stripe transfer {transfer_id} created.")
        notify(event=Event.PAYOUT_SENT, recipient=payout.beneficiary, context={"payout": payout})
    logger.info("Payout %s paid by Stripe transfer %s", payout.pk, transfer_id)
    return payout


def payout_transfer_fail(*, payout_id: int, attempt: int, error: str) -> Payout:
    """Mark a pending Stripe payout failed with `error` and alert every active staff user."""
    with transaction.atomic():
        payout = _lock_attempt(payout_id, attempt)
        if payout is None:
            return Payout.objects.get(pk=payout_id)
        payout.status = PayoutStatus.FAILED
        payout.error = error[:2000]
        payout.save(update_fields=["status", "error", "updated_at"])
        _record_event(payout, from_status=PayoutStatus.PENDING, reason=f"Transfer attempt {attempt} failed: {payout.error}")
        for staff in get_user_model().objects.filter(is_staff=True, is_active=True).order_by("pk"):
            notify(event=Event.PAYOUT_FAILED, recipient=staff, context={"payout": payout})
    logger.warning("Payout %s failed at attempt %s: %s", payout.pk, attempt, error)
    return payout


# -- staff actions -------------------------------------------------------------------------------


def _require_staff(user) -> None:
    if not (user and user.is_active and user.is_staff):
        raise PermissionDenied("Only staff can change payouts.")


def _check_no_transfer(payout: Payout) -> None:
    action = "be marked paid out"
    try:
        transfer = _find_transfer(payout)
    except stripe.StripeError as exc:
        logger.warning("Looking up transfers of payout %s failed: %s", payout.pk, exc)
        raise InvalidPayoutTransition(
            payout, action, f"checking Stripe for an earlier transfer failed ({exc}), so try again later"
        ) from exc
    if transfer is not None:
        raise InvalidPayoutTransition(
            payout, action, f"Stripe transfer {transfer.id} already paid it, so retry the transfer to record that"
        )


def payout_transfer_retry(*, payout: Payout, staff_user) -> Payout:
    """Queue a failed Stripe payout for a new transfer attempt, as `staff_user`."""
    _require_staff(staff_user)
    _require_connect()
    with transaction.atomic():
        locked = Payout.objects.select_for_update().get(pk=payout.pk)
        if not locked.can_retry_transfer():
            raise InvalidPayoutTransition(locked, "be retried as a Stripe transfer")
        ready = PayoutAccount.objects.filter(user_id=locked.beneficiary_id, payouts_enabled=True).exclude(stripe_account_id="")
        if not ready.exists():
            raise InvalidPayoutTransition(
                locked, "be retried as a Stripe transfer",
                "its beneficiary has not finished Stripe payout setup, so mark it paid out manually instead",
            )
        locked.status = PayoutStatus.PENDING
        locked.transfer_attempt += 1
        locked.save(update_fields=["status", "transfer_attempt", "updated_at"])
        _record_event(locked, from_status=PayoutStatus.FAILED, actor=staff_user, reason=f"Transfer attempt {locked.transfer_attempt} queued by staff.")
        _queue_transfer(locked)
    logger.info("Payout %s transfer attempt %s queued by staff user %s", locked.pk, locked.transfer_attempt, staff_user.pk)
    return locked


def payout_mark_paid(*, payout: Payout, staff_user, note: str) -> Payout:
    """Record that staff paid a pending manual payout, or a failed Stripe payout, outside the platform.

    The method becomes `manual`. For a failed Stripe payout, Stripe is first asked for a transfer
    of this payout (a request that failed on our side may have succeeded there). If one exists,
    or Stripe cannot be reached, this raises InvalidPayoutTransition so nothing is paid twice.
    Without a Stripe secret key configured, that check is skipped.
    """
    _require_staff(staff_user)
    note = note.strip()
    if not note:
        raise ValidationError({"note": "Missing note: say how the payout was paid, for example the bank transfer reference."})
    if len(note) > PAYOUT_NOTE_MAX_CHARS:
        raise ValidationError(
            {"note": f"Note too long: {len(note)} characters, the limit is {PAYOUT_NOTE_MAX_CHARS}. Shorten it to the reference."}
        )
    try:
        validate_multiline_text(note)
    except ValidationError as exc:
        raise ValidationError({"note": exc.messages}) from exc
    if payout.method == PayoutMethod.STRIPE_TRANSFER and payout.status == PayoutStatus.FAILED and stripe_enabled():
        _check_no_transfer(payout)
    with transaction.atomic():
        locked = Payout.objects.select_for_update(of=("self",)).select_related("beneficiary").get(pk=payout.pk)
        if not locked.can_mark_paid():
            raise InvalidPayoutTransition(locked, "be marked paid out")
        previous = locked.status
        locked.status = PayoutStatus.PAID
        locked.method = PayoutMethod.MANUAL
        locked.marked_by = staff_user
        locked.note = note
        locked.paid_at = timezone.now()
        locked.save(update_fields=["status", "method", "marked_by", "note", "paid_at", "updated_at"])
        _record_event(locked, from_status=previous, actor=staff_user, reason=f"Marked paid out by staff: {locked.note}")
        notify(event=Event.PAYOUT_SENT, recipient=locked.beneficiary, context={"payout": locked})
    logger.info("Payout %s marked paid out by staff user %s", locked.pk, staff_user.pk)
    return locked

