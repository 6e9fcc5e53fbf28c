"""Proxmox VE helpers shared by the platform's backend and the agent, free of Django imports.

They cover the QEMU guest agent (host key install script, address lookup) and loopback checks.
"""

import ipaddress
from typing import Any

# The guest-side script that installs the host key passed on standard input. It waits for
# cloud-init first, because cloud-init's first boot deletes and regenerates the host keys.
HOST_KEY_SCRIPT = """\
set -eu
if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi
umask 077
key=/etc/ssh/ssh_host_ed25519_key
cat > "$key.cloudmarket-new"
mv "$key.cloudmarket-new" "$key"
printf '%s\\n' {public_line} > "$key.pub"
chmod 644 "$key.pub"
systemctl restart ssh 2>/dev/null || systemctl restart sshd 2>/dev/null || service ssh restart 2>/dev/null || service sshd restart
"""

# Agent errors that mean "not up yet" rather than a failure.
AGENT_NOT_READY_MARKERS = (
    "guest agent is not running",
    "no qemu guest agent configured",
    "got timeout",
    "is not running",
)


def first_guest_ipv4(result: Any) -> str | None:
    """Return the first IPv4 address outside `lo` in a guest agent `network-get-interfaces` result, or None."""
    interfaces = result.get("result", []) if isinstance(result, dict) else []
    for interface in interfaces:
        if interface.get("name") == "lo":
            continue
        for address in interface.get("ip-addresses") or []:
            if address.get("ip-address-type") != "ipv4":
                continue
            try:
                ip = ipaddress.IPv4Address(address.get("ip-address", ""))
            except ValueError:
                continue
            if not ip.is_link_local:
                return str(ip)
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
