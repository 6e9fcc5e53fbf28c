"""Serializers of the cloud account API. API tokens are write-only and never serialized."""

from __future__ import annotations

from rest_framework import serializers

from provisioning.models import CloudAccount, Resource
from provisioning.services import TOKEN_MAX_LENGTH

PROXMOX_FIELDS = (
    "proxmox_api_url",
    "proxmox_token_id",
    "proxmox_node",
    "proxmox_verify_tls",
    "proxmox_vmid_min",
    "proxmox_vmid_max",
)


def _token_field(help_text: str, *, required: bool) -> serializers.CharField:
    return serializers.CharField(
        write_only=True,
        required=required,
        allow_blank=not required,
        trim_whitespace=True,
        max_length=TOKEN_MAX_LENGTH,
        style={"input_type": "password"},
        help_text=help_text,
    )


class CloudAccountSerializer(serializers.ModelSerializer):
    """A cloud account; `token` is accepted on create and never returned."""

    token = _token_field(
        "The backend's API token: for Hetzner a project token (console: Security > API tokens), for Proxmox VE "
        "the API token's secret. Not needed for sandbox. Checked against the backend before the account is saved.",
        required=False,
    )
    has_token = serializers.BooleanField(read_only=True)
    offering_count = serializers.IntegerField(read_only=True, help_text="Offerings that run on this account.")
    live_rental_count = serializers.IntegerField(
        read_only=True, help_text="Rentals on this account that have not ended (awaiting payment up to termination failed)."
    )
    proxmox_verify_tls = serializers.BooleanField(
        default=True,
        help_text="Proxmox VE only: check the API's TLS certificate against trusted CAs. Turn off only for a "
        "self-signed certificate on a network you trust; the token secret could be read otherwise.",
    )

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
            "offering_count",
            "live_rental_count",
            *PROXMOX_FIELDS,
        )
        read_only_fields = ("id", "has_token", "validation_status", "last_error", "validated_at", "created_at")
        extra_kwargs = {
            "proxmox_api_url": {"help_text": "Proxmox VE only: address of the web interface, for example https://pve.example.com:8006."},
            "proxmox_token_id": {"help_text": "Proxmox VE only: the API token's ID, USER@REALM!TOKENNAME."},
            "proxmox_node": {"help_text": "Proxmox VE only: the node that runs the VMs and holds the templates."},
            "proxmox_vmid_min": {"help_text": "Proxmox VE only: first VM ID the platform may use; omit both ends for 100000-199999."},
            "proxmox_vmid_max": {"help_text": "Proxmox VE only: last VM ID the platform may use."},
        }
        # Uniqueness of the label per owner is checked by the create services.
        validators: list = []


class _OnlyDeclaredFields(serializers.Serializer):
    """Rejects request keys the serializer does not declare, naming them, instead of ignoring them."""

    unknown_field_message = "Unknown field."

    def validate(self, attrs):
        initial = self.initial_data if hasattr(self.initial_data, "keys") else {}
        unknown = sorted(set(initial) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: [self.unknown_field_message] for name in unknown})
        return attrs


class CloudAccountRenameSerializer(_OnlyDeclaredFields):
    """The only change PATCH makes: a new label."""

    unknown_field_message = (
        "Only label can be changed; replace the token with POST /api/v1/cloud-accounts/{id}/token/, or add a new "
        "account for other settings."
    )

    label = serializers.CharField(max_length=CloudAccount._meta.get_field("label").max_length)


class CloudAccountTokenSerializer(_OnlyDeclaredFields):
    """A replacement API token; Proxmox VE accounts may also get a new token ID."""

    unknown_field_message = "Unknown field; send token, and proxmox_token_id for a Proxmox VE token of another name."

    token = _token_field("The new API token (for Proxmox VE, the token's secret).", required=True)
    proxmox_token_id = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=CloudAccount._meta.get_field("proxmox_token_id").max_length,
        help_text="Proxmox VE only: the new token's ID, when the secret belongs to another token. Omit to keep the ID.",
    )


class DependentOfferingSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()


class DependentRentalSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    offering_name = serializers.CharField()
    status = serializers.CharField()


class CloudAccountInUseSerializer(serializers.Serializer):
    """The body of a 409 response to DELETE: what still uses the account."""

    detail = serializers.CharField()
    offerings = DependentOfferingSerializer(many=True)
    rentals = DependentRentalSerializer(many=True)


class UptimeWindowSerializer(serializers.Serializer):
    days = serializers.IntegerField(help_text="Length of the period, ending now: 1, 7 or 30 days.")
    enough_data = serializers.BooleanField(
        source="has_enough_data",
        help_text="False while checks cover less than HEALTH_UPTIME_MIN_COVERAGE of the period; uptime is null then.",
    )
    uptime_percent = serializers.FloatField(
        allow_null=True, help_text="Time up divided by time with a known status, in percent; null without enough data."
    )
    coverage_percent = serializers.FloatField(help_text="Share of the period that checks cover, in percent.")
    up_seconds = serializers.FloatField()
    down_seconds = serializers.FloatField()


class LatencyHourSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Start of the hour, UTC.")
    mean_latency_ms = serializers.FloatField(allow_null=True, help_text="Mean TCP connect time of the up checks; null without any.")
    max_latency_ms = serializers.FloatField(allow_null=True)
    up_count = serializers.IntegerField()
    down_count = serializers.IntegerField()


class HealthCheckSerializer(serializers.Serializer):
    checked_at = serializers.DateTimeField()
    source = serializers.CharField(help_text="platform (the platform's probe) or agent (the provider's agent).")
    status = serializers.CharField(help_text="up or down.")
    latency_ms = serializers.FloatField(allow_null=True, help_text="TCP connect time to the SSH port; null when down.")
    hypervisor_state = serializers.CharField(help_text="The VM's state reported by an agent's hypervisor; empty otherwise.")
    detail = serializers.CharField()


class RentalHealthSerializer(serializers.Serializer):
    failing = serializers.BooleanField(help_text="True from the failed check that notified you until the next up check.")
    consecutive_failures = serializers.IntegerField(help_text="Down checks since the last up check.")
    uptime = UptimeWindowSerializer(many=True)
    latency_hours = LatencyHourSerializer(many=True, help_text="The last 24 hours, oldest first.")
    recent_checks = HealthCheckSerializer(many=True, help_text="The newest checks, newest first.")


class ResourceSerializer(serializers.ModelSerializer):
    """A self-provisioned resource as its owner sees it."""

    id = serializers.UUIDField(source="public_id", read_only=True)
    cloud_account = serializers.IntegerField(source="cloud_account_id", read_only=True)
    status_label = serializers.CharField(source="get_status_display", read_only=True)
    offering = serializers.SerializerMethodField()

    class Meta:
        model = Resource
        fields = [
            "id", "name", "cloud_account", "backend", "status", "status_label", "provisioning_step", "status_reason",
            "last_error", "location_code", "server_type", "vcpu", "memory_mib", "disk_gb", "image", "recipe_version",
            "ssh_key_fingerprint", "ip_address", "ssh_port", "ssh_username", "remove_owner_keys_while_rented",
            "offering", "created_at",
        ]
        read_only_fields = fields

    def get_offering(self, resource) -> str | None:
        """Return the slug of the resource's offering while it is listed, else None."""
        listing = getattr(resource, "listing", None)
        if listing is None or listing.visibility != "public":
            return None
        return listing.slug


class ResourceCreateSerializer(serializers.Serializer):
    cloud_account = serializers.IntegerField(help_text="Id of one of your cloud accounts.")
    name = serializers.CharField(max_length=80)
    location_code = serializers.CharField(max_length=40)
    server_type = serializers.CharField(max_length=60)
    image = serializers.CharField(max_length=80)
    ssh_public_key = serializers.CharField(help_text="One OpenSSH public key line, authorised for root.")
    recipe_version = serializers.IntegerField(required=False, allow_null=True, help_text="Id of a recipe version to run once.")


class ResourceListingSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10000)
    price_cents = serializers.IntegerField(min_value=0, help_text="Monthly price in the currency's minor unit.")
    currency = serializers.CharField(max_length=3, default="EUR")
    remove_owner_keys = serializers.BooleanField(default=False)
    country = serializers.CharField(
        required=False, allow_blank=True, max_length=2,
        help_text="ISO country code of the server; needed only when the location reports none (Proxmox VE).",
    )
