"""The Proxmox VE provisioner: full clones of a template through the Proxmox VE API with proxmoxer.

It follows the platform's Proxmox backend (provisioning/backends/proxmox.py). It clones the
template named by the contract's image, sets size and cloud-init, grows the boot disk and starts
the VM. Then it reads the address from the QEMU guest agent and installs a freshly generated SSH
host key through the guest agent. The VM id is derived from the contract id (`vmid_min + id % span`), so a retry
after a crash finds the VM the earlier try cloned, and its name `cm-<deployment>-<contract id>`
identifies the contract a VM belongs to.

Settings (the `provisioner` object of the configuration): `api_url`, `token_id`
(USER@REALM!NAME), `token_secret`, `node`, and optionally `verify_tls` (true), `vmid_min` and
`vmid_max` (100000-199999), `ipconfig0` ("ip=dhcp"), `ssh_port` reported to tenants (22),
`boot_timeout` and `task_timeout` in seconds (600 each), `poll_interval` in seconds (2).
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from proxmoxer.backends.https import Backend as ProxmoxHttpsTransport
from proxmoxer.core import ProxmoxResource, ResourceException

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
from provisioning.agent.proxmox_guest import (
    AGENT_NOT_READY_MARKERS,
    HOST_KEY_SCRIPT,
    first_guest_ipv4,
    is_loopback,
)

logger = logging.getLogger(__name__)

DEFAULT_VMID_RANGE = (100000, 199999)
VM_MISSING_RE = re.compile(r"Configuration file '[^']*qemu-server/\d+\.conf' does not exist")
DISK_KEY_RE = re.compile(r"^(scsi|virtio|sata|ide)\d+$")
DISK_SIZE_RE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
GIB_PER_UNIT = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0, "": 1 / 1024**3}
BUSY_MARKERS = ("is locked", "can't lock file", "got timeout", "timeout")


def _base_url(api_url: str) -> tuple[str, str, int]:
    """Return (base URL ending in /api2/json, host, port); http:// only for loopback hosts."""
    parts = urlsplit((api_url or "").strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"Invalid Proxmox api_url {api_url!r}; use the form https://pve.example.com:8006.")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"Proxmox api_url {api_url!r} uses http://, which would send the token unencrypted; use https://.")
    port = parts.port or 8006
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}/api2/json", parts.hostname, port


class ProxmoxProvisioner(Provisioner):
    type = "proxmox"

    def __init__(self, settings: dict[str, Any]):
        missing = [key for key in ("api_url", "token_id", "token_secret", "node") if not settings.get(key)]
        if missing:
            raise ValueError(f"The proxmox provisioner is missing {', '.join(missing)} in the configuration file.")
        base_url, host, port = _base_url(settings["api_url"])
        user, _, token_name = str(settings["token_id"]).partition("!")
        if not user or not token_name:
            raise ValueError(f"Invalid token_id {settings['token_id']!r}; use USER@REALM!TOKENNAME.")
        self.node = str(settings["node"])
        self.vmid_min = int(settings.get("vmid_min", DEFAULT_VMID_RANGE[0]))
        self.vmid_max = int(settings.get("vmid_max", DEFAULT_VMID_RANGE[1]))
        if not 100 <= self.vmid_min <= self.vmid_max:
            raise ValueError(f"Invalid VM id range {self.vmid_min}-{self.vmid_max}; vmid_min must be 100 or more and not above vmid_max.")
        self.ipconfig0 = str(settings.get("ipconfig0", "ip=dhcp"))
        self.ssh_port = int(settings.get("ssh_port", 22))
        self.boot_timeout = float(settings.get("boot_timeout", 600))
        self.task_timeout = float(settings.get("task_timeout", 600))
        self.poll_interval = float(settings.get("poll_interval", 2))
        self._secret = str(settings["token_secret"])
        self.base_url = base_url
        transport = ProxmoxHttpsTransport(
            host=host, port=port, user=user, token_name=token_name, token_value=self._secret,
            verify_ssl=bool(settings.get("verify_tls", True)), timeout=30,
        )
        self._api = ProxmoxResource(
            base_url=base_url, session=transport.get_session(), serializer=transport.get_serializer()
        )

    # --- helpers ---------------------------------------------------------------------------------

    def vmid_for(self, contract_id: int) -> int:
        return self.vmid_min + contract_id % (self.vmid_max - self.vmid_min + 1)

    def _vm(self, vmid: int) -> ProxmoxResource:
        return self._api.nodes(self.node).qemu(vmid)

    def _call(self, what: str, function, *args, **kwargs):
        """Call the API and turn its errors into `ProvisionerError`s with a reason code."""
        try:
            return function(*args, **kwargs)
        except ResourceException as exc:
            reason = str(exc.content or exc.status_message or "").replace(self._secret, "[token]")
            message = f"Proxmox {what} failed: HTTP {exc.status_code} {reason}"
            if exc.status_code == 500 and VM_MISSING_RE.search(reason):
                raise ProvisionerError("provisioner_error", message) from exc
            if exc.status_code in (401, 403):
                raise ProvisionerError("provisioner_error", f"{message} (check the token and its privileges)") from exc
            if exc.status_code == 429:
                raise ProvisionerError("rate_limited", message) from exc
            if exc.status_code >= 500:
                raise ProvisionerError("hypervisor_unavailable", message) from exc
            raise ProvisionerError("invalid_spec", message) from exc
        except requests.RequestException as exc:
            raise ProvisionerError(
                "hypervisor_unavailable",
                f"Proxmox {what} failed: {self.base_url} unreachable ({type(exc).__name__}: {str(exc)[:300]})",
            ) from exc

    def _config(self, vmid: int) -> dict[str, Any] | None:
        """Return the VM's configuration, or None when no VM has this id."""
        try:
            return self._vm(vmid).config.get()
        except ResourceException as exc:
            if exc.status_code == 500 and VM_MISSING_RE.search(str(exc.content or exc.status_message or "")):
                return None
            return self._call(f"config of VM {vmid}", self._vm(vmid).config.get)
        except requests.RequestException:
            return self._call(f"config of VM {vmid}", self._vm(vmid).config.get)

    def _await_task(self, upid: Any, what: str) -> None:
        if not isinstance(upid, str) or not upid.startswith("UPID:"):
            raise ProvisionerError("provisioner_error", f"Proxmox {what} returned {upid!r} instead of a task id.")
        deadline = time.monotonic() + self.task_timeout
        while True:
            status = self._call(f"{what} (task status)", self._api.nodes(self.node).tasks(upid).status.get)
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus") or "")
                if exit_status != "OK":
                    raise ProvisionerError("provisioner_error", f"Proxmox {what} ended with {exit_status!r}.")
                return
            if time.monotonic() > deadline:
                raise ProvisionerError("timeout", f"Proxmox {what} still runs after {self.task_timeout:.0f} s.")
            time.sleep(min(self.poll_interval, 0.5))

    def _template(self, image: str) -> int:
        items = self._call("VM list", self._api.nodes(self.node).qemu.get) or []
        matches = sorted(int(item["vmid"]) for item in items if _is_template(item) and item.get("name") == image)
        if not matches:
            names = sorted({str(item.get("name")) for item in items if _is_template(item)})
            raise ProvisionerError(
                "image_not_found", f"No template named {image!r} on node {self.node}; templates: {', '.join(names) or 'none'}."
            )
        return matches[0]

    # --- interface -------------------------------------------------------------------------------

    def provision(self, spec: dict[str, Any], progress: ProgressCallback) -> VmResult:
        vmid = self.vmid_for(int(spec["id"]))
        name = spec["name"]
        progress("creating_server")
        config = self._config(vmid)
        if config is not None and config.get("name") != name:
            raise ProvisionerError(
                "provisioner_error",
                f"VM id {vmid} belongs to VM {config.get('name')!r}, not {name!r}; move that VM or change vmid_min/vmid_max.",
                server_id="",
            )
        if config is None:
            template = self._template(spec["image"])
            logger.info("Contract %s: cloning template %s into VM %s", spec["id"], template, vmid)
            upid = self._call(
                f"clone of template {template}", self._vm(template).clone.post,
                newid=vmid, name=name, description=f"Cloudmarket contract {spec['id']}", full=1,
            )
            self._await_task(upid, f"clone into VM {vmid}")
        self._wait_unlocked(vmid)

        status = self._call(f"status of VM {vmid}", self._vm(vmid).status.current.get)
        if status.get("status") != "running":
            self._configure(vmid, spec)
            upid = self._call(f"start of VM {vmid}", self._vm(vmid).status.start.post)
            self._await_task(upid, f"start of VM {vmid}")

        progress("waiting_for_boot")
        address = self._wait_for_address(vmid)
        progress("waiting_for_ssh")
        public_line = self._install_host_key(vmid, spec)
        logger.info("Contract %s: VM %s running at %s", spec["id"], vmid, address)
        return VmResult(server_id=str(vmid), address=address, port=self.ssh_port, host_public_key=public_line)

    def _wait_unlocked(self, vmid: int) -> None:
        deadline = time.monotonic() + self.task_timeout
        while (config := self._config(vmid)) is not None and config.get("lock"):
            if time.monotonic() > deadline:
                raise ProvisionerError("timeout", f"VM {vmid} is still locked ({config['lock']}) after {self.task_timeout:.0f} s.")
            time.sleep(self.poll_interval)

    def _configure(self, vmid: int, spec: dict[str, Any]) -> None:
        config = self._call(f"config of VM {vmid}", self._vm(vmid).config.get)
        keys = "\n".join(line.strip() for line in spec.get("ssh_public_keys", []) if line.strip())
        settings: dict[str, Any] = {
            "cores": spec["vcpu"],
            "memory": spec["memory_mib"],
            "agent": "1",
            "ciuser": "root",
            "ipconfig0": self.ipconfig0,
            "tags": f"cloudmarket;cm-contract-{spec['id']}",
        }
        if keys:
            # Proxmox requires the key list URL-encoded (with %20, not +) inside the form field.
            settings["sshkeys"] = quote(keys, safe="")
        self._call(f"configuration of VM {vmid}", self._vm(vmid).config.put, **settings)
        disk = _boot_disk(config)
        if disk is None:
            raise ProvisionerError("invalid_spec", f"VM {vmid} (cloned from {spec['image']!r}) has no boot disk.")
        current = _size_in_gib(str(config[disk]))
        if current is None or current < spec["disk_gb"]:
            result = self._call(f"disk resize of VM {vmid}", self._vm(vmid).resize.put, disk=disk, size=f"{spec['disk_gb']}G")
            if isinstance(result, str) and result.startswith("UPID:"):
                self._await_task(result, f"disk resize of VM {vmid}")

    def _wait_for_address(self, vmid: int) -> str:
        deadline = time.monotonic() + self.boot_timeout
        while True:
            try:
                result = self._vm(vmid).agent("network-get-interfaces").get()
            except ResourceException as exc:
                if not any(marker in str(exc).lower() for marker in AGENT_NOT_READY_MARKERS):
                    self._call(f"guest agent of VM {vmid}", self._vm(vmid).agent("network-get-interfaces").get)
                result = None
            except requests.RequestException:
                result = None
            address = first_guest_ipv4(result)
            if address:
                return address
            if time.monotonic() > deadline:
                raise ProvisionerError(
                    "boot_failed", f"VM {vmid} reported no IPv4 address through the guest agent within {self.boot_timeout:.0f} s."
                )
            time.sleep(self.poll_interval)

    def _install_host_key(self, vmid: int, spec: dict[str, Any]) -> str:
        private, public_line = generate_host_key(f"cloudmarket-host-{spec['id']}")
        script = HOST_KEY_SCRIPT.format(public_line=shlex.quote(public_line))
        started = self._call(
            f"host key install on VM {vmid}", self._vm(vmid).agent.exec.post,
            command=["/bin/sh", "-c", script], **{"input-data": private},
        )
        deadline = time.monotonic() + self.boot_timeout
        while True:
            result = self._call(f"host key install status on VM {vmid}", self._vm(vmid).agent("exec-status").get, pid=started["pid"])
            if result.get("exited"):
                if result.get("exitcode") != 0:
                    output = f"{result.get('out-data') or ''}{result.get('err-data') or ''}".strip()[-500:]
                    raise ProvisionerError("boot_failed", f"Installing the host key on VM {vmid} failed: {output or 'no output'}")
                return public_line
            if time.monotonic() > deadline:
                raise ProvisionerError("timeout", f"Installing the host key on VM {vmid} did not finish within {self.boot_timeout:.0f} s.")
            time.sleep(min(self.poll_interval, 0.5))

    def terminate(self, spec: dict[str, Any]) -> None:
        server_id = str(spec.get("cloud_server_id") or "")
        vmid = int(server_id) if server_id.isdigit() else self.vmid_for(int(spec["id"]))
        config = self._config(vmid)
        if config is None:
            logger.info("Contract %s: VM %s is already gone", spec["id"], vmid)
            return
        if config.get("name") != spec["name"] or str(config.get("template", "0")) == "1":
            raise ProvisionerError(
                "provisioner_error",
                f"Not deleting VM {vmid}: it is named {config.get('name')!r}, not {spec['name']!r}, or it is a template.",
            )
        status = self._call(f"status of VM {vmid}", self._vm(vmid).status.current.get)
        if status.get("status") != "stopped":
            upid = self._call(f"stop of VM {vmid}", self._vm(vmid).status.stop.post)
            self._await_task(upid, f"stop of VM {vmid}")
        upid = self._call(f"deletion of VM {vmid}", self._vm(vmid).delete, purge=1, **{"destroy-unreferenced-disks": 1})
        self._await_task(upid, f"deletion of VM {vmid}")
        logger.info("Contract %s: VM %s deleted", spec["id"], vmid)

    def vm_state(self, spec: dict[str, Any]) -> str:
        vmid = int(spec.get("cloud_server_id") or self.vmid_for(int(spec["id"])))
        if self._config(vmid) is None:
            return MISSING_STATE
        status = self._call(f"status of VM {vmid}", self._vm(vmid).status.current.get)
        return str(status.get("status") or "unknown")

    @property
    def endpoint(self) -> str:
        return self.base_url

    def list_running(self) -> list[RunningVm]:
        items = self._call("VM list", self._api.nodes(self.node).qemu.get) or []
        result = []
        for item in items:
            vmid = int(item.get("vmid", 0))
            name = str(item.get("name", ""))
            if _is_template(item) or not self.vmid_min <= vmid <= self.vmid_max:
                continue
            contract_id = contract_id_from_name(name)
            if contract_id is not None:
                result.append(RunningVm(server_id=str(vmid), name=name, contract_id=contract_id))
        return result

    def health(self) -> dict[str, Any]:
        status = self._call(f"status of node {self.node}", self._api.nodes(self.node).status.get)
        memory = status.get("memory") or {}
        free = {"vcpu": (status.get("cpuinfo") or {}).get("cpus")}
        if "free" in memory:
            free["memory_mib"] = int(memory["free"]) // (1024 * 1024)
        return {"state": "ok", "node": self.node, "version": status.get("pveversion", ""), "free": free}

    def images(self) -> list[str]:
        items = self._call("VM list", self._api.nodes(self.node).qemu.get) or []
        return sorted({str(item["name"]) for item in items if _is_template(item) and item.get("name")})


def _is_template(item: dict[str, Any]) -> bool:
    return str(item.get("template", "0")) in ("1", "True", "true")


def _boot_disk(config: dict[str, Any]) -> str | None:
    disks = [key for key in config if DISK_KEY_RE.match(key) and "media=cdrom" not in str(config[key])]
    order = str(config.get("boot", ""))
    if order.startswith("order="):
        for key in order[len("order="):].split(";"):
            if key in disks:
                return key
    return sorted(disks)[0] if disks else None


def _size_in_gib(value: str) -> float | None:
    match = DISK_SIZE_RE.search(value)
    return float(match[1]) * GIB_PER_UNIT[match[2]] if match else None
