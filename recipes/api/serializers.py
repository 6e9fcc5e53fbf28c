"""Serializers of the recipe API."""

from __future__ import annotations

from rest_framework import serializers

from recipes.models import Recipe, RecipeVersion


class RecipeVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = RecipeVersion
        fields = ("number", "changelog", "script", "created_at")
        read_only_fields = fields


class RecipeListSerializer(serializers.ModelSerializer):
    latest_version = serializers.IntegerField(
        source="latest_version_number", read_only=True, allow_null=True, help_text="Number of the newest version."
    )

    class Meta:
        model = Recipe
        fields = ("slug", "name", "description", "latest_version", "created_at")
        read_only_fields = fields


class RecipeDetailSerializer(RecipeListSerializer):
    versions = RecipeVersionSerializer(many=True, read_only=True)

    class Meta(RecipeListSerializer.Meta):
        fields = (*RecipeListSerializer.Meta.fields, "versions")
        read_only_fields = fields
