"""Request and response bodies of the agent API."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from rest_framework import serializers

from marketplace.models import ProvisioningStep
from marketplace.sshkeys import parse_public_key
from provisioning.agent_services import HEARTBEAT_JSON_MAX_CHARS
from provisioning.agent_work import AgentFailureReason, ReconcileDecision
from provisioning.health import DETAIL_MAX_LENGTH, HYPERVISOR_STATE_MAX_LENGTH
from provisioning.models import ProvisionerType

#: Maximum number of characters in one recipe output chunk; the agent sends chunks of about 4 KiB.
RECIPE_CHUNK_MAX_CHARS = 65536
#: Maximum number of health reports in one request; the agent sends larger batches in parts.
HEALTH_REPORTS_MAX = 500


def _unstorable_character(value) -> str | None:
    """Return the first NUL or lone surrogate character in any key or string of a decoded JSON value, or None.

    PostgreSQL's jsonb rejects both, so storing such a value would fail with a server error.
    """
    if isinstance(value, str):
        return next((char for char in value if char == "\x00" or "\ud800" <= char <= "\udfff"), None)
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    else:
        return None
    return next((char for item in items if (char := _unstorable_character(item)) is not None), None)


def _bounded_object(value, field: str):
    if not isinstance(value, dict):
        raise serializers.ValidationError(f"{field} must be a JSON object.")
    if len(json.dumps(value)) > HEARTBEAT_JSON_MAX_CHARS:
        raise serializers.ValidationError(f"{field} is larger than {HEARTBEAT_JSON_MAX_CHARS} characters of JSON.")
    char = _unstorable_character(value)
    if char is not None:
        name = "a null character" if char == "\x00" else "a lone surrogate character"
        raise serializers.ValidationError(f"{field} contains {name} (U+{ord(char):04X}); remove it.")
    return value


class AgentSetupRequestSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200, help_text="The one-time setup token from the agent pool's page.")
    name = serializers.CharField(max_length=80, help_text="A name for this agent, for example the host name.")
    version = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")


class AgentPoolSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    region = serializers.CharField()
    provisioner_type = serializers.ChoiceField(choices=ProvisionerType.choices)


class AgentSetupResponseSerializer(serializers.Serializer):
    agent_id = serializers.IntegerField()
    credential = serializers.CharField(help_text="Send as `Authorization: Bearer <credential>`; shown only in this response.")
    pool = AgentPoolSummarySerializer()


class HeartbeatRequestSerializer(serializers.Serializer):
    version = serializers.CharField(max_length=40)
    capabilities = serializers.JSONField(
        help_text='What the agent can do: {"provisioner": "proxmox", "images": ["ubuntu-24.04"], "max_parallel": 2}.'
    )
    free_resources = serializers.JSONField(
        help_text='Free capacity of the host: {"vcpu": 12, "memory_mib": 32768, "disk_gb": 900}.'
    )

    def validate_capabilities(self, value):
        return _bounded_object(value, "capabilities")

    def validate_free_resources(self, value):
        return _bounded_object(value, "free_resources")


class HeartbeatResponseSerializer(serializers.Serializer):
    agent_id = serializers.IntegerField()
    pool = AgentPoolSummarySerializer()
    offline_after_seconds = serializers.IntegerField()
    provisioner_matches = serializers.BooleanField(help_text="False when the agent runs another provisioner type than the pool's.")


class WorkItemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.ChoiceField(choices=["provision", "terminate"])


class WorkResponseSerializer(serializers.Serializer):
    items = WorkItemSerializer(many=True)


class RecipeSpecSerializer(serializers.Serializer):
    """The recipe of a contract, and how the platform runs it."""

    script = serializers.CharField(help_text="The bash script, run with `bash -euo pipefail`.")
    username = serializers.CharField(help_text="The user the recipe logs in as.")
    client_private_key = serializers.CharField(
        help_text="The contract's platform key (OpenSSH private key) to log in with; its public half is in ssh_public_keys."
    )
    timeout_seconds = serializers.IntegerField(help_text="Seconds after which the script is killed and the run fails.")
    max_output_bytes = serializers.IntegerField(help_text="Output bytes kept; later output is dropped.")


class ContractSpecSerializer(serializers.Serializer):
    """The data an agent needs to create or delete one contract's VM."""

    id = serializers.IntegerField()
    public_id = serializers.UUIDField()
    action = serializers.ChoiceField(choices=["provision", "terminate"])
    name = serializers.CharField(help_text="The VM name to use; it contains the contract id.")
    labels = serializers.DictField(child=serializers.CharField())
    vcpu = serializers.IntegerField()
    memory_mib = serializers.IntegerField()
    disk_gb = serializers.IntegerField()
    image = serializers.CharField()
    server_type = serializers.CharField()
    location_code = serializers.CharField()
    ssh_public_keys = serializers.ListField(child=serializers.CharField())
    cloud_server_id = serializers.CharField(help_text="The VM id stored so far; empty before success.")
    recipe = RecipeSpecSerializer(allow_null=True, help_text="Set when the agent must run a recipe before it reports success.")
    lease_expires_at = serializers.DateTimeField()
    lease_seconds = serializers.IntegerField()


class ProgressRequestSerializer(serializers.Serializer):
    step = serializers.ChoiceField(choices=ProvisioningStep.choices, required=False, allow_blank=True, default="")


class ContractStateSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    lease_expires_at = serializers.DateTimeField(allow_null=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)


class SuccessRequestSerializer(serializers.Serializer):
    server_id = serializers.CharField(max_length=64)
    address = serializers.IPAddressField()
    port = serializers.IntegerField(min_value=1, max_value=65535)
    host_public_key = serializers.CharField(
        max_length=2000, help_text="The VM's SSH host key as an OpenSSH public key line, so tenants can check it."
    )

    def validate_host_public_key(self, value: str) -> str:
        try:
            return parse_public_key(value).normalized
        except DjangoValidationError as exc:
            raise serializers.ValidationError([f"Invalid SSH host key: {message}" for message in exc.messages]) from exc


class FailureRequestSerializer(serializers.Serializer):
    reason_code = serializers.ChoiceField(choices=AgentFailureReason.choices)
    message = serializers.CharField(max_length=2000, allow_blank=True, default="")
    server_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")


class RecipeRunStartResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The run's id, used in the log and result paths.")
    timeout_seconds = serializers.IntegerField()


class RecipeLogRequestSerializer(serializers.Serializer):
    sequence = serializers.IntegerField(min_value=0, help_text="The chunk's number, from 0 without gaps.")
    text = serializers.CharField(max_length=RECIPE_CHUNK_MAX_CHARS, trim_whitespace=False)


class RecipeLogResponseSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    sequence = serializers.IntegerField()


class RecipeResultRequestSerializer(serializers.Serializer):
    exit_code = serializers.IntegerField(allow_null=True, help_text="The script's exit code; null after a timeout or an SSH error.")
    timed_out = serializers.BooleanField()
    duration_seconds = serializers.FloatField(min_value=0)
    output_bytes = serializers.IntegerField(min_value=0, help_text="All output bytes, including those dropped after the cap.")
    truncated = serializers.BooleanField()
    error = serializers.CharField(
        max_length=2000, allow_blank=True, required=False, default="",
        help_text="Why the recipe could not be run or finished over SSH; empty when it ran to the end.",
    )
    server_id = serializers.CharField(max_length=64, allow_blank=True, required=False, default="")


class RecipeResultResponseSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    run_status = serializers.CharField()
    contract = ContractStateSerializer()


class ReconcileServerSerializer(serializers.Serializer):
    server_id = serializers.CharField(max_length=64)
    contract_id = serializers.IntegerField(allow_null=True, required=False, default=None)


class ReconcileRequestSerializer(serializers.Serializer):
    servers = ReconcileServerSerializer(many=True, max_length=5000)


class ReconcileAnswerSerializer(serializers.Serializer):
    server_id = serializers.CharField()
    contract_id = serializers.IntegerField(allow_null=True)
    decision = serializers.ChoiceField(choices=ReconcileDecision.choices)
    reason = serializers.CharField()
    address = serializers.CharField(allow_null=True, help_text="The address tenants use, for a `keep` of an active contract.")
    port = serializers.IntegerField(allow_null=True, help_text="The SSH port tenants use, for a `keep` of an active contract.")


class ReconcileResponseSerializer(serializers.Serializer):
    decisions = ReconcileAnswerSerializer(many=True)


class AwareDateTimeField(serializers.DateTimeField):
    """A date and time that must carry a UTC offset; DRF would read a naive one in the server's time zone."""

    def enforce_timezone(self, value):
        if timezone.is_naive(value):
            raise serializers.ValidationError(
                f"{value.isoformat()} has no timezone; send an aware time, for example 2026-01-05T10:00:00Z."
            )
        return super().enforce_timezone(value)


class HealthReportSerializer(serializers.Serializer):
    contract_id = serializers.IntegerField(min_value=1)
    checked_at = AwareDateTimeField(help_text="When the probe ran, with a timezone, for example 2026-01-05T10:00:00Z.")
    up = serializers.BooleanField(help_text="True when the SSH port accepted a TCP connection and the VM is running.")
    latency_ms = serializers.FloatField(
        min_value=0, max_value=600_000, allow_null=True, required=False, default=None,
        help_text="Milliseconds until the TCP connection was established, from the host; null when down.",
    )
    hypervisor_state = serializers.CharField(
        max_length=HYPERVISOR_STATE_MAX_LENGTH, allow_blank=True, required=False, default="",
        help_text="The hypervisor's state of the VM, for example running, stopped or missing.",
    )
    detail = serializers.CharField(
        max_length=DETAIL_MAX_LENGTH, allow_blank=True, required=False, default="",
        help_text="The probe's error or a short note.",
    )


    def to_internal_value(self, data):
        """Parse one report; every field error also names the value that was sent."""
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, dict) or not isinstance(data, dict):
                raise
            detail = {
                field: [f"{message} (got {data.get(field)!r})" for message in messages] if field in data else messages
                for field, messages in exc.detail.items()
            }
            raise serializers.ValidationError(detail) from exc


class HealthReportsRequestSerializer(serializers.Serializer):
    reports = HealthReportSerializer(many=True, min_length=1, max_length=HEALTH_REPORTS_MAX)


class HealthReportResultSerializer(serializers.Serializer):
    contract_id = serializers.IntegerField()
    accepted = serializers.BooleanField()
    health_check_id = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(help_text="Why the report was rejected; empty when it was accepted.")
    stop_reporting = serializers.BooleanField(
        help_text="True when reports for this contract will keep being rejected (unknown or no longer active "
        "contract): stop probing its VM. False for a report rejected for its own values, such as a bad time."
    )


class HealthReportsResponseSerializer(serializers.Serializer):
    results = HealthReportResultSerializer(many=True, help_text="One result per report, in the order sent.")


# --- the provider's pool API -------------------------------------------------------------------


class AgentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    version = serializers.CharField()
    capabilities = serializers.JSONField()
    free_resources = serializers.JSONField()
    last_heartbeat_at = serializers.DateTimeField(allow_null=True)
    online = serializers.SerializerMethodField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    credential_prefix = serializers.CharField(help_text="The credential's first characters; the credential itself is never returned.")

    def get_online(self, agent) -> bool:
        return agent.is_online()


class AgentPoolSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(max_length=80)
    region = serializers.CharField(max_length=40)
    provisioner_type = serializers.ChoiceField(choices=ProvisionerType.choices)
    cloud_account_id = serializers.IntegerField(read_only=True, help_text="Offerings of the pool use this cloud account.")
    created_at = serializers.DateTimeField(read_only=True)
    agents = AgentSerializer(many=True, read_only=True)


class SetupTokenResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    token = serializers.CharField(help_text="The one-time setup token; shown only in this response.")
    expires_at = serializers.DateTimeField()


class AgentRenameSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=80)
