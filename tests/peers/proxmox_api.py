"""A fake Proxmox VE API server on 127.0.0.1 for tests and local demos.

It serves the subset of `/api2/json` that `provisioning.backends.proxmox` calls through
proxmoxer: version, nodes, the node's VM list, clone, config, resize, status (current, start,
stop), destroy, the guest agent's `network-get-interfaces`, `exec` and `exec-status`, and task
status. Requests authenticate with `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`.
Responses are `{"data": ...}`. Errors follow Proxmox: the message is the HTTP reason phrase and
the body's `message`, and parameter errors are HTTP 400 with an `errors` object per parameter.
NOTE: the error texts follow public bug reports about Proxmox VE 8 and were not compared with a
real host.

Clone, resize, start, stop and destroy return a task id (UPID). A task reports `running` until
its duration (`task_seconds`, per task type) has passed, then `stopped` with exit status `OK`,
or with an error scripted by `fail_next_task`. A clone creates the VM at once with the lock
`clone`, and removes it again if the task fails, as Proxmox does.

No VM runs anything. A started VM's guest agent responds "QEMU guest agent is not running" for
`agent_delay` seconds, then reports an `eth0` with the address `ipv4` (default 127.0.0.1). If an
`sshd` peer is given, starting a VM emulates cloud-init on it (the VM's `sshkeys` become the
authorized keys), and an agent `exec` that pipes an OpenSSH private key into a command naming
`ssh_host_ed25519_key` installs that key as the sshd's host key.

Faults: `add_fault` makes matching requests fail with a status and message, hang, or lose their
response; `fail_next_task` makes the next task of a type end with an error; `task_seconds` makes
tasks slow; `tokens` can be changed to revoke a token.

Run standalone with `python -m tests.peers.proxmox_api --port 0`.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import itertools
import json
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

API_PREFIX = "/api2/json"
DEFAULT_TOKEN_ID = "cloudmarket@pve!provisioning"
DEFAULT_TOKEN_SECRET = "0b6a3f4e-5d21-4c8e-9a77-3e1f2d4c5b6a"
DEFAULT_TEMPLATES = {"ubuntu-24.04": 9000, "debian-12": 9001}
DEFAULT_TASK_SECONDS = {"qmclone": 0.3, "resize": 0.05, "qmstart": 0.1, "qmstop": 0.05, "qmdestroy": 0.1}

# pve-common's tag format (PVE_TAG_RE in PVE/JSONSchema.pm), case-insensitive.
TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9_\-+.]*$", re.IGNORECASE)
DNS_NAME_RE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*$")
# Characters Proxmox's `urlencoded` format accepts; anything else means the value was not encoded.
URLENCODED_RE = re.compile(r"^[A-Za-z0-9\-_.!~*'()%]*$")
SIZE_PARAM_RE = re.compile(r"^(\+)?(\d+(?:\.\d+)?)([KMGT])?$")
DISK_SIZE_RE = re.compile(r"size=(\d+(?:\.\d+)?)([KMGT]?)")
DISK_KEY_RE = re.compile(r"^(scsi|virtio|sata|ide)\d+$")
BOOLEAN_VALUES = {"1": True, "0": False, "true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
UNIT_BYTES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

CONFIG_KEYS = frozenset(
    {"cores", "memory", "agent", "ciuser", "sshkeys", "ipconfig0", "description", "tags", "name", "boot", "digest", "delete"}
)


class SshdPeer(Protocol):
    """The SSH server that plays the booted VM (for example `tests.peers.sshd.LoopbackSshd`)."""

    def set_authorized_keys(self, lines: list[str]) -> None: ...

    def install_host_key(self, private_key_openssh: str) -> None: ...


class ApiError(Exception):
    """An error response: HTTP status, message (also the reason phrase) and per-parameter errors."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def parameter_error(errors: dict[str, str]) -> ApiError:
    return ApiError(400, "Parameter verification failed.", errors)


@dataclass
class Fault:
    """A scripted failure for requests whose method and path match.

    `path` is a regular expression matched in full against the path after `/api2/json`, for
    example `/nodes/pve/qemu/\\d+/clone`. `method` is an HTTP method or `*`. The fault applies
    to the next `times` matching requests (every one when None). With `process`, the request is
    handled first and only the response is replaced, dropped or delayed (`response_delay`).
    Without `status` and `drop_connection` the fault only delays the request by `delay`.
    """

    method: str
    path: str
    status: int | None = None
    message: str = ""
    delay: float = 0.0
    response_delay: float = 0.0
    drop_connection: bool = False
    process: bool = False
    times: int | None = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method.upper() != method:
            return False
        return re.fullmatch(self.path, path) is not None


@dataclass
class RecordedRequest:
    """One request the fake received, with the response status (None for a dropped connection)."""

    method: str
    path: str
    params: dict[str, list[str]]
    status: int | None = None
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Task:
    """A Proxmox task: running until `done_at`, then stopped with `exitstatus`."""

    upid: str
    node: str
    type: str
    resource: str
    user: str
    started_at: float
    done_at: float
    exitstatus: str = "OK"
    on_success: Callable[[], None] | None = None
    on_failure: Callable[[], None] | None = None
    finished: bool = False


@dataclass
class GuestCommand:
    """A command run through the guest agent's `exec`."""

    pid: int
    command: list[str]
    input_data: str
    done_at: float
    exit_code: int = 0
    out_data: str = ""
    err_data: str = ""


class ProxmoxApiServer:
    """A fake Proxmox VE API for one node on 127.0.0.1, started by `start()` or by `with`.

    `url` is the address to store as the account's API URL. `tokens` maps accepted token ids
    (`USER@REALM!NAME`) to secrets and may be changed while running. `vms` returns snapshots of
    the VMs by id, `requests` logs every request, and `guest_commands` every agent `exec`.
    With `tls=True` it serves HTTPS with a self-signed certificate for 127.0.0.1.
    """

    def __init__(
        self,
        *,
        tokens: dict[str, str] | None = None,
        node: str = "pve",
        sshd: SshdPeer | None = None,
        templates: dict[str, int] | None = None,
        ipv4: str = "127.0.0.1",
        agent_delay: float = 0.3,
        task_seconds: dict[str, float] | None = None,
        tls: bool = False,
        port: int = 0,
    ):
        self.tokens: dict[str, str] = dict(tokens if tokens is not None else {DEFAULT_TOKEN_ID: DEFAULT_TOKEN_SECRET})
        self._initial_tokens = dict(self.tokens)
        self.node = node
        self.sshd = sshd
        self.ipv4 = ipv4
        self.agent_delay = agent_delay
        # When True, guest commands that install a host key succeed without changing the sshd's key,
        # as on a VM that presents another host key than the one generated for it.
        self.skip_host_key_install = False
        self.task_seconds = {**DEFAULT_TASK_SECONDS, **(task_seconds or {})}
        self._initial_agent_delay = agent_delay
        self._initial_task_seconds = dict(self.task_seconds)
        self.tls = tls
        self.requests: list[RecordedRequest] = []
        self.guest_commands: list[GuestCommand] = []
        # Exit code and stderr of the next guest agent commands; see `fail_next_guest_command`.
        self._guest_failures: list[tuple[int, str]] = []

        self._port = port
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._task_failures: dict[str, list[str]] = {}
        self._task_numbers = itertools.count(0x1000)
        self._pids = itertools.count(1000)
        self._templates = dict(templates if templates is not None else DEFAULT_TEMPLATES)
        self._vms: dict[int, dict[str, Any]] = {}
        self._tasks: dict[str, Task] = {}
        self._commands: dict[int, GuestCommand] = {}
        # VM ids used on other nodes of the cluster: free on this node, but clone rejects them.
        self.elsewhere_vmids: set[int] = set()
        self._seed_templates()

        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cert_dir: tempfile.TemporaryDirectory | None = None
        self._routes = self._build_routes()

    # Lifecycle

    def start(self) -> ProxmoxApiServer:
        """Bind 127.0.0.1 and serve requests in a background thread."""
        self._httpd = _QuietThreadingHTTPServer(("127.0.0.1", self._port), _make_handler(self))
        if self.tls:
            self._httpd.socket = self._tls_context().wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-proxmox-api", daemon=True
        )
        self._thread.start()
        logger.info("Fake Proxmox VE API listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        if self._cert_dir is not None:
            self._cert_dir.cleanup()
        logger.info("Fake Proxmox VE API stopped")

    def __enter__(self) -> ProxmoxApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fake Proxmox VE API is not running; call start() first")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _tls_context(self) -> ssl.SSLContext:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-proxmox.invalid")])
        now = datetime.datetime.now(tz=datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256())
        )
        self._cert_dir = tempfile.TemporaryDirectory(prefix="fake-proxmox-tls-")
        cert_path = Path(self._cert_dir.name) / "cert.pem"
        key_path = Path(self._cert_dir.name) / "key.pem"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(key_path, 0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context

    # Test helpers

    @property
    def vms(self) -> dict[int, dict[str, Any]]:
        """Snapshot of the non-template VMs by id, with finished tasks applied."""
        with self._lock:
            self._advance_clock()
            return {vmid: json.loads(json.dumps(vm)) for vmid, vm in self._vms.items() if not vm["template"]}

    @property
    def tasks(self) -> list[Task]:
        with self._lock:
            self._advance_clock()
            return list(self._tasks.values())

    def reset(self) -> None:
        """Forget VMs, tasks, faults and logged requests, and restore tokens and timings, so one
        running fake can serve many tests."""
        with self._lock:
            self.tokens.clear()
            self.tokens.update(self._initial_tokens)
            self.agent_delay = self._initial_agent_delay
            self.skip_host_key_install = False
            self.task_seconds = dict(self._initial_task_seconds)
            self.requests.clear()
            self.guest_commands.clear()
            self._guest_failures.clear()
            self._faults.clear()
            self._task_failures.clear()
            self._tasks.clear()
            self._commands.clear()
            self.elsewhere_vmids.clear()
            self._vms.clear()
            self._seed_templates()

    def add_fault(
        self,
        method: str,
        path: str,
        *,
        status: int | None = None,
        message: str = "",
        delay: float = 0.0,
        response_delay: float = 0.0,
        drop_connection: bool = False,
        process: bool = False,
        times: int | None = 1,
    ) -> Fault:
        """Script a fault for matching requests; see `Fault`."""
        fault = Fault(
            method=method,
            path=path,
            status=status,
            message=message,
            delay=delay,
            response_delay=response_delay,
            drop_connection=drop_connection,
            process=process,
            times=times,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_next_task(self, task_type: str, exitstatus: str, *, times: int = 1) -> None:
        """Make the next `times` tasks of `task_type` (`qmclone`, `qmstart`, ...) end with `exitstatus`."""
        with self._lock:
            self._task_failures.setdefault(task_type, []).extend([exitstatus] * times)

    def finish_tasks_now(self) -> None:
        """End every running task at once, with the exit status it was given."""
        with self._lock:
            now = time.monotonic()
            for task in self._tasks.values():
                task.done_at = min(task.done_at, now)
            self._advance_clock()

    def fail_next_guest_command(self, exit_code: int, stderr: str) -> None:
        """Make the next guest agent command exit with `exit_code` and `stderr`, doing nothing."""
        with self._lock:
            self._guest_failures.append((exit_code, stderr))

    def create_vm_behind_back(
        self, *, vmid: int, name: str = "foreign", description: str = "", tags: str = "", status: str = "stopped"
    ) -> dict[str, Any]:
        """Create a VM directly, as another user of the cluster would; sends no request."""
        with self._lock:
            vm = self._new_vm(vmid, name=name, template=False)
            vm["config"]["description"] = description
            if tags:
                vm["config"]["tags"] = tags
            vm["status"] = status
            return json.loads(json.dumps(vm))

    def set_vm_status_behind_back(self, vmid: int, status: str) -> None:
        """Set a VM's status ("running", "stopped") directly, as a host crash or another user would."""
        with self._lock:
            self._vms[int(vmid)]["status"] = status

    def delete_vm_behind_back(self, vmid: int) -> None:
        with self._lock:
            self._vms.pop(int(vmid), None)

    def requests_matching(self, method: str, path: str, *, status: int | None = None) -> list[RecordedRequest]:
        """Return logged requests with this method, a path matching the regex `path` in full and, if given, this status."""
        with self._lock:
            return [
                request
                for request in self.requests
                if request.method == method.upper()
                and re.fullmatch(path, request.path)
                and (status is None or request.status == status)
            ]

    # Request handling

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes
    ) -> tuple[int, str, dict[str, Any]] | None:
        """Return `(status, reason phrase, JSON body)`, or None to drop the connection."""
        split = urlsplit(raw_path)
        params = parse_qs(split.query, keep_blank_values=True)
        if raw_body:
            for key, values in parse_qs(raw_body.decode("utf-8", errors="replace"), keep_blank_values=True).items():
                params.setdefault(key, []).extend(values)
        path = split.path
        path = path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else "/__outside_api__" + path
        path = path.rstrip("/") or "/"
        record = RecordedRequest(method=method, path=path, params=params)
        with self._lock:
            self.requests.append(record)

        fault = self._take_fault(method, path)
        if fault is not None:
            result = self._apply_fault(fault, method, path, params, headers)
        else:
            result = self._dispatch(method, path, params, headers)
        record.status = None if result is None else result[0]
        return result

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    def _apply_fault(self, fault: Fault, method: str, path: str, params: dict, headers: dict) -> tuple | None:
        if fault.delay:
            time.sleep(fault.delay)
        is_failure = fault.drop_connection or fault.status is not None
        if fault.process or not is_failure:
            result = self._dispatch(method, path, params, headers)
            if fault.response_delay:
                time.sleep(fault.response_delay)
            if not is_failure:
                return result
        if fault.drop_connection:
            return None
        message = fault.message or f"scripted fault {fault.status}"
        return _error_response(ApiError(fault.status or 500, message))

    def _dispatch(self, method: str, path: str, params: dict, headers: dict) -> tuple[int, str, dict[str, Any]]:
        try:
            user = self._authenticate(headers.get("authorization", ""))
            for route_method, pattern, handler in self._routes:
                match = re.fullmatch(pattern, path)
                if match is None or route_method != method:
                    continue
                with self._lock:
                    self._advance_clock()
                    data = handler(params, user, *match.groups())
                return 200, "OK", {"data": data}
            # Proxmox responds this way to an unknown path or method.
            raise ApiError(501, f"Method '{method} {API_PREFIX}{path}' not implemented")
        except ApiError as error:
            return _error_response(error)

    def _authenticate(self, authorization: str) -> str:
        prefix = "PVEAPIToken="
        if not authorization.startswith(prefix):
            raise ApiError(401, "No ticket")
        token_id, separator, secret = authorization[len(prefix):].partition("=")
        user, _, name = token_id.partition("!")
        if not separator or not name:
            raise ApiError(401, "no tokenid specified")
        if token_id not in self.tokens:
            raise ApiError(401, f"no such token '{name}' for user '{user}'")
        if self.tokens[token_id] != secret:
            raise ApiError(401, "invalid token value!")
        return token_id

    def _build_routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        vm = r"/nodes/([^/]+)/qemu/(\d+)"
        return [
            ("GET", r"/version", self._version),
            ("GET", r"/nodes", self._list_nodes),
            ("GET", r"/nodes/([^/]+)/status", self._node_status),
            ("GET", r"/nodes/([^/]+)/qemu", self._list_vms),
            ("GET", vm + r"/config", self._get_config),
            ("PUT", vm + r"/config", self._set_config),
            ("POST", vm + r"/clone", self._clone),
            ("PUT", vm + r"/resize", self._resize),
            ("GET", vm + r"/status/current", self._status_current),
            ("POST", vm + r"/status/start", self._start),
            ("POST", vm + r"/status/stop", self._stop),
            ("DELETE", vm, self._destroy),
            ("GET", vm + r"/agent/network-get-interfaces", self._agent_interfaces),
            ("POST", vm + r"/agent/exec", self._agent_exec),
            ("GET", vm + r"/agent/exec-status", self._agent_exec_status),
            ("GET", r"/nodes/([^/]+)/tasks/([^/]+)/status", self._task_status),
        ]

    # State helpers

    def _seed_templates(self) -> None:
        for name, vmid in self._templates.items():
            self._new_vm(vmid, name=name, template=True)

    def _new_vm(self, vmid: int, *, name: str, template: bool, source: dict[str, Any] | None = None) -> dict[str, Any]:
        if source is not None:
            config = {
                key: (value.replace(f"vm-{source['vmid']}-", f"vm-{vmid}-") if isinstance(value, str) else value)
                for key, value in source["config"].items()
                if key not in ("template", "name", "description", "tags", "lock")
            }
        else:
            config = {
                "cores": 1,
                "memory": 1024,
                "boot": "order=scsi0",
                "scsi0": f"local-lvm:vm-{vmid}-disk-0,size=10G",
                "ide2": f"local-lvm:vm-{vmid}-cloudinit,media=cdrom",
                "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
                "ostype": "l26",
            }
        config["name"] = name
        if template:
            config["template"] = 1
        vm = {"vmid": vmid, "template": template, "status": "stopped", "config": config, "started_at": None}
        self._vms[vmid] = vm
        return vm

    def _require_node(self, node: str) -> None:
        if node != self.node:
            raise ApiError(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known")

    def _require_vm(self, node: str, vmid: str) -> dict[str, Any]:
        self._require_node(node)
        vm = self._vms.get(int(vmid))
        if vm is None:
            raise ApiError(500, f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist")
        return vm

    @staticmethod
    def _require_unlocked(vm: dict[str, Any]) -> None:
        lock = vm["config"].get("lock")
        if lock:
            raise ApiError(500, f"VM is locked ({lock})")

    def _new_task(self, task_type: str, resource: Any, user: str, *, on_success=None, on_failure=None) -> str:
        number = next(self._task_numbers)
        now = time.time()
        upid = f"UPID:{self.node}:{number:08X}:{number * 7:08X}:{int(now):08X}:{task_type}:{resource}:{user}:"
        failures = self._task_failures.get(task_type) or []
        exitstatus = failures.pop(0) if failures else "OK"
        task = Task(
            upid=upid,
            node=self.node,
            type=task_type,
            resource=str(resource),
            user=user,
            started_at=time.monotonic(),
            done_at=time.monotonic() + self.task_seconds.get(task_type, 0.0),
            exitstatus=exitstatus,
            on_success=on_success,
            on_failure=on_failure,
        )
        self._tasks[upid] = task
        logger.info("Fake Proxmox VE API: task %s started (%s %s)", upid, task_type, resource)
        return upid

    def _advance_clock(self) -> None:
        now = time.monotonic()
        for task in self._tasks.values():
            if task.finished or now < task.done_at:
                continue
            task.finished = True
            callback = task.on_success if task.exitstatus == "OK" else task.on_failure
            if callback is not None:
                callback()

    def _vm_status(self, vm: dict[str, Any]) -> dict[str, Any]:
        config = vm["config"]
        result = {
            "vmid": vm["vmid"],
            "name": config.get("name", ""),
            "status": vm["status"],
            "qmpstatus": vm["status"],
            "cpus": config.get("cores", 1),
            "maxmem": int(config.get("memory", 512)) * 1024 * 1024,
            "uptime": int(time.monotonic() - vm["started_at"]) if vm["status"] == "running" else 0,
            "template": 1 if vm["template"] else 0,
        }
        if config.get("tags"):
            result["tags"] = config["tags"]
        if config.get("lock"):
            result["lock"] = config["lock"]
        if _agent_enabled(config):
            result["agent"] = 1
        return result

    # Endpoints

    def _version(self, params: dict, user: str) -> dict[str, Any]:
        return {"version": "8.2.4", "release": "8.2", "repoid": "faa83925c9641325"}

    def _list_nodes(self, params: dict, user: str) -> list[dict[str, Any]]:
        return [{"node": self.node, "status": "online", "type": "node", "maxcpu": 16, "maxmem": 64 * 1024**3}]

    def _node_status(self, params: dict, user: str, node: str) -> dict[str, Any]:
        self._require_node(node)
        return {"uptime": 86400, "cpuinfo": {"cpus": 16}, "memory": {"total": 64 * 1024**3}, "pveversion": "pve-manager/8.2.4"}

    def _list_vms(self, params: dict, user: str, node: str) -> list[dict[str, Any]]:
        self._require_node(node)
        return [self._vm_status(vm) for vm in sorted(self._vms.values(), key=lambda item: item["vmid"])]

    def _get_config(self, params: dict, user: str, node: str, vmid: str) -> dict[str, Any]:
        vm = self._require_vm(node, vmid)
        config = dict(vm["config"])
        config["digest"] = format(abs(hash(json.dumps(config, sort_keys=True))), "040x")[:40]
        return config

    def _set_config(self, params: dict, user: str, node: str, vmid: str) -> None:
        vm = self._require_vm(node, vmid)
        values = _single_values(params)

        errors = {}
        for key in values:
            if key not in CONFIG_KEYS and not DISK_KEY_RE.match(key):
                errors[key] = "property is not defined in schema and the schema does not allow additional properties"
        for key in ("cores", "memory"):
            if key in values and not values[key].isdigit():
                errors[key] = f"type check ('integer') failed - got '{values[key]}'"
        if "memory" in values and values["memory"].isdigit() and int(values["memory"]) < 16:
            errors["memory"] = "value must have a minimum value of 16"
        if "sshkeys" in values and not URLENCODED_RE.match(values["sshkeys"]):
            errors["sshkeys"] = "invalid urlencoded string: " + values["sshkeys"][:40]
        if "tags" in values:
            for tag in re.split(r"[;,\s]+", values["tags"]):
                if tag and not TAG_RE.match(tag):
                    errors["tags"] = f"invalid format - invalid tag '{tag}'"
        if "ipconfig0" in values and not re.fullmatch(r"(?:(?:ip|gw|ip6|gw6)=[^,=]+)(?:,(?:ip|gw|ip6|gw6)=[^,=]+)*", values["ipconfig0"]):
            errors["ipconfig0"] = "invalid format - format error"
        if "agent" in values and not re.fullmatch(r"(?:enabled=)?[01](?:,.*)?", values["agent"]):
            errors["agent"] = "invalid format - format error"
        if "name" in values and not DNS_NAME_RE.match(values["name"]):
            errors["name"] = "invalid format - value does not look like a valid DNS name"
        for key, value in values.items():
            if DISK_KEY_RE.match(key) and not re.fullmatch(r"[a-z][a-z0-9\-_.]*:\S+", value):
                errors[key] = "invalid format - format error"
        if errors:
            raise parameter_error(errors)

        self._require_unlocked(vm)
        for key, value in values.items():
            if key in ("digest", "delete"):
                continue
            if DISK_KEY_RE.match(key) and value.endswith(":cloudinit"):
                value = f"{value.split(':')[0]}:vm-{vmid}-cloudinit,media=cdrom"
            vm["config"][key] = value

    def _clone(self, params: dict, user: str, node: str, vmid: str) -> str:
        source = self._require_vm(node, vmid)
        values = _single_values(params)
        errors = {}
        unknown = set(values) - {"newid", "name", "description", "full", "target", "storage", "pool"}
        for key in unknown:
            errors[key] = "property is not defined in schema and the schema does not allow additional properties"
        newid = values.get("newid", "")
        if not newid.isdigit() or not 100 <= int(newid) <= 999_999_999:
            errors["newid"] = f"invalid format - value '{newid}' does not look like a valid VM ID"
        if "name" in values and not DNS_NAME_RE.match(values["name"]):
            errors["name"] = "invalid format - value does not look like a valid DNS name"
        if "full" in values and values["full"].lower() not in BOOLEAN_VALUES:
            errors["full"] = f"type check ('boolean') failed - got '{values['full']}'"
        if errors:
            raise parameter_error(errors)
        new_vmid = int(newid)
        if new_vmid in self._vms or new_vmid in self.elsewhere_vmids:
            raise ApiError(500, f"unable to create VM {new_vmid}: VM {new_vmid} already exists on node '{self.node}'")
        if not source["template"] and not BOOLEAN_VALUES.get(values.get("full", "0").lower(), False):
            raise ApiError(500, "Linked clone feature for a VM that is not a template is not supported")
        vm = self._new_vm(new_vmid, name=values.get("name") or f"Copy-of-VM-{vmid}", template=False, source=source)
        vm["config"]["description"] = values.get("description", "")
        vm["config"]["lock"] = "clone"

        def finish() -> None:
            vm["config"].pop("lock", None)

        def fail() -> None:
            self._vms.pop(new_vmid, None)

        return self._new_task("qmclone", vmid, user, on_success=finish, on_failure=fail)

    def _resize(self, params: dict, user: str, node: str, vmid: str) -> str:
        vm = self._require_vm(node, vmid)
        values = _single_values(params)
        disk, size = values.get("disk", ""), values.get("size", "")
        match = SIZE_PARAM_RE.match(size)
        errors = {}
        if not DISK_KEY_RE.match(disk):
            errors["disk"] = f"value '{disk}' does not have a value in the enumeration"
        if match is None:
            errors["size"] = f"value does not match the regex pattern: '{size}'"
        if errors:
            raise parameter_error(errors)
        self._require_unlocked(vm)
        current_value = vm["config"].get(disk)
        if current_value is None:
            raise ApiError(500, f"disk '{disk}' does not exist")
        current = _disk_bytes(current_value)
        wanted = float(match[2]) * UNIT_BYTES[match[3] or ""]
        if match[1]:
            wanted += current
        if wanted < current:
            raise ApiError(500, "shrinking disks is not supported")
        gib = wanted / 1024**3
        new_size = f"{int(gib)}G" if gib == int(gib) else f"{int(wanted // 1024**2)}M"

        def finish() -> None:
            vm["config"][disk] = DISK_SIZE_RE.sub(f"size={new_size}", current_value)

        return self._new_task("resize", vmid, user, on_success=finish)

    def _status_current(self, params: dict, user: str, node: str, vmid: str) -> dict[str, Any]:
        return self._vm_status(self._require_vm(node, vmid))

    def _start(self, params: dict, user: str, node: str, vmid: str) -> str:
        vm = self._require_vm(node, vmid)
        if vm["template"]:
            raise ApiError(500, "you can't start a vm if it's a template")
        self._require_unlocked(vm)
        if vm["status"] == "running":
            raise ApiError(500, f"VM {vmid} already running")

        def finish() -> None:
            vm["status"] = "running"
            vm["started_at"] = time.monotonic()
            self._apply_cloud_init(vm)

        return self._new_task("qmstart", vmid, user, on_success=finish)

    def _stop(self, params: dict, user: str, node: str, vmid: str) -> str:
        vm = self._require_vm(node, vmid)
        self._require_unlocked(vm)

        def finish() -> None:
            vm["status"] = "stopped"
            vm["started_at"] = None

        return self._new_task("qmstop", vmid, user, on_success=finish)

    def _destroy(self, params: dict, user: str, node: str, vmid: str) -> str:
        vm = self._require_vm(node, vmid)
        if vm["status"] == "running":
            raise ApiError(500, f"VM {vmid} is running - destroy failed")
        self._require_unlocked(vm)
        vm["config"]["lock"] = "destroyed"

        def finish() -> None:
            self._vms.pop(int(vmid), None)

        def fail() -> None:
            vm["config"].pop("lock", None)

        return self._new_task("qmdestroy", vmid, user, on_success=finish, on_failure=fail)

    def _require_agent(self, vm: dict[str, Any], vmid: str) -> None:
        if vm["status"] != "running":
            raise ApiError(500, f"VM {vmid} is not running")
        if not _agent_enabled(vm["config"]):
            raise ApiError(500, "No QEMU guest agent configured")
        if time.monotonic() < vm["started_at"] + self.agent_delay:
            raise ApiError(500, "QEMU guest agent is not running")

    def _agent_interfaces(self, params: dict, user: str, node: str, vmid: str) -> dict[str, Any]:
        vm = self._require_vm(node, vmid)
        self._require_agent(vm, vmid)
        return {
            "result": [
                {
                    "name": "lo",
                    "hardware-address": "00:00:00:00:00:00",
                    "ip-addresses": [
                        {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
                        {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128},
                    ],
                },
                {
                    "name": "eth0",
                    "hardware-address": "bc:24:11:00:00:01",
                    "ip-addresses": [
                        {"ip-address-type": "ipv6", "ip-address": "fe80::be24:11ff:fe00:1", "prefix": 64},
                        {"ip-address-type": "ipv4", "ip-address": "169.254.10.20", "prefix": 16},
                        {"ip-address-type": "ipv4", "ip-address": self.ipv4, "prefix": 24},
                    ],
                },
            ]
        }

    def _agent_exec(self, params: dict, user: str, node: str, vmid: str) -> dict[str, int]:
        vm = self._require_vm(node, vmid)
        command = params.get("command") or []
        if not command:
            raise parameter_error({"command": "property is missing and it is not optional"})
        self._require_agent(vm, vmid)
        input_data = (params.get("input-data") or [""])[0]
        pid = next(self._pids)
        guest_command = GuestCommand(pid=pid, command=list(command), input_data=input_data, done_at=time.monotonic())
        if self._guest_failures:
            guest_command.exit_code, guest_command.err_data = self._guest_failures.pop(0)
        elif self.sshd is not None and not self.skip_host_key_install and "BEGIN OPENSSH PRIVATE KEY" in input_data and any(
            "ssh_host_ed25519_key" in part for part in command
        ):
            self.sshd.install_host_key(input_data)
        self._commands[pid] = guest_command
        self.guest_commands.append(guest_command)
        return {"pid": pid}

    def _agent_exec_status(self, params: dict, user: str, node: str, vmid: str) -> dict[str, Any]:
        vm = self._require_vm(node, vmid)
        self._require_agent(vm, vmid)
        pid = (params.get("pid") or [""])[0]
        command = self._commands.get(int(pid)) if pid.isdigit() else None
        if command is None:
            raise ApiError(500, f"Agent error: Invalid parameter 'pid': {pid}")
        if time.monotonic() < command.done_at:
            return {"exited": 0}
        result: dict[str, Any] = {"exited": 1, "exitcode": command.exit_code}
        if command.out_data:
            result["out-data"] = command.out_data
        if command.err_data:
            result["err-data"] = command.err_data
        return result

    def _task_status(self, params: dict, user: str, node: str, upid: str) -> dict[str, Any]:
        self._require_node(node)
        task = self._tasks.get(unquote(upid))
        if task is None:
            raise ApiError(500, f"unable to parse worker upid '{unquote(upid)}'")
        result = {
            "upid": task.upid,
            "node": task.node,
            "type": task.type,
            "id": task.resource,
            "user": task.user,
            "pid": int(task.upid.split(":")[2], 16),
            "starttime": int(task.upid.split(":")[4], 16),
            "status": "stopped" if task.finished else "running",
        }
        if task.finished:
            result["exitstatus"] = task.exitstatus
        return result

    def _apply_cloud_init(self, vm: dict[str, Any]) -> None:
        """Emulate cloud-init's first boot on the sshd peer: root's authorized keys from `sshkeys`."""
        if self.sshd is None or "sshkeys" not in vm["config"]:
            return
        keys = [line for line in unquote(vm["config"]["sshkeys"]).splitlines() if line.strip()]
        try:
            self.sshd.set_authorized_keys(keys)
        except Exception:
            logger.exception("Fake Proxmox VE API could not apply cloud-init to the sshd peer")


def _single_values(params: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[-1] for key, values in params.items() if values}


def _agent_enabled(config: dict[str, Any]) -> bool:
    return re.match(r"(?:enabled=)?1(?:,|$)", str(config.get("agent", "0"))) is not None


def _disk_bytes(value: str) -> float:
    match = DISK_SIZE_RE.search(value)
    if match is None:
        return 0.0
    return float(match[1]) * UNIT_BYTES[match[2] or ""]


def _error_response(error: ApiError) -> tuple[int, str, dict[str, Any]]:
    body: dict[str, Any] = {"data": None, "message": error.message + "\n"}
    if error.errors:
        body["errors"] = error.errors
    reason = error.message.splitlines()[0] if error.message else "error"
    return error.status, reason.encode("latin-1", errors="replace").decode("latin-1"), body


class _QuietThreadingHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that logs handler errors instead of printing them to stderr."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Fake Proxmox VE API: request from %s failed", client_address, exc_info=True)


def _make_handler(api: ProxmoxApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-pve-api"
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            result = api.handle(self.command, self.path, headers, raw_body)
            if result is None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            status, reason, payload = result
            data = json.dumps(payload).encode()
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            logger.debug("Fake Proxmox VE API: %s", format % args)

    return Handler


def main(argv: Iterable[str] | None = None) -> int:
    """Run the fake API in the foreground and write its URL to stdout."""
    parser = argparse.ArgumentParser(description="Serve a fake Proxmox VE API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="TCP port to listen on (0 picks a free port)")
    parser.add_argument("--node", default="pve", help="name of the node the fake serves")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a self-signed certificate")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with ProxmoxApiServer(node=args.node, port=args.port, tls=args.tls) as api:
        sys.stdout.write(f"{api.url} token {DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}\n")
        sys.stdout.flush()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            logger.info("Interrupted; stopping the fake Proxmox VE API")
    return 0


if __name__ == "__main__":
    sys.exit(main())
