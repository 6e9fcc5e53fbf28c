"""Forms of the server-rendered pages: rent, reject, SSH keys, provider profile, cloud accounts, offerings."""

from __future__ import annotations

import re
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from marketplace.models import Offering, ProviderProfile, SshKey
from marketplace.offering_csv_format import EMPTY_FILE_MESSAGE
from marketplace.selectors import offering_allowlist
from marketplace.services.cloud_catalog import SPEC_FIELDS, CloudCatalog
from marketplace.services.providers import MAX_PRICE_CENTS, duplicate_name_message, provider_named
from marketplace.sshkeys import ParsedPublicKey, parse_public_key
from marketplace.validators import (
    validate_country_code,
    validate_multiline_text,
    validate_visible_text,
)
from provisioning.models import Backend, CloudAccount
from recipes.models import RecipeVersion

_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

_PUBLIC_KEY_WIDGET = forms.Textarea(
    attrs={
        "rows": 4,
        "spellcheck": "false",
        "autocomplete": "off",
        "placeholder": "ssh-ed25519 AAAAC3Nza... you@laptop",
        "class": "mono",
    }
)


class RentForm(forms.Form):
    """The rent page: which SSH key gets root access, plus the idempotency key of this submit.

    A pasted key takes precedence over the saved key chosen in the select, so a pre-selected
    saved key never replaces a key the user pasted. Without saved keys the pasted key is required.
    """

    saved_key = forms.ModelChoiceField(
        queryset=SshKey.objects.none(),
        required=False,
        empty_label="— paste a new key —",
        label="Saved SSH key",
        help_text="Used unless you paste a new key below.",
    )
    public_key = forms.CharField(
        required=False,
        widget=_PUBLIC_KEY_WIDGET,
        label="Or paste a public key",
        help_text="The line from your .pub file, for example ~/.ssh/id_ed25519.pub. "
        "A pasted key is used instead of the saved key above.",
    )
    save_as = forms.CharField(
        required=False,
        max_length=80,
        label="Save this key as",
        validators=[validate_visible_text],
        help_text="Optional: a name to save the pasted key under for later rentals, for example 'laptop'.",
    )
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=64)
    # What the page showed the tenant; contract_create rejects the rental if the offering changed
    # since. Optional, so a page rendered before these fields existed can still be submitted.
    expected_price_cents = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)
    expected_currency = forms.CharField(widget=forms.HiddenInput, required=False, max_length=3)
    expected_recipe_version_id = forms.IntegerField(
        widget=forms.HiddenInput, required=False, min_value=0, help_text="0 when the offering has no recipe."
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        saved_keys = SshKey.objects.filter(user=user)
        self.fields["saved_key"].queryset = saved_keys
        self.has_saved_keys = saved_keys.exists()
        if not self.has_saved_keys:
            self.fields["public_key"].required = True
            self.fields["public_key"].help_text = "The line from your .pub file, for example ~/.ssh/id_ed25519.pub."
            self.fields["public_key"].error_messages["required"] = (
                "An SSH public key is required: paste the line from your .pub file, for example ~/.ssh/id_ed25519.pub."
            )
        self.parsed_key: ParsedPublicKey | None = None

    def clean_idempotency_key(self) -> str:
        value = self.cleaned_data["idempotency_key"]
        if not _IDEMPOTENCY_KEY.match(value):
            raise ValidationError("The form is out of date: reload the page and submit again.")
        return value

    def clean(self):
        cleaned = super().clean()
        saved = cleaned.get("saved_key")
        pasted = (cleaned.get("public_key") or "").strip()
        if "saved_key" in self.errors or "public_key" in self.errors:
            return cleaned
        if pasted:
            try:
                self.parsed_key = parse_public_key(pasted)
            except ValidationError as exc:
                self.add_error("public_key", exc)
        elif not saved:
            self.add_error("public_key", "An SSH public key is required: choose a saved key or paste one.")
        if cleaned.get("save_as", "").strip() and not pasted:
            self.add_error("save_as", "Only a pasted key can be saved; paste the key or leave this empty.")
        return cleaned

    @property
    def public_key_text(self) -> str:
        """The OpenSSH line to authorise: the pasted (normalised) key if any, else the saved key's."""
        if self.parsed_key is not None:
            return self.parsed_key.normalized
        return self.cleaned_data["saved_key"].public_key


def expected_terms(offering: Offering) -> dict[str, int | str]:
    """Return the RentForm values that pin the price, currency and recipe version the page shows."""
    return {
        "expected_price_cents": offering.price_cents,
        "expected_currency": offering.currency,
        "expected_recipe_version_id": offering.recipe_version_id or 0,
    }


#: Maximum length of a provider's reject message, the same on the rental page and in the API.
REJECT_REASON_MAX_LENGTH = 2000


def reject_reason_too_long_message(length: int) -> str:
    """Return the error for a reject message of `length` characters."""
    return f"The message to the tenant is {length} characters; shorten it to {REJECT_REASON_MAX_LENGTH} or fewer."


def parse_whole_number(text: str) -> int | None:
    """Return `text` as a non-negative int if it is ASCII digits only, else None.

    str.isdigit() alone also accepts digits such as "²" (U+00B2) that int() rejects.
    """
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


class MultilineCharField(forms.CharField):
    """A textarea field that stores line ends as LF.

    Browsers count a line break as one character for the textarea's maxlength but submit it as
    CRLF, so without this a message within the limit in the browser is over it on the server.
    """

    def to_python(self, value):
        value = super().to_python(value)
        return value.replace("\r\n", "\n") if value else value


class RejectForm(forms.Form):
    """The provider's reject form on the rental page."""

    reason = MultilineCharField(
        required=False,
        label="Message to the tenant",
        widget=forms.Textarea(
            attrs={"rows": 2, "maxlength": REJECT_REASON_MAX_LENGTH, "placeholder": "Why you reject this rental"}
        ),
        validators=[validate_multiline_text],
        help_text="The tenant sees this message and gets a full refund.",
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"]
        if len(reason) > REJECT_REASON_MAX_LENGTH:
            raise ValidationError(reject_reason_too_long_message(len(reason)), code="max_length")
        return reason


class SshKeyForm(forms.Form):
    """Add a saved SSH key."""

    name = forms.CharField(
        max_length=80, validators=[validate_visible_text], help_text="A name you recognise, for example 'laptop'."
    )
    public_key = forms.CharField(
        widget=_PUBLIC_KEY_WIDGET,
        label="Public key",
        help_text="The line from your .pub file, for example ~/.ssh/id_ed25519.pub.",
    )


class ProviderProfileForm(forms.ModelForm):
    """Create or edit the public provider profile."""

    website = forms.URLField(required=False, max_length=200, assume_scheme="https", help_text="For example https://example.com.")
    # Declared here so lower-case input is upper-cased before the ISO 3166-1 check.
    country = forms.CharField(required=False, max_length=2, help_text="Two-letter ISO code, for example DE.")

    class Meta:
        model = ProviderProfile
        fields = ["display_name", "description", "website", "country", "auto_accept"]
        field_classes = {"description": MultilineCharField}
        widgets = {"description": forms.Textarea(attrs={"rows": 4})}

    def clean_display_name(self) -> str:
        name = self.cleaned_data["display_name"].strip()
        existing = provider_named(display_name=name, exclude_pk=self.instance.pk)
        if existing is not None:
            raise ValidationError(duplicate_name_message(existing.display_name), code="duplicate_name")
        return name

    def clean_country(self) -> str:
        country = self.cleaned_data["country"].strip().upper()
        if country:
            validate_country_code(country)
        return country


#: Maximum length of a cloud API token, the same on this form and in the cloud account API.
TOKEN_MAX_LENGTH = 500


class CloudAccountForm(forms.Form):
    """Add a cloud account; the token is write-only and never rendered back."""

    backend = forms.ChoiceField(choices=Backend.choices, initial=Backend.SANDBOX)
    label = forms.CharField(
        max_length=80,
        validators=[validate_visible_text],
        help_text="Your name for this account, for example 'Hetzner project A'.",
    )
    token = forms.CharField(
        required=False,
        max_length=TOKEN_MAX_LENGTH,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        label="API token",
        help_text="Hetzner Cloud: a read and write token from Security > API tokens. Not needed for Sandbox.",
    )


class RecipeVersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: RecipeVersion) -> str:
        return f"{obj.recipe.name} v{obj.number}"


class OfferingForm(forms.ModelForm):
    """Create or edit an offering; the price is entered in currency units and stored in cents."""

    price = forms.DecimalField(
        label="Price per month",
        min_value=Decimal("0"),
        max_value=Decimal(MAX_PRICE_CENTS) / 100,
        decimal_places=2,
        max_digits=12,
        help_text="In currency units with at most two decimals, for example 4.59. 0 makes it free.",
        error_messages={
            "min_value": "The price cannot be negative.",
            "max_value": f"The price is too high: the maximum is {MAX_PRICE_CENTS // 100:,} per month.",
            "max_decimal_places": "Use at most two decimals (cents), for example 4.59.",
            "invalid": "Enter the price as a number, for example 4.59.",
        },
    )
    recipe_version = RecipeVersionChoiceField(
        queryset=RecipeVersion.objects.none(),
        required=False,
        empty_label="No recipe (plain VM)",
        label="Recipe",
        help_text="The script runs as root on every VM rented from this offering.",
    )
    # Declared here so lower-case input is upper-cased before the model's ISO 3166-1 check.
    country = forms.CharField(
        required=False, max_length=2, help_text="Two-letter ISO code; leave empty to take it from the location."
    )
    shared_with = forms.CharField(
        required=False,
        label="Shared with",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "placeholder": "alice@example.com"}),
        help_text="When visibility is Shared: the email addresses of the users who may see and rent this "
        "offering, one per line or separated by commas. An address without an account works once its owner "
        "signs up.",
    )
    # The visibility the provider confirmed on the confirmation step; a public offering is only
    # hidden when this equals the submitted visibility.
    confirmed_visibility = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Offering
        fields = [
            "name",
            "description",
            "product_type",
            "cloud_account",
            "server_type",
            "location_code",
            "image",
            "vcpu",
            "memory_mib",
            "disk_gb",
            "gpu_model",
            "gpu_count",
            "country",
            "city",
            "recipe_version",
            "currency",
            "visibility",
            "stock_status",
        ]
        labels = {
            "vcpu": "vCPU",
            "memory_mib": "Memory (MiB)",
            "disk_gb": "Disk (GB)",
            "gpu_model": "GPU model",
            "gpu_count": "GPU count",
            "location_code": "Location",
            "server_type": "Server type",
        }
        help_texts = {
            "memory_mib": "1 GiB = 1024 MiB, for example 4096 for 4 GiB; at most 16 TiB (16777216 MiB).",
            "disk_gb": "At most 1,000,000 GB.",
            "gpu_count": "0 when there is no GPU; at most 64.",
            "city": "Leave empty to take it from the location.",
            "gpu_model": "For example NVIDIA L4; leave empty when there is no GPU.",
        }
        field_classes = {"description": MultilineCharField}
        widgets = {"description": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, user, catalog: CloudCatalog | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        accounts = CloudAccount.objects.filter(owner=user)
        self.fields["cloud_account"].queryset = accounts
        self.fields["cloud_account"].empty_label = "Choose one of your cloud accounts"
        if self.instance.pk is None and not self.is_bound and "cloud_account" not in self.initial:
            only = list(accounts[:2])
            if len(only) == 1:
                self.initial["cloud_account"] = only[0].pk
        self.fields["recipe_version"].queryset = RecipeVersion.objects.select_related("recipe").order_by(
            "recipe__name", "-number"
        )
        self.fields["city"].required = False
        if self.instance.pk is not None and not self.is_bound:
            self.initial.setdefault("price", Decimal(self.instance.price_cents) / 100)
            self.initial.setdefault("shared_with", "\n".join(offering_allowlist(offering=self.instance)))
        self.catalog: CloudCatalog | None = None
        if catalog is not None:
            self.use_catalog(catalog)

    def current_value(self, name: str) -> str:
        """Return the field's submitted value, else its initial value, as a string."""
        value = self[name].value()
        return "" if value is None else str(value)

    def selected_account(self) -> CloudAccount | None:
        """Return the chosen cloud account if it is one of the user's, else None."""
        pk = parse_whole_number(self.current_value("cloud_account"))
        if pk is None:
            return None
        return self.fields["cloud_account"].queryset.filter(pk=pk).first()

    def use_catalog(self, catalog: CloudCatalog) -> None:
        """Offer the catalog's server types, locations and images as choices.

        A current value the catalog lacks stays selectable and is marked as not offered, so
        opening an offering never changes it silently. Saving it then fails and lists the valid
        values. Spec fields the backend fixes become read-only.
        """
        self.catalog = catalog
        server_types = [
            (item.name, f"{item.name}: {item.vcpu} vCPU, {item.memory_mib / 1024:g} GiB, {item.disk_gb} GB, {item.architecture}")
            for item in catalog.server_types
        ]
        locations = [
            (item.code, f"{item.code}: {item.city}, {item.country}" if item.city else item.code)
            for item in catalog.locations
        ]
        images = [
            (name, f"{name} ({', '.join(catalog.image_architectures(name))})") for name in catalog.image_names()
        ]
        self._use_choices("server_type", server_types, "Choose a server type")
        self._use_choices("location_code", locations, "Choose a location")
        self._use_choices("image", images, "Choose an image")
        for name in SPEC_FIELDS:
            if name in catalog.editable_spec_fields:
                continue
            self.fields[name].widget.attrs["readonly"] = True
            self.fields[name].help_text = "Set by the server type; this backend creates servers of exactly that size."

    def _use_choices(self, name: str, choices: list[tuple[str, str]], empty_label: str) -> None:
        current = self.current_value(name)
        known = {value for value, _label in choices}
        if current and current not in known:
            choices = [(current, f"{current} (not offered by this account)"), *choices]
        self.fields[name].widget = forms.Select(choices=[("", empty_label), *choices])

    def allowlist(self) -> list[str]:
        """Return the addresses of `shared_with`, split at commas, semicolons and white space."""
        text = self.cleaned_data.get("shared_with") or ""
        return [part for part in re.split(r"[\s,;]+", text) if part]

    def clean_country(self) -> str:
        return (self.cleaned_data.get("country") or "").strip().upper()

    def clean_currency(self) -> str:
        return (self.cleaned_data.get("currency") or "").strip().upper()

    def _post_clean(self):
        # Model validation runs in the service (after the backend check fills country and city),
        # so the form only converts the price here.
        price = self.cleaned_data.get("price")
        if price is not None:
            self.cleaned_data["price_cents"] = int(price * 100)

    def service_values(self) -> dict:
        """Return the cleaned values in the shape `offering_create` and `offering_update` take."""
        values = {name: self.cleaned_data.get(name) for name in self._meta.fields}
        values["price_cents"] = self.cleaned_data["price_cents"]
        values["country"] = values.get("country") or ""
        values["city"] = values.get("city") or ""
        values["gpu_model"] = values.get("gpu_model") or ""
        values["description"] = values.get("description") or ""
        return values


class OfferingCsvUploadForm(forms.Form):
    """Form that uploads a CSV file of offerings for a dry-run preview."""

    file = forms.FileField(
        required=False,
        label="CSV file",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
        help_text="UTF-8, with a header row; at most the size and row limits below.",
        error_messages={"empty": EMPTY_FILE_MESSAGE},
    )

    def __init__(self, *args, too_large_message: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        # Set when the upload handler dropped the file for being over the size limit.
        self.too_large_message = too_large_message

    def clean_file(self):
        if self.too_large_message:
            raise ValidationError(self.too_large_message, code="too_large")
        upload = self.cleaned_data.get("file")
        if not upload:
            raise ValidationError("Choose a CSV file to upload.", code="required")
        return upload
