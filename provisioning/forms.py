"""Forms of the cloud accounts pages. Token fields are write-only: they never render a value back."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from marketplace.services.providers import MAX_PRICE_CENTS
from marketplace.validators import validate_visible_text
from provisioning.models import Backend, CloudAccount, ProvisionerType
from provisioning.services import LABEL_MAX_LENGTH, TOKEN_MAX_LENGTH


def _label_field(help_text: str, *, required: bool = True) -> forms.CharField:
    return forms.CharField(
        max_length=LABEL_MAX_LENGTH, required=required, validators=[validate_visible_text], help_text=help_text
    )


def _secret_field(label: str, help_text: str, *, required: bool = True) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=required,
        max_length=TOKEN_MAX_LENGTH,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}),
        help_text=help_text,
    )


class HetznerAccountForm(forms.Form):
    """Add a Hetzner Cloud account: a label and a project's API token."""

    label = _label_field("Your name for this account, for example 'Hetzner project A'.")
    token = _secret_field(
        "API token",
        "A read and write token of the Hetzner Cloud project (console: Security > API tokens). It is checked "
        "against the Hetzner API before it is saved and never shown again.",
    )


class SandboxAccountForm(forms.Form):
    """Add a Sandbox account, which simulates servers and needs no token."""

    label = _label_field("Your name for this account, for example 'Playground'.")


class ProxmoxAccountForm(forms.Form):
    """Add a Proxmox VE account: API address, API token, node, TLS verification and VM id range.

    The text fields are optional here because `cloud_account_create_proxmox` checks them all at
    once, so a form with several mistakes shows every message after one submit.
    """

    label = _label_field("Your name for this account, for example 'Rack 1'.", required=False)
    api_url = forms.CharField(
        label="API URL",
        required=False,
        max_length=CloudAccount._meta.get_field("proxmox_api_url").max_length,
        help_text="Address of the Proxmox VE web interface, for example https://pve.example.com:8006.",
        widget=forms.TextInput(attrs={"inputmode": "url", "spellcheck": "false", "placeholder": "https://pve.example.com:8006"}),
    )
    token_id = forms.CharField(
        label="Token ID",
        required=False,
        max_length=CloudAccount._meta.get_field("proxmox_token_id").max_length,
        help_text="USER@REALM!TOKENNAME, for example cloudmarket@pve!provisioning (Datacenter > Permissions > API Tokens).",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )
    token = _secret_field(
        "Token secret",
        "The secret Proxmox VE showed once when the token was created. It is checked against the API before "
        "it is saved and never shown again.",
        required=False,
    )
    node = forms.CharField(
        label="Node",
        required=False,
        max_length=CloudAccount._meta.get_field("proxmox_node").max_length,
        help_text="The node that runs the VMs and holds the templates, for example pve1.",
    )
    verify_tls = forms.BooleanField(
        label="Verify the TLS certificate",
        required=False,
        initial=True,
        help_text="Leave this on. Turned off, anyone on the network path to the host can impersonate it and "
        "read the token secret; turn it off only for a self-signed certificate on a network you trust.",
    )
    vmid_min = forms.IntegerField(
        label="First VM ID", required=False, help_text="Optional: VM IDs the platform may use. Empty: 100000-199999."
    )
    vmid_max = forms.IntegerField(label="Last VM ID", required=False, help_text="Optional: the last VM ID of the range.")


class RenameForm(forms.Form):
    """Change a cloud account's label."""

    label = _label_field("Your name for this account; only you see it.")


class ReplaceTokenForm(forms.Form):
    """Replace the API token; the new one is checked against the backend before it is stored."""

    token = _secret_field("New API token", "Checked against the backend's API before it replaces the stored token.")


class ReplaceProxmoxTokenForm(ReplaceTokenForm):
    """Replace a Proxmox VE token secret, and optionally the token ID."""

    token_id = forms.CharField(
        label="New token ID",
        required=False,
        max_length=CloudAccount._meta.get_field("proxmox_token_id").max_length,
        help_text="Only when the new secret belongs to another token: USER@REALM!TOKENNAME. Empty keeps the current ID.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )

    field_order = ["token_id", "token"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["token"].label = "New token secret"


class AgentPoolForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="Shown in the offering form's cloud account list, for example 'Home rack'.")
    region = forms.CharField(max_length=40, help_text="Where the hosts are, for example fra-home-1; offerings use it as location code.")
    provisioner_type = forms.ChoiceField(
        choices=ProvisionerType.choices, help_text="How the pool's agents create VMs; every agent of the pool uses this one."
    )


class AgentRenameForm(forms.Form):
    name = forms.CharField(max_length=80)


class ResourceCreateForm(forms.Form):
    """The "new resource" wizard: cloud account, then location, server type and image from its live catalog.

    The catalog choices are filled in by the view once a cloud account is chosen.
    """

    cloud_account = forms.ModelChoiceField(queryset=CloudAccount.objects.none(), empty_label="Choose a cloud account")
    location_code = forms.ChoiceField(label="Location", choices=())
    server_type = forms.ChoiceField(label="Server type", choices=())
    image = forms.ChoiceField(label="Image", choices=())
    name = forms.CharField(max_length=80, validators=[validate_visible_text], help_text="Your name for this VM.")
    ssh_key = forms.ModelChoiceField(
        label="Saved SSH key", queryset=None, required=False, empty_label="Paste a key instead",
        help_text="Authorised for root on the VM.",
    )
    ssh_public_key = forms.CharField(
        label="SSH public key", required=False, widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="One OpenSSH public key line, used when no saved key is chosen.",
    )
    recipe_version = forms.ModelChoiceField(
        label="Recipe (optional)", queryset=None, required=False, empty_label="No recipe: a plain VM",
        help_text="A script the platform runs as root once the VM boots.",
    )

    def __init__(self, *args, user, catalog=None, **kwargs):
        from marketplace.models import SshKey
        from recipes.models import RecipeVersion

        super().__init__(*args, **kwargs)
        self.fields["cloud_account"].queryset = (
            CloudAccount.objects.filter(owner=user).exclude(backend=Backend.AGENT).order_by("label", "id")
        )
        self.fields["ssh_key"].queryset = SshKey.objects.filter(user=user).order_by("name", "id")
        self.fields["recipe_version"].queryset = RecipeVersion.objects.select_related("recipe").order_by("recipe__name", "-number")
        if catalog is not None:
            self.fields["location_code"].choices = [
                (item.code, f"{item.code} ({item.city}, {item.country})") for item in catalog.locations
            ]
            self.fields["server_type"].choices = [
                (item.name, f"{item.name}: {item.vcpu} vCPU, {item.memory_mib // 1024} GiB, {item.disk_gb} GB")
                for item in catalog.server_types
            ]
            self.fields["image"].choices = [(name, name) for name in catalog.image_names()]

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("ssh_key") and not (cleaned.get("ssh_public_key") or "").strip():
            self.add_error("ssh_public_key", "Choose a saved SSH key or paste a public key.")
        return cleaned

    def public_key(self) -> str:
        saved = self.cleaned_data.get("ssh_key")
        return saved.public_key if saved is not None else self.cleaned_data["ssh_public_key"]


class ResourceListForm(forms.Form):
    """List a running resource on the marketplace."""

    name = forms.CharField(label="Title", max_length=120, validators=[validate_visible_text])
    description = forms.CharField(required=False, max_length=10000, widget=forms.Textarea(attrs={"rows": 4}))
    price = forms.DecimalField(
        label="Monthly price", min_value=0, max_value=Decimal(MAX_PRICE_CENTS) / 100, max_digits=12, decimal_places=2,
        help_text="In the currency below, per month.",
        error_messages={"max_value": f"The price is too high: the maximum is {MAX_PRICE_CENTS // 100:,} per month."},
    )
    currency = forms.ChoiceField(choices=())
    country = forms.CharField(
        max_length=2, required=False,
        help_text="Two-letter country code of the server, for example DE; needed only when the location has none.",
    )
    remove_owner_keys = forms.BooleanField(
        label="Remove my keys from root while rented", required=False,
        help_text="Your keys are put back when the rental ends. The platform's own key always stays.",
    )

    def __init__(self, *args, needs_country: bool = True, **kwargs):
        from marketplace.validators import CURRENCIES

        super().__init__(*args, **kwargs)
        self.fields["currency"].choices = list(CURRENCIES)
        if not needs_country:
            # The resource's location has a country, which the offering takes.
            del self.fields["country"]

    def price_cents(self) -> int:
        return int(self.cleaned_data["price"] * 100)
