"""Serializers of the marketplace API: offerings, rentals, provider profile and SSH keys.

Input serializers only parse and check shapes; the services in `marketplace.services` make
every change and raise the field-keyed errors that `marketplace.api.exceptions` maps to 400.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.forms import REJECT_REASON_MAX_LENGTH, reject_reason_too_long_message
from marketplace.models import (
    MAX_ALLOWLIST_ENTRIES,
    Contract,
    ContractEvent,
    Offering,
    ProviderProfile,
    SshKey,
    Visibility,
)
from marketplace.selectors import offering_visible_to
from marketplace.services.offering_csv import RowAction
from marketplace.services.onboarding import OnboardingStepKey
from marketplace.services.providers import OFFERING_EDITABLE_FIELDS
from marketplace.sshkeys import MAX_INPUT_BYTES, parse_public_key
from marketplace.validators import validate_multiline_text
from provisioning.models import CloudAccount
from recipes.models import RecipeRun, RecipeRunStatus, RecipeVersion

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


# --- offerings ------------------------------------------------------------------------------


class ProviderSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = ProviderProfile
        fields = ("slug", "display_name", "country")


class RecipeSummarySerializer(serializers.ModelSerializer):
    """The recipe version an offering runs on a new server."""

    slug = serializers.CharField(source="recipe.slug")
    name = serializers.CharField(source="recipe.name")

    class Meta:
        model = RecipeVersion
        # `id` is what a rent request sends as expected_recipe_version_id.
        fields = ("id", "slug", "name", "number")


class OfferingSerializer(serializers.ModelSerializer):
    """An offering as the catalog and the offering page show it."""

    provider = ProviderSummarySerializer(read_only=True)
    recipe = RecipeSummarySerializer(source="recipe_version", read_only=True, allow_null=True)
    backend = serializers.CharField(source="cloud_account.backend", read_only=True)
    is_rentable = serializers.BooleanField(read_only=True)

    class Meta:
        model = Offering
        fields = (
            "slug",
            "name",
            "description",
            "product_type",
            "provider",
            "vcpu",
            "memory_mib",
            "disk_gb",
            "gpu_model",
            "gpu_count",
            "country",
            "city",
            "location_code",
            "server_type",
            "image",
            "backend",
            "recipe",
            "price_cents",
            "currency",
            "visibility",
            "stock_status",
            "is_rentable",
            "created_at",
        )
        read_only_fields = fields


class ProviderOfferingSerializer(serializers.ModelSerializer):
    """An offering as its provider creates and edits it.

    `country` and `city` may be left empty; the service fills them in from the location.
    """

    cloud_account = serializers.PrimaryKeyRelatedField(queryset=CloudAccount.objects.none())
    recipe_version = serializers.PrimaryKeyRelatedField(
        queryset=RecipeVersion.objects.all(), allow_null=True, required=False
    )
    country = serializers.CharField(max_length=2, required=False, allow_blank=True)
    city = serializers.CharField(max_length=80, required=False, allow_blank=True)
    currency = serializers.CharField(max_length=3, required=False)
    backend = serializers.CharField(source="cloud_account.backend", read_only=True)
    confirm_visibility = serializers.BooleanField(
        write_only=True,
        required=False,
        default=False,
        help_text="Must be true to change a public offering to shared or private; without it the request fails "
        "with 400 naming this field and the number of running rentals, which keep running either way.",
    )

    class Meta:
        model = Offering
        fields = ("slug", *OFFERING_EDITABLE_FIELDS, "backend", "created_at", "updated_at", "confirm_visibility")
        read_only_fields = ("slug", "backend", "created_at", "updated_at")

    def get_fields(self):
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            fields["cloud_account"].queryset = CloudAccount.objects.filter(owner=request.user)
        return fields

    def validate(self, attrs):
        # The allowlist is not an offering field. Ignoring it left a shared offering with an empty allowlist.
        if hasattr(self.initial_data, "get") and "allowlist" in self.initial_data:
            raise serializers.ValidationError(
                {"allowlist": "Set the allowlist with PATCH /api/v1/provider/offerings/<slug>/visibility/ after saving."}
            )
        return super().validate(attrs)


class OfferingVisibilitySerializer(serializers.Serializer):
    """The visibility of an offering and the users who may see and rent it."""

    visibility = serializers.ChoiceField(
        choices=Visibility.choices,
        help_text="public: in the catalog for everyone; shared: only for the addresses in allowlist; "
        "private: only for you.",
    )
    allowlist = serializers.ListField(
        child=serializers.CharField(max_length=254),
        required=False,
        max_length=MAX_ALLOWLIST_ENTRIES,
        help_text="Email addresses that may see and rent the offering while it is shared. Omit it to keep the "
        "current list; send [] to empty it. Stored in lower case.",
    )
    confirm_visibility = serializers.BooleanField(
        write_only=True,
        required=False,
        default=False,
        help_text="Must be true to change a public offering to shared or private.",
    )
    running_rentals = serializers.IntegerField(
        read_only=True, help_text="Rentals that are paid, provisioning or active; they keep running whatever the visibility."
    )


class CatalogServerTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    vcpu = serializers.IntegerField()
    memory_mib = serializers.IntegerField()
    disk_gb = serializers.IntegerField()
    architecture = serializers.CharField()
    monthly_price_cents = serializers.DictField(
        child=serializers.IntegerField(), help_text="The cloud's own monthly price per location code, in cents of currency."
    )
    currency = serializers.CharField()


class CatalogLocationSerializer(serializers.Serializer):
    code = serializers.CharField()
    city = serializers.CharField()
    country = serializers.CharField()
    description = serializers.CharField()


class CatalogImageSerializer(serializers.Serializer):
    name = serializers.CharField()
    architectures = serializers.ListField(child=serializers.CharField())


class CloudCatalogSerializer(serializers.Serializer):
    """The server types, locations and images a cloud account offers for an offering's server_type, location_code and image."""

    cloud_account = serializers.IntegerField(source="account_id")
    backend = serializers.CharField()
    server_types = CatalogServerTypeSerializer(many=True)
    locations = CatalogLocationSerializer(many=True)
    images = serializers.SerializerMethodField()
    editable_spec_fields = serializers.SerializerMethodField()
    loaded_at = serializers.DateTimeField()
    cached = serializers.SerializerMethodField()

    @extend_schema_field(CatalogImageSerializer(many=True))
    def get_images(self, obj) -> list[dict]:
        return [{"name": name, "architectures": obj.image_architectures(name)} for name in obj.image_names()]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_editable_spec_fields(self, obj) -> list[str]:
        """Spec fields an offering may set to other values than its server type's; the others must match it."""
        return sorted(obj.editable_spec_fields)

    def get_cached(self, obj) -> bool:
        """Return whether this copy came from the cache (at most OFFERING_CATALOG_CACHE_SECONDS old)."""
        return bool(self.context.get("cached"))


class CatalogErrorSerializer(serializers.Serializer):
    """The body of a 502 response when the cloud account's backend did not return its catalog."""

    detail = serializers.CharField()
    validation_status = serializers.CharField(help_text="The cloud account's status after the attempt.")
    last_error = serializers.CharField()


class OfferingCsvUploadSerializer(serializers.Serializer):
    """A multipart upload of an offerings CSV file."""

    file = serializers.FileField(help_text="The CSV file, UTF-8, with a header row.")
    dry_run = serializers.BooleanField(
        required=False, help_text="Instead of the dry_run query parameter: true to preview, false to apply."
    )


class OfferingCsvErrorSerializer(serializers.Serializer):
    """One error of one CSV row."""

    column = serializers.CharField(allow_null=True, help_text="The column at fault; null for the whole row.")
    message = serializers.CharField()
    detail = serializers.CharField(
        help_text="Row, column and message in one sentence, for example "
        "\"row 7, column memory_mib: must be a whole number, got '16 GB'\"."
    )


class OfferingCsvChangeSerializer(serializers.Serializer):
    old = serializers.CharField(help_text="The current value, as the CSV export writes it.")
    new = serializers.CharField(help_text="The value from the file.")


class OfferingCsvRowSerializer(serializers.Serializer):
    """Outcome of one row of the file: the planned action in a preview, the action taken after apply."""

    row = serializers.IntegerField(help_text="Row number in the file, counting the header row as row 1.")
    slug = serializers.CharField(help_text="The offering's slug; for a new offering without one, the slug made from its name.")
    name = serializers.CharField()
    action = serializers.ChoiceField(
        choices=RowAction.choices,
        help_text="error: the row is not saved and `errors` says why.",
    )
    changes = serializers.DictField(
        child=OfferingCsvChangeSerializer(), help_text="For updates: the changed columns with old and new value."
    )
    errors = OfferingCsvErrorSerializer(many=True)


class OfferingCsvReportSerializer(serializers.Serializer):
    """The per-row outcome of a CSV import."""

    dry_run = serializers.BooleanField(help_text="true: nothing was saved, the rows show what applying would do.")
    delimiter = serializers.CharField(help_text="The column delimiter found in the header row: comma, semicolon or tab.")
    columns = serializers.ListField(child=serializers.CharField(), help_text="The known columns of the file, in file order.")
    warnings = serializers.ListField(child=serializers.CharField(), help_text="For example columns that were ignored.")
    summary = serializers.DictField(
        child=serializers.IntegerField(), help_text="Number of rows per action: create, update, unchanged, error."
    )
    rows = OfferingCsvRowSerializer(many=True)


# --- rentals --------------------------------------------------------------------------------


class RentalCreateSerializer(serializers.Serializer):
    """A rent request: the offering, one SSH key (pasted or saved) and an idempotency key."""

    offering = serializers.SlugField(max_length=140, help_text="Slug of the offering to rent.")
    ssh_public_key = serializers.CharField(
        required=False,
        max_length=MAX_INPUT_BYTES,
        help_text="An OpenSSH public key line (the contents of your .pub file). Give this or ssh_key_id.",
    )
    ssh_key_id = serializers.IntegerField(
        required=False, min_value=1, help_text="Id of one of your saved SSH keys. Give this or ssh_public_key."
    )
    idempotency_key = serializers.RegexField(
        IDEMPOTENCY_KEY_PATTERN,
        required=False,
        help_text="16 to 64 characters of A-Z, a-z, 0-9, '-' and '_'. Sending the same key again returns the "
        "rental the first request created instead of creating a second one. A random key is used if omitted.",
    )
    expected_price_cents = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="The offering's price_cents you agreed to. If the offering's price differs now, the request "
        "fails with 400 naming this field and no rental is created. Omit it to accept the current price.",
    )
    expected_currency = serializers.CharField(
        required=False,
        min_length=3,
        max_length=3,
        help_text="The offering's currency you agreed to (ISO 4217, for example EUR). If the offering's currency "
        "differs now, the request fails with 400 naming this field. Omit it to accept the current currency.",
    )
    expected_recipe_version_id = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="Id of the offering's recipe version you reviewed, 0 for an offering without a recipe. If the "
        "offering's recipe version differs now, the request fails with 400 naming this field.",
    )

    def validate_offering(self, value: str) -> Offering:
        user = self.context["request"].user
        offering = offering_visible_to(user=user).filter(slug=value).first()
        if offering is None:
            raise serializers.ValidationError(f"No offering with slug {value!r} is available to you.")
        return offering

    def validate_ssh_public_key(self, value: str) -> str:
        try:
            return parse_public_key(value).normalized
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc

    def validate(self, attrs: dict) -> dict:
        has_text = bool(attrs.get("ssh_public_key"))
        has_id = attrs.get("ssh_key_id") is not None
        if has_text and has_id:
            raise serializers.ValidationError({"ssh_public_key": "Give either ssh_public_key or ssh_key_id, not both."})
        if not has_text and not has_id:
            raise serializers.ValidationError(
                {"ssh_public_key": "An SSH public key is required: give ssh_public_key or ssh_key_id."}
            )
        if has_id:
            user = self.context["request"].user
            key = SshKey.objects.filter(user=user, pk=attrs["ssh_key_id"]).first()
            if key is None:
                raise serializers.ValidationError({"ssh_key_id": f"You have no saved SSH key with id {attrs['ssh_key_id']}."})
            attrs["ssh_public_key"] = key.public_key
        return attrs


class RentalRejectSerializer(serializers.Serializer):
    reason = serializers.CharField(
        required=False,
        allow_blank=True,
        validators=[validate_multiline_text],
        help_text=f"Shown to the tenant; at most {REJECT_REASON_MAX_LENGTH} characters.",
    )

    def validate_reason(self, value: str) -> str:
        # Checked here rather than with max_length so the message states the length of the text.
        if len(value) > REJECT_REASON_MAX_LENGTH:
            raise serializers.ValidationError(reject_reason_too_long_message(len(value)))
        return value


class StepStateSerializer(serializers.Serializer):
    step = serializers.CharField()
    label = serializers.CharField()
    state = serializers.ChoiceField(choices=["done", "current", "pending", "failed"])


class ConnectionSerializer(serializers.Serializer):
    """How to reach a rented server; null before it has an address and after the rental ended."""

    ip_address = serializers.IPAddressField()
    ssh_port = serializers.IntegerField()
    ssh_username = serializers.CharField()
    ssh_command = serializers.CharField()
    host_public_key = serializers.CharField(help_text="The server's SSH host key, for known_hosts.")


@extend_schema_field({"type": "string", "description": "One of: " + ", ".join(RecipeRunStatus.values) + "."})
class RecipeRunStatusField(serializers.ChoiceField):
    """A recipe run's status.

    Its schema is a plain string, not an enum component, because drf-spectacular 0.30 names enum
    components after the field and the contract's `status` enum already takes that name.
    """


class RecipeRunSummarySerializer(serializers.ModelSerializer):
    status = RecipeRunStatusField(choices=RecipeRunStatus.choices, read_only=True)

    class Meta:
        model = RecipeRun
        fields = (
            "status",
            "executed",
            "exit_code",
            "timed_out",
            "started_at",
            "finished_at",
            "duration_seconds",
            "output_bytes",
            "truncated",
            "error",
        )


class ContractEventSerializer(serializers.ModelSerializer):
    """A history row; non-staff users get the actor's role instead of internal worker ids."""

    actor_label = serializers.SerializerMethodField(
        help_text="Tenant, Provider, Staff or Platform; staff get the stored label, which may be a worker id."
    )

    class Meta:
        model = ContractEvent
        fields = ("created_at", "from_status", "to_status", "step", "actor_label", "reason")

    def get_actor_label(self, obj: ContractEvent) -> str:
        request = self.context.get("request")
        if request is not None and request.user.is_staff:
            return obj.actor_label
        return obj.public_actor


class RentalListSerializer(serializers.ModelSerializer):
    """A rental in a list: status and the agreed terms, without history."""

    offering = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    provider = serializers.CharField(source="provider.display_name", read_only=True)
    status_display = serializers.CharField(source="get_status_display", read_only=True)
    response_deadline = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="For a paid rental waiting for its provider: when it is rejected and refunded automatically "
        "unless the provider answers. Null otherwise.",
    )

    class Meta:
        model = Contract
        fields = (
            "public_id",
            "offering",
            "offering_name",
            "provider",
            "status",
            "status_display",
            "provisioning_step",
            "price_cents",
            "currency",
            "billing_period",
            "is_self_rental",
            "backend",
            "created_at",
            "paid_until",
            "cancel_at_period_end",
            "ended_at",
            "response_deadline",
        )
        read_only_fields = fields


class ProviderRentalSerializer(RentalListSerializer):
    """A rental of one of your offerings, as the rental requests list shows it."""

    tenant_email = serializers.EmailField(source="tenant.email", read_only=True)
    can_accept = serializers.BooleanField(read_only=True)

    class Meta(RentalListSerializer.Meta):
        fields = (
            *RentalListSerializer.Meta.fields,
            "tenant_email",
            "ssh_key_fingerprint",
            "paid_at",
            "can_accept",
        )
        read_only_fields = fields


class RentalPaymentSerializer(serializers.Serializer):
    method = serializers.CharField(allow_null=True, help_text="stripe, sandbox or free.")
    state = serializers.ChoiceField(choices=["unpaid", "awaiting_confirmation", "paid"])
    checkout_url = serializers.URLField(
        allow_null=True, help_text="Stripe's payment page for an unpaid card rental; open it in a browser to pay."
    )


class RentalDetailSerializer(RentalListSerializer):
    """A rental with its progress, connection details, recipe run summary and history."""

    steps = serializers.SerializerMethodField()
    connection = serializers.SerializerMethodField()
    recipe_run = serializers.SerializerMethodField()
    events = ContractEventSerializer(many=True, read_only=True)
    role = serializers.SerializerMethodField()
    can_cancel = serializers.BooleanField(read_only=True)
    can_accept = serializers.SerializerMethodField(
        help_text="True when you may accept or reject the request now: you are its provider (or staff) and it waits for you."
    )
    payment = serializers.SerializerMethodField()

    class Meta(RentalListSerializer.Meta):
        fields = (
            *RentalListSerializer.Meta.fields,
            "role",
            "payment",
            "status_reason",
            "steps",
            "vcpu",
            "memory_mib",
            "disk_gb",
            "gpu_model",
            "gpu_count",
            "country",
            "city",
            "location_code",
            "server_type",
            "image",
            "ssh_key_fingerprint",
            "connection",
            "recipe_run",
            "paid_at",
            "activated_at",
            "can_cancel",
            "can_accept",
            "events",
        )
        read_only_fields = fields

    @extend_schema_field(RentalPaymentSerializer)
    def get_payment(self, obj: Contract) -> dict:
        """Return the payment method and state and, for an unpaid card rental, the tenant's checkout URL."""
        checkout_url = None
        state = "paid" if obj.paid_at else "unpaid"
        if obj.pays_by_card and obj.status == "requested":
            latest = obj.checkout_sessions.first()
            if latest is not None and latest.status == "complete":
                state = "awaiting_confirmation"
            request = self.context.get("request")
            if latest is not None and latest.is_usable and request is not None and request.user.pk == obj.tenant_id:
                checkout_url = latest.url
        return {"method": obj.payment_method or None, "state": state, "checkout_url": checkout_url}

    @extend_schema_field(StepStateSerializer(many=True))
    def get_steps(self, obj: Contract) -> list[dict]:
        return [{"step": step, "label": label, "state": state} for step, label, state in obj.step_states()]

    @extend_schema_field(ConnectionSerializer(allow_null=True))
    def get_connection(self, obj: Contract) -> dict | None:
        # An ended rental's server is deleted, and its address may belong to someone else now.
        if not obj.ip_address or obj.is_ended:
            return None
        return {
            "ip_address": obj.ip_address,
            "ssh_port": obj.ssh_port,
            "ssh_username": obj.ssh_username,
            "ssh_command": obj.ssh_command,
            "host_public_key": obj.host_public_key,
        }

    @extend_schema_field(RecipeRunSummarySerializer(allow_null=True))
    def get_recipe_run(self, obj: Contract) -> dict | None:
        run = latest_recipe_run(obj)
        return RecipeRunSummarySerializer(run).data if run is not None else None

    @extend_schema_field(serializers.ChoiceField(choices=["tenant", "provider", "staff"]))
    def get_can_accept(self, obj: Contract) -> bool:
        user = self.context["request"].user
        return bool(obj.can_accept) and (obj.provider.user_id == user.pk or user.is_staff)

    def get_role(self, obj: Contract) -> str:
        user = self.context["request"].user
        if obj.tenant_id == user.pk:
            return "tenant"
        if obj.provider.user_id == user.pk:
            return "provider"
        return "staff"


def latest_recipe_run(contract: Contract) -> RecipeRun | None:
    """Return the contract's newest recipe run; uses prefetched runs when present."""
    runs = sorted(contract.recipe_runs.all(), key=lambda run: (run.started_at, run.pk), reverse=True)
    return runs[0] if runs else None


class RecipeLogSerializer(serializers.Serializer):
    """The output of a rental's newest recipe run."""

    run = RecipeRunSummarySerializer(allow_null=True)
    output = serializers.CharField(help_text="Combined stdout and stderr as streamed so far.")


# --- provider profile and SSH keys -----------------------------------------------------------


class ProviderProfileSerializer(serializers.ModelSerializer):
    country = serializers.CharField(
        max_length=2, required=False, allow_blank=True, help_text="Two-letter ISO country code, for example DE."
    )

    class Meta:
        model = ProviderProfile
        fields = ("slug", "display_name", "description", "website", "country", "auto_accept", "created_at")
        read_only_fields = ("slug", "created_at")


class OnboardingStepSerializer(serializers.Serializer):
    key = serializers.ChoiceField(choices=OnboardingStepKey.choices, help_text="The step: profile, cloud_account, offering or publish.")
    title = serializers.CharField(help_text="The step's name as the pages show it.")
    done = serializers.BooleanField()
    detail = serializers.CharField(help_text="One sentence on the step's state, or on what to do next.")
    url = serializers.CharField(help_text="Path of the guided setup page for this step.")


class OnboardingSerializer(serializers.Serializer):
    complete = serializers.BooleanField(help_text="Whether all four steps are done.")
    current_step = serializers.ChoiceField(
        choices=OnboardingStepKey.choices, allow_null=True, help_text="The first step that is not done; null when complete."
    )
    steps = OnboardingStepSerializer(many=True, help_text="profile, cloud_account, offering and publish, in this order.")


class SshKeySerializer(serializers.ModelSerializer):
    public_key = serializers.CharField(max_length=MAX_INPUT_BYTES, help_text="An OpenSSH public key line.")

    class Meta:
        model = SshKey
        fields = ("id", "name", "public_key", "key_type", "fingerprint", "created_at")
        read_only_fields = ("id", "key_type", "fingerprint", "created_at")


class ErrorSerializer(serializers.Serializer):
    """The body of a 401, 403, 404 or 409 response."""

    detail = serializers.CharField()

