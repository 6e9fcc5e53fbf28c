"""Agent pools, setup tokens and agents: create, set up, heartbeat, rename, revoke.

Setup tokens and agent credentials are random strings with 256 bits of entropy, so a plain
SHA-256 hash is enough to store them: a slow password hash adds nothing against guessing and
would slow down every agent request.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from marketplace.validators import validate_visible_text
from provisioning.models import (
    Agent,
    AgentPool,
    AgentSetupToken,
    Backend,
    CloudAccount,
    ProvisionerType,
    ValidationStatus,
)
from provisioning.services import _clean_label, _save_new

logger = logging.getLogger(__name__)

SETUP_TOKEN_PREFIX = "cmsetup_"
CREDENTIAL_PREFIX = "cmagent_"
AGENT_NAME_MAX_LENGTH = Agent._meta.get_field("name").max_length
REGION_MAX_LENGTH = AgentPool._meta.get_field("region").max_length
#: Longest JSON text accepted for an agent's capabilities or free resources.
HEARTBEAT_JSON_MAX_CHARS = 20_000


class SetupTokenInvalid(Exception):
    """The setup token is unknown, expired or already used."""


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def agent_pool_create(*, owner, name: str, region: str, provisioner_type: str) -> AgentPool:
    """Create a pool and the `agent` cloud account that backs it; its offerings name that account.

    Raises `ValidationError` keyed `name`, `region` or `provisioner_type`.
    """
    errors: dict[str, Any] = {}
    try:
        name = _clean_label(owner=owner, label=name)
    except ValidationError as exc:
        errors["name"] = exc.message_dict["label"]
    region = (region or "").strip()
    if not region:
        errors["region"] = "The region is empty; enter where the hosts are, for example fra-home-1."
    elif len(region) > REGION_MAX_LENGTH:
        errors["region"] = f"The region has {len(region)} characters; use at most {REGION_MAX_LENGTH}."
    else:
        try:
            validate_visible_text(region)
        except ValidationError as exc:
            errors["region"] = exc.messages
    if provisioner_type not in ProvisionerType.values:
        errors["provisioner_type"] = (
            f"Unknown provisioner type {provisioner_type!r}; use one of {', '.join(ProvisionerType.values)}."
        )
    if errors:
        raise ValidationError(errors)

    with transaction.atomic():
        account = CloudAccount(
            owner=owner,
            backend=Backend.AGENT,
            label=name,
            validation_status=ValidationStatus.VALID,
            validated_at=timezone.now(),
        )
        try:
            _save_new(account)
        except ValidationError as exc:
            raise ValidationError({"name": exc.message_dict["label"]}) from exc
        pool = AgentPool.objects.create(cloud_account=account, region=region, provisioner_type=provisioner_type)
    logger.info("Agent pool %s (account %s, %s) created by user %s", pool.pk, account.pk, provisioner_type, owner.pk)
    return pool


def _check_pool_owner(pool: AgentPool, actor) -> None:
    if pool.cloud_account.owner_id != actor.pk and not actor.is_staff:
        raise PermissionError(f"User {actor.pk} does not own agent pool {pool.pk}.")


def agent_setup_token_create(*, pool: AgentPool, actor) -> tuple[AgentSetupToken, str]:
    """Create a one-time setup token; return the row and the token, which is shown once and never stored."""
    _check_pool_owner(pool, actor)
    token = SETUP_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = AgentSetupToken.objects.create(
        pool=pool,
        token_hash=secret_hash(token),
        created_by=actor,
        expires_at=timezone.now() + timedelta(seconds=settings.AGENT_SETUP_TOKEN_TTL_SECONDS),
    )
    logger.info("Agent pool %s: setup token %s created by user %s, expires %s", pool.pk, row.pk, actor.pk, row.expires_at)
    return row, token


def _clean_agent_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "The agent name is empty; enter a name such as the host name."})
    if len(name) > AGENT_NAME_MAX_LENGTH:
        raise ValidationError({"name": f"The agent name has {len(name)} characters; use at most {AGENT_NAME_MAX_LENGTH}."})
    try:
        validate_visible_text(name)
    except ValidationError as exc:
        raise ValidationError({"name": exc.messages}) from exc
    return name


def agent_setup(*, token: str, name: str, version: str = "") -> tuple[Agent, str]:
    """Exchange a setup token for a new agent and its credential; the token cannot be used again.

    The token row is locked, so two concurrent requests with one token create one agent: the
    second waits for the first and then finds the token used. Raises `SetupTokenInvalid` for an
    unknown, expired or used token and `ValidationError` for an invalid name.
    """
    name = _clean_agent_name(name)
    version = (version or "").strip()[:40]
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        row = (
            AgentSetupToken.objects.select_for_update(of=("self",))
            .select_related("pool")
            .filter(token_hash=secret_hash((token or "").strip()))
            .first()
        )
        if row is None:
            raise SetupTokenInvalid("The setup token is unknown; create a new one on the agent pool's page.")
        if row.used_at is not None:
            raise SetupTokenInvalid(
                "The setup token was already used; each token sets up one agent. Create a new one on the agent pool's page."
            )
        if row.expires_at <= now:
            raise SetupTokenInvalid(
                f"The setup token expired at {row.expires_at:%Y-%m-%d %H:%M} UTC; create a new one on the agent pool's page."
            )
        agent = Agent.objects.create(
            pool=row.pool,
            name=name,
            version=version,
            credential_hash=secret_hash(credential),
            credential_prefix=credential[: len(CREDENTIAL_PREFIX) + 4],
        )
        AgentSetupToken.objects.filter(pk=row.pk).update(used_at=now, agent=agent)
    logger.info("Agent %s (%r) set up in pool %s with setup token %s", agent.pk, name, row.pool_id, row.pk)
    return agent, credential


def agent_authenticate(*, credential: str) -> Agent | None:
    """Return the agent whose credential this is, revoked or not; None for an unknown credential."""
    if not credential or not credential.startswith(CREDENTIAL_PREFIX):
        return None
    return (
        Agent.objects.select_related("pool__cloud_account")
        .filter(credential_hash=secret_hash(credential))
        .first()
    )


def agent_heartbeat(*, agent: Agent, version: str, capabilities: dict, free_resources: dict) -> Agent:
    """Store what the agent reported and the time; an online agent keeps its pool's offerings listed."""
    now = timezone.now()
    Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).update(
        version=(version or "")[:40], capabilities=capabilities, free_resources=free_resources, last_heartbeat_at=now
    )
    agent.version, agent.capabilities, agent.free_resources, agent.last_heartbeat_at = (
        (version or "")[:40], capabilities, free_resources, now,
    )
    logger.debug("Agent %s: heartbeat (version %s)", agent.pk, agent.version)
    return agent


def agent_rename(*, agent: Agent, actor, name: str) -> Agent:
    _check_pool_owner(agent.pool, actor)
    name = _clean_agent_name(name)
    old_name = agent.name
    Agent.objects.filter(pk=agent.pk).update(name=name)
    agent.name = name
    logger.info("Agent %s renamed by user %s (was %r, is %r)", agent.pk, actor.pk, old_name, name)
    return agent


def agent_revoke(*, agent: Agent, actor) -> Agent:
    """Revoke the agent's credential: its next request is rejected with 401, and its leases are freed.

    A contract the agent was provisioning or terminating goes back to the pool's queue for
    another agent. Revoking twice changes nothing.
    """
    from marketplace.models import Contract

    _check_pool_owner(agent.pool, actor)
    now = timezone.now()
    with transaction.atomic():
        revoked = Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).update(revoked_at=now, revoked_by=actor)
        released = Contract.objects.filter(lease_owner=agent.lease_owner).update(
            lease_owner="", lease_expires_at=None
        )
    if revoked:
        agent.revoked_at, agent.revoked_by = now, actor
        logger.info("Agent %s revoked by user %s; %s leases released", agent.pk, actor.pk, released)
    return Agent.objects.get(pk=agent.pk)
