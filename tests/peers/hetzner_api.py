"""A fake Hetzner Cloud API v1 server on 127.0.0.1 for tests and local demos.

It implements the subset of the API that the `hcloud` 2.27 Python client calls for the catalog,
SSH keys, servers and actions, with bearer-token authentication, label selectors, pagination,
scripted faults and a request log. Error bodies have Hetzner's shape:
`{"error": {"code": ..., "message": ..., "details": ...}}`.

Servers do not run anything. A created server reports the configured IPv4 address (default
127.0.0.1) and turns from `initializing` to `running` after `boot_delay` seconds. If an `sshd`
peer is given, server creation emulates cloud-init on it: the public keys of the server's SSH key
objects become its authorized keys, and an `ed25519_private` host key from `#cloud-config` user
data becomes its host key.

With `per_server_addresses=True` every created server gets an address of its own from
127.0.0.2 upwards instead, and the cloud-init hooks receive it as `address=`, so a peer such as
`tests.peers.ssh_fleet.SshFleet` can keep each server's keys apart.

Run standalone with `python -m tests.peers.hetzner_api --port 0 --token tok`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import logging
import math
import random
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import yaml

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
DEFAULT_PER_PAGE = 25
# The real API caps per_page at 50, and hcloud's get_all() always requests 50 per page.
MAX_PER_PAGE = 50
USER_DATA_MAX_BYTES = 32 * 1024
VAT_RATE = Decimal("0.19")

# HTTP status the fake sends for each Hetzner error code.
# NOTE: these follow the error table of the Hetzner Cloud API docs but were not rechecked
# against its current version.
ERROR_STATUS = {
    "invalid_input": 400,
    "json_error": 400,
    "unsupported_error": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "resource_limit_exceeded": 403,
    "token_readonly": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "uniqueness_error": 409,
    "placement_error": 412,
    "locked": 423,
    "protected": 423,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "maintenance": 503,
    "resource_unavailable": 503,
    "service_error": 503,
    "unavailable": 503,
    "timeout": 504,
}

# Error code the fake uses for a fault that gives only an HTTP status.
DEFAULT_CODE_FOR_STATUS = {
    400: "invalid_input",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    412: "placement_error",
    422: "invalid_input",
    423: "locked",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}

LABEL_KEY_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
SSH_KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}


class SshdPeer(Protocol):
    """The SSH server that plays the booted VM (for example `tests.peers.sshd.LoopbackSshd`).

    With `per_server_addresses=True` the fake passes `address=` to both hooks, and calls
    `forget(address)`, when the peer has it, once the server is deleted.
    """

    def set_authorized_keys(self, lines: list[str]) -> None: ...

    def install_host_key(self, private_key_openssh: str) -> None: ...


class ApiError(Exception):
    """An error response in Hetzner's shape."""

    def __init__(self, code: str, message: str, *, status: int | None = None, details: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else ERROR_STATUS.get(code, 400)
        self.details = details


@dataclass
class Fault:
    """A scripted failure for requests whose method and path match.

    `path` is a regular expression matched in full against the path without the `/v1` prefix
    and without the query string, for example `/servers` or `/servers/\\d+`. `method` is an HTTP
    method or `*`. The fault applies to the next `times` matching requests (every matching
    request when `times` is None) and then expires.

    When `process` is true the request is handled normally first, so its changes take effect,
    and only the response is replaced (or dropped): a lost response after a successful create.
    `before` runs when the fault matches, before anything else, for example to create a
    conflicting server and emulate a race with another client.

    `response_delay` sleeps after the request was handled and before the response is sent,
    so the change has happened while the client still waits. `probability` makes the fault
    apply to only that share of matching requests, drawn from the server's seeded random
    generator. A request it skips does not count towards `times`.
    """

    method: str
    path: str
    status: int | None = None
    code: str | None = None
    message: str = ""
    details: Any = None
    retry_after: float | None = None
    delay: float = 0.0
    drop_connection: bool = False
    process: bool = False
    before: Callable[[], None] | None = None
    times: int | None = 1
    hits: int = 0
    response_delay: float = 0.0
    probability: float = 1.0

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method.upper() != method:
            return False
        return re.fullmatch(self.path, path) is not None


@dataclass
class RecordedRequest:
    """One request the fake received, with the response status it sent (None if it dropped the
    connection)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int | None = None
    fault: Fault | None = None
    received_at: float = field(default_factory=time.monotonic)


def _now_iso() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


def _money(value: Decimal) -> str:
    """Format a price the way the API does: a decimal string with 10 places."""
    return str(value.quantize(Decimal("0.0000000001"), rounding=ROUND_HALF_UP))


def _price_entry(location: str, monthly_net: str) -> dict[str, Any]:
    net = Decimal(monthly_net)
    gross = net * (1 + VAT_RATE)
    # Hetzner bills hourly up to the monthly cap, with about 730 hours in a month.
    hourly_net = (net / Decimal(730)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    hourly_gross = hourly_net * (1 + VAT_RATE)
    return {
        "location": location,
        "price_hourly": {"net": _money(hourly_net), "gross": _money(hourly_gross)},
        "price_monthly": {"net": _money(net), "gross": _money(gross)},
        "included_traffic": 21990232555520,
        "price_per_tb_traffic": {"net": "1.0000000000", "gross": "1.1900000000"},
    }


def ssh_key_fingerprint(public_key: str) -> str:
    """Return the MD5 fingerprint (colon-separated hex) that Hetzner shows for a public key.

    Raises `ValueError` for a line that is not `<type> <base64 blob> [comment]` with a known
    key type whose blob names the same type.
    """
    parts = public_key.strip().split()
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValueError("public key must be '<type> <base64> [comment]' with a known SSH key type")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise ValueError("public key data is not valid base64") from exc
    type_length = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + type_length].decode("ascii", "replace") != parts[0]:
        raise ValueError("public key data does not match its key type")
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def parse_label_selector(selector: str) -> list[Callable[[dict[str, str]], bool]]:
    """Parse a Hetzner label selector into predicates that must all hold.

    Supported terms, joined by commas: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)` and
    `k notin (a,b)`. Raises `ApiError(invalid_input)` for anything else.
    """
    terms: list[str] = []
    depth = 0
    current = ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)

    predicates: list[Callable[[dict[str, str]], bool]] = []
    for raw_term in terms:
        term = raw_term.strip()
        predicates.append(_parse_selector_term(term, selector))
    return predicates


def _parse_selector_term(term: str, selector: str) -> Callable[[dict[str, str]], bool]:
    invalid = ApiError(
        "invalid_input",
        f"invalid label_selector {selector!r}: cannot parse {term!r}",
        details={"fields": [{"name": "label_selector", "messages": ["invalid label selector"]}]},
    )
    set_match = re.fullmatch(r"([^\s!=,()]+)\s+(in|notin)\s+\(([^()]*)\)", term)
    if set_match:
        key, operator, raw_values = set_match.groups()
        values = {value.strip() for value in raw_values.split(",") if value.strip()}
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    comparison = re.fullmatch(r"([^\s!=,()]+)\s*(==|=|!=)\s*([^\s!=,()]*)", term)
    if comparison:
        key, operator, value = comparison.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if re.fullmatch(r"![^\s!=,()]+", term):
        key = term[1:]
        return lambda labels: key not in labels
    if re.fullmatch(r"[^\s!=,()]+", term):
        return lambda labels: term in labels
    raise invalid


def parse_cloud_config_host_key(user_data: str) -> tuple[str | None, list[str]]:
    """Return the ed25519 host private key and the authorized key lines in cloud-config.

    Only user data whose first line is `#cloud-config` counts. The shape read is::

        #cloud-config
        ssh_keys:
          ed25519_private: |
            -----BEGIN OPENSSH PRIVATE KEY-----
            ...
          ed25519_public: ssh-ed25519 AAAA...
        ssh_authorized_keys:
          - ssh-ed25519 AAAA... user@example

    Raises `ValueError` when cloud-config user data is not valid YAML.
    """
    if not user_data.startswith("#cloud-config"):
        return None, []
    try:
        document = yaml.safe_load(user_data)
    except yaml.YAMLError as exc:
        raise ValueError(f"cloud-config user data is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        return None, []
    host_key = None
    ssh_keys = document.get("ssh_keys")
    if isinstance(ssh_keys, dict) and isinstance(ssh_keys.get("ed25519_private"), str):
        host_key = ssh_keys["ed25519_private"]
    authorized = document.get("ssh_authorized_keys") or []
    authorized_lines = [line for line in authorized if isinstance(line, str)]
    return host_key, authorized_lines


def _catalog_locations() -> list[dict[str, Any]]:
    rows = [
        (
            1,
            "fsn1",
            "Falkenstein DC Park 1",
            "DE",
            "Falkenstein",
            50.47612,
            12.370071,
            "eu-central",
        ),
        (2, "nbg1", "Nuremberg DC Park 1", "DE", "Nuremberg", 49.452102, 11.076665, "eu-central"),
        (3, "hel1", "Helsinki DC Park 1", "FI", "Helsinki", 60.169855, 24.938379, "eu-central"),
        (4, "ash", "Ashburn, VA", "US", "Ashburn, VA", 39.045821, -77.487073, "us-east"),
    ]
    return [
        {
            "id": location_id,
            "name": name,
            "description": description,
            "country": country,
            "city": city,
            "latitude": latitude,
            "longitude": longitude,
            "network_zone": zone,
        }
        for location_id, name, description, country, city, latitude, longitude, zone in rows
    ]


def _catalog_server_types(locations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    deprecation = {
        "announced": "2024-06-06T00:00:00+00:00",
        "unavailable_after": "2024-09-06T00:00:00+00:00",
    }
    # name, id, description, cores, memory GB, disk GB, cpu_type, architecture,
    # monthly net price per location, deprecated
    rows = [
        (
            "cx22",
            104,
            "CX22",
            2,
            4.0,
            40,
            "shared",
            "x86",
            {"fsn1": "3.79", "nbg1": "3.79", "hel1": "3.79"},
            False,
        ),
        (
            "cx32",
            105,
            "CX32",
            4,
            8.0,
            80,
            "shared",
            "x86",
            {"fsn1": "6.80", "nbg1": "6.80", "hel1": "6.80"},
            False,
        ),
        (
            "cpx21",
            23,
            "CPX 21",
            3,
            4.0,
            80,
            "shared",
            "x86",
            {"fsn1": "7.55", "nbg1": "7.55", "hel1": "7.55", "ash": "8.99"},
            False,
        ),
        (
            "cax11",
            45,
            "CAX11",
            2,
            4.0,
            40,
            "shared",
            "arm",
            {"fsn1": "3.79", "nbg1": "3.79", "hel1": "3.79"},
            False,
        ),
        ("cx11", 1, "CX11", 1, 2.0, 20, "shared", "x86", {"fsn1": "3.29", "nbg1": "3.29"}, True),
    ]
    server_types = []
    for name, type_id, description, cores, memory, disk, cpu_type, arch, prices, deprecated in rows:
        server_types.append(
            {
                "id": type_id,
                "name": name,
                "description": description,
                "category": "cost_optimized" if arch == "arm" else "regular_purpose",
                "cores": cores,
                "memory": memory,
                "disk": disk,
                "deprecated": deprecated,
                "deprecation": deprecation if deprecated else None,
                "prices": [_price_entry(code, net) for code, net in prices.items()],
                "storage_type": "local",
                "cpu_type": cpu_type,
                "architecture": arch,
                "included_traffic": 21990232555520,
                "locations": [
                    {
                        "id": locations[code]["id"],
                        "name": code,
                        "deprecation": deprecation if deprecated else None,
                        "available": not deprecated,
                        "recommended": not deprecated,
                    }
                    for code in prices
                ],
            }
        )
    return server_types


def _catalog_images() -> list[dict[str, Any]]:
    rows = [
        (161547269, "ubuntu-24.04", "Ubuntu 24.04", "ubuntu", "24.04", "x86", False),
        (161547270, "ubuntu-24.04", "Ubuntu 24.04", "ubuntu", "24.04", "arm", False),
        (114690387, "debian-12", "Debian 12", "debian", "12", "x86", False),
        (114690389, "debian-12", "Debian 12", "debian", "12", "arm", False),
        (67794396, "ubuntu-20.04", "Ubuntu 20.04", "ubuntu", "20.04", "x86", True),
    ]
    return [
        {
            "id": image_id,
            "type": "system",
            "status": "available",
            "name": name,
            "description": description,
            "image_size": None,
            "disk_size": 5,
            "created": "2024-04-25T00:00:00+00:00",
            "created_from": None,
            "bound_to": None,
            "os_flavor": flavor,
            "os_version": version,
            "rapid_deploy": True,
            "protection": {"delete": False},
            "deprecated": "2025-05-02T00:00:00+00:00" if deprecated else None,
            "deprecation": (
                {
                    "announced": "2025-05-02T00:00:00+00:00",
                    "unavailable_after": "2025-08-02T00:00:00+00:00",
                }
                if deprecated
                else None
            ),
            "labels": {},
            "deleted": None,
            "architecture": arch,
        }
        for image_id, name, description, flavor, version, arch, deprecated in rows
    ]


def _query_value(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _query_bool(query: dict[str, list[str]], name: str) -> bool:
    value = _query_value(query, name)
    return value is not None and value.lower() in ("1", "true", "yes")


class HetznerApiServer:
    """A fake Hetzner Cloud API on 127.0.0.1, started by `start()` or by `with`.

    `url` is the API endpoint to give hcloud (`http://127.0.0.1:PORT/v1`). `tokens` is the set
    of accepted bearer tokens and may be changed while running, for example to revoke one.
    `servers` and `ssh_keys` return snapshots of the API objects by id, and `requests` is the
    log of every request received.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] = ("test-token",),
        sshd: SshdPeer | None = None,
        boot_delay: float = 0.2,
        ipv4: str = "127.0.0.1",
        port: int = 0,
        max_per_page: int = MAX_PER_PAGE,
        per_server_addresses: bool = False,
        fault_seed: int | None = None,
    ):
        self.tokens: set[str] = set(tokens)
        self._initial_tokens = frozenset(self.tokens)
        self.sshd = sshd
        self.boot_delay = boot_delay
        self.ipv4 = ipv4
        self.max_per_page = max_per_page
        self.requests: list[RecordedRequest] = []

        self._port = port
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1001)
        self.per_server_addresses = per_server_addresses
        # Addresses are never reused, even across reset(), so a late connection from an
        # earlier test cannot reach a newer server.
        self._address_numbers = itertools.count(2)
        self._server_addresses: dict[int, str] = {}
        self._random = random.Random(fault_seed)

        self._load_catalog()

        self._servers: dict[int, dict[str, Any]] = {}
        self._server_ready_at: dict[int, float] = {}
        self._ssh_keys: dict[int, dict[str, Any]] = {}
        self._actions: dict[int, dict[str, Any]] = {}
        self._action_done_at: dict[int, float] = {}

        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes = self._build_routes()

    def _load_catalog(self) -> None:
        locations = _catalog_locations()
        self._locations = {location["id"]: location for location in locations}
        by_code = {location["name"]: location for location in locations}
        self._server_types = {item["id"]: item for item in _catalog_server_types(by_code)}
        self._images = {item["id"]: item for item in _catalog_images()}
        self._datacenters = self._build_datacenters()

    # Lifecycle

    def start(self) -> HetznerApiServer:
        """Bind 127.0.0.1 and serve requests in a background thread."""
        handler = _make_handler(self)
        self._httpd = _QuietThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-hetzner-api",
            daemon=True,
        )
        self._thread.start()
        logger.info("Fake Hetzner API listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.info("Fake Hetzner API on %s stopped", self.url)
        self._httpd = None

    def __enter__(self) -> HetznerApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fake Hetzner API is not running; call start() first")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    # Test helpers

    @property
    def servers(self) -> dict[int, dict[str, Any]]:
        """Snapshot of the servers by id, with boot progress applied."""
        with self._lock:
            self._advance_clock()
            return {
                server_id: json.loads(json.dumps(server))
                for server_id, server in self._servers.items()
            }

    @property
    def ssh_keys(self) -> dict[int, dict[str, Any]]:
        """Snapshot of the SSH key objects by id."""
        with self._lock:
            return {key_id: dict(key) for key_id, key in self._ssh_keys.items()}

    def reset(self) -> None:
        """Forget servers, SSH keys, actions, faults and logged requests, and restore the
        tokens given to the constructor, so one running fake can serve many tests."""
        with self._lock:
            self.tokens.clear()
            self.tokens.update(self._initial_tokens)
            self.requests.clear()
            self._faults.clear()
            self._servers.clear()
            self._server_ready_at.clear()
            self._ssh_keys.clear()
            self._actions.clear()
            self._action_done_at.clear()
            for address in self._server_addresses.values():
                self._release_address(address)
            self._server_addresses.clear()
            self._load_catalog()

    def deprecate_server_type(self, name: str) -> None:
        """Deprecate the server type in every location, as Hetzner does before retiring one.

        Its prices then carry a deprecated location, so the backend leaves it out of the catalog.
        `reset()` restores it.
        """
        deprecation = {"announced": _now_iso(), "unavailable_after": _now_iso()}
        with self._lock:
            item = next(item for item in self._server_types.values() if item["name"] == name)
            item["deprecated"] = True
            item["deprecation"] = deprecation
            for entry in item["locations"]:
                entry["deprecation"] = deprecation
                entry["available"] = False

    def deprecate_image(self, name: str) -> None:
        """Deprecate every image with this name, so image lists without include_deprecated omit it.

        `reset()` restores it.
        """
        deprecation = {"announced": _now_iso(), "unavailable_after": _now_iso()}
        with self._lock:
            for item in self._images.values():
                if item["name"] == name:
                    item["deprecated"] = deprecation["announced"]
                    item["deprecation"] = deprecation

    def seed_faults(self, seed: int) -> None:
        """Restart the random generator that decides which faults with a `probability` apply."""
        with self._lock:
            self._random = random.Random(seed)

    def add_fault(
        self,
        method: str,
        path: str,
        *,
        status: int | None = None,
        code: str | None = None,
        message: str = "",
        details: Any = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        drop_connection: bool = False,
        process: bool = False,
        before: Callable[[], None] | None = None,
        times: int | None = 1,
        response_delay: float = 0.0,
        probability: float = 1.0,
    ) -> Fault:
        """Script a fault for matching requests; see `Fault` for the meaning of each field.

        With neither `status`, `code` nor `drop_connection`, the fault only delays the request
        (by `delay` seconds), which is then handled normally. `code` defaults from `status`
        (429 -> `rate_limit_exceeded`, 503 -> `unavailable`, ...) and `status` from `code`.
        """
        fault = Fault(
            method=method,
            path=path,
            status=status,
            code=code,
            message=message,
            details=details,
            retry_after=retry_after,
            delay=delay,
            drop_connection=drop_connection,
            process=process,
            before=before,
            times=times,
            response_delay=response_delay,
            probability=probability,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_matching(
        self, method: str, path: str, *, status: int | None = None
    ) -> list[RecordedRequest]:
        """Return the logged requests with this method, a path matching the `path` regex in
        full and, if given, this response status."""
        with self._lock:
            return [
                request
                for request in self.requests
                if request.method == method.upper()
                and re.fullmatch(path, request.path)
                and (status is None or request.status == status)
            ]

    def create_server_behind_back(
        self,
        *,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        server_type: str = "cx22",
        image: str = "ubuntu-24.04",
        location: str = "fsn1",
        status: str = "running",
    ) -> dict[str, Any]:
        """Create a server directly, as another client of the same project would.

        Sends no request, skips the sshd hooks and returns the server object.
        """
        with self._lock:
            server_id = next(self._ids)
            server_type_obj = self._find_server_type(server_type)
            image_obj = self._find_image(image, server_type_obj["architecture"])
            location_obj = self._find_location(location)
            server = self._server_object(
                server_id=server_id,
                name=name or f"foreign-{server_id}",
                status=status,
                server_type=server_type_obj,
                image=image_obj,
                location=location_obj,
                labels=dict(labels or {}),
            )
            self._servers[server_id] = server
            return json.loads(json.dumps(server))

    def delete_server_behind_back(self, server_id: int) -> None:
        """Delete a server directly, as another client of the same project would."""
        with self._lock:
            self._servers.pop(int(server_id), None)
            self._server_ready_at.pop(int(server_id), None)
            self._release_address(self._server_addresses.pop(int(server_id), None))

    def set_server_status(self, server_id: int, status: str) -> None:
        """Set a server's status directly (for example `off`) and stop its boot timer."""
        with self._lock:
            self._servers[int(server_id)]["status"] = status
            self._server_ready_at.pop(int(server_id), None)

    # Request handling

    def handle(
        self,
        method: str,
        raw_path: str,
        headers: dict[str, str],
        raw_body: bytes,
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]] | None:
        """Return `(status, JSON body or None, extra headers)`, or None to drop the connection."""
        split = urlsplit(raw_path)
        query = parse_qs(split.query, keep_blank_values=True)
        path = split.path
        if path.startswith(API_PREFIX + "/") or path == API_PREFIX:
            path = path[len(API_PREFIX) :] or "/"
        else:
            path = "/__outside_api_prefix__" + path
        path = path.rstrip("/") or "/"

        record = RecordedRequest(method=method, path=path, query=query, body=None)
        with self._lock:
            self.requests.append(record)

        try:
            record.body = json.loads(raw_body) if raw_body else None
        except ValueError:
            record.status = 400
            return 400, _error_body("json_error", "request body is not valid JSON"), {}

        fault = self._take_fault(method, path)
        record.fault = fault
        if fault is not None:
            result = self._apply_fault(fault, method, path, query, record.body, headers)
        else:
            result = self._dispatch(method, path, query, record.body, headers)
        record.status = None if result is None else result[0]
        return result

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.probability < 1.0 and self._random.random() >= fault.probability:
                        continue
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    def _apply_fault(
        self,
        fault: Fault,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]] | None:
        if fault.before is not None:
            fault.before()
        if fault.delay:
            time.sleep(fault.delay)
        is_failure = fault.drop_connection or fault.status is not None or fault.code is not None
        if fault.process or not is_failure:
            result = self._dispatch(method, path, query, body, headers)
            if fault.response_delay:
                time.sleep(fault.response_delay)
            if not is_failure:
                return result
        if fault.drop_connection:
            return None

        status = (
            fault.status if fault.status is not None else ERROR_STATUS.get(fault.code or "", 500)
        )
        code = fault.code or DEFAULT_CODE_FOR_STATUS.get(status, "server_error")
        message = fault.message or f"scripted fault: {code}"
        extra_headers = {}
        if fault.retry_after is not None:
            extra_headers["Retry-After"] = str(math.ceil(fault.retry_after))
        return status, _error_body(code, message, fault.details), extra_headers

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        authorization = headers.get("authorization", "")
        token = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        if token not in self.tokens:
            return 401, _error_body("unauthorized", "unable to authenticate"), {}

        allowed_methods = []
        for route_method, pattern, handler in self._routes:
            match = re.fullmatch(pattern, path)
            if match is None:
                continue
            if route_method != method:
                allowed_methods.append(route_method)
                continue
            try:
                with self._lock:
                    self._advance_clock()
                    status, payload = handler(query, body, *match.groups())
            except ApiError as error:
                return error.status, _error_body(error.code, error.message, error.details), {}
            return status, payload, {}
        if allowed_methods:
            return 405, _error_body("method_not_allowed", f"{method} is not allowed on {path}"), {}
        return 404, _error_body("not_found", f"no API endpoint {method} {path}"), {}

    def _build_routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Any]]]]:
        return [
            ("GET", r"/server_types", self._list_server_types),
            ("GET", r"/server_types/(\d+)", self._get_server_type),
            ("GET", r"/locations", self._list_locations),
            ("GET", r"/locations/(\d+)", self._get_location),
            ("GET", r"/datacenters", self._list_datacenters),
            ("GET", r"/images", self._list_images),
            ("GET", r"/images/(\d+)", self._get_image),
            ("GET", r"/ssh_keys", self._list_ssh_keys),
            ("POST", r"/ssh_keys", self._create_ssh_key),
            ("GET", r"/ssh_keys/(\d+)", self._get_ssh_key),
            ("PUT", r"/ssh_keys/(\d+)", self._update_ssh_key),
            ("DELETE", r"/ssh_keys/(\d+)", self._delete_ssh_key),
            ("GET", r"/servers", self._list_servers),
            ("POST", r"/servers", self._create_server),
            ("GET", r"/servers/(\d+)", self._get_server),
            ("DELETE", r"/servers/(\d+)", self._delete_server),
            ("GET", r"/servers/(\d+)/actions", self._list_server_actions),
            ("POST", r"/servers/(\d+)/actions/poweron", self._power_on_server),
            ("POST", r"/servers/(\d+)/actions/poweroff", self._power_off_server),
            ("GET", r"/actions/(\d+)", self._get_action),
        ]

    # Shared helpers

    def _next_address(self) -> str:
        """Return the next unused address in 127.0.0.0/8, skipping ones ending in .0 or .255."""
        while True:
            number = next(self._address_numbers)
            if number >= 2**24:
                raise ApiError("resource_unavailable", "the fake API ran out of loopback addresses")
            if number % 256 not in (0, 255):
                return f"127.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"

    def _release_address(self, address: str | None) -> None:
        forget = getattr(self.sshd, "forget", None)
        if address is None or forget is None:
            return
        try:
            forget(address)
        except Exception:
            logger.exception("Fake Hetzner API could not release address %s on the sshd peer", address)

    def _advance_clock(self) -> None:
        now = time.monotonic()
        for server_id, ready_at in list(self._server_ready_at.items()):
            if now >= ready_at:
                self._servers[server_id]["status"] = "running"
                del self._server_ready_at[server_id]
        for action_id, done_at in list(self._action_done_at.items()):
            if now >= done_at:
                self._actions[action_id].update(status="success", progress=100, finished=_now_iso())
                del self._action_done_at[action_id]

    def _paginate(
        self,
        query: dict[str, list[str]],
        key: str,
        items: list[dict[str, Any]],
    ) -> tuple[int, dict[str, Any]]:
        try:
            page = int(_query_value(query, "page") or 1)
            per_page = int(_query_value(query, "per_page") or DEFAULT_PER_PAGE)
        except ValueError as exc:
            raise ApiError("invalid_input", "page and per_page must be integers") from exc
        if page < 1 or per_page < 1:
            raise ApiError("invalid_input", "page and per_page must be at least 1")
        per_page = min(per_page, self.max_per_page)
        items = sorted(items, key=lambda item: item["id"])
        total = len(items)
        last_page = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        pagination = {
            "page": page,
            "per_page": per_page,
            "previous_page": page - 1 if page > 1 else None,
            "next_page": page + 1 if page < last_page else None,
            "last_page": last_page,
            "total_entries": total,
        }
        return 200, {key: json.loads(json.dumps(chunk)), "meta": {"pagination": pagination}}

    @staticmethod
    def _filter_by_selector(
        query: dict[str, list[str]],
        items: Iterable[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        selector = _query_value(query, "label_selector")
        if not selector:
            return list(items)
        predicates = parse_label_selector(selector)
        return [
            item for item in items if all(check(item.get("labels") or {}) for check in predicates)
        ]

    @staticmethod
    def _validate_labels(labels: Any) -> dict[str, str]:
        if labels is None:
            return {}
        if not isinstance(labels, dict):
            raise ApiError("invalid_input", "labels must be an object of string keys and values")
        for key, value in labels.items():
            if (
                not isinstance(value, str)
                or not LABEL_KEY_RE.match(key)
                or not LABEL_VALUE_RE.match(value)
            ):
                raise ApiError(
                    "invalid_input",
                    f"invalid label {key!r}={value!r}",
                    details={
                        "fields": [{"name": "labels", "messages": [f"invalid label {key!r}"]}]
                    },
                )
        return dict(labels)

    def _find_server_type(self, id_or_name: Any) -> dict[str, Any]:
        for item in self._server_types.values():
            if item["id"] == id_or_name or item["name"] == id_or_name:
                return item
        raise ApiError(
            "invalid_input",
            f"server type {id_or_name!r} not found",
            details={"fields": [{"name": "server_type", "messages": ["not found"]}]},
        )

    def _find_location(self, id_or_name: Any) -> dict[str, Any]:
        for item in self._locations.values():
            if item["id"] == id_or_name or item["name"] == id_or_name:
                return item
        raise ApiError(
            "invalid_input",
            f"location {id_or_name!r} not found",
            details={"fields": [{"name": "location", "messages": ["not found"]}]},
        )

    def _find_image(self, id_or_name: Any, architecture: str) -> dict[str, Any]:
        for item in self._images.values():
            named = item["id"] == id_or_name or item["name"] == id_or_name
            if named and item["architecture"] == architecture:
                return item
        raise ApiError(
            "invalid_input",
            f"image {id_or_name!r} not found for architecture {architecture}",
            details={"fields": [{"name": "image", "messages": ["not found"]}]},
        )

    def _find_ssh_key(self, id_or_name: Any) -> dict[str, Any]:
        for item in self._ssh_keys.values():
            if item["id"] == id_or_name or item["name"] == id_or_name:
                return item
        raise ApiError(
            "invalid_input",
            f"SSH key {id_or_name!r} not found",
            details={"fields": [{"name": "ssh_keys", "messages": ["not found"]}]},
        )

    def _new_action(self, command: str, resource_id: int, *, duration: float) -> dict[str, Any]:
        action_id = next(self._ids)
        action = {
            "id": action_id,
            "command": command,
            "status": "running",
            "progress": 0,
            "started": _now_iso(),
            "finished": None,
            "resources": [{"id": resource_id, "type": "server"}],
            "error": None,
        }
        self._actions[action_id] = action
        self._action_done_at[action_id] = time.monotonic() + duration
        return action

    def _build_datacenters(self) -> dict[int, dict[str, Any]]:
        names = {"fsn1": "fsn1-dc14", "nbg1": "nbg1-dc3", "hel1": "hel1-dc2", "ash": "ash-dc1"}
        datacenters = {}
        for location in self._locations.values():
            type_ids = [
                item["id"]
                for item in self._server_types.values()
                if any(price["location"] == location["name"] for price in item["prices"])
            ]
            datacenter_id = location["id"]
            datacenters[datacenter_id] = {
                "id": datacenter_id,
                "name": names[location["name"]],
                "description": f"{location['city']} DC",
                "location": location,
                "server_types": {
                    "supported": type_ids,
                    "available": type_ids,
                    "available_for_migration": type_ids,
                },
            }
        return datacenters

    def _server_object(
        self,
        *,
        server_id: int,
        name: str,
        status: str,
        server_type: dict[str, Any],
        image: dict[str, Any],
        location: dict[str, Any],
        labels: dict[str, str],
        ipv4: str | None = None,
    ) -> dict[str, Any]:
        datacenter = self._datacenters[location["id"]]
        return {
            "id": server_id,
            "name": name,
            "status": status,
            "created": _now_iso(),
            "public_net": {
                "ipv4": {
                    "id": server_id,
                    "ip": ipv4 or self.ipv4,
                    "blocked": False,
                    "dns_ptr": f"static.{server_id}.example",
                },
                "ipv6": {
                    "id": server_id + 1_000_000,
                    "ip": f"2001:db8:{server_id:x}::/64",
                    "blocked": False,
                    "dns_ptr": [],
                },
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "server_type": server_type,
            "datacenter": datacenter,
            "location": location,
            "image": image,
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": labels,
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": server_type["disk"],
            "placement_group": None,
        }

    # Catalog endpoints

    def _list_server_types(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        items = list(self._server_types.values())
        name = _query_value(query, "name")
        if name is not None:
            items = [item for item in items if item["name"] == name]
        return self._paginate(query, "server_types", items)

    def _get_server_type(
        self, query: dict[str, list[str]], body: Any, item_id: str
    ) -> tuple[int, Any]:
        item = self._server_types.get(int(item_id))
        if item is None:
            raise ApiError("not_found", f"server type with ID {item_id} not found")
        return 200, {"server_type": item}

    def _list_locations(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        items = list(self._locations.values())
        name = _query_value(query, "name")
        if name is not None:
            items = [item for item in items if item["name"] == name]
        return self._paginate(query, "locations", items)

    def _get_location(
        self, query: dict[str, list[str]], body: Any, item_id: str
    ) -> tuple[int, Any]:
        item = self._locations.get(int(item_id))
        if item is None:
            raise ApiError("not_found", f"location with ID {item_id} not found")
        return 200, {"location": item}

    def _list_datacenters(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        items = list(self._datacenters.values())
        name = _query_value(query, "name")
        if name is not None:
            items = [item for item in items if item["name"] == name]
        return self._paginate(query, "datacenters", items)

    def _list_images(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        items = list(self._images.values())
        name = _query_value(query, "name")
        if name is not None:
            items = [item for item in items if item["name"] == name]
        for field_name in ("type", "architecture", "status"):
            wanted = query.get(field_name)
            if wanted:
                items = [item for item in items if item[field_name] in wanted]
        if not _query_bool(query, "include_deprecated"):
            items = [item for item in items if item["deprecation"] is None]
        items = self._filter_by_selector(query, items)
        return self._paginate(query, "images", items)

    def _get_image(self, query: dict[str, list[str]], body: Any, item_id: str) -> tuple[int, Any]:
        item = self._images.get(int(item_id))
        if item is None:
            raise ApiError("not_found", f"image with ID {item_id} not found")
        return 200, {"image": item}

    # SSH key endpoints

    def _list_ssh_keys(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        items = list(self._ssh_keys.values())
        name = _query_value(query, "name")
        if name is not None:
            items = [item for item in items if item["name"] == name]
        fingerprint = _query_value(query, "fingerprint")
        if fingerprint is not None:
            items = [item for item in items if item["fingerprint"] == fingerprint]
        items = self._filter_by_selector(query, items)
        return self._paginate(query, "ssh_keys", items)

    def _create_ssh_key(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ApiError("invalid_input", "request body must be a JSON object")
        name = body.get("name")
        public_key = body.get("public_key")
        if not isinstance(name, str) or not name:
            raise ApiError(
                "invalid_input",
                "name is required",
                details={
                    "fields": [{"name": "name", "messages": ["Missing data for required field."]}]
                },
            )
        if not isinstance(public_key, str):
            raise ApiError(
                "invalid_input",
                "public_key is required",
                details={
                    "fields": [
                        {"name": "public_key", "messages": ["Missing data for required field."]}
                    ]
                },
            )
        try:
            fingerprint = ssh_key_fingerprint(public_key)
        except ValueError as exc:
            raise ApiError(
                "invalid_input",
                f"invalid public_key: {exc}",
                details={"fields": [{"name": "public_key", "messages": [str(exc)]}]},
            ) from exc
        labels = self._validate_labels(body.get("labels"))

        for existing in self._ssh_keys.values():
            if existing["name"] == name:
                raise ApiError(
                    "uniqueness_error",
                    "SSH key with the same name already exists",
                    details={"fields": [{"name": "name"}]},
                )
            if existing["fingerprint"] == fingerprint:
                raise ApiError(
                    "uniqueness_error",
                    "SSH key with the same fingerprint already exists",
                    details={"fields": [{"name": "public_key"}]},
                )

        key_id = next(self._ids)
        key = {
            "id": key_id,
            "name": name,
            "fingerprint": fingerprint,
            "public_key": public_key.strip(),
            "labels": labels,
            "created": _now_iso(),
        }
        self._ssh_keys[key_id] = key
        return 201, {"ssh_key": dict(key)}

    def _get_ssh_key(self, query: dict[str, list[str]], body: Any, key_id: str) -> tuple[int, Any]:
        key = self._ssh_keys.get(int(key_id))
        if key is None:
            raise ApiError("not_found", f"SSH key with ID {key_id} not found")
        return 200, {"ssh_key": dict(key)}

    def _update_ssh_key(
        self, query: dict[str, list[str]], body: Any, key_id: str
    ) -> tuple[int, Any]:
        key = self._ssh_keys.get(int(key_id))
        if key is None:
            raise ApiError("not_found", f"SSH key with ID {key_id} not found")
        body = body if isinstance(body, dict) else {}
        if "name" in body:
            if any(
                other["name"] == body["name"] and other is not key
                for other in self._ssh_keys.values()
            ):
                raise ApiError(
                    "uniqueness_error",
                    "SSH key with the same name already exists",
                    details={"fields": [{"name": "name"}]},
                )
            key["name"] = body["name"]
        if "labels" in body:
            key["labels"] = self._validate_labels(body["labels"])
        return 200, {"ssh_key": dict(key)}

    def _delete_ssh_key(
        self, query: dict[str, list[str]], body: Any, key_id: str
    ) -> tuple[int, Any]:
        if self._ssh_keys.pop(int(key_id), None) is None:
            raise ApiError("not_found", f"SSH key with ID {key_id} not found")
        return 204, None

    # Server endpoints

    def _list_servers(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        items = list(self._servers.values())
        name = _query_value(query, "name")
        if name is not None:
            items = [item for item in items if item["name"] == name]
        statuses = query.get("status")
        if statuses:
            items = [item for item in items if item["status"] in statuses]
        items = self._filter_by_selector(query, items)
        return self._paginate(query, "servers", items)

    def _create_server(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ApiError("invalid_input", "request body must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not HOSTNAME_RE.match(name):
            raise ApiError(
                "invalid_input",
                f"invalid server name {name!r}: must be a valid hostname (RFC 1123)",
                details={"fields": [{"name": "name", "messages": ["invalid hostname"]}]},
            )
        server_type = self._find_server_type(body.get("server_type"))
        image = self._find_image(body.get("image"), server_type["architecture"])
        priced_locations = [price["location"] for price in server_type["prices"]]
        if body.get("location") is not None:
            location = self._find_location(body["location"])
        else:
            location = self._find_location(priced_locations[0])
        if location["name"] not in priced_locations:
            raise ApiError(
                "invalid_input",
                f"server type {server_type['name']} is not available in location {location['name']}",
                details={"fields": [{"name": "server_type", "messages": ["unsupported location"]}]},
            )
        if any(
            entry["deprecation"] is not None
            for entry in server_type["locations"]
            if entry["name"] == location["name"]
        ):
            raise ApiError(
                "invalid_input",
                f"server type {server_type['name']} is deprecated in location {location['name']}",
            )
        labels = self._validate_labels(body.get("labels"))
        user_data = body.get("user_data") or ""
        if not isinstance(user_data, str) or len(user_data.encode()) > USER_DATA_MAX_BYTES:
            raise ApiError(
                "invalid_input",
                "user_data must be a string of at most 32 KiB",
                details={"fields": [{"name": "user_data", "messages": ["too long"]}]},
            )
        ssh_keys = [self._find_ssh_key(item) for item in body.get("ssh_keys") or []]
        if any(server["name"] == name for server in self._servers.values()):
            raise ApiError(
                "uniqueness_error",
                "server name is already used",
                details={"fields": [{"name": "name"}]},
            )

        address = self._next_address() if self.per_server_addresses else None
        self._apply_cloud_init(ssh_keys, user_data, address)

        server_id = next(self._ids)
        start_after_create = body.get("start_after_create", True) is not False
        server = self._server_object(
            server_id=server_id,
            name=name,
            status="initializing",
            server_type=server_type,
            image=image,
            location=location,
            labels=labels,
            ipv4=address,
        )
        self._servers[server_id] = server
        if address is not None:
            self._server_addresses[server_id] = address
        if start_after_create:
            self._server_ready_at[server_id] = time.monotonic() + self.boot_delay
        else:
            server["status"] = "off"
        create_action = self._new_action("create_server", server_id, duration=self.boot_delay)
        next_actions = (
            [self._new_action("start_server", server_id, duration=self.boot_delay)]
            if start_after_create
            else []
        )
        logger.info(
            "Fake Hetzner API created server %s (%s) with labels %s", server_id, name, labels
        )
        return 201, {
            "server": json.loads(json.dumps(server)),
            "action": dict(create_action),
            "next_actions": [dict(action) for action in next_actions],
            "root_password": None if ssh_keys else secrets.token_urlsafe(16),
        }

    def _apply_cloud_init(
        self, ssh_keys: list[dict[str, Any]], user_data: str, address: str | None = None
    ) -> None:
        try:
            host_key, extra_authorized = parse_cloud_config_host_key(user_data)
        except ValueError as exc:
            raise ApiError("invalid_input", str(exc)) from exc
        if self.sshd is None:
            return
        authorized = [key["public_key"] for key in ssh_keys] + extra_authorized
        # The single-address peer keeps its original hook signatures.
        where = {} if address is None else {"address": address}
        try:
            self.sshd.set_authorized_keys(authorized, **where)
            if host_key is not None:
                self.sshd.install_host_key(host_key, **where)
        except Exception as exc:
            logger.exception("Fake Hetzner API could not apply cloud-init to the sshd peer")
            raise ApiError("server_error", f"cloud-init emulation failed: {exc}") from exc

    def _get_server(
        self, query: dict[str, list[str]], body: Any, server_id: str
    ) -> tuple[int, Any]:
        server = self._servers.get(int(server_id))
        if server is None:
            raise ApiError("not_found", f"server with ID {server_id} not found")
        return 200, {"server": json.loads(json.dumps(server))}

    def _delete_server(
        self, query: dict[str, list[str]], body: Any, server_id: str
    ) -> tuple[int, Any]:
        if self._servers.pop(int(server_id), None) is None:
            raise ApiError("not_found", f"server with ID {server_id} not found")
        self._server_ready_at.pop(int(server_id), None)
        self._release_address(self._server_addresses.pop(int(server_id), None))
        action = self._new_action("delete_server", int(server_id), duration=0.0)
        return 200, {"action": dict(action)}

    def _power_on_server(
        self, query: dict[str, list[str]], body: Any, server_id: str
    ) -> tuple[int, Any]:
        """Start an `off` server; it reports `running` after `boot_delay`, as a created one does."""
        server = self._servers.get(int(server_id))
        if server is None:
            raise ApiError("not_found", f"server with ID {server_id} not found")
        if server["status"] == "off":
            server["status"] = "starting"
            self._server_ready_at[int(server_id)] = time.monotonic() + self.boot_delay
        action = self._new_action("start_server", int(server_id), duration=self.boot_delay)
        return 201, {"action": dict(action)}

    def _power_off_server(
        self, query: dict[str, list[str]], body: Any, server_id: str
    ) -> tuple[int, Any]:
        """Cut the power of a server at once, as Hetzner's `poweroff` action does."""
        server = self._servers.get(int(server_id))
        if server is None:
            raise ApiError("not_found", f"server with ID {server_id} not found")
        server["status"] = "off"
        self._server_ready_at.pop(int(server_id), None)
        action = self._new_action("stop_server", int(server_id), duration=0.0)
        return 201, {"action": dict(action)}

    def _list_server_actions(
        self, query: dict[str, list[str]], body: Any, server_id: str
    ) -> tuple[int, Any]:
        if int(server_id) not in self._servers:
            raise ApiError("not_found", f"server with ID {server_id} not found")
        items = [
            action
            for action in self._actions.values()
            if any(resource["id"] == int(server_id) for resource in action["resources"])
        ]
        return self._paginate(query, "actions", items)

    def _get_action(
        self, query: dict[str, list[str]], body: Any, action_id: str
    ) -> tuple[int, Any]:
        action = self._actions.get(int(action_id))
        if action is None:
            raise ApiError("not_found", f"action with ID {action_id} not found")
        return 200, {"action": dict(action)}


class _QuietThreadingHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that logs handler errors instead of printing them to stderr.

    Writing to a client that timed out or disconnected is an expected part of fault tests.
    """

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Fake Hetzner API: request from %s failed", client_address, exc_info=True)


def _error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details if details is not None else {},
        }
    }


def _make_handler(api: HetznerApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-hetzner-api"
        # Headers and body go out in two writes. With Nagle's algorithm the body waits for the
        # client's delayed ACK of the headers, which adds about 40 ms to every response.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            result = api.handle(self.command, self.path, headers, raw_body)
            if result is None:
                self._drop()
                return
            status, payload, extra_headers = result
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Correlation-Id", secrets.token_hex(8))
            for name, value in extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            if data:
                self.wfile.write(data)

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            logger.debug("Fake Hetzner API: %s", format % args)

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Run the fake API in the foreground and write its URL to stdout."""
    parser = argparse.ArgumentParser(description="Serve a fake Hetzner Cloud API on 127.0.0.1.")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port to listen on (0 picks a free port)"
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="accepted API token; repeat for several (default: test-token)",
    )
    parser.add_argument(
        "--boot-delay",
        type=float,
        default=0.2,
        help="seconds until a new server turns from initializing to running",
    )
    parser.add_argument(
        "--ipv4", default="127.0.0.1", help="public IPv4 address reported for every server"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    api = HetznerApiServer(
        tokens=args.token or ["test-token"],
        boot_delay=args.boot_delay,
        ipv4=args.ipv4,
        port=args.port,
    )
    with api:
        sys.stdout.write(api.url + "\n")
        sys.stdout.flush()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            logger.info("Interrupted; stopping the fake Hetzner API")
    return 0


if __name__ == "__main__":
    sys.exit(main())
