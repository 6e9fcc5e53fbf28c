"""Every change of a contract's status: one function per transition.

Each function locks the contract row, checks the current status (compare-and-set), writes the
change and a `ContractEvent` in one transaction, and schedules side effects (Celery tasks,
notifications, refunds at the processor) with `transaction.on_commit`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.models import (
    Contract,
    ContractEvent,
    ContractStatus,
    Offering,
    ProvisioningStep,
    StockStatus,
    User,
    Visibility,
)
from marketplace.periods import add_months
from marketplace.selectors import offering_is_shared_with, served_q
from marketplace.sshkeys import parse_public_key

logger = logging.getLogger(__name__)


class InvalidTransition(Exception):
    """The contract is not in a status from which the requested change is allowed."""

    def __init__(self, contract: Contract, action: str):
        super().__init__(f"Rental {contract.public_id} cannot {action}: it is {contract.get_status_display().lower()}.")
        self.contract = contract
        self.action = action


def _lock(contract_id: int) -> Contract:
    return Contract.objects.select_for_update(of=("self",)).select_related("offering", "provider__user", "tenant").get(
        pk=contract_id
    )


def _record(
    contract: Contract,
    *,
    to_status: str,
    actor: User | None,
    actor_label: str,
    reason: str = "",
    step: str = "",
    from_status: str | None = None,
) -> ContractEvent:
    return ContractEvent.objects.create(
        contract=contract,
        from_status=contract.status if from_status is None else from_status,
        to_status=to_status,
        step=step,
        actor=actor,
        actor_label=actor_label,
        reason=reason[:5000],
    )


def _move(
    contract: Contract,
    *,
    allowed_from: Iterable[str],
    to_status: str,
    action: str,
    actor: User | None,
    actor_label: str,
    reason: str = "",
    step: str = "",
    **fields,
) -> Contract:
    """Compare-and-set the status of a locked contract and write its history row."""
    allowed = set(allowed_from)
    if contract.status not in allowed:
        raise InvalidTransition(contract, action)
    from_status = contract.status
    fields.setdefault("provisioning_step", step)
    updated = Contract.objects.filter(pk=contract.pk, status=from_status).update(
        status=to_status, status_reason=reason[:5000], updated_at=timezone.now(), **fields
    )
    if updated != 1:  # Only reachable without row locks (SQLite); the check above raced.
        raise InvalidTransition(contract, action)
    _record(contract, to_status=to_status, actor=actor, actor_label=actor_label, reason=reason, step=step, from_status=from_status)
    contract.refresh_from_db()
    logger.info("Contract %s: %s -> %s by %s (%s)", contract.pk, from_status, to_status, actor_label, reason[:200])
    if to_status in STOCK_RETURNING_STATUSES and contract.offering.resource_id is not None:
        from provisioning.resource_services import listing_stock_return

        listing_stock_return(offering_id=contract.offering_id)
    return contract


#: Ends after which a listed resource is the owner's again at once. A failed rental of one
#: returns the stock only after its cleanup handed the VM back (`provisioning.tasks`).
STOCK_RETURNING_STATUSES = frozenset({ContractStatus.CANCELLED, ContractStatus.REJECTED, ContractStatus.TERMINATED})


# --- creation and payment -------------------------------------------------------------------


def contract_create(
    *,
    tenant: User,
    offering: Offering,
    ssh_public_key: str,
    idempotency_key: str,
    expected_price_cents: int | None = None,
    expected_currency: str | None = None,
    expected_recipe_version_id: int | None = None,
) -> tuple[Contract, bool]:
    """Create a rental request, or return the one this idempotency key already created.

    `expected_price_cents`, `expected_currency` and `expected_recipe_version_id` are what the
    tenant was shown. When they are given, a rental is only created if the offering still
    matches them, so a provider's edit between viewing and paying never changes the terms.
    """
    existing = Contract.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
    if existing is not None:
        if existing.offering_id != offering.pk:
            raise ValidationError(
                f"This form was already used to rent {existing.offering_name}; reload the page to rent this offering."
            )
        return existing, False

    parsed = parse_public_key(ssh_public_key)
    offering = Offering.objects.select_related("provider__user", "cloud_account", "recipe_version__recipe").get(
        pk=offering.pk
    )
    is_self_rental = offering.provider.user_id == tenant.pk
    if not is_self_rental and offering.visibility == Visibility.PRIVATE:
        raise ValidationError("This offering is private and cannot be rented.")
    if (
        not is_self_rental
        and offering.visibility == Visibility.SHARED
        and not offering_is_shared_with(offering=offering, user=tenant)
    ):
        raise ValidationError("This offering is shared with selected users only, and you are not one of them.")
    if offering.stock_status == StockStatus.OUT_OF_STOCK:
        raise ValidationError("This offering is out of stock.")
    if not offering.cloud_account.is_usable:
        raise ValidationError("This offering is unavailable because the provider's cloud account needs attention.")
    if offering.cloud_account.backend == "agent" and not Offering.objects.filter(pk=offering.pk).filter(served_q()).exists():
        raise ValidationError("This offering is unavailable because none of the provider's agents is online; try again later.")
    if expected_price_cents is not None and expected_price_cents != offering.price_cents:
        raise ValidationError(
            f"The price of this offering changed from {expected_price_cents / 100:.2f} to "
            f"{offering.price_cents / 100:.2f} {offering.currency} per month; review it and confirm again."
        )
    if expected_currency and expected_currency.upper() != offering.currency:
        raise ValidationError(
            f"The currency of this offering changed from {expected_currency.upper()} to {offering.currency}, so it "
            f"costs {offering.price_cents / 100:.2f} {offering.currency} per month now. Review it and confirm again."
        )
    if expected_recipe_version_id is not None and expected_recipe_version_id != (offering.recipe_version_id or 0):
        raise ValidationError("The recipe of this offering changed since you opened the page; review it and confirm again.")
    from billing.services import payment_method_check

    payment_method = payment_method_check(offering=offering, tenant=tenant)

    version = offering.recipe_version
    contract = Contract(
        tenant=tenant,
        offering=offering,
        provider=offering.provider,
        cloud_account=offering.cloud_account,
        idempotency_key=idempotency_key,
        offering_name=offering.name,
        price_cents=0 if is_self_rental else offering.price_cents,
        currency=offering.currency,
        commission_bps=settings.PLATFORM_COMMISSION_BPS,
        author_share_bps=(
            settings.RECIPE_AUTHOR_SHARE_BPS
            if version is not None and version.recipe.author_id != offering.provider.user_id
            else 0
        ),
        is_self_rental=is_self_rental,
        payment_method=payment_method,
        vcpu=offering.vcpu,
        memory_mib=offering.memory_mib,
        disk_gb=offering.disk_gb,
        gpu_model=offering.gpu_model,
        gpu_count=offering.gpu_count,
        country=offering.country,
        city=offering.city,
        location_code=offering.location_code,
        backend=offering.cloud_account.backend,
        server_type=offering.server_type,
        image=offering.image,
        recipe_version=version,
        recipe_script=version.script if version else "",
        ssh_public_key=parsed.normalized,
        ssh_key_fingerprint=parsed.fingerprint_sha256,
    )
    try:
        with transaction.atomic():
            if offering.resource_id is not None:
                from provisioning.resource_services import listing_stock_take

                listing_stock_take(offering=offering)
            contract.save()
            _record(contract, to_status=ContractStatus.REQUESTED, actor=tenant, actor_label="tenant", from_status="")
    except IntegrityError:
        # A concurrent submit with the same key won the insert; return its contract.
        existing = Contract.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return existing, False
    logger.info("Contract %s requested by user %s for offering %s", contract.pk, tenant.pk, offering.pk)
    return contract, True


def new_idempotency_key() -> str:
    return secrets.token_urlsafe(24)


@transaction.atomic
def contract_pay(*, contract: Contract, actor: User) -> Contract:
    """Collect the first period's payment (sandbox or free) and move the contract to `paid`.

    Card-paid rentals are paid through Stripe Checkout instead (`contract_confirm_payment`).
    The provider's auto-accept (or a self-rental) accepts at once in the same transaction.
    """
    from billing.services import payment_collect

    contract = _lock(contract.pk)
    if contract.status != ContractStatus.REQUESTED:
        raise InvalidTransition(contract, "be paid")
    now = timezone.now()
    period_end = add_months(now, 1)
    payment = payment_collect(contract=contract, period_start=now, period_end=period_end)
    return _mark_paid(contract, actor=actor, actor_label="tenant", payment=payment)


def contract_confirm_payment(*, contract: Contract, payment) -> Contract:
    """Move a requested rental to `paid` after the processor confirmed its first payment.

    The caller holds the contract's row lock (the webhook handler) and recorded `payment`.
    """
    return _mark_paid(contract, actor=None, actor_label="stripe", payment=payment)


def _mark_paid(contract: Contract, *, actor: User | None, actor_label: str, payment) -> Contract:
    contract = _move(
        contract,
        allowed_from={ContractStatus.REQUESTED},
        to_status=ContractStatus.PAID,
        action="be paid",
        actor=actor,
        actor_label=actor_label,
        reason=f"Paid with {payment.get_method_display()}.",
        paid_at=payment.period_start,
        paid_until=payment.period_end,
    )
    _notify(contract, "rental_paid", to_tenant=False)
    if contract.is_self_rental or contract.provider.auto_accept:
        contract = _accept(contract, actor=None, actor_label="system", reason="Accepted automatically.")
    return contract


def contract_extend_paid_period(*, contract: Contract, period_end: datetime, reason: str) -> Contract:
    """Extend the paid period of a locked, running rental to `period_end` (never shortens it)."""
    if contract.paid_until is not None and contract.paid_until >= period_end:
        return contract
    Contract.objects.filter(pk=contract.pk).update(paid_until=period_end, updated_at=timezone.now())
    _record(contract, to_status=contract.status, actor=None, actor_label="stripe", reason=reason)
    contract.refresh_from_db()
    logger.info("Contract %s: paid until %s (%s)", contract.pk, period_end.isoformat(), reason)
    return contract


def contract_note(*, contract_id: int, reason: str, actor: User | None = None, actor_label: str = "system") -> None:
    """Add a history row that records something without changing the status."""
    contract = Contract.objects.get(pk=contract_id)
    _record(contract, to_status=contract.status, actor=actor, actor_label=actor_label, reason=reason)


@transaction.atomic
def contract_end_at_period_end(*, contract_id: int, reason: str, actor_label: str = "stripe") -> Contract:
    """Mark a running rental to end when its paid period does (its billing stopped elsewhere)."""
    contract = _lock(contract_id)
    if contract.is_ended or contract.cancel_at_period_end:
        return contract
    Contract.objects.filter(pk=contract.pk).update(cancel_at_period_end=True, updated_at=timezone.now())
    _record(contract, to_status=contract.status, actor=None, actor_label=actor_label, reason=reason)
    contract.refresh_from_db()
    return contract


def _close_checkouts(contract: Contract) -> None:
    """After commit, expire the open card checkouts of a rental that no longer wants payment."""
    from billing.models import CheckoutSession
    from billing.tasks import checkout_expire_task

    for session_id in CheckoutSession.objects.filter(contract=contract, status=CheckoutSession.Status.OPEN).values_list("pk", flat=True):
        transaction.on_commit(lambda pk=session_id: checkout_expire_task.delay(pk))


def _stop_billing(contract: Contract) -> None:
    """After commit, cancel the rental's card subscription so it never charges again."""
    if not contract.pays_by_card:
        return
    from billing.tasks import subscription_cancel_task

    contract_pk = contract.pk
    transaction.on_commit(lambda: subscription_cancel_task.delay(contract_pk))


# --- provider decisions ---------------------------------------------------------------------


def _accept(contract: Contract, *, actor: User | None, actor_label: str, reason: str) -> Contract:
    from provisioning.tasks import provision_contract_task

    contract = _move(
        contract,
        allowed_from={ContractStatus.PAID},
        to_status=ContractStatus.PROVISIONING,
        action="be accepted",
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        step=ProvisioningStep.CREATING_SERVER,
    )
    contract_id = contract.pk
    transaction.on_commit(lambda: provision_contract_task.delay(contract_id))
    return contract


@transaction.atomic
def contract_accept(*, contract: Contract, actor: User) -> Contract:
    contract = _lock(contract.pk)
    _require_provider(contract, actor)
    return _accept(contract, actor=actor, actor_label="provider", reason="Accepted by the provider.")


@transaction.atomic
def contract_reject(*, contract: Contract, actor: User, reason: str) -> Contract:
    contract = _lock(contract.pk)
    _require_provider(contract, actor)
    reason = reason.strip() or "Rejected by the provider."
    return _reject(
        contract,
        actor=actor,
        actor_label="provider",
        reason=reason,
        refund_reason=f"Rejected by the provider: {reason}",
        event="rental_rejected",
        ended_at=timezone.now(),
    )


def _reject(
    contract: Contract,
    *,
    actor: User | None,
    actor_label: str,
    reason: str,
    refund_reason: str,
    event: str,
    ended_at: datetime,
) -> Contract:
    """Reject a locked, paid contract: refund it in full, stop its billing and notify both sides."""
    from billing.services import payment_refund_contract

    contract = _move(
        contract,
        allowed_from={ContractStatus.PAID},
        to_status=ContractStatus.REJECTED,
        action="be rejected",
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        ended_at=ended_at,
    )
    payment_refund_contract(contract=contract, reason=refund_reason)
    _stop_billing(contract)
    _notify(contract, event)
    return contract


def _require_provider(contract: Contract, actor: User) -> None:
    if contract.provider.user_id != actor.pk and not actor.is_staff:
        raise PermissionError(f"User {actor.pk} is not the provider of contract {contract.pk}.")


# --- provisioning progress (called by workers) ------------------------------------------------


def contract_set_step(*, contract_id: int, step: str, worker: str) -> None:
    """Record that a provisioning contract entered `step`; a repeated step records nothing.

    A compare-and-set UPDATE instead of a row lock: it runs for every step of every contract,
    and the status condition is all that must hold.
    """
    with transaction.atomic():
        changed = (
            Contract.objects.filter(pk=contract_id, status=ContractStatus.PROVISIONING)
            .exclude(provisioning_step=step)
            .update(provisioning_step=step, updated_at=timezone.now())
        )
        if changed:
            ContractEvent.objects.create(
                contract_id=contract_id,
                from_status=ContractStatus.PROVISIONING,
                to_status=ContractStatus.PROVISIONING,
                step=step,
                actor_label=worker,
            )
            return
    contract = Contract.objects.get(pk=contract_id)
    if contract.status != ContractStatus.PROVISIONING:
        raise InvalidTransition(contract, f"enter step {step}")


def _activation_reason(contract: Contract) -> str:
    if contract.is_sandbox:
        return "Simulated server is running (Sandbox: no machine exists and no recipe ran)."
    if contract.recipe_script:
        return "Server is running and the recipe succeeded."
    return "Server is running."


@transaction.atomic
def contract_activate(*, contract_id: int, worker: str) -> Contract:
    contract = _lock(contract_id)
    if not contract.cloud_server_id or not contract.ip_address:
        raise InvalidTransition(contract, "become active without a server address")
    contract = _move(
        contract,
        allowed_from={ContractStatus.PROVISIONING},
        to_status=ContractStatus.ACTIVE,
        action="become active",
        actor=None,
        actor_label=worker,
        reason=_activation_reason(contract),
        step="",
        activated_at=timezone.now(),
        lease_owner="",
        lease_expires_at=None,
        last_error="",
    )
    _notify(contract, "rental_active")
    return contract


@transaction.atomic
def contract_fail(
    *,
    contract_id: int,
    reason: str,
    actor_label: str = "system",
    actor: User | None = None,
    lease_owner: str | None = None,
) -> Contract:
    """Fail a paid or provisioning contract: refund in full and delete what was created.

    A worker passes its `lease_owner`, so a worker that lost its lease cannot fail a contract
    that another worker is now provisioning.
    """
    from billing.services import payment_refund_contract
    from provisioning.tasks import cleanup_contract_servers_task

    contract = _lock(contract_id)
    if lease_owner is not None and contract.lease_owner != lease_owner:
        raise InvalidTransition(contract, f"be failed by {lease_owner}, which no longer holds its lease")
    step = contract.provisioning_step
    contract = _move(
        contract,
        allowed_from={ContractStatus.PAID, ContractStatus.PROVISIONING},
        to_status=ContractStatus.FAILED,
        action="fail",
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        step=step,
        ended_at=timezone.now(),
        lease_owner="",
        lease_expires_at=None,
    )
    payment_refund_contract(contract=contract, reason=f"Provisioning failed: {reason}")
    _stop_billing(contract)
    contract_pk = contract.pk
    transaction.on_commit(lambda: cleanup_contract_servers_task.delay(contract_pk))
    _notify(contract, "rental_failed")
    return contract


# --- cancellation and termination ----------------------------------------------------------


@transaction.atomic
def contract_cancel(*, contract: Contract, actor: User) -> Contract:
    """Cancel on the tenant's request.

    Before payment the request is dropped; after payment but before acceptance it is refunded.
    An active rental ends at the end of its paid period, except Sandbox and self-rentals, which
    have nothing to pay for and end at once.
    """
    from billing.services import payment_refund_contract

    contract = _lock(contract.pk)
    if contract.tenant_id != actor.pk and not actor.is_staff:
        raise PermissionError(f"User {actor.pk} is not the tenant of contract {contract.pk}.")
    label = "tenant" if contract.tenant_id == actor.pk else "staff"

    if contract.status == ContractStatus.REQUESTED:
        contract = _move(
            contract, allowed_from={ContractStatus.REQUESTED}, to_status=ContractStatus.CANCELLED,
            action="be cancelled", actor=actor, actor_label=label, reason="Cancelled before payment.",
            ended_at=timezone.now(),
        )
        _close_checkouts(contract)
        return contract
    if contract.status == ContractStatus.PAID:
        contract = _move(
            contract, allowed_from={ContractStatus.PAID}, to_status=ContractStatus.CANCELLED,
            action="be cancelled", actor=actor, actor_label=label,
            reason="Cancelled before the provider accepted; a full refund was started.", ended_at=timezone.now(),
        )
        payment_refund_contract(contract=contract, reason="Cancelled before acceptance.")
        _stop_billing(contract)
        _notify(contract, "rental_cancelled")
        return contract
    if contract.status == ContractStatus.PROVISIONING:
        return contract_cancel_provisioning(
            contract=contract, actor=actor, actor_label=label, reason="Cancelled during provisioning; a full refund was started."
        )
    if contract.status == ContractStatus.ACTIVE:
        if contract.cancel_ends_now:
            return _begin_termination(contract, actor=actor, actor_label=label, reason="Cancelled by the tenant.")
        if contract.cancel_at_period_end:
            return contract
        Contract.objects.filter(pk=contract.pk).update(cancel_at_period_end=True, updated_at=timezone.now())
        if contract.pays_by_card:
            from billing.tasks import subscription_cancel_at_period_end_task

            contract_pk = contract.pk
            transaction.on_commit(lambda: subscription_cancel_at_period_end_task.delay(contract_pk))
        _record(
            contract, to_status=contract.status, actor=actor, actor_label=label,
            reason=f"Cancelled by the tenant; runs until the end of the paid period ({contract.paid_until:%Y-%m-%d %H:%M} UTC).",
        )
        contract.refresh_from_db()
        _notify(contract, "rental_cancelled")
        return contract
    raise InvalidTransition(contract, "be cancelled")


def _begin_termination(contract: Contract, *, actor: User | None, actor_label: str, reason: str) -> Contract:
    from provisioning.tasks import terminate_contract_task

    contract = _move(
        contract,
        allowed_from={ContractStatus.ACTIVE, ContractStatus.TERMINATION_FAILED},
        to_status=ContractStatus.TERMINATING,
        action="be terminated",
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        attempts=0,
    )
    _stop_billing(contract)
    contract_pk = contract.pk
    transaction.on_commit(lambda: terminate_contract_task.delay(contract_pk))
    return contract


@transaction.atomic
def contract_cancel_provisioning(*, contract: Contract, actor: User | None, actor_label: str, reason: str) -> Contract:
    """Stop a contract that is still provisioning: refund in full and delete what was created.

    Clearing the lease fences the worker in flight: its next lease renewal or write fails and it
    stops. A server it creates after this point is deleted by that worker or by termination,
    which looks servers up by the contract's labels.
    """
    from billing.services import payment_refund_contract
    from provisioning.tasks import terminate_contract_task

    contract = _lock(contract.pk)
    contract = _move(
        contract,
        allowed_from={ContractStatus.PROVISIONING},
        to_status=ContractStatus.TERMINATING,
        action="stop provisioning",
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        step=contract.provisioning_step,
        attempts=0,
        lease_owner="",
        lease_claimed_at=None,
        lease_expires_at=None,
    )
    payment_refund_contract(contract=contract, reason=f"Provisioning stopped: {reason}")
    _stop_billing(contract)
    contract_pk = contract.pk
    transaction.on_commit(lambda: terminate_contract_task.delay(contract_pk))
    _notify(contract, "rental_cancelled")
    return contract


@transaction.atomic
def contract_terminate(*, contract: Contract, actor: User | None, actor_label: str, reason: str) -> Contract:
    """Start deleting the server now (staff, provider ending the rental, or period end)."""
    contract = _lock(contract.pk)
    return _begin_termination(contract, actor=actor, actor_label=actor_label, reason=reason)


@transaction.atomic
def contract_mark_terminated(*, contract_id: int, worker: str, reason: str = "Server deleted.") -> Contract:
    contract = _lock(contract_id)
    contract = _move(
        contract,
        allowed_from={ContractStatus.TERMINATING},
        to_status=ContractStatus.TERMINATED,
        action="be marked terminated",
        actor=None,
        actor_label=worker,
        reason=reason,
        ended_at=timezone.now(),
        lease_owner="",
        lease_expires_at=None,
        last_error="",
    )
    _notify(contract, "rental_terminated")
    return contract


@transaction.atomic
def contract_mark_termination_failed(*, contract_id: int, worker: str, reason: str) -> Contract:
    contract = _lock(contract_id)
    contract = _move(
        contract,
        allowed_from={ContractStatus.TERMINATING},
        to_status=ContractStatus.TERMINATION_FAILED,
        action="be marked termination failed",
        actor=None,
        actor_label=worker,
        reason=reason,
        lease_owner="",
        lease_expires_at=None,
    )
    _notify(contract, "termination_failed", to_tenant=False, to_staff=True)
    return contract


def contracts_end_expired(*, now: datetime | None = None) -> list[int]:
    """End or renew every active rental whose paid period is over; return the ended ids.

    A rental cancelled for period end is terminated. Otherwise the next period is collected
    through the payment abstraction (instant for sandbox and free rentals).
    """
    from billing.services import PaymentFailed, payment_collect

    now = now or timezone.now()
    ended: list[int] = []
    due = Contract.objects.filter(status=ContractStatus.ACTIVE, paid_until__lte=now).values_list("pk", flat=True)
    for contract_id in list(due):
        with transaction.atomic():
            contract = _lock(contract_id)
            if contract.status != ContractStatus.ACTIVE or contract.paid_until is None or contract.paid_until > now:
                continue
            if contract.cancel_at_period_end:
                _begin_termination(contract, actor=None, actor_label="system", reason="The paid period ended.")
                ended.append(contract_id)
                continue
            if contract.pays_by_card:
                # Stripe charges the renewal and its invoice.paid event extends the period;
                # billing.tasks checks overdue card rentals against Stripe.
                continue
            blocker = _renewal_blocker(contract)
            if blocker:
                _begin_termination(contract, actor=None, actor_label="system", reason=f"Not renewed: {blocker}")
                ended.append(contract_id)
                continue
            anchor = contract.paid_at.day if contract.paid_at else None
            start = contract.paid_until
            end = add_months(start, 1, anchor_day=anchor)
            try:
                payment_collect(contract=contract, period_start=start, period_end=end)
            except PaymentFailed as exc:
                logger.warning("Contract %s: renewal payment failed: %s", contract.pk, exc)
                _begin_termination(contract, actor=None, actor_label="system", reason=f"Renewal payment failed: {exc}")
                ended.append(contract_id)
                continue
            Contract.objects.filter(pk=contract.pk).update(paid_until=end, updated_at=timezone.now())
            _record(contract, to_status=contract.status, actor=None, actor_label="system",
                    reason=f"Renewed until {end:%Y-%m-%d %H:%M} UTC.")
    return ended


def contracts_cancel_abandoned(*, now: datetime | None = None) -> list[int]:
    """Cancel unpaid card rental requests whose checkout was never completed."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.CHECKOUT_ABANDONED_AFTER_SECONDS)
    stale = Contract.objects.filter(status=ContractStatus.REQUESTED, created_at__lt=cutoff).values_list("pk", flat=True)
    cancelled = []
    for contract_id in list(stale[:500]):
        with transaction.atomic():
            contract = _lock(contract_id)
            if contract.status != ContractStatus.REQUESTED:
                continue
            _move(
                contract, allowed_from={ContractStatus.REQUESTED}, to_status=ContractStatus.CANCELLED,
                action="be cancelled", actor=None, actor_label="system",
                reason="Cancelled because the payment was not completed in time.", ended_at=now,
            )
            _close_checkouts(contract)
            cancelled.append(contract_id)
    return cancelled


#: Most overdue rental requests one run of `contracts_reject_unanswered` rejects; the next run
#: takes the rest.
UNANSWERED_BATCH_SIZE = 500


def contracts_reject_unanswered(*, now: datetime | None = None) -> list[int]:
    """Reject, with a full refund, every paid rental its provider left unanswered too long.

    A rental is overdue once `Contract.response_deadline` (paid_at plus
    PROVIDER_RESPONSE_DEADLINE_HOURS) has passed while it is still paid and waiting. Each one
    is rejected in its own transaction, and the tenant and the provider are notified. Returns
    the ids of the rejected rentals.
    """
    now = now or timezone.now()
    hours = settings.PROVIDER_RESPONSE_DEADLINE_HOURS
    cutoff = now - timedelta(hours=hours)
    overdue = (
        Contract.objects.filter(status=ContractStatus.PAID, paid_at__lte=cutoff)
        .order_by("paid_at", "pk")
        .values_list("pk", flat=True)
    )
    rejected = []
    for contract_id in list(overdue[:UNANSWERED_BATCH_SIZE]):
        with transaction.atomic():
            contract = _lock(contract_id)
            # The provider may have accepted or rejected it between the query above and the lock.
            if contract.status != ContractStatus.PAID or contract.paid_at is None or contract.paid_at > cutoff:
                continue
            _reject(
                contract,
                actor=None,
                actor_label="system",
                reason=(
                    f"The provider did not accept or reject this rental within {hours} hours of payment, "
                    "so it was rejected automatically and a full refund was started."
                ),
                refund_reason=f"Not accepted or rejected by the provider within {hours} hours.",
                event="rental_request_expired",
                ended_at=now,
            )
            rejected.append(contract_id)
    return rejected


def renewal_blocker(contract: Contract) -> str:
    """Return why the tenant must not be charged for another period, or ""."""
    return _renewal_blocker(contract)


def _renewal_blocker(contract: Contract) -> str:
    """Return why the tenant must not be charged for another period, or ""."""
    from provisioning.models import ServerMissingReport, ValidationStatus

    if ServerMissingReport.objects.filter(contract=contract, resolved_at__isnull=True).exists():
        return "the server disappeared from the cloud."
    if contract.cloud_account.validation_status == ValidationStatus.INVALID:
        return "the provider's cloud account credentials are invalid."
    return ""


# --- notifications --------------------------------------------------------------------------


def _notify(contract: Contract, event: str, *, to_tenant: bool = True, to_provider: bool = True, to_staff: bool = False) -> None:
    from notifications.services import notify_contract_event

    notify_contract_event(
        event=event, contract=contract, to_tenant=to_tenant, to_provider=to_provider, to_staff=to_staff
    )
