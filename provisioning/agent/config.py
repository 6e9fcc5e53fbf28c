"""The agent's configuration file: a JSON object, written by `setup` and read by every command."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = "/etc/cloudmarket-agent/config.json"
CONFIG_ENV = "CLOUDMARKET_AGENT_CONFIG"


class ConfigError(Exception):
    """The configuration file is missing or invalid; the message names the key and the fix."""


@dataclass
class AgentConfig:
    """The agent's settings. `provisioner` contains the provisioner's own settings and its `type`."""

    platform_url: str
    credential: str = ""
    agent_id: int | None = None
    name: str = ""
    provisioner: dict[str, Any] = field(default_factory=dict)
    max_parallel: int = 2
    heartbeat_interval: float = 30.0
    poll_interval: float = 10.0
    reconcile_interval: float = 300.0
    # Seconds to wait for a new VM's SSH server to accept the recipe's login.
    ssh_wait_timeout: float = 300.0
    # Seconds between health reports on the VMs this agent serves.
    health_interval: float = 60.0
    # Seconds one TCP connect of a health probe may take.
    health_probe_timeout: float = 5.0
    # A VM the platform marks "terminate" is deleted once it has been reported this long.
    orphan_grace_seconds: float = 3600.0
    # Seconds one HTTP request to the platform may take.
    request_timeout: float = 30.0

    @property
    def provisioner_type(self) -> str:
        return str(self.provisioner.get("type", ""))


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def check_platform_url(url: str) -> str:
    """Return the URL without a trailing slash; raise `ConfigError` unless it is https (or http to loopback)."""
    parts = urlsplit((url or "").strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"Invalid platform URL {url!r}; use the form https://cloudmarket.example.com.")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            f"Platform URL {url!r} uses http://, which would send the agent credential unencrypted; use https://."
        )
    return url.strip().rstrip("/")


def load_config(path: Path) -> AgentConfig:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"Configuration file {path} not found; run `cloudmarket-agent setup` first.") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Configuration file {path} could not be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"Configuration file {path} must contain a JSON object.")
    known = set(AgentConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"Configuration file {path} has unknown keys {', '.join(unknown)}; remove them.")
    if "platform_url" not in raw:
        raise ConfigError(f"Configuration file {path} is missing platform_url.")
    config = AgentConfig(**raw)
    config.platform_url = check_platform_url(config.platform_url)
    if not isinstance(config.provisioner, dict) or not config.provisioner_type:
        raise ConfigError(f'Configuration file {path}: provisioner must be an object with a "type" (proxmox, script or docker).')
    if not isinstance(config.max_parallel, int) or config.max_parallel < 1:
        raise ConfigError(f"Configuration file {path}: max_parallel must be a whole number of 1 or more.")
    return config


def save_config(path: Path, config: AgentConfig) -> None:
    """Write the file readable by its owner only, because it contains the credential."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(asdict(config), handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)
