"""Cloud account API: list, add, show, rename, replace token, validate and delete the signed-in user's accounts.

Accounts are looked up among the user's own, so another user's account is a 404.
"""

from __future__ import annotations

import logging

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError as DrfValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from marketplace.api.serializers import ErrorSerializer
from marketplace.api.views import ERROR_RESPONSES
from provisioning.api.serializers import (
    PROXMOX_FIELDS,
    CloudAccountInUseSerializer,
    CloudAccountRenameSerializer,
    CloudAccountSerializer,
    CloudAccountTokenSerializer,
    DependentOfferingSerializer,
    DependentRentalSerializer,
)
from provisioning.models import Backend, CloudAccount
from provisioning.selectors import cloud_accounts_for_owner
from provisioning.services import (
    CloudAccountInUse,
    ValidationRateLimited,
    cloud_account_create,
    cloud_account_create_proxmox,
    cloud_account_delete,
    cloud_account_rename,
    cloud_account_replace_token,
    cloud_account_revalidate,
)

logger = logging.getLogger(__name__)

RATE_LIMITED_RESPONSE = {
    429: OpenApiResponse(ErrorSerializer, description="Checked too recently; the Retry-After header gives the seconds to wait.")
}


@extend_schema_view(
    list=extend_schema(
        summary="List your cloud accounts",
        description="With each account's validation status, last error and how many offerings and live rentals use it.",
    ),
    retrieve=extend_schema(summary="Show a cloud account", responses={200: CloudAccountSerializer, **ERROR_RESPONSES}),
    create=extend_schema(
        summary="Add a cloud account",
        description=(
            "`backend` is `hetzner`, `proxmox` or `sandbox`. Hetzner needs `token`. Proxmox VE needs `proxmox_api_url`, "
            "`proxmox_token_id`, `token` (the token's secret) and `proxmox_node`; `proxmox_verify_tls` defaults to true. "
            "The token is checked against the backend's API first; a token the API rejects, an unknown node, a TLS "
            "failure or an unreachable API gives 400 naming the field, and nothing is saved. The token is never returned."
        ),
        responses={201: CloudAccountSerializer, **ERROR_RESPONSES},
    ),
    partial_update=extend_schema(
        summary="Rename a cloud account",
        description="Only `label` can be changed. Replace the token with the `token` action.",
        request=CloudAccountRenameSerializer,
        responses={200: CloudAccountSerializer, **ERROR_RESPONSES},
    ),
    destroy=extend_schema(
        summary="Delete a cloud account",
        description=(
            "Deletes the account and erases its token. While offerings or live rentals use the account the answer "
            "is 409, naming them; move the offerings to another account and wait until the rentals end."
        ),
        responses={
            204: OpenApiResponse(description="Deleted."),
            409: OpenApiResponse(CloudAccountInUseSerializer, description="Offerings or live rentals still use the account."),
            **ERROR_RESPONSES,
        },
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
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return cloud_accounts_for_owner(user=self.request.user)

    def _reloaded(self, account: CloudAccount) -> dict:
        return CloudAccountSerializer(self.get_queryset().get(pk=account.pk), context=self.get_serializer_context()).data

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        backend = data["backend"]
        if backend == Backend.PROXMOX:
            account = cloud_account_create_proxmox(
                owner=request.user,
                label=data["label"],
                api_url=data.get("proxmox_api_url", ""),
                token_id=data.get("proxmox_token_id", ""),
                token_secret=data.get("token", ""),
                node=data.get("proxmox_node", ""),
                verify_tls=data.get("proxmox_verify_tls", True),
                vmid_min=data.get("proxmox_vmid_min"),
                vmid_max=data.get("proxmox_vmid_max"),
            )
        else:
            proxmox_fields_sent = sorted(
                name for name in PROXMOX_FIELDS if name in request.data and name != "proxmox_verify_tls"
            )
            if proxmox_fields_sent:
                raise DrfValidationError(
                    {name: [f"Only Proxmox VE accounts take {name}; this is a {backend} account."] for name in proxmox_fields_sent}
                )
            account = cloud_account_create(owner=request.user, backend=backend, label=data["label"], token=data.get("token", ""))
        return Response(self._reloaded(account), status=status.HTTP_201_CREATED)

    def partial_update(self, request, pk=None):
        account = self.get_object()
        serializer = CloudAccountRenameSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        account = cloud_account_rename(account=account, actor=request.user, label=serializer.validated_data["label"])
        return Response(self._reloaded(account))

    def destroy(self, request, pk=None):
        account = self.get_object()
        try:
            cloud_account_delete(account=account, actor=request.user)
        except CloudAccountInUse as exc:
            body = {
                "detail": str(exc),
                "offerings": DependentOfferingSerializer(exc.offerings, many=True).data,
                "rentals": DependentRentalSerializer(exc.rentals, many=True).data,
            }
            return Response(body, status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Replace a cloud account's API token",
        description=(
            "The new token is checked against the backend's API first; if it is rejected, or the API cannot be "
            "reached, the answer is 400 and the stored token is unchanged. An accepted token marks the account valid."
        ),
        request=CloudAccountTokenSerializer,
        responses={200: CloudAccountSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"])
    def token(self, request, pk=None):
        account = self.get_object()
        serializer = CloudAccountTokenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        account = cloud_account_replace_token(
            account=account,
            actor=request.user,
            token=serializer.validated_data["token"],
            proxmox_token_id=serializer.validated_data.get("proxmox_token_id", ""),
        )
        return Response(self._reloaded(account))

    @extend_schema(
        summary="Check a cloud account's credentials",
        description=(
            "Calls the backend with the stored token and records the result in validation_status, last_error and "
            "validated_at. When the backend gives no clear answer, the status stays and last_error says why. One "
            "check per account per CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS (default 30); more get 429."
        ),
        request=None,
        responses={200: CloudAccountSerializer, **RATE_LIMITED_RESPONSE, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"])
    def validate(self, request, pk=None):
        account = self.get_object()
        try:
            account = cloud_account_revalidate(account=account, actor=request.user)
        except ValidationRateLimited as exc:
            return Response(
                {"detail": str(exc)},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(exc.retry_after)},
            )
        return Response(self._reloaded(account))
