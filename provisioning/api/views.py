"""Cloud account API: list, create, show and validate the signed-in user's accounts."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from marketplace.api.views import ERROR_RESPONSES
from provisioning.api.serializers import CloudAccountSerializer
from provisioning.models import CloudAccount
from provisioning.services import cloud_account_create, cloud_account_validate


@extend_schema_view(
    list=extend_schema(summary="List your cloud accounts"),
    retrieve=extend_schema(summary="Show a cloud account", responses={200: CloudAccountSerializer, **ERROR_RESPONSES}),
    create=extend_schema(
        summary="Add a cloud account",
        description="A Hetzner token is checked against the Hetzner API first; a token Hetzner rejects is not saved.",
        responses={201: CloudAccountSerializer, **ERROR_RESPONSES},
    ),
)
class CloudAccountViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    queryset = CloudAccount.objects.none()  # For schema generation; get_queryset() scopes to the user.
    permission_classes = (IsAuthenticated,)
    serializer_class = CloudAccountSerializer

    def get_queryset(self):
        return CloudAccount.objects.filter(owner=self.request.user).order_by("label", "id")

    def perform_create(self, serializer) -> None:
        data = serializer.validated_data
        serializer.instance = cloud_account_create(
            owner=self.request.user, backend=data["backend"], label=data["label"], token=data.get("token", "")
        )

    @extend_schema(
        summary="Check a cloud account's credentials",
        description=(
            "Calls the backend with the stored token and records the result in validation_status. "
            "When the backend gives no clear answer, the status stays and last_error says why."
        ),
        request=None,
        responses={200: CloudAccountSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"])
    def validate(self, request, pk=None):
        account = cloud_account_validate(account=self.get_object())
        return Response(self.get_serializer(account).data)
