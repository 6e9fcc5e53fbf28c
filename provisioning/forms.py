"""Forms of the cloud accounts pages. Token fields are write-only: they never render a value back."""

from __future__ import annotations

from django import forms

from marketplace.validators import validate_visible_text
from provisioning.models import CloudAccount, ProvisionerType
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
