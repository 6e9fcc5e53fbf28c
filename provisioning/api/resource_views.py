"""Resource API: the signed-in user's self-provisioned VMs; create, show, start, stop, delete, list on the marketplace.

Resources are looked up among the user's own, so another user's resource is a 404.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from marketplace.api.serializers import ErrorSerializer
from marketplace.api.views import ERROR_RESPONSES
from provisioning.api.serializers import (
    ResourceCreateSerializer,
    ResourceListingSerializer,
    ResourceSerializer,
)
from provisioning.models import CloudAccount, Resource, ResourceStatus
from provisioning.resource_services import (
    ResourceInvalidTransition,
    ResourceRented,
    resource_create,
    resource_delete,
    resource_list,
    resource_start,
    resource_stop,
    resource_unlist,
)

CONFLICT = {409: OpenApiResponse(ErrorSerializer, description="The resource's status does not allow this, or it is rented.")}


@extend_schema_view(
    list=extend_schema(summary="List your resources", description="Deleted resources are left out."),
    retrieve=extend_schema(summary="Show a resource", responses={200: ResourceSerializer, **ERROR_RESPONSES}),
    create=extend_schema(
        summary="Create a resource",
        description=(
            "Creates a VM for your own use at one of your cloud accounts, without payment, and returns at once with "
            "status `provisioning`; poll the resource until it is `running`. Location, server type and image are "
            "checked against the account's live catalog. Over RESOURCE_QUOTA_PER_USER resources gives 400."
        ),
        request=ResourceCreateSerializer,
        responses={201: ResourceSerializer, **ERROR_RESPONSES},
    ),
    destroy=extend_schema(
        summary="Delete a resource",
        description="Starts deleting the server (status `deleting`). While the resource is rented the response is 409.",
        responses={202: ResourceSerializer, **CONFLICT, **ERROR_RESPONSES},
    ),
)
class ResourceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    queryset = Resource.objects.none()  # For schema generation; get_queryset() scopes to the user.
    permission_classes = (IsAuthenticated,)
    serializer_class = ResourceSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "pk"
    lookup_value_regex = "[0-9a-fA-F-]{36}"
    http_method_names = ["get", "post", "delete", "head", "options"]

    def get_queryset(self):
        return (
            Resource.objects.filter(owner=self.request.user)
            .exclude(status=ResourceStatus.DELETED)
            .select_related("listing")
            .order_by("-created_at", "-id")
        )

    def _reloaded(self, resource: Resource, code: int = status.HTTP_200_OK) -> Response:
        fresh = Resource.objects.select_related("listing").get(pk=resource.pk)
        return Response(ResourceSerializer(fresh, context=self.get_serializer_context()).data, status=code)

    def create(self, request, *args, **kwargs):
        from recipes.models import RecipeVersion

        serializer = ResourceCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        account = CloudAccount.objects.filter(pk=data["cloud_account"], owner=request.user).first()
        if account is None:
            raise ValidationError({"cloud_account": f"No cloud account with id {data['cloud_account']} is yours."})
        version = None
        if data.get("recipe_version"):
            version = RecipeVersion.objects.filter(pk=data["recipe_version"]).first()
            if version is None:
                raise ValidationError({"recipe_version": f"No recipe version with id {data['recipe_version']}."})
        resource = resource_create(
            owner=request.user, cloud_account=account, name=data["name"], location_code=data["location_code"],
            server_type=data["server_type"], image=data["image"], ssh_public_key=data["ssh_public_key"],
            recipe_version=version,
        )
        return self._reloaded(resource, status.HTTP_201_CREATED)

    def _transition(self, service, code: int = status.HTTP_200_OK) -> Response:
        resource = self.get_object()
        try:
            resource = service(resource=resource, actor=self.request.user)
        except (ResourceInvalidTransition, ResourceRented) as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return self._reloaded(resource, code)

    def destroy(self, request, pk=None):
        return self._transition(resource_delete, status.HTTP_202_ACCEPTED)

    @extend_schema(summary="Start a stopped resource", request=None, responses={202: ResourceSerializer, **CONFLICT, **ERROR_RESPONSES})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._transition(resource_start, status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Stop a running resource",
        description="Powers the server off. While the resource is rented the response is 409.",
        request=None,
        responses={202: ResourceSerializer, **CONFLICT, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        return self._transition(resource_stop, status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="List a running resource on the marketplace",
        description=(
            "Creates (or updates and shows again) a public offering with a stock of one. A tenant who rents it gets "
            "root access with their key; `remove_owner_keys` removes your keys while it is rented. Returns the resource "
            "with the offering's slug."
        ),
        request=ResourceListingSerializer,
        responses={200: ResourceSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"], url_path="listing")
    def listing(self, request, pk=None):
        resource = self.get_object()
        serializer = ResourceListingSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        resource_list(
            resource=resource, actor=request.user, name=data["name"], description=data.get("description", ""),
            price_cents=data["price_cents"], currency=data["currency"], remove_owner_keys=data["remove_owner_keys"],
            country=data.get("country", ""),
        )
        return self._reloaded(resource)

    @extend_schema(
        summary="Hide a resource's offering from the marketplace",
        description="A running rental of it goes on until it ends.",
        request=None,
        responses={200: ResourceSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["post"])
    def unlist(self, request, pk=None):
        resource = self.get_object()
        resource_unlist(resource=resource, actor=request.user)
        return self._reloaded(resource)
