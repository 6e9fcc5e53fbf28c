"""The provider's agent pool API: list and add pools, create setup tokens, rename and revoke agents.

Pools are looked up among the signed-in user's own, so another user's pool or agent is a 404.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from marketplace.api.views import ERROR_RESPONSES
from provisioning.agent_services import (
    agent_pool_create,
    agent_rename,
    agent_revoke,
    agent_setup_token_create,
)
from provisioning.api.agent_serializers import (
    AgentPoolSerializer,
    AgentRenameSerializer,
    AgentSerializer,
    SetupTokenResponseSerializer,
)
from provisioning.models import AgentPool


def _pool_data(pool: AgentPool) -> dict:
    return {
        "id": pool.pk,
        "name": pool.name,
        "region": pool.region,
        "provisioner_type": pool.provisioner_type,
        "cloud_account_id": pool.cloud_account_id,
        "created_at": pool.created_at,
        "agents": AgentSerializer(pool.agents.all(), many=True).data,
    }


@extend_schema_view(
    list=extend_schema(summary="List your agent pools with their agents", responses={200: AgentPoolSerializer(many=True)}),
    retrieve=extend_schema(summary="Show an agent pool", responses={200: AgentPoolSerializer, **ERROR_RESPONSES}),
    create=extend_schema(
        summary="Add an agent pool",
        description="Creates the pool and the cloud account (backend `agent`) its offerings use.",
        responses={201: AgentPoolSerializer, **ERROR_RESPONSES},
    ),
)
class AgentPoolViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    queryset = AgentPool.objects.none()  # For schema generation; get_queryset() scopes to the user.
    permission_classes = (IsAuthenticated,)
    serializer_class = AgentPoolSerializer
    pagination_class = None

    def get_queryset(self):
        return (
            AgentPool.objects.filter(cloud_account__owner=self.request.user, cloud_account__deleted_at__isnull=True)
            .select_related("cloud_account")
            .prefetch_related("agents")
            .order_by("cloud_account__label", "pk")
        )

    def list(self, request, *args, **kwargs):
        return Response([_pool_data(pool) for pool in self.get_queryset()])

    def retrieve(self, request, *args, **kwargs):
        return Response(_pool_data(self.get_object()))

    def create(self, request, *args, **kwargs):
        body = AgentPoolSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        pool = agent_pool_create(
            owner=request.user, name=data["name"], region=data["region"], provisioner_type=data["provisioner_type"]
        )
        return Response(_pool_data(self.get_queryset().get(pk=pool.pk)), status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Create a one-time setup token for a new agent",
        request=None,
        responses={201: SetupTokenResponseSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"], url_path="setup-tokens")
    def setup_tokens(self, request, pk=None):
        row, token = agent_setup_token_create(pool=self.get_object(), actor=request.user)
        response = Response({"id": row.pk, "token": token, "expires_at": row.expires_at}, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    def _agent(self, agent_id: int):
        pool = self.get_object()
        agent = get_object_or_404(pool.agents.all(), pk=agent_id)
        agent.pool = pool
        return agent

    @extend_schema(summary="Rename an agent", request=AgentRenameSerializer, responses={200: AgentSerializer, **ERROR_RESPONSES})
    @action(detail=True, methods=["post"], url_path=r"agents/(?P<agent_id>\d+)/rename")
    def rename_agent(self, request, pk=None, agent_id=None):
        body = AgentRenameSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        agent = agent_rename(agent=self._agent(int(agent_id)), actor=request.user, name=body.validated_data["name"])
        return Response(AgentSerializer(agent).data)

    @extend_schema(
        summary="Revoke an agent's credential",
        description="The agent's next request is rejected with 401, and contracts it held go back to the pool's queue.",
        request=None,
        responses={200: AgentSerializer, **ERROR_RESPONSES, 404: OpenApiResponse(description="No such agent in your pool.")},
    )
    @action(detail=True, methods=["post"], url_path=r"agents/(?P<agent_id>\d+)/revoke")
    def revoke_agent(self, request, pk=None, agent_id=None):
        agent = agent_revoke(agent=self._agent(int(agent_id)), actor=request.user)
        return Response(AgentSerializer(agent).data)
