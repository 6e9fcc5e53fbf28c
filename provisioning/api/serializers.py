"""Serializers of the cloud account API. The API token is write-only and never serialized."""

from __future__ import annotations

from rest_framework import serializers

from provisioning.models import CloudAccount


class CloudAccountSerializer(serializers.ModelSerializer):
    """A cloud account; `token` is accepted on create and never returned."""

    token = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        max_length=500,
        style={"input_type": "password"},
        help_text="The backend's API token (Hetzner console: Security > API tokens). Not needed for sandbox.",
    )
    has_token = serializers.BooleanField(read_only=True)

    class Meta:
        model = CloudAccount
        fields = (
            "id",
            "backend",
            "label",
            "token",
            "has_token",
            "validation_status",
            "last_error",
            "validated_at",
            "created_at",
        )
        read_only_fields = ("id", "has_token", "validation_status", "last_error", "validated_at", "created_at")
        # Uniqueness of the label per owner is checked by cloud_account_create.
        validators: list = []
