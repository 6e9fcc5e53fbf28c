"""The agent API under /api/v1/agent/: setup, heartbeat, work queue, claims, reports and reconciliation.

Every endpoint except setup needs an agent credential. Contracts are looked up in the agent's
own pool, so another pool's contract is a 404. A report for a contract whose lease the agent
no longer holds is a 409, and the agent must stop working on that contract.
"""

from __future__ import annotations

import logging

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from marketplace.api.serializers import ErrorSerializer
from marketplace.models import Contract, ContractStatus
from marketplace.services.contracts import InvalidTransition
from provisioning import agent_recipes, agent_work
from provisioning.agent_services import SetupTokenInvalid, agent_heartbeat, agent_setup
from provisioning.api.agent_auth import AgentCredentialAuthentication, IsAgent
from provisioning.api.agent_serializers import (
    AgentSetupRequestSerializer,
    AgentSetupResponseSerializer,
    ContractSpecSerializer,
    ContractStateSerializer,
    FailureRequestSerializer,
    HealthReportsRequestSerializer,
    HealthReportsResponseSerializer,
    HeartbeatRequestSerializer,
    HeartbeatResponseSerializer,
    ProgressRequestSerializer,
    RecipeLogRequestSerializer,
    RecipeLogResponseSerializer,
    RecipeResultRequestSerializer,
    RecipeResultResponseSerializer,
    RecipeRunStartResponseSerializer,
    ReconcileRequestSerializer,
    ReconcileResponseSerializer,
    SuccessRequestSerializer,
    WorkResponseSerializer,
)
from provisioning.models import AgentPool

logger = logging.getLogger(__name__)

AGENT_ERRORS = {
    400: OpenApiResponse(description="Invalid input: a JSON object mapping each field to its messages."),
    401: OpenApiResponse(ErrorSerializer, description="Credential missing, unknown or revoked."),
    404: OpenApiResponse(ErrorSerializer, description="No such contract in this agent's pool."),
}
LEASE_CONFLICT = {
    409: OpenApiResponse(ErrorSerializer, description="The agent does not hold this contract's lease; stop working on it.")
}


def _pool_summary(pool: AgentPool) -> dict:
    return {"id": pool.pk, "name": pool.name, "region": pool.region, "provisioner_type": pool.provisioner_type}


def _action(contract: Contract) -> str:
    return "terminate" if contract.status == ContractStatus.TERMINATING else "provision"


def _state(contract: Contract) -> dict:
    return {
        "id": contract.pk,
        "status": contract.status,
        "lease_expires_at": contract.lease_expires_at,
        "next_attempt_at": contract.next_attempt_at,
    }


def _conflict(exc: Exception) -> Response:
    return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)


class AgentView(APIView):
    authentication_classes = [AgentCredentialAuthentication]
    permission_classes = [IsAgent]
    throttle_classes = []

    @property
    def agent(self):
        return self.request.auth


class AgentSetupThrottle(AnonRateThrottle):
    rate = "30/min"


class AgentSetupView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [AgentSetupThrottle]

    @extend_schema(
        tags=["agent"],
        request=AgentSetupRequestSerializer,
        responses={
            201: AgentSetupResponseSerializer,
            400: OpenApiResponse(description="Invalid input, or the token is unknown, expired or used (key `token`)."),
        },
        summary="Exchange a one-time setup token for an agent credential",
    )
    def post(self, request):
        body = AgentSetupRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            agent, credential = agent_setup(**body.validated_data)
        except SetupTokenInvalid as exc:
            logger.info("Agent setup rejected: %s", exc)
            return Response({"token": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            {"agent_id": agent.pk, "credential": credential, "pool": _pool_summary(agent.pool)},
            status=status.HTTP_201_CREATED,
        )


class HeartbeatView(AgentView):
    @extend_schema(tags=["agent"], request=HeartbeatRequestSerializer, responses={200: HeartbeatResponseSerializer, **AGENT_ERRORS})
    def post(self, request):
        body = HeartbeatRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        agent = agent_heartbeat(agent=self.agent, **body.validated_data)
        return Response(
            {
                "agent_id": agent.pk,
                "pool": _pool_summary(agent.pool),
                "offline_after_seconds": settings.AGENT_OFFLINE_AFTER_SECONDS,
                "provisioner_matches": agent.capabilities.get("provisioner") == agent.pool.provisioner_type,
            }
        )


class WorkView(AgentView):
    @extend_schema(tags=["agent"], responses={200: WorkResponseSerializer, **AGENT_ERRORS}, summary="List contracts waiting for an agent")
    def get(self, request):
        contracts = agent_work.agent_pending_contracts(agent=self.agent)
        return Response({"items": [{"id": contract.pk, "action": _action(contract)} for contract in contracts]})


class ContractView(AgentView):
    def handle_exception(self, exc):
        if isinstance(exc, Contract.DoesNotExist):
            exc = NotFound("No such contract in this agent's pool.")
        elif isinstance(
            exc, (agent_work.LeaseNotHeld, agent_work.ClaimRejected, InvalidTransition, agent_recipes.RecipeReportRejected)
        ):
            return _conflict(exc)
        return super().handle_exception(exc)


class ClaimView(ContractView):
    @extend_schema(
        tags=["agent"], request=None, responses={200: ContractSpecSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Take the lease on a pending contract",
    )
    def post(self, request, pk: int):
        contract = agent_work.agent_contract_claim(agent=self.agent, contract_id=pk)
        recipe = agent_recipes.recipe_spec(contract) if contract.status == ContractStatus.PROVISIONING else None
        ssh_public_keys = [contract.ssh_public_key]
        if recipe is not None:
            # The recipe logs in with the platform key, as on the platform's own backends.
            ssh_public_keys.append(contract.platform_public_key)
        return Response(
            {
                "id": contract.pk,
                "public_id": contract.public_id,
                "action": _action(contract),
                "name": f"cm-{settings.DEPLOYMENT_NAME}-{contract.pk}",
                "labels": {"cloudmarket-contract": str(contract.pk), "cloudmarket-deployment": settings.DEPLOYMENT_NAME},
                "vcpu": contract.vcpu,
                "memory_mib": contract.memory_mib,
                "disk_gb": contract.disk_gb,
                "image": contract.image,
                "server_type": contract.server_type,
                "location_code": contract.location_code,
                "ssh_public_keys": ssh_public_keys,
                "recipe": recipe,
                "cloud_server_id": contract.cloud_server_id,
                "lease_expires_at": contract.lease_expires_at,
                "lease_seconds": settings.AGENT_LEASE_SECONDS,
            }
        )


class ProgressView(ContractView):
    @extend_schema(
        tags=["agent"], request=ProgressRequestSerializer,
        responses={200: ContractStateSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Renew the lease and report the current provisioning step",
    )
    def post(self, request, pk: int):
        body = ProgressRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        contract = agent_work.agent_contract_progress(agent=self.agent, contract_id=pk, **body.validated_data)
        contract.refresh_from_db()
        return Response(_state(contract))


class SuccessView(ContractView):
    @extend_schema(
        tags=["agent"], request=SuccessRequestSerializer,
        responses={200: ContractStateSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Report a running VM with its connection details; the rental becomes active",
    )
    def post(self, request, pk: int):
        body = SuccessRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        contract = agent_work.agent_contract_succeed(agent=self.agent, contract_id=pk, **body.validated_data)
        return Response(_state(contract))


class FailureView(ContractView):
    @extend_schema(
        tags=["agent"], request=FailureRequestSerializer,
        responses={200: ContractStateSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Report a failed provisioning or deletion with a reason code",
        description="Retryable reasons (hypervisor_unavailable, timeout, rate_limited, insufficient_resources) put the "
        "contract back into the queue after a backoff; the others fail the rental and refund it, or mark a "
        "termination failed.",
    )
    def post(self, request, pk: int):
        body = FailureRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        contract = agent_work.agent_contract_fail(agent=self.agent, contract_id=pk, **body.validated_data)
        return Response(_state(contract))


class TerminatedView(ContractView):
    @extend_schema(
        tags=["agent"], request=None, responses={200: ContractStateSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Report that the contract's VM was deleted",
    )
    def post(self, request, pk: int):
        contract = agent_work.agent_contract_terminated(agent=self.agent, contract_id=pk)
        return Response(_state(contract))


class RecipeRunStartView(ContractView):
    @extend_schema(
        tags=["agent"], request=None, responses={201: RecipeRunStartResponseSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Start a recipe run on the contract's new VM",
        description="Runs of this contract still marked running are failed, because the recipe starts again.",
    )
    def post(self, request, pk: int):
        run = agent_recipes.agent_recipe_run_start(agent=self.agent, contract_id=pk)
        return Response({"id": run.pk, "timeout_seconds": run.timeout_seconds}, status=status.HTTP_201_CREATED)


class RecipeLogView(ContractView):
    @extend_schema(
        tags=["agent"], request=RecipeLogRequestSerializer,
        responses={200: RecipeLogResponseSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Append one chunk of a recipe run's output",
        description="Chunks are numbered from 0 without gaps. Sending a stored chunk again with the same text "
        "changes nothing, so a retry after a lost response is safe. Other text under a stored number, a gap, or a run "
        "that already ended is a 409.",
    )
    def post(self, request, pk: int, run_id: int):
        body = RecipeLogRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        chunk = agent_recipes.agent_recipe_log_append(agent=self.agent, contract_id=pk, run_id=run_id, **body.validated_data)
        return Response({"run_id": run_id, "sequence": chunk.sequence})


class RecipeResultView(ContractView):
    @extend_schema(
        tags=["agent"], request=RecipeResultRequestSerializer,
        responses={200: RecipeResultResponseSerializer, **AGENT_ERRORS, **LEASE_CONFLICT},
        summary="Report how a recipe run ended",
        description="A non-zero exit code, a timeout or an SSH error fails the rental and refunds it. After a "
        "successful run the agent reports success with the VM's connection details.",
    )
    def post(self, request, pk: int, run_id: int):
        body = RecipeResultRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run, contract = agent_recipes.agent_recipe_run_finish(
            agent=self.agent, contract_id=pk, run_id=run_id, **body.validated_data
        )
        return Response({"run_id": run.pk, "run_status": run.status, "contract": _state(contract)})


class ReconcileView(AgentView):
    @extend_schema(
        tags=["agent"], request=ReconcileRequestSerializer, responses={200: ReconcileResponseSerializer, **AGENT_ERRORS},
        summary="Send the VMs running on the host; get keep, terminate or unknown for each",
    )
    def post(self, request):
        body = ReconcileRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        answers = agent_work.agent_reconcile(agent=self.agent, servers=body.validated_data["servers"])
        return Response({"decisions": [answer.__dict__ for answer in answers]})


class HealthView(AgentView):
    @extend_schema(
        tags=["agent"], request=HealthReportsRequestSerializer, responses={200: HealthReportsResponseSerializer, **AGENT_ERRORS},
        summary="Send health reports of the VMs this agent serves",
        description="Each report is accepted or rejected on its own: a report for a contract of another pool, an "
        "unknown contract or one that is not active is rejected with a reason, and the others are stored.",
    )
    def post(self, request):
        body = HealthReportsRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        reports = [agent_work.HealthReport(**item) for item in body.validated_data["reports"]]
        results = agent_work.agent_health_report(agent=self.agent, reports=reports)
        return Response({"results": [result.__dict__ for result in results]})
