"""SSH key pairs the platform generates for new servers, and the cloud-init user data that carries them.

The platform creates each server's ed25519 host key itself and hands it to cloud-init, so the
first SSH connection can check the server's identity without trust on first use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncssh
import yaml


@dataclass(frozen=True)
class KeyPair:
    """An SSH key pair: the private key in OpenSSH format and the one-line public key."""

    private_openssh: str
    public_line: str

    def __repr__(self) -> str:
        # Keep the private key out of logs and tracebacks that print the object.
        return f"KeyPair(public_line={self.public_line!r})"


def generate_keypair(comment: str) -> KeyPair:
    """Generate an unencrypted ed25519 key pair whose public line ends with `comment`."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return KeyPair(
        private_openssh=key.export_private_key("openssh").decode("ascii"),
        public_line=key.export_public_key("openssh").decode("utf-8").strip(),
    )


def cloud_config_user_data(*, host_key: KeyPair) -> str:
    """Build cloud-init user data that installs `host_key` as the server's ed25519 host key.

    The output uses the `ssh_keys` key of cloud-init's SSH module, with the private key as a
    YAML literal block, for example:

        #cloud-config
        ssh_keys:
          ed25519_private: |
            -----BEGIN OPENSSH PRIVATE KEY-----
            ...
          ed25519_public: ssh-ed25519 AAAA... comment
    """
    private_lines = host_key.private_openssh.strip().splitlines()
    public_line = host_key.public_line.strip()
    if "\n" in public_line or not public_line.startswith("ssh-ed25519 "):
        raise ValueError("host_key.public_line must be a single ssh-ed25519 public key line")

    lines = ["#cloud-config", "ssh_keys:", "  ed25519_private: |"]
    lines.extend(f"    {line}" for line in private_lines)
    lines.append(f"  ed25519_public: {_yaml_scalar(public_line)}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: str) -> str:
    """Return `value` unquoted when YAML reads it back unchanged, else as a double-quoted scalar."""
    try:
        if yaml.safe_load(f"key: {value}") == {"key": value}:
            return value
    except yaml.YAMLError:
        pass
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(value, ensure_ascii=False)


def known_host_line(host: str, port: int, public_line: str) -> str:
    """Return a known_hosts line trusting `public_line` for `host` at `port`.

    OpenSSH writes hosts on a port other than 22 as `[host]:port`.
    """
    key_type, key_base64 = public_line.split()[:2]
    host_pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{host_pattern} {key_type} {key_base64}"
