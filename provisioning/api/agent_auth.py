"""Bearer-credential authentication of agents (`Authorization: Bearer cmagent_...`)."""

from __future__ import annotations

import logging

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from provisioning.agent_services import agent_authenticate
from provisioning.models import Agent

logger = logging.getLogger(__name__)


class AgentCredentialAuthentication(authentication.BaseAuthentication):
    """Authenticate an agent; `request.user` is the pool's owner and `request.auth` the `Agent`.

    A missing header leaves the request unauthenticated (401 through `IsAgent`). An unknown or
    revoked credential raises 401 at once.
    """

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0] != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid Authorization header; send 'Bearer <agent credential>'.")
        agent = agent_authenticate(credential=header[1])
        if agent is None:
            raise exceptions.AuthenticationFailed("Unknown agent credential; set the agent up again with a new setup token.")
        if agent.revoked_at is not None:
            logger.warning("Agent %s: request with its revoked credential rejected", agent.pk)
            raise exceptions.AuthenticationFailed(
                "This agent's credential was revoked; set the agent up again with a new setup token."
            )
        if agent.pool.cloud_account.deleted_at is not None:
            raise exceptions.AuthenticationFailed("This agent's pool was deleted.")
        return agent.pool.cloud_account.owner, agent

    def authenticate_header(self, request) -> str:
        return self.keyword


class IsAgent(permissions.BasePermission):
    message = "Agent credential missing; send 'Authorization: Bearer <agent credential>'."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, Agent)


class AgentCredentialScheme(OpenApiAuthenticationExtension):
    target_class = "provisioning.api.agent_auth.AgentCredentialAuthentication"
    name = "agentCredential"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An agent credential from /api/v1/agent/setup/."}
