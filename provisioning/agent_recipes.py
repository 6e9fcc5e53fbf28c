"""Recipes run by provider agents: the agent runs the script over SSH and reports here.

The agent claims a contract, creates its VM, then starts a recipe run, appends its output in
numbered chunks and reports the result. A failed run fails the contract (with a full refund)
with the same reasons the platform's own pipeline gives. Every call checks that the agent still
holds the contract's lease.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Sum
from django.db.models.functions import Length
from django.utils import timezone

from marketplace.models import Contract, ContractStatus, ProvisioningStep
from marketplace.services import contracts as contract_services
from provisioning.agent_work import LeaseNotHeld, _held
from provisioning.encrypted_fields import CONTRACT_PLATFORM_KEY
from provisioning.models import Agent
from provisioning.pipeline import (
    recipe_run_outcome,
    recipe_runs_interrupt,
    recipe_ssh_failure_message,
)
from recipes.models import RecipeLogChunk, RecipeRun, RecipeRunStatus

logger = logging.getLogger(__name__)

#: Bytes a run's stored output may exceed RECIPE_MAX_OUTPUT_BYTES by: the truncation notice and
#: characters that UTF-8 decoding replaced.
OUTPUT_MARGIN_BYTES = 4096


class RecipeReportRejected(Exception):
    """A recipe report does not fit the run: unknown run, finished run, or a chunk that conflicts."""


def ensure_platform_key(contract: Contract) -> Contract:
    """Generate the contract's platform key pair once, encrypted at rest, and return the contract reloaded.

    The recipe logs in with this key, so the VM must trust its public half next to the tenant's key.
    """
    if not contract.platform_public_key:
        from recipes.keys import generate_keypair

        key = generate_keypair(f"cloudmarket-contract-{contract.pk}")
        sealed = Contract(pk=contract.pk)
        changed = CONTRACT_PLATFORM_KEY.seal(sealed, key.private_openssh)
        # Only the first writer's key is kept, so a second claim never replaces a key already on a VM.
        Contract.objects.filter(pk=contract.pk, platform_public_key="").update(
            platform_public_key=key.public_line, **{name: getattr(sealed, name) for name in changed}
        )
    return Contract.objects.get(pk=contract.pk)


def recipe_spec(contract: Contract) -> dict | None:
    """Return what the agent needs to run the contract's recipe as the platform runs it, or None without one."""
    if not contract.recipe_script.strip():
        return None
    return {
        "script": contract.recipe_script,
        "username": settings.PROVISIONING_SSH_USERNAME,
        "client_private_key": CONTRACT_PLATFORM_KEY.open(contract),
        "timeout_seconds": settings.RECIPE_TIMEOUT_SECONDS,
        "max_output_bytes": settings.RECIPE_MAX_OUTPUT_BYTES,
    }


def agent_recipe_run_start(*, agent: Agent, contract_id: int) -> RecipeRun:
    """Start a recipe run of a contract the agent is provisioning; runs left running by an earlier try are failed."""
    with transaction.atomic():
        contract = _held(agent, contract_id, status=ContractStatus.PROVISIONING)
        if not contract.recipe_script.strip():
            raise RecipeReportRejected(f"Contract {contract_id} has no recipe; report success without a recipe run.")
        interrupted = recipe_runs_interrupt(contract_id=contract.pk)
        run = RecipeRun.objects.create(contract=contract, executed=True, timeout_seconds=settings.RECIPE_TIMEOUT_SECONDS)
    contract_services.contract_set_step(contract_id=contract_id, step=ProvisioningStep.RUNNING_RECIPE, worker=agent.lease_owner)
    logger.info(
        "Contract %s: agent %s started recipe run %s (%s interrupted runs failed)", contract_id, agent.pk, run.pk, interrupted
    )
    return run


def _running_run(agent: Agent, contract_id: int, run_id: int) -> RecipeRun:
    """Lock and return the contract's running recipe run; the agent must hold the lease."""
    _held(agent, contract_id, status=ContractStatus.PROVISIONING)
    run = RecipeRun.objects.select_for_update().filter(pk=run_id, contract_id=contract_id).first()
    if run is None:
        raise RecipeReportRejected(f"Contract {contract_id} has no recipe run {run_id}.")
    if run.status != RecipeRunStatus.RUNNING:
        raise RecipeReportRejected(f"Recipe run {run_id} of contract {contract_id} already ended ({run.status}).")
    return run


def agent_recipe_log_append(*, agent: Agent, contract_id: int, run_id: int, sequence: int, text: str) -> RecipeLogChunk:
    """Store one output chunk of a running recipe run; sending the same chunk again stores nothing new.

    Chunks are numbered from 0 without gaps. A chunk whose number is taken by other text, or
    that would skip a number, or that would take the run's output past RECIPE_MAX_OUTPUT_BYTES,
    raises `RecipeReportRejected`.
    """
    with transaction.atomic():
        run = _running_run(agent, contract_id, run_id)
        existing = RecipeLogChunk.objects.filter(run=run, sequence=sequence).first()
        if existing is not None:
            if existing.text != text:
                raise RecipeReportRejected(f"Chunk {sequence} of recipe run {run_id} was already stored with other text.")
            return existing
        stats = RecipeLogChunk.objects.filter(run=run).aggregate(last=Max("sequence"), characters=Sum(Length("text")))
        expected = 0 if stats["last"] is None else stats["last"] + 1
        if sequence != expected:
            raise RecipeReportRejected(f"Chunk {sequence} of recipe run {run_id} is out of order; send chunk {expected} next.")
        # Characters are a lower bound of bytes, so this check never rejects output within the cap.
        if (stats["characters"] or 0) + len(text) > settings.RECIPE_MAX_OUTPUT_BYTES + OUTPUT_MARGIN_BYTES:
            raise RecipeReportRejected(
                f"Recipe run {run_id} output would exceed {settings.RECIPE_MAX_OUTPUT_BYTES} bytes; cut it at the limit."
            )
        return RecipeLogChunk.objects.create(run=run, sequence=sequence, text=text)


def agent_recipe_run_finish(
    *,
    agent: Agent,
    contract_id: int,
    run_id: int,
    exit_code: int | None,
    timed_out: bool,
    duration_seconds: float,
    output_bytes: int,
    truncated: bool,
    error: str = "",
    server_id: str = "",
) -> tuple[RecipeRun, Contract]:
    """Record how a recipe run ended; a failed run fails the contract and refunds it.

    `error` is set when the run could not start or finish over SSH (the exit code is then
    unknown). `server_id` is the VM's id, stored so the VM of a failed contract is deleted.
    """
    with transaction.atomic():
        run = _running_run(agent, contract_id, run_id)
        if error:
            status, failure = RecipeRunStatus.FAILED, recipe_ssh_failure_message(error)
        else:
            status, failure = recipe_run_outcome(exit_code=exit_code, timed_out=timed_out, timeout_seconds=run.timeout_seconds)
        RecipeRun.objects.filter(pk=run.pk).update(
            status=status,
            finished_at=timezone.now(),
            duration_seconds=duration_seconds,
            exit_code=None if error or timed_out else exit_code,
            timed_out=timed_out,
            output_bytes=output_bytes,
            truncated=truncated,
            error=error[:2000],
        )
        if server_id:
            Contract.objects.filter(pk=contract_id, cloud_server_id="").update(cloud_server_id=server_id[:64])
    run.refresh_from_db()
    if not failure:
        logger.info("Contract %s: agent %s reported recipe run %s succeeded in %.1f s", contract_id, agent.pk, run.pk, duration_seconds)
        return run, Contract.objects.get(pk=contract_id)
    logger.warning("Contract %s: agent %s reported recipe run %s failed: %s", contract_id, agent.pk, run.pk, failure)
    contract = contract_services.contract_fail(
        contract_id=contract_id, reason=failure, actor_label=agent.lease_owner, lease_owner=agent.lease_owner
    )
    return run, contract


def check_recipe_succeeded(contract: Contract) -> None:
    """Raise `LeaseNotHeld` unless the contract has no recipe or its newest run succeeded.

    An agent reports success only after the recipe succeeded, so a rental is never active before that.
    """
    if not contract.recipe_script.strip():
        return
    latest = RecipeRun.objects.filter(contract=contract).order_by("-started_at", "-pk").first()
    if latest is None or latest.status != RecipeRunStatus.SUCCEEDED:
        raise LeaseNotHeld(
            f"Contract {contract.pk} has a recipe that has not succeeded yet; run it and report its result before success."
        )
