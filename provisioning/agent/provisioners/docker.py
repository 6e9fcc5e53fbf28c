"""The Docker provisioner: one container with an SSH server per contract, through the Docker Engine API.

The agent calls the Engine API (version 1.43 paths) over a Unix socket (`unix:///var/run/docker.sock`)
or plain HTTP to a loopback address. It creates the container from the contract's image with the
contract's labels and publishes the container's port 22 on a host port Docker picks. The tenant's
SSH keys and a freshly generated host key go in two environment variables: `SSH_AUTHORIZED_KEYS`
(one key per line) and `SSH_HOST_ED25519_KEY` (OpenSSH private key). The image's entrypoint must
install both and start sshd, and docs/agent.md shows one.

NOTE: environment variables are visible to anyone who may inspect containers on the host. Only
the host key's private half is passed that way, and it protects the tenant, not the platform.

Settings: `docker_url` (required, no default), `public_address` (the address tenants connect
to, required), `boot_timeout` in seconds (120) and `poll_interval` in seconds (1).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from provisioning.agent.hostkeys import generate_host_key
from provisioning.agent.provisioners import (
    MISSING_STATE,
    ProgressCallback,
    Provisioner,
    ProvisionerError,
    RunningVm,
    VmResult,
    contract_id_from_name,
)
from provisioning.agent.proxmox_guest import is_loopback

logger = logging.getLogger(__name__)

API_VERSION = "v1.43"
CONTRACT_LABEL = "cloudmarket-contract"
HOST_KEY_LABEL = "cloudmarket-host-key"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class DockerProvisioner(Provisioner):
    type = "docker"

    def __init__(self, settings: dict[str, Any]):
        url = str(settings.get("docker_url") or "")
        parts = urlsplit(url)
        if parts.scheme == "unix" and parts.path:
            self._socket_path, self._host, self._port = parts.path, "", 0
        elif parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
            self._socket_path, self._host, self._port = "", parts.hostname, parts.port or 2375
        else:
            raise ValueError(
                f"Invalid docker_url {url!r}; use unix:///var/run/docker.sock or http://127.0.0.1:PORT (loopback only)."
            )
        self.public_address = str(settings.get("public_address") or "")
        if not self.public_address:
            raise ValueError("The docker provisioner needs public_address: the host address tenants connect to.")
        self.docker_url = url
        self.boot_timeout = float(settings.get("boot_timeout", 120))
        self.poll_interval = float(settings.get("poll_interval", 1))

    # --- HTTP ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None, *, allow: tuple[int, ...] = ()) -> tuple[int, Any]:
        connection = (
            _UnixConnection(self._socket_path, timeout=30)
            if self._socket_path
            else http.client.HTTPConnection(self._host, self._port, timeout=30)
        )
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            connection.request(method, f"/{API_VERSION}{path}", body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except OSError as exc:
            raise ProvisionerError(
                "hypervisor_unavailable", f"Docker {method} {path} failed: {self.docker_url} unreachable ({exc})"
            ) from exc
        finally:
            connection.close()
        try:
            payload = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            payload = raw.decode(errors="replace")[:500]
        status = response.status
        if status < 300 or status in allow:
            return status, payload
        message = payload.get("message", payload) if isinstance(payload, dict) else payload
        text = f"Docker {method} {path} failed: HTTP {status} {message}"
        if status == 404 and "image" in str(message).lower():
            raise ProvisionerError("image_not_found", text)
        if status >= 500:
            raise ProvisionerError("hypervisor_unavailable", text)
        if status == 429:
            raise ProvisionerError("rate_limited", text)
        raise ProvisionerError("invalid_spec" if status == 400 else "provisioner_error", text)

    def _inspect(self, name_or_id: str) -> dict | None:
        status, payload = self._request("GET", f"/containers/{quote(name_or_id, safe='')}/json", allow=(404,))
        return None if status == 404 else payload

    # --- interface -----------------------------------------------------------------------------

    def provision(self, spec: dict[str, Any], progress: ProgressCallback) -> VmResult:
        progress("creating_server")
        name = spec["name"]
        container = self._inspect(name)
        if container is not None and container["Config"]["Labels"].get(CONTRACT_LABEL) != str(spec["id"]):
            raise ProvisionerError(
                "provisioner_error",
                f"A container named {name} exists without the label of contract {spec['id']}; rename or remove it.",
            )
        if container is None:
            private_key, public_line = generate_host_key(f"cloudmarket-host-{spec['id']}")
            keys = "\n".join(line.strip() for line in spec.get("ssh_public_keys", []) if line.strip())
            body = {
                "Image": spec["image"],
                "Env": [f"SSH_AUTHORIZED_KEYS={keys}", f"SSH_HOST_ED25519_KEY={private_key}"],
                "Labels": {**spec.get("labels", {}), CONTRACT_LABEL: str(spec["id"]), HOST_KEY_LABEL: public_line},
                "ExposedPorts": {"22/tcp": {}},
                "HostConfig": {
                    "PortBindings": {"22/tcp": [{"HostIp": "", "HostPort": ""}]},
                    "NanoCpus": int(spec["vcpu"]) * 1_000_000_000,
                    "Memory": int(spec["memory_mib"]) * 1024 * 1024,
                    "RestartPolicy": {"Name": "unless-stopped"},
                },
            }
            _status, created = self._request("POST", f"/containers/create?{urlencode({'name': name})}", body)
            logger.info("Contract %s: container %s created (%s)", spec["id"], created["Id"][:12], spec["image"])
            container = self._inspect(created["Id"])
        container_id = container["Id"]
        self._request("POST", f"/containers/{container_id}/start", allow=(304,))

        progress("waiting_for_boot")
        deadline = time.monotonic() + self.boot_timeout
        while True:
            container = self._inspect(container_id) or {}
            running = (container.get("State") or {}).get("Running")
            bindings = ((container.get("NetworkSettings") or {}).get("Ports") or {}).get("22/tcp") or []
            if running and bindings and bindings[0].get("HostPort"):
                port = int(bindings[0]["HostPort"])
                break
            if time.monotonic() > deadline:
                raise ProvisionerError("boot_failed", f"Container {container_id[:12]} did not run with port 22 published within {self.boot_timeout:.0f} s.")
            time.sleep(self.poll_interval)
        host_key = container["Config"]["Labels"][HOST_KEY_LABEL]
        return VmResult(server_id=container_id, address=self.public_address, port=port, host_public_key=host_key)

    def terminate(self, spec: dict[str, Any]) -> None:
        target = str(spec.get("cloud_server_id") or spec["name"])
        container = self._inspect(target)
        if container is None:
            logger.info("Contract %s: container %s is already gone", spec["id"], target)
            return
        if container["Config"]["Labels"].get(CONTRACT_LABEL) != str(spec["id"]):
            raise ProvisionerError("provisioner_error", f"Not deleting container {target}: it carries no label of contract {spec['id']}.")
        self._request("DELETE", f"/containers/{container['Id']}?force=1&v=1", allow=(404,))
        logger.info("Contract %s: container %s deleted", spec["id"], container["Id"][:12])

    def vm_state(self, spec: dict[str, Any]) -> str:
        container = self._inspect(str(spec.get("cloud_server_id") or spec["name"]))
        if container is None:
            return MISSING_STATE
        # Docker's states: created, restarting, running, removing, paused, exited, dead.
        return str((container.get("State") or {}).get("Status") or "unknown")

    @property
    def endpoint(self) -> str:
        return self.docker_url

    def list_running(self) -> list[RunningVm]:
        filters = json.dumps({"label": [CONTRACT_LABEL]})
        _status, items = self._request("GET", f"/containers/json?{urlencode({'all': 1, 'filters': filters})}")
        result = []
        for item in items or []:
            name = (item.get("Names") or [""])[0].lstrip("/")
            result.append(RunningVm(server_id=item["Id"], name=name, contract_id=contract_id_from_name(name)))
        return result

    def health(self) -> dict[str, Any]:
        _status, info = self._request("GET", "/info")
        return {
            "state": "ok",
            "containers": info.get("Containers"),
            "free": {"vcpu": info.get("NCPU"), "memory_mib": int(info.get("MemTotal", 0)) // (1024 * 1024)},
        }

    def images(self) -> list[str]:
        _status, items = self._request("GET", "/images/json")
        return sorted({tag for item in items or [] for tag in item.get("RepoTags") or [] if tag and tag != "<none>:<none>"})
