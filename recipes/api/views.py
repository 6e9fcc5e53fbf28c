"""Recipe API: browse recipes and read their versions' scripts."""

from __future__ import annotations

from django.db.models import Max, Prefetch
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.permissions import AllowAny

from marketplace.api.views import ERROR_RESPONSES
from recipes.api.serializers import RecipeDetailSerializer, RecipeListSerializer
from recipes.models import Recipe, RecipeVersion


@extend_schema_view(
    list=extend_schema(summary="List recipes"),
    retrieve=extend_schema(
        summary="Show a recipe with every version's script",
        responses={200: RecipeDetailSerializer, **ERROR_RESPONSES},
    ),
)
class RecipeViewSet(viewsets.ReadOnlyModelViewSet):
    permission_classes = (AllowAny,)
    lookup_field = "slug"

    def get_queryset(self):
        queryset = Recipe.objects.annotate(latest_version_number=Max("versions__number")).order_by("name", "id")
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(
                Prefetch("versions", queryset=RecipeVersion.objects.order_by("-number"))
            )
        return queryset

    def get_serializer_class(self):
        return RecipeDetailSerializer if self.action == "retrieve" else RecipeListSerializer
