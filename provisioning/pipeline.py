"""The provisioning pipeline: create server -> wait for boot -> wait for SSH -> run recipe -> active.

A worker claims a contract with a lease (owner token plus expiry) before it acts, renews the
lease while it waits, and persists each step before starting the next, so another worker can
resume after a crash. The cloud server id is stored the moment the cloud returns it. Cloud
calls never run inside a database transaction.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from marketplace.models import Contract, ContractStatus, ProvisioningStep
from marketplace.services import contracts as contract_services
from provisioning.backends import get_backend
from provisioning.backends.base import CloudBackend, ServerInfo, ServerNotFound, ServerSpec
from provisioning.encrypted_fields import (
    CONTRACT_HOST_KEY,
    CONTRACT_PLATFORM_KEY,
    RESOURCE_HOST_KEY,
    RESOURCE_PLATFORM_KEY,
    EncryptedField,
)
from provisioning.models import Backend, Resource, ResourceStatus
from recipes.models import RecipeLogChunk, RecipeRun, RecipeRunStatus

logger = logging.getLogger(__name__)

CONTRACT_LABEL = "cloudmarket-contract"
RESOURCE_LABEL = "cloudmarket-resource"
DEPLOYMENT_LABEL = "cloudmarket-deployment"


class LeaseLost(Exception):
    """Another worker took over this contract; the current worker must stop touching it."""


class ProvisioningError(Exception):
    """A provisioning step failed for good; the message is shown to tenant and provider."""


def _resource_set_step(*, object_id: int, step: str, worker: str) -> None:
    from provisioning.resource_services import resource_set_step

    resource_set_step(resource_id=object_id, step=step, worker=worker)


def _resource_activate(*, object_id: int, worker: str):
    from provisioning.resource_services import resource_activate

    return resource_activate(resource_id=object_id, worker=worker)


def _contract_set_step(*, object_id: int, step: str, worker: str) -> None:
    contract_services.contract_set_step(contract_id=object_id, step=step, worker=worker)


def _contract_activate(*, object_id: int, worker: str):
    return contract_services.contract_activate(contract_id=object_id, worker=worker)


@dataclass(frozen=True)
class PipelineKind:
    """A kind of row the pipeline provisions: a rental contract or a self-provisioned resource.

    Both models derive from `ProvisionedServer`, so the steps read and write the same columns.
    This names what differs between them.
    """

    noun: str
    model: type[models.Model]
    provisioning_status: str
    label_key: str
    # Inserted before the id in server names, so a resource's server never has a contract's name.
    name_infix: str
    platform_key: EncryptedField
    host_key: EncryptedField
    recipe_run_field: str
    set_step: Callable[..., None]
    activate: Callable[..., models.Model]

    def labels(self, pk: int) -> dict[str, str]:
        return {self.label_key: str(pk), DEPLOYMENT_LABEL: settings.DEPLOYMENT_NAME}


CONTRACTS = PipelineKind(
    noun="Contract",
    model=Contract,
    provisioning_status=ContractStatus.PROVISIONING,
    label_key=CONTRACT_LABEL,
    name_infix="",
    platform_key=CONTRACT_PLATFORM_KEY,
    host_key=CONTRACT_HOST_KEY,
    recipe_run_field="contract",
    set_step=_contract_set_step,
    activate=_contract_activate,
)

RESOURCES = PipelineKind(
    noun="Resource",
    model=Resource,
    provisioning_status=ResourceStatus.PROVISIONING,
    label_key=RESOURCE_LABEL,
    name_infix="r",
    platform_key=RESOURCE_PLATFORM_KEY,
    host_key=RESOURCE_HOST_KEY,
    recipe_run_field="resource",
    set_step=_resource_set_step,
    activate=_resource_activate,
)


def kind_of(row: models.Model) -> PipelineKind:
    return RESOURCES if isinstance(row, Resource) else CONTRACTS


@dataclass(frozen=True)
class Lease:
    object_id: int
    owner: str
    kind: PipelineKind = field(default=CONTRACTS)

    @property
    def contract_id(self) -> int:
        return self.object_id


def contract_labels(contract: Contract) -> dict[str, str]:
    return CONTRACTS.labels(contract.pk)


def resource_labels(resource: Resource) -> dict[str, str]:
    return RESOURCES.labels(resource.pk)


# A retry task may start this much before the time its predecessor set (clock differences
# between worker hosts and the database).
RETRY_EARLY_TOLERANCE = timedelta(seconds=5)


def lease_claim(*, contract_id: int, owner: str, status: str = ContractStatus.PROVISIONING) -> Lease | None:
    """Take the contract's lease if it is free, expired or already ours; None if another worker has it."""
    return kind_lease_claim(kind=CONTRACTS, object_id=contract_id, owner=owner, status=status)


def kind_lease_claim(*, kind: PipelineKind, object_id: int, owner: str, status: str) -> Lease | None:
    """Take the row's lease if it is free, expired or already ours; None if another worker has it.

    A row waiting for a scheduled retry (`next_attempt_at` in the future) is not free, so a
    duplicate or re-queued task cannot jump ahead of the backoff or a cloud's Retry-After.
    """
    now = timezone.now()
    claimed = (
        kind.model.objects.filter(pk=object_id, status=status)
        .filter(Q(lease_owner="") | Q(lease_expires_at__lt=now) | Q(lease_owner=owner))
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + RETRY_EARLY_TOLERANCE))
        .update(
            lease_owner=owner,
            lease_claimed_at=now,
            lease_expires_at=now + timedelta(seconds=settings.PROVISIONING_LEASE_SECONDS),
            next_attempt_at=None,
            attempts=F("attempts") + 1,
        )
    )
    return Lease(object_id, owner, kind) if claimed else None


def lease_renewal_interval() -> float:
    """Seconds between lease renewals during a long step: a third of the lease, at most 10."""
    return max(0.5, min(10.0, settings.PROVISIONING_LEASE_SECONDS / 3))


def _lease_lost(lease: Lease, doing: str = "") -> LeaseLost:
    return LeaseLost(f"Worker {lease.owner} no longer holds the lease on {lease.kind.noun.lower()} {lease.object_id}{doing}.")


def lease_renew(lease: Lease) -> None:
    renewed = lease.kind.model.objects.filter(pk=lease.object_id, lease_owner=lease.owner).update(
        lease_expires_at=timezone.now() + timedelta(seconds=settings.PROVISIONING_LEASE_SECONDS)
    )
    if not renewed:
        raise _lease_lost(lease)


def lease_release(lease: Lease, *, retry_at=None) -> None:
    """Give the lease up; with `retry_at`, no worker may claim the row before that time."""
    lease.kind.model.objects.filter(pk=lease.object_id, lease_owner=lease.owner).update(
        lease_owner="", lease_expires_at=None, next_attempt_at=retry_at
    )


def _reload(lease: Lease):
    row = lease.kind.model.objects.select_related("cloud_account").get(pk=lease.object_id)
    if row.lease_owner != lease.owner:
        raise _lease_lost(lease)
    return row


def _set_step(lease: Lease, contract, step: str):
    """Persist the step the row enters. `lease_renew` checks the lease, so nothing is reloaded."""
    lease_renew(lease)
    lease.kind.set_step(object_id=lease.object_id, step=step, worker=lease.owner)
    contract.provisioning_step = step
    return contract


def _ensure_keys(contract) -> None:
    """Generate the row's platform key and the VM's host key once, encrypted at rest."""
    if contract.platform_public_key and contract.host_public_key:
        return
    from recipes.keys import generate_keypair

    kind = kind_of(contract)
    prefix = f"cloudmarket-{kind.noun.lower()}"
    platform_key = generate_keypair(f"{prefix}-{contract.pk}")
    host_key = generate_keypair(f"cloudmarket-host-{kind.name_infix}{contract.pk}")
    sealed = kind.model(pk=contract.pk)
    changed = kind.platform_key.seal(sealed, platform_key.private_openssh)
    changed += kind.host_key.seal(sealed, host_key.private_openssh)
    # Only the first worker's keys are kept; a concurrent second writer updates nothing.
    kind.model.objects.filter(pk=contract.pk, platform_public_key="").update(
        platform_public_key=platform_key.public_line,
        host_public_key=host_key.public_line,
        **{name: getattr(sealed, name) for name in changed},
    )


def platform_private_key(contract) -> str:
    return kind_of(contract).platform_key.open(contract)


def host_private_key(contract) -> str:
    return kind_of(contract).host_key.open(contract)


def _server_spec(contract) -> ServerSpec:
    from recipes.keys import KeyPair, cloud_config_user_data

    kind = kind_of(contract)
    host_key = KeyPair(private_openssh=host_private_key(contract), public_line=contract.host_public_key)
    return ServerSpec(
        name=f"cm-{settings.DEPLOYMENT_NAME}-{kind.name_infix}{contract.pk}",
        server_type=contract.server_type,
        image=contract.image,
        location=contract.location_code,
        labels=kind.labels(contract.pk),
        ssh_public_keys=(contract.ssh_public_key, contract.platform_public_key),
        user_data=cloud_config_user_data(host_key=host_key),
    )


def _create_server(lease: Lease, contract, backend: CloudBackend):
    kind = lease.kind
    if contract.cloud_server_id:
        try:
            backend.get_server(contract.cloud_server_id)
            return contract
        except ServerNotFound:
            logger.warning("%s %s: stored server %s is gone; creating again", kind.noun, contract.pk, contract.cloud_server_id)
    logger.info(
        "%s %s: creating server (%s, %s, %s)", kind.noun, contract.pk, contract.server_type, contract.image, contract.location_code
    )
    info = backend.create_server(_server_spec(contract))
    # Store the id before anything else can fail. A crash before this line leaves a labelled
    # server that the next attempt finds by its labels.
    stored = kind.model.objects.filter(pk=contract.pk, lease_owner=lease.owner).update(
        cloud_server_id=info.id, ssh_port=backend.ssh_port, ssh_username=backend.ssh_username
    )
    if not stored:
        # The row was cancelled or taken over while the cloud created the server. If it is no
        # longer provisioning, no other worker will store this server's id, so delete it now.
        current = kind.model.objects.get(pk=contract.pk)
        if current.status != kind.provisioning_status:
            logger.warning("%s %s: %s while server %s was created; deleting it", kind.noun, contract.pk, current.status, info.id)
            backend.delete_server(info.id, labels=kind.labels(contract.pk))
        raise _lease_lost(lease, " while creating a server")
    logger.info("%s %s: server %s created", kind.noun, contract.pk, info.id)
    contract.cloud_server_id, contract.ssh_port, contract.ssh_username = info.id, backend.ssh_port, backend.ssh_username
    return contract


def _wait_for_boot(lease: Lease, contract, backend: CloudBackend):
    deadline = time.monotonic() + settings.PROVISIONING_BOOT_TIMEOUT
    interval = settings.PROVISIONING_POLL_INTERVAL
    spec = None
    while True:
        info: ServerInfo = backend.get_server(contract.cloud_server_id)
        ready = info.is_running
        if ready:
            spec = spec or _server_spec(contract)
            ready = backend.prepare_for_ssh(server=info, spec=spec)
        if ready:
            stored = lease.kind.model.objects.filter(pk=contract.pk, lease_owner=lease.owner).update(ip_address=info.ipv4)
            if not stored:
                raise _lease_lost(lease)
            contract.ip_address = info.ipv4
            logger.info("%s %s: server %s running at %s", lease.kind.noun, contract.pk, info.id, info.ipv4)
            return contract
        if time.monotonic() > deadline:
            raise ProvisioningError(
                f"The server did not finish booting within {settings.PROVISIONING_BOOT_TIMEOUT:.0f} seconds "
                f"(last status: {info.status})."
            )
        lease_renew(lease)
        time.sleep(interval)


def _wait_for_ssh(lease: Lease, contract, backend: CloudBackend):
    if not backend.executes_recipes:
        time.sleep(settings.SANDBOX_STEP_SECONDS)  # Simulated, so the progress page shows the step.
        return contract
    from recipes.runner import SshUnreachable, wait_for_ssh

    # Wait in slices shorter than the lease, so the lease is renewed while the server boots. A
    # worker that loses its lease stops here instead of failing a contract another worker runs.
    deadline = time.monotonic() + settings.PROVISIONING_SSH_TIMEOUT
    slice_seconds = max(1.0, settings.PROVISIONING_LEASE_SECONDS / 3)
    while True:
        remaining = deadline - time.monotonic()
        try:
            wait_for_ssh(
                host=contract.ip_address,
                port=contract.ssh_port,
                username=contract.ssh_username,
                client_private_key=platform_private_key(contract),
                host_public_key=contract.host_public_key,
                deadline_seconds=max(0.5, min(slice_seconds, remaining)),
                interval=min(2.0, settings.PROVISIONING_POLL_INTERVAL),
            )
        except SshUnreachable as exc:
            lease_renew(lease)
            if time.monotonic() < deadline:
                continue
            cause = exc.__cause__ or exc
            raise ProvisioningError(
                f"The server never became reachable over SSH within {settings.PROVISIONING_SSH_TIMEOUT:.0f} seconds "
                f"(last error: {cause})."
            ) from exc
        lease_renew(lease)
        return contract


def _run_recipe(lease: Lease, contract, backend: CloudBackend):
    if not contract.recipe_script.strip():
        return contract
    owner_field = {lease.kind.recipe_run_field: contract}
    # A run still marked running belongs to a worker that died; this worker starts the recipe again.
    interrupted = recipe_runs_interrupt(**owner_field)
    if interrupted:
        logger.warning(
            "%s %s: %s interrupted recipe run(s) marked failed; running the recipe again", lease.kind.noun, contract.pk, interrupted
        )
    run = RecipeRun.objects.create(
        **owner_field,
        executed=backend.executes_recipes,
        timeout_seconds=settings.RECIPE_TIMEOUT_SECONDS,
    )
    if not backend.executes_recipes:
        from provisioning.backends.sandbox import simulated_recipe_log

        time.sleep(settings.SANDBOX_STEP_SECONDS)

        text = simulated_recipe_log(contract.recipe_script)
        RecipeLogChunk.objects.create(run=run, sequence=0, text=text)
        RecipeRun.objects.filter(pk=run.pk).update(
            status=RecipeRunStatus.SIMULATED, finished_at=timezone.now(), duration_seconds=0.0,
            output_bytes=len(text.encode()),
        )
        return contract

    result = _execute_recipe_streaming(lease, contract, run)
    fields = {
        "finished_at": timezone.now(),
        "duration_seconds": result.duration_seconds,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "output_bytes": result.output_bytes,
        "truncated": result.truncated,
    }
    status, failure = recipe_run_outcome(
        exit_code=result.exit_code, timed_out=result.timed_out, timeout_seconds=run.timeout_seconds
    )
    RecipeRun.objects.filter(pk=run.pk).update(status=status, **fields)
    if failure:
        raise ProvisioningError(failure)
    logger.info("%s %s: recipe run %s succeeded in %.1f s", lease.kind.noun, contract.pk, run.pk, result.duration_seconds)
    return contract


def recipe_run_outcome(*, exit_code: int | None, timed_out: bool, timeout_seconds: int) -> tuple[str, str]:
    """Return the finished run's status and, for a failed run, the reason shown to tenant and provider.

    Platform workers and agents both use it, so a recipe fails with the same message on every backend.
    """
    if timed_out:
        return RecipeRunStatus.TIMED_OUT, f"The recipe timed out after {timeout_seconds} seconds and was stopped."
    if exit_code != 0:
        return RecipeRunStatus.FAILED, f"The recipe failed with exit code {exit_code}."
    return RecipeRunStatus.SUCCEEDED, ""


def recipe_ssh_failure_message(error: str) -> str:
    """Return the reason shown when the recipe could not be run or finished over SSH."""
    return f"The recipe run failed over SSH: {error}"


#: The error of a recipe run still marked running that was failed because the recipe started again.
RECIPE_RUN_INTERRUPTED = "The run was interrupted because its worker stopped; the recipe was started again."


def recipe_runs_interrupt(**owner) -> int:
    """Mark the recipe runs of one contract or resource that are still running as failed, because a new run
    starts; return how many. `owner` is one filter, for example `contract_id=7` or `resource=resource`."""
    return RecipeRun.objects.filter(**owner, status=RecipeRunStatus.RUNNING).update(
        status=RecipeRunStatus.FAILED, finished_at=timezone.now(), error=RECIPE_RUN_INTERRUPTED
    )


def _execute_recipe_streaming(lease: Lease, contract, run: RecipeRun):
    """Run the recipe in a thread and store its output chunks from this thread as they arrive.

    The SSH client runs an asyncio loop, where Django's ORM must not be called, so chunks pass
    through a queue to this (synchronous) thread, which also keeps the lease renewed.
    """
    from recipes.runner import RecipeRunError, run_recipe

    chunks: queue.Queue[str] = queue.Queue()
    outcome: dict = {}
    stop = threading.Event()

    def target() -> None:
        try:
            outcome["result"] = run_recipe(
                host=contract.ip_address,
                port=contract.ssh_port,
                username=contract.ssh_username,
                client_private_key=platform_private_key(contract),
                host_public_key=contract.host_public_key,
                script=contract.recipe_script,
                timeout_seconds=run.timeout_seconds,
                on_output=chunks.put,
                max_output_bytes=settings.RECIPE_MAX_OUTPUT_BYTES,
                should_stop=stop.is_set,
            )
        except BaseException as exc:  # Re-raised in the calling thread below.
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"recipe-{contract.pk}", daemon=True)
    thread.start()
    sequence = 0
    last_renewal = time.monotonic()
    while thread.is_alive() or not chunks.empty():
        try:
            text = chunks.get(timeout=0.5)
        except queue.Empty:
            text = None
        if text:
            RecipeLogChunk.objects.create(run=run, sequence=sequence, text=text)
            sequence += 1
        if time.monotonic() - last_renewal > lease_renewal_interval():
            try:
                lease_renew(lease)
            except LeaseLost:
                # Another worker owns the contract now: kill this run so the script never runs
                # twice at once (the server-side lock also makes the new run wait for it).
                stop.set()
                thread.join(timeout=30)
                raise
            last_renewal = time.monotonic()
    thread.join()
    error = outcome.get("error")
    if isinstance(error, RecipeRunError):
        RecipeRun.objects.filter(pk=run.pk).update(status=RecipeRunStatus.FAILED, error=str(error), finished_at=timezone.now())
        raise ProvisioningError(recipe_ssh_failure_message(str(error))) from error
    if error is not None:
        raise error
    return outcome["result"]


STEPS = [
    (ProvisioningStep.CREATING_SERVER, _create_server),
    (ProvisioningStep.WAITING_FOR_BOOT, _wait_for_boot),
    (ProvisioningStep.WAITING_FOR_SSH, _wait_for_ssh),
    (ProvisioningStep.RUNNING_RECIPE, _run_recipe),
]


def provision(*, lease: Lease):
    """Run the remaining steps for a claimed contract or resource and activate it.

    Resumes at the row's current step. Raises `ProvisioningError` and backend errors for
    the task to classify; raises `LeaseLost` when another worker took over.
    """
    contract = _reload(lease)
    if not (contract.platform_public_key and contract.host_public_key):
        _ensure_keys(contract)
        contract = _reload(lease)
    backend = get_backend(contract.cloud_account)
    step_values = [step.value for step, _ in STEPS]
    start_index = step_values.index(contract.provisioning_step) if contract.provisioning_step in step_values else 0
    if contract.provisioning_step == ProvisioningStep.FINALIZING:
        start_index = len(STEPS)
    has_recipe = bool(contract.recipe_script.strip())
    for step, function in STEPS[start_index:]:
        if step == ProvisioningStep.RUNNING_RECIPE and not has_recipe:
            continue  # Nothing to run, and the progress list leaves this step out as well.
        contract = _set_step(lease, contract, step)
        contract = function(lease, contract, backend)
    if has_recipe:
        # Persisted so that a worker resuming after a crash from here on does not run the recipe again.
        contract = _set_step(lease, contract, ProvisioningStep.FINALIZING)
    return lease.kind.activate(object_id=contract.pk, worker=lease.owner)


def delete_contract_servers(*, contract: Contract) -> None:
    """Delete the contract's server and every cloud object carrying its labels."""
    if contract.offering.resource_id is not None:
        # The server is the owner's resource, lent for the rental; the rental never deletes it.
        raise ValueError(f"Contract {contract.pk} rents resource {contract.offering.resource_id}; hand it back instead.")
    delete_servers(row=contract)


def delete_servers(*, row) -> None:
    """Delete the server of a contract or resource and every cloud object carrying its labels."""
    backend = get_backend(row.cloud_account)
    contract = row
    labels = kind_of(row).labels(row.pk)
    deleted = False
    if contract.cloud_server_id:
        backend.delete_server(contract.cloud_server_id, labels=labels)
        deleted = True
    for info in backend.find_servers(labels):
        backend.delete_server(info.id, labels=labels)
        deleted = True
    if not deleted:
        # The create may have failed after the SSH key objects were made; an empty id deletes only those.
        backend.delete_server("", labels=labels)


def stalled_contract_ids(*, now=None) -> tuple[list[int], list[int]]:
    """Return (provisioning ids, terminating ids) with no live lease that need a worker."""
    now = now or timezone.now()
    quiet = now - timedelta(seconds=settings.PROVISIONING_LEASE_SECONDS)
    # A contract waiting for its scheduled retry is not stalled until the retry is a lease
    # period overdue (its task was lost).
    not_waiting = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=quiet)
    free = (Q(lease_owner="", updated_at__lt=quiet) & not_waiting) | Q(lease_expires_at__lt=now)
    # Agent pools' contracts wait in their pool's queue for an agent, not for a platform worker.
    workers = Contract.objects.filter(free).exclude(backend=Backend.AGENT)
    provisioning = list(workers.filter(status=ContractStatus.PROVISIONING).values_list("pk", flat=True)[:500])
    terminating = list(workers.filter(status=ContractStatus.TERMINATING).values_list("pk", flat=True)[:500])
    return provisioning, terminating


def stalled_resources(*, now=None) -> list[tuple[int, str]]:
    """Return (id, status) of resources in a busy status with no live lease that need a worker."""
    from provisioning.models import RESOURCE_BUSY_STATUSES

    now = now or timezone.now()
    quiet = now - timedelta(seconds=settings.PROVISIONING_LEASE_SECONDS)
    not_waiting = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=quiet)
    free = (Q(lease_owner="", updated_at__lt=quiet) & not_waiting) | Q(lease_expires_at__lt=now)
    return list(Resource.objects.filter(free, status__in=RESOURCE_BUSY_STATUSES).values_list("pk", "status")[:500])


def resource_power(*, lease: Lease, start: bool) -> str | None:
    """Stop or start a claimed resource's server; after a start, wait until it runs and return its address.

    Raises `ProvisioningError` when a started server does not run within PROVISIONING_BOOT_TIMEOUT.
    """
    resource = _reload(lease)
    backend = get_backend(resource.cloud_account)
    if not start:
        backend.stop_server(resource.cloud_server_id)
        return None
    backend.start_server(resource.cloud_server_id)
    deadline = time.monotonic() + settings.PROVISIONING_BOOT_TIMEOUT
    while True:
        info = backend.get_server(resource.cloud_server_id)
        if info.is_running:
            return info.ipv4
        if time.monotonic() > deadline:
            raise ProvisioningError(
                f"The server did not start within {settings.PROVISIONING_BOOT_TIMEOUT:.0f} seconds (last status: {info.status})."
            )
        lease_renew(lease)
        time.sleep(settings.PROVISIONING_POLL_INTERVAL)
