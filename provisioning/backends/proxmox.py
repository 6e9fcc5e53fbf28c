"""The Proxmox VE backend: VMs cloned from templates through the Proxmox VE API with an API token.

Built on `proxmoxer` (tested with 2.3) and its HTTPS transport, which authenticates every request
with `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`. Tested against the fake API in
`tests/peers/proxmox_api.py`, not against a real Proxmox VE host.

A server is created in four steps: clone the template named by the offering's image (a full
clone), set size and cloud-init (root's SSH keys, `ipconfig0`), grow the boot disk, start. Each
step that Proxmox runs as a task returns a task id (UPID), and the backend waits for the task to
stop and raises if its exit status is not `OK`.

Idempotency: the VM id is derived from the spec's labels (a SHA-256 hash into the account's VM
id range, then the following ids when one is taken by another VM). The labels are written into
the clone request's description and, once configured, into hashed tags. A retry after a crash
therefore looks at the same ids first and finds the VM it cloned, even when the crash came
before the tags were written.

Proxmox cannot pass cloud-init user data through its API (that needs a snippet file on the
node), so the platform's host key from `ServerSpec.user_data` is installed through the QEMU
guest agent in `prepare_for_ssh`, after cloud-init finished. The template must therefore have
cloud-init and the QEMU guest agent installed. The agent also reports the VM's IPv4 address.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote

import requests
import yaml
from proxmoxer.backends.https import Backend as ProxmoxHttpsTransport
from proxmoxer.core import ProxmoxResource, ResourceException

from provisioning.agent.proxmox_guest import (
    AGENT_NOT_READY_MARKERS,
    HOST_KEY_SCRIPT,
    first_guest_ipv4,
)

from .base import (
    CloudBackend,
    CloudError,
    CredentialsInvalid,
    Image,
    Location,
    RequestRejected,
    ServerInfo,
    ServerNotFound,
    ServerSpec,
    ServerType,
    TransientCloudError,
)
from .proxmox_settings import (
    DEFAULT_IPCONFIG0,
    DEFAULT_VMID_RANGE,
    MAX_VMID_PROBES,
    parse_api_url,
    parse_server_types,
    parse_token_id,
    validate_ipconfig0,
    validate_node_name,
    validate_vmid_range,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The description line that carries the labels, as JSON, and the tag every labelled VM carries.
LABELS_LINE_PREFIX = "cloudmarket-labels: "
MARKER_TAG = "cloudmarket"

DISK_KEY_RE = re.compile(r"^(scsi|virtio|sata|ide)\d+$")
SIZE_RE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
# NOTE: the error texts matched here and in AGENT_NOT_READY_MARKERS (provisioning.agent.proxmox_guest)
# come from public bug reports about Proxmox VE 8. They were not checked against a real host.
VM_CONFIG_MISSING_RE = re.compile(r"Configuration file '[^']*qemu-server/\d+\.conf' does not exist")
# Messages of Proxmox 500 responses that mean another operation has locked the VM for now.
BUSY_MARKERS = ("is locked", "can't lock file", "got timeout", "timeout")


# --- labels -----------------------------------------------------------------------------------


def label_tag(key: str, value: str) -> str:
    """Return the Proxmox tag that stands for one label (`cm-` and 16 hex digits of its SHA-256).

    Proxmox tags allow only letters, digits and `_-+.`, so labels are hashed instead of spelled out.
    """
    return "cm-" + hashlib.sha256(f"{key}={value}".encode()).hexdigest()[:16]


def labels_description(labels: dict[str, str]) -> str:
    """Return the VM description (the Notes field) that records `labels`."""
    return (
        "Created by cloudmarket. The platform finds this VM by the labels below; do not edit them.\n\n"
        f"{LABELS_LINE_PREFIX}{json.dumps(labels, sort_keys=True, separators=(',', ':'))}\n"
    )


def labels_from_description(description: str) -> dict[str, str]:
    """Return the labels recorded in a VM description, or an empty dict when it has none."""
    for line in (description or "").splitlines():
        if line.startswith(LABELS_LINE_PREFIX):
            try:
                value = json.loads(line[len(LABELS_LINE_PREFIX):])
            except ValueError:
                return {}
            if isinstance(value, dict):
                return {str(key): str(item) for key, item in value.items()}
    return {}


def parse_tags(raw: Any) -> set[str]:
    return {tag for tag in re.split(r"[;,\s]+", str(raw or "")) if tag}


def _has_labels(actual: dict[str, str], expected: dict[str, str]) -> bool:
    return all(actual.get(key) == value for key, value in expected.items())


def _format_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "(none)"


def _parse_host_key(user_data: str) -> tuple[str, str] | None:
    """Return (private key, public line) of the ed25519 host key in cloud-config user data, if any."""
    if not user_data.startswith("#cloud-config"):
        return None
    try:
        document = yaml.safe_load(user_data)
    except yaml.YAMLError as exc:
        raise RequestRejected(f"The server's cloud-config user data is not valid YAML: {exc}") from exc
    ssh_keys = document.get("ssh_keys") if isinstance(document, dict) else None
    if not isinstance(ssh_keys, dict):
        return None
    private, public = ssh_keys.get("ed25519_private"), ssh_keys.get("ed25519_public")
    if not isinstance(private, str) or not isinstance(public, str):
        return None
    if isinstance(document, dict) and set(document) - {"ssh_keys"}:
        logger.warning(
            "Proxmox backend applies only the host key of cloud-config user data; ignoring %s",
            ", ".join(sorted(set(document) - {"ssh_keys"})),
        )
    return private, public.strip()


def _size_in_gib(disk_value: str) -> float | None:
    match = SIZE_RE.search(disk_value)
    if match is None:
        return None
    number, unit = float(match[1]), match[2] or "B"
    factor = {"B": 1 / 1024**3, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024}[unit]
    return number * factor


# --- backend ----------------------------------------------------------------------------------


class ProxmoxBackend(CloudBackend):
    """One Proxmox VE node, reached with one API token.

    `api_url` is the web interface address (`https://host:8006`). `token_id` is `USER@REALM!NAME`
    and `token_secret` the token's UUID. `verify_tls` checks the server's certificate against
    the system's trusted CAs. VM ids are taken from `vmid_range`. `task_timeout` bounds the wait
    for each Proxmox task (clone, resize, start, stop, destroy) in seconds, and `timeout` each
    HTTP request.
    """

    def __init__(
        self,
        *,
        api_url: str,
        token_id: str,
        token_secret: str,
        node: str,
        verify_tls: bool = True,
        vmid_range: tuple[int, int] = DEFAULT_VMID_RANGE,
        server_types: list[dict[str, Any]] | None = None,
        ipconfig0: str = DEFAULT_IPCONFIG0,
        ssh_port: int = 22,
        poll_interval: float = 1.0,
        task_timeout: float = 600.0,
        timeout: float = 30.0,
    ):
        self.ssh_port = ssh_port
        self.endpoint = parse_api_url(api_url)
        user, token_name = parse_token_id(token_id)
        self.node = validate_node_name(node)
        self.vmid_range = validate_vmid_range(*vmid_range)
        self.server_types = parse_server_types(server_types)
        self.ipconfig0 = validate_ipconfig0(ipconfig0)
        self.verify_tls = verify_tls
        self.poll_interval = poll_interval
        self.task_timeout = task_timeout
        self._token_secret = token_secret
        # Process ids of the host key installs `prepare_for_ssh` started in the guests, by VM id.
        # Another worker that takes over a contract starts the install again, which is harmless.
        self._host_key_runs: dict[int, int] = {}

        # proxmoxer's HTTPS transport supplies the token header, TLS and timeout settings. Its
        # base URL always starts with https://, so the resource is built here with the
        # configured scheme, which is http only for loopback test servers (see `parse_api_url`).
        transport = ProxmoxHttpsTransport(
            host=self.endpoint.host,
            port=self.endpoint.port,
            user=user,
            token_name=token_name,
            token_value=token_secret,
            verify_ssl=verify_tls,
            timeout=timeout,
        )
        self._api = ProxmoxResource(
            base_url=self.endpoint.base_url,
            session=transport.get_session(),
            serializer=transport.get_serializer(),
        )

    def __repr__(self) -> str:
        return f"ProxmoxBackend(api={self.endpoint.base_url!r}, node={self.node!r})"

    @property
    def _node(self) -> ProxmoxResource:
        return self._api.nodes(self.node)

    def _vm(self, vmid: int) -> ProxmoxResource:
        return self._node.qemu(vmid)

    # Catalog

    def validate_credentials(self) -> None:
        """Check the token with `version`, then that the node exists and the token may read it.

        Raises `CredentialsInvalid` for a rejected token or certificate, and `RequestRejected`
        with code `node_not_found` for an unknown node.
        """
        self._call("validate_credentials", "the API token", self._api.version.get)
        nodes = self._call("validate_credentials", "the node list", self._api.nodes.get) or []
        names = sorted(str(item.get("node")) for item in nodes if isinstance(item, dict))
        if self.node not in names:
            raise RequestRejected(
                f"Proxmox node {self.node!r} was not found; the token sees these nodes: {', '.join(names) or 'none'}.",
                code="node_not_found",
            )
        self._call("validate_credentials", f"node {self.node}", self._node.status.get)

    def list_server_types(self) -> list[ServerType]:
        """Return the sizes configured for the account; they carry no price of their own."""
        return list(self.server_types)

    def list_locations(self) -> list[Location]:
        """Return the account's node as the only location (city and country are not known)."""
        return [Location(code=self.node, city="", country="", description=f"Proxmox VE node {self.node}")]

    def list_images(self) -> list[Image]:
        """Return the node's VM templates by name; an offering's image names the template to clone."""
        items = self._call("list_images", f"templates on node {self.node}", self._node.qemu.get) or []
        images = {}
        for item in sorted(items, key=lambda entry: int(entry.get("vmid", 0))):
            if _is_template(item) and item.get("name") and item["name"] not in images:
                images[item["name"]] = Image(name=item["name"], description=f"Template {item['name']} (VM {item['vmid']})")
        return list(images.values())

    # Servers

    def create_server(self, spec: ServerSpec) -> ServerInfo:
        """Clone, size and start the VM, or finish and return the one that carries `spec.labels`.

        Returns with status `starting`; poll `get_server` until the guest agent reports an
        address. Raises `ValueError` when `spec.labels` is empty, because then a retry could not
        find the VM and would clone a second one.
        """
        if not spec.labels:
            raise ValueError(f"ServerSpec for {spec.name!r} has no labels; create_server needs them")
        subject = f"VM {spec.name!r} (labels {_format_labels(spec.labels)})"
        size = self._server_type(spec.server_type, subject)

        existing = self.find_servers(spec.labels)
        if existing:
            vmid = int(existing[0].id)
            if len(existing) > 1:
                logger.warning(
                    "Found %d Proxmox VMs for %s (ids %s); reusing VM %s",
                    len(existing), subject, ", ".join(item.id for item in existing), vmid,
                )
            logger.info("Reusing Proxmox VM %s for %s", vmid, subject)
            vmid = self._wait_until_unlocked(vmid, subject)
        else:
            vmid = None
        if vmid is None:
            vmid = self._clone(spec, subject)

        # A running VM was configured before an earlier attempt started it.
        status = self._call("create_server", f"VM {vmid}", self._vm(vmid).status.current.get)
        if status.get("status") != "running":
            self._configure(vmid, spec, size, subject)
            upid = self._call("create_server (start)", f"VM {vmid}", self._vm(vmid).status.start.post)
            self._await_task(upid, "start", f"VM {vmid}")
            logger.info("Started Proxmox VM %s for %s", vmid, subject)
        return ServerInfo(id=str(vmid), name=spec.name, status="starting", ipv4=None, labels=dict(spec.labels))

    def get_server(self, server_id: str) -> ServerInfo:
        """Return the VM with its status and, once the guest agent responds, its IPv4 address."""
        vmid = _parse_vmid(server_id)
        subject = f"VM {server_id}"
        status = self._call("get_server", subject, self._vm(vmid).status.current.get)
        config = self._call("get_server", subject, self._vm(vmid).config.get)
        state = _server_status(status.get("status"), status.get("lock") or config.get("lock"))
        ipv4 = None
        if state == "running":
            ipv4 = self._guest_ipv4(vmid)
            if ipv4 is None:
                state = "starting"
        return ServerInfo(
            id=str(vmid),
            name=str(config.get("name") or status.get("name") or ""),
            status=state,
            ipv4=ipv4,
            labels=labels_from_description(config.get("description", "")),
        )

    def find_servers(self, labels: dict[str, str]) -> list[ServerInfo]:
        """Return the VMs carrying all of `labels` (every labelled VM when `labels` is empty), by id.

        Candidates are the node's VMs with the labels' tags plus the VMs at the ids derived from
        `labels`. A candidate counts only when its description records the labels. The results
        have no IPv4 address, because listing does not ask each guest agent; use `get_server`.
        """
        subject = f"VMs with labels {_format_labels(labels)}"
        listing = self._call("find_servers", subject, self._node.qemu.get) or []
        required_tags = {label_tag(key, value) for key, value in labels.items()} or {MARKER_TAG}
        entries = {int(item["vmid"]): item for item in listing if "vmid" in item}
        configs: dict[int, dict[str, Any]] = {}
        candidates = {vmid for vmid, item in entries.items() if required_tags <= parse_tags(item.get("tags"))}
        if labels:
            for vmid in self.vmid_candidates(labels):
                config = self._read_config(vmid, subject)
                if config is None:
                    break
                configs[vmid] = config
                candidates.add(vmid)

        result = []
        for vmid in sorted(candidates):
            config = configs.get(vmid)
            if config is None:
                config = self._read_config(vmid, subject)
            if config is None or str(config.get("template", "0")) == "1":
                continue
            found = labels_from_description(config.get("description", ""))
            if not found or not _has_labels(found, labels):
                continue
            entry = entries.get(vmid, {})
            result.append(
                ServerInfo(
                    id=str(vmid),
                    name=str(config.get("name") or entry.get("name") or ""),
                    status=_server_status(entry.get("status"), config.get("lock") or entry.get("lock")),
                    ipv4=None,
                    labels=found,
                )
            )
        return result

    def start_server(self, server_id: str) -> None:
        """Start the VM and wait for Proxmox's start task; the guest agent reports the address later."""
        self._set_power(server_id, action="start", done_status="running")

    def stop_server(self, server_id: str) -> None:
        """Stop the VM at once (Proxmox `status/stop`, not a guest shutdown) and wait for the task."""
        self._set_power(server_id, action="stop", done_status="stopped")

    def _set_power(self, server_id: str, *, action: str, done_status: str) -> None:
        vmid = _parse_vmid(server_id)
        subject = f"VM {vmid}"
        status = self._call(f"{action}_server", subject, self._vm(vmid).status.current.get)
        if status.get("status") == done_status:
            return
        endpoint = getattr(self._vm(vmid).status, action)
        upid = self._call(f"{action}_server", subject, endpoint.post)
        self._await_task(upid, action, subject, failure=TransientCloudError)
        logger.info("Proxmox %s: %s done", subject, action)

    def delete_server(self, server_id: str, *, labels: dict[str, str] | None = None) -> None:
        """Stop the VM and destroy it with its disks (`purge`), after checking it carries our labels.

        A VM that is already gone is not an error, and an empty `server_id` deletes nothing
        (Proxmox keeps no other objects per VM). Raises `RequestRejected` rather than delete a
        template or a VM whose description does not record `labels` (Proxmox reuses VM ids).
        """
        if not server_id:
            return
        vmid = _parse_vmid(server_id)
        subject = f"VM {vmid} (labels {_format_labels(labels or {})})"
        config = self._read_config(vmid, subject)
        if config is None:
            logger.info("Proxmox %s is already deleted", subject)
            return
        found = labels_from_description(config.get("description", ""))
        if str(config.get("template", "0")) == "1" or not found or not _has_labels(found, labels or {}):
            raise RequestRejected(
                f"Not deleting Proxmox {subject}: it is a template or its description does not record "
                f"these labels (it records {_format_labels(found)}); delete it by hand if it is ours.",
                code="labels_mismatch",
            )
        try:
            status = self._call("delete_server", subject, self._vm(vmid).status.current.get)
            if status.get("status") != "stopped":
                upid = self._call("delete_server (stop)", subject, self._vm(vmid).status.stop.post)
                self._await_task(upid, "stop", subject, failure=TransientCloudError)
            upid = self._call(
                "delete_server", subject, self._vm(vmid).delete, purge=1, **{"destroy-unreferenced-disks": 1}
            )
            self._await_task(upid, "destroy", subject, failure=TransientCloudError)
        except ServerNotFound:
            logger.info("Proxmox %s disappeared while being deleted", subject)
            return
        logger.info("Deleted Proxmox %s", subject)

    def prepare_for_ssh(self, *, server: ServerInfo, spec: ServerSpec) -> bool:
        """Install the host key from `spec.user_data` through the guest agent; True once done.

        The first call starts the install script in the guest, and later calls return False
        until it has exited. A non-zero exit raises `RequestRejected` with the script's output.
        """
        host_key = _parse_host_key(spec.user_data)
        if host_key is None:
            return True
        vmid = _parse_vmid(server.id)
        subject = f"VM {vmid}"
        pid = self._host_key_runs.get(vmid)
        if pid is None:
            private_key, public_line = host_key
            script = HOST_KEY_SCRIPT.format(public_line=shlex.quote(public_line))
            started = self._call(
                "prepare_for_ssh (install host key)",
                subject,
                self._vm(vmid).agent.exec.post,
                command=["/bin/sh", "-c", script],
                **{"input-data": private_key},
            )
            self._host_key_runs[vmid] = int(started["pid"])
            logger.info("Proxmox VM %s: installing the host key through the guest agent (pid %s)", vmid, started["pid"])
            return False
        try:
            result = self._call(
                "prepare_for_ssh (host key status)", subject, self._vm(vmid).agent("exec-status").get, pid=pid
            )
        except TransientCloudError as exc:
            # The agent restarted and forgot the command (or the VM rebooted): start it again.
            logger.warning("Proxmox VM %s: host key install status unknown, starting it again: %s", vmid, exc)
            self._host_key_runs.pop(vmid, None)
            return False
        if not result.get("exited"):
            return False
        self._host_key_runs.pop(vmid, None)
        exit_code = result.get("exitcode")
        if exit_code != 0:
            output = f"{result.get('out-data') or ''}{result.get('err-data') or ''}".strip()[-500:]
            raise RequestRejected(
                f"Installing the host key on Proxmox VM {vmid} through the guest agent failed with exit "
                f"code {exit_code}: {output or 'no output'}",
                code="host_key_install_failed",
            )
        logger.info("Proxmox VM %s: host key installed", vmid)
        return True

    # Creation steps

    def _server_type(self, name: str, subject: str) -> ServerType:
        # NOTE: sizes come from the account's current configuration, not from the contract's
        # snapshot, so editing a size changes the VMs of contracts still to be provisioned.
        for item in self.server_types:
            if item.name == name:
                return item
        raise RequestRejected(
            f"Cannot create {subject}: server type {name!r} is not configured for this Proxmox account "
            f"(configured: {', '.join(item.name for item in self.server_types)}).",
            code="unknown_server_type",
        )

    def _find_template(self, image: str, subject: str) -> int:
        items = self._call("create_server (templates)", subject, self._node.qemu.get) or []
        matches = sorted(int(item["vmid"]) for item in items if _is_template(item) and item.get("name") == image)
        if not matches:
            names = sorted({str(item.get("name")) for item in items if _is_template(item)})
            raise RequestRejected(
                f"Cannot create {subject}: no template named {image!r} on Proxmox node {self.node} "
                f"(templates: {', '.join(names) or 'none'}).",
                code="template_not_found",
            )
        if len(matches) > 1:
            logger.warning("Proxmox node %s has %d templates named %r; cloning VM %s", self.node, len(matches), image, matches[0])
        return matches[0]

    def vmid_candidates(self, labels: dict[str, str]) -> Iterator[int]:
        """Yield the VM ids for these labels: the hashed id first, then the ids after it."""
        low, high = self.vmid_range
        span = high - low + 1
        canonical = json.dumps(labels, sort_keys=True, separators=(",", ":"))
        start = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big") % span
        for offset in range(min(MAX_VMID_PROBES, span)):
            yield low + (start + offset) % span

    def _clone(self, spec: ServerSpec, subject: str) -> int:
        """Clone the template into the first free derived id and return that id.

        An id another VM took (found before the clone, or reported by the clone request) is
        skipped. A VM with these labels found on the way is returned instead of cloning.
        """
        template = self._find_template(spec.image, subject)
        for vmid in self.vmid_candidates(spec.labels):
            config = self._read_config(vmid, subject)
            if config is not None:
                if _has_labels(labels_from_description(config.get("description", "")), spec.labels):
                    logger.info("Proxmox VM %s for %s appeared concurrently; reusing it", vmid, subject)
                    return self._wait_until_unlocked(vmid, subject) or self._clone(spec, subject)
                continue
            logger.info("Cloning Proxmox template %s (%s) into VM %s for %s", template, spec.image, vmid, subject)
            try:
                upid = self._call(
                    "create_server (clone)",
                    subject,
                    self._vm(template).clone.post,
                    newid=vmid,
                    name=spec.name,
                    description=labels_description(spec.labels),
                    full=1,
                )
            except RequestRejected as error:
                if error.code != "already_exists":
                    raise
                logger.info("Proxmox VM id %s is taken (another node or a concurrent clone); trying the next", vmid)
                continue
            self._await_task(upid, "clone", f"VM {vmid} of {subject}")
            logger.info("Cloned Proxmox VM %s for %s", vmid, subject)
            return vmid
        low, high = self.vmid_range
        raise RequestRejected(
            f"Cannot create {subject}: the {MAX_VMID_PROBES} VM IDs derived from its labels in the range "
            f"{low}-{high} are all taken by other VMs; widen the account's VM ID range.",
            code="no_free_vmid",
        )

    def _wait_until_unlocked(self, vmid: int, subject: str) -> int | None:
        """Wait while the VM is locked (a clone of an earlier attempt still running).

        Returns the id, or None when the VM disappeared (Proxmox removes the VM of a failed clone).
        """
        deadline = time.monotonic() + self.task_timeout
        while True:
            config = self._read_config(vmid, subject)
            if config is None:
                logger.info("Proxmox VM %s for %s is gone (failed clone?); cloning again", vmid, subject)
                return None
            lock = config.get("lock")
            if not lock:
                return vmid
            if time.monotonic() > deadline:
                raise TransientCloudError(
                    f"Proxmox VM {vmid} of {subject} is still locked ({lock}) after {self.task_timeout:.0f} s.",
                    code="locked",
                )
            time.sleep(self.poll_interval)

    def _configure(self, vmid: int, spec: ServerSpec, size: ServerType, subject: str) -> None:
        """Set size, guest agent, cloud-init, description and tags, then grow the boot disk."""
        config = self._call("create_server (config)", subject, self._vm(vmid).config.get)
        keys = "\n".join(line.strip() for line in spec.ssh_public_keys if line.strip())
        tags = sorted({MARKER_TAG} | {label_tag(key, value) for key, value in spec.labels.items()})
        settings: dict[str, Any] = {
            "cores": size.vcpu,
            "memory": size.memory_mib,
            "agent": "1",
            "ciuser": "root",
            "ipconfig0": self.ipconfig0,
            "description": labels_description(spec.labels),
            "tags": ";".join(tags),
        }
        if keys:
            # Proxmox requires the key list URL-encoded (with %20, not +) inside the form field.
            settings["sshkeys"] = quote(keys, safe="")
        boot_disk = _boot_disk(config)
        if boot_disk is None:
            raise RequestRejected(f"Cannot size {subject}: Proxmox VM {vmid} has no boot disk.", code="no_boot_disk")
        if not any("cloudinit" in str(value) for value in config.values()):
            storage = str(config[boot_disk]).split(":", 1)[0]
            free_slot = next((slot for slot in ("ide2", "ide0", "ide1", "ide3") if slot not in config), None)
            if storage and free_slot:
                settings[free_slot] = f"{storage}:cloudinit"
            else:
                logger.warning("Proxmox VM %s has no cloud-init drive and none could be added", vmid)
        self._call("create_server (config)", subject, self._vm(vmid).config.put, **settings)

        current = _size_in_gib(str(config[boot_disk]))
        if current is None or current < size.disk_gb:
            result = self._call(
                "create_server (resize)", subject, self._vm(vmid).resize.put, disk=boot_disk, size=f"{size.disk_gb}G"
            )
            if isinstance(result, str) and result.startswith("UPID:"):
                # Some Proxmox VE versions return a task id, others return null once the disk is
                # resized. Both are handled.
                self._await_task(result, "resize", f"VM {vmid}")
            logger.info("Proxmox VM %s: disk %s grown to %s GB", vmid, boot_disk, size.disk_gb)

    # Helpers

    def _read_config(self, vmid: int, subject: str) -> dict[str, Any] | None:
        """Return the VM's configuration, or None when no VM has this id on the node."""
        try:
            return self._call("read_config", f"VM {vmid} ({subject})", self._vm(vmid).config.get)
        except ServerNotFound:
            return None

    def _guest_ipv4(self, vmid: int) -> str | None:
        """Return the first IPv4 address the guest agent reports outside `lo`, or None if it is not up yet."""
        try:
            result = self._vm(vmid).agent("network-get-interfaces").get()
        except ResourceException as exc:
            if any(marker in str(exc).lower() for marker in AGENT_NOT_READY_MARKERS):
                return None
            raise self._api_error(exc, "get_server (guest agent)", f"VM {vmid}") from exc
        except requests.RequestException as exc:
            raise self._transport_error(exc, "get_server (guest agent)", f"VM {vmid}") from exc
        return first_guest_ipv4(result)

    def _await_task(
        self, upid: Any, action: str, subject: str, *, failure: type[CloudError] = RequestRejected
    ) -> None:
        """Poll `nodes/{node}/tasks/{upid}/status` until the task stops; raise unless it ended OK.

        A task still running after `task_timeout` raises `TransientCloudError`, and a failed
        task raises `failure` with Proxmox's exit status.
        """
        if not isinstance(upid, str) or not upid.startswith("UPID:"):
            raise CloudError(f"Proxmox {action} of {subject} returned {upid!r} instead of a task id.")
        node = upid.split(":")[1] or self.node
        deadline = time.monotonic() + self.task_timeout
        while True:
            status = self._call(f"{action} (task status)", subject, self._api.nodes(node).tasks(upid).status.get)
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus") or "")
                if exit_status == "OK" or exit_status.startswith("WARNINGS"):
                    return
                logger.warning("Proxmox %s task of %s failed: %s (%s)", action, subject, exit_status, upid)
                raise failure(
                    self._scrub(f"Proxmox {action} of {subject} failed: {exit_status or 'no exit status'}"),
                    code="task_failed",
                )
            if time.monotonic() > deadline:
                raise TransientCloudError(
                    f"Proxmox {action} of {subject} is still running after {self.task_timeout:.0f} s (task {upid}).",
                    code="task_timeout",
                )
            time.sleep(self.poll_interval)

    def _call(self, operation: str, subject: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._translated(operation, subject):
            return func(*args, **kwargs)

    @contextmanager
    def _translated(self, operation: str, subject: str) -> Iterator[None]:
        """Turn proxmoxer and requests exceptions raised inside into `CloudError` subclasses."""
        try:
            yield
        except ResourceException as exc:
            raise self._api_error(exc, operation, subject) from exc
        except requests.RequestException as exc:
            raise self._transport_error(exc, operation, subject) from exc

    def _api_error(self, exc: ResourceException, operation: str, subject: str) -> CloudError:
        status = exc.status_code
        reason = self._scrub(str(exc.content or exc.status_message or "").strip())
        detail = f": {self._scrub(json.dumps(exc.errors, sort_keys=True))}" if exc.errors else ""
        message = f"Proxmox {operation} failed for {subject}: HTTP {status} {reason}{detail}"
        lowered = reason.lower()
        missing = status == 500 and VM_CONFIG_MISSING_RE.search(reason) is not None
        # A missing VM is the expected result while looking for a free VM id.
        logger.log(
            logging.DEBUG if missing else logging.WARNING,
            "Proxmox %s failed for %s: HTTP %s %s", operation, subject, status, reason,
        )
        if status == 401:
            return CredentialsInvalid(
                f"{message} (check the token ID and secret under Datacenter > Permissions > API Tokens)",
                status_code=status,
                code="unauthorized",
            )
        if status == 403:
            return CredentialsInvalid(
                f"{message} (give the token the missing privilege, or turn off its privilege separation)",
                status_code=status,
                code="forbidden",
            )
        if missing:
            return ServerNotFound(message, status_code=status, code="not_found")
        if status == 500 and "already exists" in lowered:
            return RequestRejected(message, status_code=status, code="already_exists")
        if 400 <= status < 500 or status == 501:
            return RequestRejected(message, status_code=status, code="invalid_request")
        if status >= 500:
            code = "locked" if any(marker in lowered for marker in BUSY_MARKERS) else "server_error"
            return TransientCloudError(message, status_code=status, code=code)
        return CloudError(message, status_code=status)

    def _transport_error(self, exc: requests.RequestException, operation: str, subject: str) -> CloudError:
        where = self.endpoint.base_url
        if isinstance(exc, requests.exceptions.SSLError):
            logger.warning("Proxmox %s failed for %s: TLS error at %s", operation, subject, where)
            # Not retried: a certificate the platform cannot verify needs the provider to act,
            # the same as a rejected token, so the account is marked invalid.
            return CredentialsInvalid(
                f"Proxmox {operation} failed for {subject}: the TLS certificate of {where} could not be verified "
                f"({type(exc).__name__}). Install a certificate from a trusted CA on the Proxmox host, "
                "or turn off TLS verification for this account if you accept the risk.",
                code="tls_verification_failed",
            )
        if isinstance(exc, requests.Timeout):
            reason = "the request timed out"
        elif isinstance(exc, requests.ConnectionError):
            reason = "the connection failed or was closed without a response"
        else:
            logger.warning("Proxmox %s failed for %s: %s", operation, subject, type(exc).__name__)
            return CloudError(self._scrub(f"Proxmox {operation} failed for {subject}: invalid request: {exc}"))
        logger.warning("Proxmox %s failed for %s: %s (%s)", operation, subject, reason, type(exc).__name__)
        return TransientCloudError(f"Proxmox {operation} failed for {subject} at {where}: {reason} ({type(exc).__name__})")

    def _scrub(self, text: str) -> str:
        if self._token_secret:
            return text.replace(self._token_secret, "[token]")
        return text


def _parse_vmid(server_id: str) -> int:
    text = str(server_id).strip()
    if not text.isdigit():
        raise ServerNotFound(f"Proxmox VM id {server_id!r} is not a number", code="not_found")
    return int(text)


def _is_template(item: dict[str, Any]) -> bool:
    return str(item.get("template", "0")) in ("1", "True", "true")


def _server_status(status: Any, lock: Any) -> str:
    """Map Proxmox's VM status and lock to the `ServerInfo` status names."""
    if lock in ("clone", "create"):
        return "initializing"
    if lock == "destroyed":
        return "deleting"
    if status == "running":
        return "running"
    if status == "stopped":
        return "off"
    return "unknown"


def _boot_disk(config: dict[str, Any]) -> str | None:
    """Return the config key of the boot disk: the first disk in `boot: order=...`, else the first disk."""
    disks = [
        key
        for key, value in config.items()
        if DISK_KEY_RE.match(key) and "media=cdrom" not in str(value) and "cloudinit" not in str(value)
    ]
    order = str(config.get("boot", ""))
    if order.startswith("order="):
        for key in order[len("order="):].split(";"):
            if key in disks:
                return key
    for prefix in ("scsi", "virtio", "sata", "ide"):
        keyed = sorted((key for key in disks if key.startswith(prefix)), key=lambda key: int(key[len(prefix):]))
        if keyed:
            return keyed[0]
    return None
