"""Settings of a Proxmox VE cloud account: parsing and checks, each raising `ValueError` with a message a provider can act on."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from provisioning.agent.proxmox_guest import is_loopback

from .base import ServerType

DEFAULT_PORT = 8006
# Proxmox VE accepts VM ids from 100 to 999999999. The default range stays clear of the low ids
# people pick by hand.
VMID_LIMITS = (100, 999_999_999)
DEFAULT_VMID_RANGE = (100_000, 199_999)
# Ids tried after the hashed one when another VM has it.
MAX_VMID_PROBES = 32
DEFAULT_IPCONFIG0 = "ip=dhcp"

# Used when the account configures no server types of its own.
DEFAULT_SERVER_TYPES: tuple[dict[str, Any], ...] = (
    {"name": "pve-small", "vcpu": 1, "memory_mib": 2048, "disk_gb": 20},
    {"name": "pve-medium", "vcpu": 2, "memory_mib": 4096, "disk_gb": 40},
    {"name": "pve-large", "vcpu": 4, "memory_mib": 8192, "disk_gb": 80},
)

TOKEN_ID_RE = re.compile(r"^(?P<user>[^\s!@:=]+@[A-Za-z][A-Za-z0-9.\-_]*)!(?P<name>[A-Za-z][A-Za-z0-9.\-_]*)$")
NODE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
SERVER_TYPE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{0,59}$")
IPCONFIG_KEYS = frozenset({"ip", "gw", "ip6", "gw6"})


@dataclass(frozen=True)
class ApiEndpoint:
    """The address of a Proxmox VE API: scheme, host, port and an optional path prefix."""

    scheme: str
    host: str
    port: int
    path_prefix: str = ""

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = f"/{self.path_prefix}" if self.path_prefix else ""
        return f"{self.scheme}://{host}:{self.port}{prefix}/api2/json"


def parse_api_url(url: str) -> ApiEndpoint:
    """Parse an API URL such as `https://pve.example.com:8006`; raise `ValueError` saying what is wrong.

    The port defaults to 8006. A trailing `/api2/json` is accepted and dropped. `http://` is
    accepted only for loopback hosts (local tests), because the token would travel in clear text.
    """
    text = (url or "").strip()
    if not text:
        raise ValueError("The API URL is missing; enter the address of the Proxmox VE web interface, for example https://pve.example.com:8006.")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http"):
        raise ValueError(f"The API URL {text!r} must start with https://, for example https://pve.example.com:8006.")
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"The API URL {text!r} has no host name; use the form https://pve.example.com:8006.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"The API URL {text!r} must not contain a user name, password, query or fragment.")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"The API URL {text!r} has an invalid port.") from exc
    # NOTE: any https host is accepted, private and loopback addresses included, so a user can
    # make the platform send requests to hosts on the platform's own network.
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(
            f"The API URL {text!r} uses http://, which would send the API token unencrypted; use https://."
        )
    path = parts.path.strip("/")
    if path.endswith("api2/json"):
        path = path[: -len("api2/json")].strip("/")
    return ApiEndpoint(scheme=parts.scheme, host=host, port=port, path_prefix=path)


def parse_token_id(token_id: str) -> tuple[str, str]:
    """Split a token id `USER@REALM!TOKENNAME` into user and token name, or raise `ValueError`."""
    match = TOKEN_ID_RE.match((token_id or "").strip())
    if match is None:
        raise ValueError(
            f"The token ID {token_id!r} is not of the form USER@REALM!TOKENNAME, for example "
            "cloudmarket@pve!provisioning (Datacenter > Permissions > API Tokens)."
        )
    return match["user"], match["name"]


def validate_node_name(node: str) -> str:
    """Return the node name, or raise `ValueError` when it cannot be a Proxmox VE node name."""
    name = (node or "").strip()
    if not NODE_RE.match(name):
        raise ValueError(f"The node name {node!r} is invalid; enter the node's name as shown under Datacenter, for example pve1.")
    return name


def validate_vmid_range(vmid_min: int | None, vmid_max: int | None) -> tuple[int, int]:
    """Return the VM id range to use (the default when both ends are empty), or raise `ValueError`."""
    if vmid_min is None and vmid_max is None:
        return DEFAULT_VMID_RANGE
    if vmid_min is None or vmid_max is None:
        raise ValueError("Give both ends of the VM ID range, or neither for the default range.")
    low, high = VMID_LIMITS
    if not (low <= vmid_min <= vmid_max <= high):
        raise ValueError(
            f"The VM ID range {vmid_min}-{vmid_max} is invalid: both ends must be between {low} and {high}, "
            "and the first must not exceed the second."
        )
    if vmid_max - vmid_min + 1 < MAX_VMID_PROBES:
        raise ValueError(f"The VM ID range {vmid_min}-{vmid_max} is too small; give at least {MAX_VMID_PROBES} IDs.")
    return vmid_min, vmid_max


def validate_ipconfig0(value: str) -> str:
    """Return the cloud-init network setting (`ip=dhcp`, `ip=10.0.0.5/24,gw=10.0.0.1`), or raise `ValueError`."""
    text = (value or "").strip() or DEFAULT_IPCONFIG0
    for part in text.split(","):
        key, sep, item = part.partition("=")
        if not sep or key not in IPCONFIG_KEYS or not item:
            raise ValueError(
                f"The network setting {value!r} is invalid: use comma-separated ip=, gw=, ip6= and gw6= "
                "entries, for example ip=dhcp or ip=10.0.0.5/24,gw=10.0.0.1."
            )
    return text


def parse_server_types(raw: Any) -> list[ServerType]:
    """Turn the account's configured sizes into server types, or raise `ValueError` naming the entry.

    `raw` is a list of objects with `name`, `vcpu`, `memory_mib` and `disk_gb` (whole numbers)
    and an optional `description`. An empty value means `DEFAULT_SERVER_TYPES`.
    """
    items = raw or list(DEFAULT_SERVER_TYPES)
    if not isinstance(items, list):
        raise ValueError("Server types must be a list of objects with name, vcpu, memory_mib and disk_gb.")
    result: list[ServerType] = []
    seen: set[str] = set()
    for index, item in enumerate(items, start=1):
        where = f"server type {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be an object with name, vcpu, memory_mib and disk_gb.")
        unknown = set(item) - {"name", "vcpu", "memory_mib", "disk_gb", "description"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; use name, vcpu, memory_mib, disk_gb, description.")
        name = item.get("name")
        if not isinstance(name, str) or not SERVER_TYPE_NAME_RE.match(name):
            raise ValueError(f"{where}: name {name!r} must be 1-60 lower-case letters, digits, dots, dashes or underscores.")
        if name in seen:
            raise ValueError(f"{where}: the name {name!r} is used twice.")
        seen.add(name)
        numbers = {}
        for field_name, low, high in (("vcpu", 1, 512), ("memory_mib", 256, 16 * 1024 * 1024), ("disk_gb", 1, 65536)):
            value = item.get(field_name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{where} ({name}): {field_name} must be a whole number from {low} to {high}, got {value!r}.")
            numbers[field_name] = value
        description = item.get("description") or (
            f"{numbers['vcpu']} vCPU, {numbers['memory_mib']} MiB RAM, {numbers['disk_gb']} GB disk"
        )
        if not isinstance(description, str) or len(description) > 200:
            raise ValueError(f"{where} ({name}): description must be text of at most 200 characters.")
        result.append(ServerType(name=name, description=description, **numbers))
    return result




def proxmox_settings_errors(account) -> dict[str, str]:
    """Return one message per invalid `proxmox_*` field of a cloud account; empty when all are valid."""
    checks: list[tuple[str, Callable[[], object]]] = [
        ("proxmox_api_url", lambda: parse_api_url(account.proxmox_api_url)),
        ("proxmox_token_id", lambda: parse_token_id(account.proxmox_token_id)),
        ("proxmox_node", lambda: validate_node_name(account.proxmox_node)),
        ("proxmox_vmid_min", lambda: validate_vmid_range(account.proxmox_vmid_min, account.proxmox_vmid_max)),
        ("proxmox_server_types", lambda: parse_server_types(account.proxmox_server_types)),
        ("proxmox_ipconfig0", lambda: validate_ipconfig0(account.proxmox_ipconfig0)),
    ]
    errors = {}
    for field_name, check in checks:
        try:
            check()
        except ValueError as exc:
            errors[field_name] = str(exc)
    return errors
