"""Lending a listed resource's VM to a tenant (hand-over) and returning it to its owner (hand-back).

A rental of an offering bound to a resource creates no server. Its provisioning logs in to the
resource's VM with the resource's platform key and rewrites root's authorized_keys file
(RESOURCE_AUTHORIZED_KEYS_PATH). The owner's file is first saved next to it. The tenant's key is
then added to the owner's keys, or replaces them when the owner chose so. The platform key
always stays, so the platform can hand the VM back. Ending the rental restores the saved file,
which removes the tenant's key and brings the owner's keys back. The VM is never deleted.
"""

from __future__ import annotations

import logging

from django.conf import settings

from marketplace.models import Contract, ProvisioningStep
from marketplace.services import contracts as contract_services
from provisioning.models import Resource, ResourceStatus

logger = logging.getLogger(__name__)

#: Seconds one hand-over or hand-back script may run; it only edits one small file.
HANDOVER_TIMEOUT_SECONDS = 60

# Both scripts run with `bash -euo pipefail` as the login user, with the keys in environment
# variables, so no key text is ever parsed as shell syntax.
HAND_OVER_SCRIPT = r"""
umask 077
keys="$AUTHORIZED_KEYS"
saved="$keys.cloudmarket-owner"
mkdir -p "$(dirname "$keys")"
touch "$keys"
# A copy left by an earlier attempt is the owner's file; never overwrite it with a tenant's.
if [ ! -e "$saved" ]; then
    cp -p "$keys" "$saved.tmp"
    mv "$saved.tmp" "$saved"
fi
if [ "$REMOVE_OWNER_KEYS" = "1" ]; then
    printf '%s\n%s\n' "$PLATFORM_KEY" "$TENANT_KEY" > "$keys.tmp"
else
    { grep -vxF -- "$TENANT_KEY" "$saved" || true; printf '%s\n' "$TENANT_KEY"; } > "$keys.tmp"
    grep -qxF -- "$PLATFORM_KEY" "$keys.tmp" || printf '%s\n' "$PLATFORM_KEY" >> "$keys.tmp"
fi
mv "$keys.tmp" "$keys"
echo "Tenant key installed."
"""

HAND_BACK_SCRIPT = r"""
umask 077
keys="$AUTHORIZED_KEYS"
saved="$keys.cloudmarket-owner"
touch "$keys"
if [ -e "$saved" ]; then
    mv "$saved" "$keys"
    echo "Owner's keys restored."
else
    # No saved copy: the hand-over never ran, or its copy was removed on the VM.
    if [ "$TENANT_KEY" != "$OWNER_KEY" ]; then
        { grep -vxF -- "$TENANT_KEY" "$keys" || true; } > "$keys.tmp"
    else
        cp -p "$keys" "$keys.tmp"
    fi
    grep -qxF -- "$OWNER_KEY" "$keys.tmp" || printf '%s\n' "$OWNER_KEY" >> "$keys.tmp"
    mv "$keys.tmp" "$keys"
    echo "Tenant key removed; no saved copy of the owner's keys was found."
fi
"""


class HandoverError(Exception):
    """The platform could not change the keys on a listed resource's VM."""


def rented_resource(contract: Contract) -> Resource | None:
    """Return the resource a contract rents, or None for a rental that gets its own server."""
    resource_id = contract.offering.resource_id
    if resource_id is None:
        return None
    return Resource.objects.select_related("cloud_account").get(pk=resource_id)


def _run(resource: Resource, script: str, env: dict[str, str], *, operation: str, contract_id: int) -> None:
    from provisioning.pipeline import platform_private_key
    from recipes.runner import RecipeRunError, run_recipe

    if resource.is_sandbox:
        # A Sandbox resource has no machine, so there are no keys to change.
        logger.info("Contract %s: %s on Sandbox resource %s simulated", contract_id, operation, resource.pk)
        return
    output: list[str] = []
    logger.info("Contract %s: %s on resource %s (%s)", contract_id, operation, resource.pk, resource.ip_address)
    try:
        result = run_recipe(
            host=resource.ip_address,
            port=resource.ssh_port,
            username=resource.ssh_username,
            client_private_key=platform_private_key(resource),
            host_public_key=resource.host_public_key,
            script=script,
            timeout_seconds=HANDOVER_TIMEOUT_SECONDS,
            on_output=output.append,
            env={"AUTHORIZED_KEYS": settings.RESOURCE_AUTHORIZED_KEYS_PATH, **env},
        )
    except RecipeRunError as exc:
        raise HandoverError(f"The {operation} on resource {resource.pk} failed over SSH: {exc}") from exc
    text = "".join(output).strip()
    if result.timed_out or result.exit_code != 0:
        raise HandoverError(
            f"The {operation} on resource {resource.pk} failed with exit code {result.exit_code}"
            f"{' after timing out' if result.timed_out else ''}: {text[-500:]}"
        )
    logger.info("Contract %s: %s on resource %s done: %s", contract_id, operation, resource.pk, text[-200:])


def hand_over(*, lease) -> Contract:
    """Give the tenant of a claimed rental root access to the listed resource's VM, then activate the rental.

    Raises `ProvisioningError` (the rental fails and is refunded) when the VM is not running
    or the keys cannot be changed.
    """
    from provisioning.pipeline import ProvisioningError, _lease_lost, _reload, _set_step

    contract = _reload(lease)
    resource = rented_resource(contract)
    if resource.status != ResourceStatus.RUNNING or not resource.ip_address:
        raise ProvisioningError(
            f"The listed server is {resource.get_status_display().lower()}, so access could not be handed over."
        )
    stored = Contract.objects.filter(pk=contract.pk, lease_owner=lease.owner).update(
        cloud_server_id=resource.cloud_server_id,
        ip_address=resource.ip_address,
        ssh_port=resource.ssh_port,
        ssh_username=resource.ssh_username,
        host_public_key=resource.host_public_key,
    )
    if not stored:
        raise _lease_lost(lease)
    contract = _set_step(lease, contract, ProvisioningStep.FINALIZING)
    env = {
        "TENANT_KEY": contract.ssh_public_key,
        "PLATFORM_KEY": resource.platform_public_key,
        "REMOVE_OWNER_KEYS": "1" if resource.remove_owner_keys_while_rented else "0",
    }
    try:
        _run(resource, HAND_OVER_SCRIPT, env, operation="key hand-over", contract_id=contract.pk)
    except HandoverError as exc:
        raise ProvisioningError(str(exc)) from exc
    try:
        return contract_services.contract_activate(contract_id=contract.pk, worker=lease.owner)
    except contract_services.InvalidTransition:
        # The rental was cancelled while the script ran, and its hand-back may have run first.
        # Handing back again restores the owner's file that this hand-over just saved.
        logger.warning("Contract %s: cancelled during the key hand-over; handing resource %s back", contract.pk, resource.pk)
        try:
            hand_back(contract=contract)
        except HandoverError as exc:
            logger.error("Contract %s: hand-back after a cancelled hand-over failed: %s", contract.pk, exc)
        raise


def hand_back(*, contract: Contract) -> None:
    """Remove the tenant's key from the listed resource's VM and restore the owner's keys.

    Raises `HandoverError` when the keys cannot be changed; the caller retries. Does nothing
    for a deleted resource, whose VM is gone.
    """
    resource = rented_resource(contract)
    if resource.status == ResourceStatus.DELETED or not resource.ip_address:
        logger.warning("Contract %s: resource %s has no VM to hand back", contract.pk, resource.pk)
        return
    env = {"TENANT_KEY": contract.ssh_public_key, "OWNER_KEY": resource.ssh_public_key}
    _run(resource, HAND_BACK_SCRIPT, env, operation="key hand-back", contract_id=contract.pk)
