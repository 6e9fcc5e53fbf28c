"""The Hetzner Cloud backend, built on the official `hcloud` Python client (tested with 2.27).

Every object this backend creates carries the spec's labels. `create_server` first looks for a
server with those labels, so a retry after a crash or a lost response reuses the earlier server
instead of creating a second one.

hcloud's own retry loop is switched off. In hcloud 2.27 it retries rate limits, conflicts, 502,
504 and timeouts up to 5 times with up to 60 s of backoff. Here every failure surfaces at once as
a `CloudError`, and the caller's task decides when to retry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
from hcloud import APIException, Client
from hcloud.images import Image as HcloudImage
from hcloud.locations import Location as HcloudLocation
from hcloud.server_types import ServerType as HcloudServerType
from hcloud.servers import Server as HcloudServer
from hcloud.ssh_keys import SSHKey as HcloudSSHKey

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

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Hetzner error codes grouped by what the caller should do. `payment_required` and
# `server_limit_exceeded` may never be sent by the API, but would map sensibly if they were.
# `conflict` and `locked` mean another action on the same resource is still running.
CREDENTIAL_CODES = frozenset({"unauthorized", "forbidden", "token_readonly"})
REJECTED_CODES = frozenset(
    {
        "invalid_input",
        "json_error",
        "unsupported_error",
        "resource_limit_exceeded",
        "server_limit_exceeded",
        "placement_error",
        "payment_required",
        "protected",
        "uniqueness_error",
        "deprecated_api_endpoint",
        "method_not_allowed",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "rate_limit_exceeded",
        "conflict",
        "locked",
        "server_error",
        "service_error",
        "unavailable",
        "resource_unavailable",
        "maintenance",
        "timeout",
        "bad_gateway",
    }
)

# Operations where a 404 means the object is gone, reported as `ServerNotFound`.
GONE_ON_NOT_FOUND = frozenset(
    {"get_server", "start_server", "stop_server", "delete_server", "delete_server (delete SSH key)"}
)

# Characters that would change the meaning of a label selector built from a labels dict.
SELECTOR_SPECIAL_CHARACTERS = frozenset(",=!() ")


@dataclass(frozen=True)
class _ResponseSummary:
    """Status and headers of the last HTTP response, which `APIException` does not keep."""

    status_code: int
    headers: dict[str, str]


class HetznerBackend(CloudBackend):
    """A Hetzner Cloud project, reached with one API token.

    `endpoint` is the API base URL including `/v1` (in production
    `https://api.hetzner.cloud/v1`). `poll_interval` is hcloud's action polling interval in
    seconds, and `timeout` the per-request HTTP timeout in seconds.
    """

    def __init__(
        self,
        *,
        token: str,
        endpoint: str,
        ssh_port: int = 22,
        poll_interval: float = 1.0,
        timeout: float = 30.0,
    ):
        self.ssh_port = ssh_port
        self._token = token
        self._endpoint = endpoint
        self._last_response = threading.local()
        # hcloud's second endpoint serves only storage boxes and DNS zones, which this backend
        # never calls. Pointing it at `endpoint` keeps every request on the configured host.
        self._client = Client(
            token=token,
            api_endpoint=endpoint,
            api_endpoint_hetzner=endpoint,
            application_name="cloudmarket",
            poll_interval=poll_interval,
            timeout=timeout,
        )
        self._configure_http_client()

    def __repr__(self) -> str:
        return f"HetznerBackend(endpoint={self._endpoint!r})"

    def _configure_http_client(self) -> None:
        # NOTE: hcloud 2.27 has no public switch for its retry loop or for response headers,
        # so this sets private attributes of its ClientBase. Check them when upgrading hcloud.
        base = self._client._client
        if hasattr(base, "_retry_max_retries"):
            base._retry_max_retries = 0
        else:
            logger.warning("hcloud has no _retry_max_retries attribute; its own retries stay on")
        session = getattr(base, "_session", None)
        if isinstance(session, requests.Session):
            session.hooks["response"].append(self._remember_response)
        else:
            logger.warning("hcloud has no requests session; Retry-After headers are not read")

    def _remember_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last_response.value = _ResponseSummary(
            status_code=response.status_code, headers=dict(response.headers)
        )

    # Catalog

    def validate_credentials(self) -> None:
        """Raise `CredentialsInvalid` unless the token is accepted, with one cheap request."""
        self._call(
            "validate_credentials", "the API token", self._client.locations.get_list, per_page=1
        )

    def list_server_types(self) -> list[ServerType]:
        """Return the server types with their monthly gross prices per location.

        Locations where Hetzner has deprecated a type are left out of its prices, and a type
        deprecated everywhere is left out.
        """
        items = self._call("list_server_types", "the catalog", self._client.server_types.get_all)
        result = []
        for item in items:
            server_type = _to_server_type(item)
            if server_type.monthly_price_cents:
                result.append(server_type)
        return result

    def list_locations(self) -> list[Location]:
        items = self._call("list_locations", "the catalog", self._client.locations.get_all)
        return [
            Location(
                code=item.name,
                city=item.city or "",
                country=item.country or "",
                description=item.description or "",
            )
            for item in items
        ]

    def list_images(self) -> list[Image]:
        """Return the system images (one entry per name and architecture), without deprecated ones."""
        items = self._call(
            "list_images", "the catalog", self._client.images.get_all, type=["system"]
        )
        return [
            Image(
                name=item.name,
                description=item.description or item.name,
                architecture=item.architecture or "x86",
            )
            for item in items
            if item.name
        ]

    # Servers

    def create_server(self, spec: ServerSpec) -> ServerInfo:
        """Create the server with its SSH keys, or return the one that carries `spec.labels`.

        Returns at once, usually with status `initializing`; poll `get_server` until it runs.
        Raises `ValueError` when `spec.labels` is empty, because then a retry could not find
        the server and would create a second one.
        """
        if not spec.labels:
            raise ValueError(
                f"ServerSpec for {spec.name!r} has no labels; create_server needs them"
            )
        subject = _describe_server(spec.name, spec.labels)

        existing = self.find_servers(spec.labels)
        if existing:
            return self._reuse_server(existing, subject, reason="already exists")

        logger.info(
            "Creating Hetzner %s (type %s, image %s, location %s)",
            subject,
            spec.server_type,
            spec.image,
            spec.location,
        )
        ssh_keys = self._ensure_ssh_keys(spec)
        try:
            with self._translated("create_server", subject):
                response = self._client.servers.create(
                    name=spec.name,
                    server_type=HcloudServerType(name=spec.server_type),
                    image=HcloudImage(name=spec.image),
                    location=HcloudLocation(name=spec.location),
                    ssh_keys=ssh_keys,
                    labels=dict(spec.labels),
                    user_data=spec.user_data or None,
                )
        except RequestRejected as error:
            if error.code != "uniqueness_error":
                raise
            # Another worker may have created the server between the lookup and this create.
            racing = self.find_servers(spec.labels)
            if racing:
                return self._reuse_server(racing, subject, reason="was created concurrently")
            raise RequestRejected(
                f"Hetzner create_server failed for {subject}: the name {spec.name!r} is "
                "already used by a server without these labels; pick another name or "
                "delete that server",
                status_code=error.status_code,
                code=error.code,
            ) from error

        server = _to_server_info(response.server)
        logger.info("Created Hetzner %s as id %s (status %s)", subject, server.id, server.status)
        return server

    def get_server(self, server_id: str) -> ServerInfo:
        numeric_id = self._require_server_id(server_id)
        item = self._call(
            "get_server", f"server {server_id}", self._client.servers.get_by_id, numeric_id
        )
        return _to_server_info(item)

    def find_servers(self, labels: dict[str, str]) -> list[ServerInfo]:
        """Return every server carrying all of `labels` (all servers if `labels` is empty), by id."""
        selector = _label_selector(labels)
        items = self._call(
            "find_servers",
            f"servers with labels {_format_labels(labels)}",
            self._client.servers.get_all,
            label_selector=selector or None,
        )
        return sorted((_to_server_info(item) for item in items), key=lambda server: int(server.id))

    def start_server(self, server_id: str) -> None:
        numeric_id = self._require_server_id(server_id)
        self._call("start_server", f"server {server_id}", self._client.servers.power_on, HcloudServer(id=numeric_id))
        logger.info("Powered on Hetzner server %s", server_id)

    def stop_server(self, server_id: str) -> None:
        numeric_id = self._require_server_id(server_id)
        self._call("stop_server", f"server {server_id}", self._client.servers.power_off, HcloudServer(id=numeric_id))
        logger.info("Powered off Hetzner server %s", server_id)

    def _require_server_id(self, server_id: str) -> int:
        numeric_id = _parse_server_id(server_id)
        if numeric_id is None:
            raise ServerNotFound(f"Hetzner server id {server_id!r} is not a number", code="not_found")
        return numeric_id

    def delete_server(self, server_id: str, *, labels: dict[str, str] | None = None) -> None:
        """Delete the server, then the SSH key objects that carry `labels`.

        A server or key that is already gone is not an error. An empty `server_id` skips the
        server and only deletes the keys.
        """
        subject = f"server {server_id or '(none)'} with labels {_format_labels(labels or {})}"
        if server_id:
            self._delete_server_object(server_id, subject)
        if labels:
            self._delete_ssh_keys(labels, subject)

    # Helpers

    def _reuse_server(self, servers: list[ServerInfo], subject: str, *, reason: str) -> ServerInfo:
        server = servers[0]
        if len(servers) > 1:
            logger.warning(
                "Found %d Hetzner servers for %s (ids %s); reusing the oldest, id %s",
                len(servers),
                subject,
                ", ".join(item.id for item in servers),
                server.id,
            )
        logger.info("Reusing Hetzner server id %s for %s: it %s", server.id, subject, reason)
        return server

    def _ensure_ssh_keys(self, spec: ServerSpec) -> list[HcloudSSHKey]:
        """Create one SSH key object per distinct public key, or reuse existing ones.

        A key is reused when an earlier attempt created it under the same labels, or when the
        project already contains a key with the same fingerprint (Hetzner allows each public key
        only once per project).
        """
        subject = _describe_server(spec.name, spec.labels)
        key_lines = _distinct_key_lines(spec.ssh_public_keys)
        if not key_lines:
            return []
        earlier = self._call(
            "create_server (list SSH keys)",
            subject,
            self._client.ssh_keys.get_all,
            label_selector=_label_selector(spec.labels),
        )
        by_fingerprint = {key.fingerprint: key for key in earlier}

        keys = []
        for index, line in enumerate(key_lines):
            fingerprint = _md5_fingerprint(line)
            if fingerprint is not None and fingerprint in by_fingerprint:
                keys.append(by_fingerprint[fingerprint])
                continue
            keys.append(self._create_ssh_key(f"{spec.name}-k{index}", line, fingerprint, spec))
        return keys

    def _create_ssh_key(
        self, name: str, line: str, fingerprint: str | None, spec: ServerSpec
    ) -> HcloudSSHKey:
        subject = f"SSH key {name!r} of {_describe_server(spec.name, spec.labels)}"
        with self._translated("create_server (create SSH key)", subject):
            try:
                key = self._client.ssh_keys.create(
                    name=name, public_key=line, labels=dict(spec.labels)
                )
                logger.info("Created Hetzner %s as id %s", subject, key.id)
                return key
            except APIException as exc:
                if exc.code != "uniqueness_error":
                    raise
            if fingerprint is not None:
                same_key = self._client.ssh_keys.get_by_fingerprint(fingerprint)
                if same_key is not None:
                    logger.info(
                        "Reusing Hetzner SSH key id %s (%r) with the same fingerprint for %s",
                        same_key.id,
                        same_key.name,
                        subject,
                    )
                    return same_key
            same_name = self._client.ssh_keys.get_by_name(name)
            if same_name is None:
                raise TransientCloudError(
                    f"Hetzner create_server failed for {subject}: the key name or fingerprint "
                    "was reported as taken but no such key exists (deleted concurrently?)",
                    code="uniqueness_error",
                )
            if not _has_labels(same_name.labels or {}, spec.labels):
                raise RequestRejected(
                    f"Hetzner create_server failed for {subject}: the name is used by another "
                    f"SSH key (id {same_name.id}) without these labels; delete or rename it",
                    code="uniqueness_error",
                )
            # A key an earlier attempt created under this name, with a different public key.
            logger.info("Replacing stale Hetzner SSH key id %s for %s", same_name.id, subject)
            self._client.ssh_keys.delete(same_name)
            key = self._client.ssh_keys.create(name=name, public_key=line, labels=dict(spec.labels))
            logger.info("Created Hetzner %s as id %s", subject, key.id)
            return key

    def _delete_server_object(self, server_id: str, subject: str) -> None:
        numeric_id = _parse_server_id(server_id)
        if numeric_id is None:
            logger.warning("Not deleting Hetzner %s: the id is not a number", subject)
            return
        try:
            self._call(
                "delete_server", subject, self._client.servers.delete, HcloudServer(id=numeric_id)
            )
        except ServerNotFound:
            logger.info("Hetzner %s is already deleted", subject)
            return
        logger.info("Deleted Hetzner %s", subject)

    def _delete_ssh_keys(self, labels: dict[str, str], subject: str) -> None:
        keys = self._call(
            "delete_server (list SSH keys)",
            subject,
            self._client.ssh_keys.get_all,
            label_selector=_label_selector(labels),
        )
        for key in keys:
            try:
                self._call(
                    "delete_server (delete SSH key)", subject, self._client.ssh_keys.delete, key
                )
            except ServerNotFound:
                logger.info("Hetzner SSH key id %s of %s is already deleted", key.id, subject)
                continue
            logger.info("Deleted Hetzner SSH key id %s (%r) of %s", key.id, key.name, subject)

    def _call(
        self, operation: str, subject: str, func: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        with self._translated(operation, subject):
            return func(*args, **kwargs)

    @contextmanager
    def _translated(self, operation: str, subject: str) -> Iterator[None]:
        """Turn hcloud and requests exceptions raised inside into `CloudError` subclasses."""
        self._last_response.value = None
        try:
            yield
        except APIException as exc:
            raise self._api_error(exc, operation, subject) from exc
        except requests.RequestException as exc:
            raise self._transport_error(exc, operation, subject) from exc

    def _api_error(self, exc: APIException, operation: str, subject: str) -> CloudError:
        response: _ResponseSummary | None = getattr(self._last_response, "value", None)
        code = exc.code if isinstance(exc.code, str) else ""
        status = None
        if response is not None and response.status_code >= 400:
            status = response.status_code
        if status is None and isinstance(exc.code, int):
            status = exc.code
        message = self._scrub(
            f"Hetzner {operation} failed for {subject}: {exc.message} "
            f"(code {code or 'none'}, HTTP {status or 'unknown'})"
        )
        expected_gone = operation in GONE_ON_NOT_FOUND and (code == "not_found" or status == 404)
        logger.log(
            logging.INFO if expected_gone else logging.WARNING,
            "Hetzner %s failed for %s: code %s, HTTP %s, correlation id %s",
            operation,
            subject,
            code or "none",
            status or "unknown",
            exc.correlation_id,
        )
        kwargs = {"status_code": status, "code": code}

        if code == "not_found" or status == 404:
            if operation in GONE_ON_NOT_FOUND:
                return ServerNotFound(message, **kwargs)
            return RequestRejected(message, **kwargs)
        if code == "rate_limit_exceeded" or status == 429:
            retry_after = _retry_after_seconds(response.headers if response else {})
            return TransientCloudError(message, retry_after=retry_after, **kwargs)
        if code in REJECTED_CODES:
            return RequestRejected(message, **kwargs)
        if code in CREDENTIAL_CODES or status in (401, 403):
            return CredentialsInvalid(message, **kwargs)
        if code in TRANSIENT_CODES or (status is not None and status >= 500):
            return TransientCloudError(message, **kwargs)
        if status is not None and 400 <= status < 500:
            return RequestRejected(message, **kwargs)
        return CloudError(message, **kwargs)

    def _transport_error(
        self, exc: requests.RequestException, operation: str, subject: str
    ) -> CloudError:
        if isinstance(exc, requests.Timeout):
            reason = "the request timed out"
        elif isinstance(exc, requests.ConnectionError):
            reason = "the connection failed or was closed without a response"
        elif isinstance(
            exc,
            (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError),
        ):
            reason = "the response was cut off"
        else:
            message = self._scrub(
                f"Hetzner {operation} failed for {subject}: invalid request: {exc}"
            )
            logger.warning("Hetzner %s failed for %s: %s", operation, subject, type(exc).__name__)
            return CloudError(message)
        message = self._scrub(
            f"Hetzner {operation} failed for {subject}: {reason} ({type(exc).__name__})"
        )
        logger.warning(
            "Hetzner %s failed for %s: %s (%s)", operation, subject, reason, type(exc).__name__
        )
        return TransientCloudError(message)

    def _scrub(self, text: str) -> str:
        if self._token:
            return text.replace(self._token, "[token]")
        return text


def _to_server_info(item: Any) -> ServerInfo:
    ipv4 = None
    if item.public_net is not None and item.public_net.ipv4 is not None:
        ipv4 = item.public_net.ipv4.ip
    return ServerInfo(
        id=str(item.id),
        name=item.name,
        status=item.status or "unknown",
        ipv4=ipv4,
        labels=dict(item.labels or {}),
    )


def _to_server_type(item: Any) -> ServerType:
    deprecated_locations = {
        entry.location.name for entry in item.locations or [] if entry.deprecation is not None
    }
    prices = {}
    for price in item.prices or []:
        if price["location"] in deprecated_locations:
            continue
        gross = Decimal(price["price_monthly"]["gross"])
        prices[price["location"]] = int((gross * 100).to_integral_value(rounding=ROUND_HALF_UP))
    memory_mib = (Decimal(str(item.memory)) * 1024).to_integral_value(rounding=ROUND_HALF_UP)
    return ServerType(
        name=item.name,
        description=item.description or item.name,
        vcpu=int(item.cores),
        memory_mib=int(memory_mib),
        disk_gb=int(item.disk),
        architecture=item.architecture or "x86",
        monthly_price_cents=prices,
        currency="EUR",
    )


def _parse_server_id(server_id: str) -> int | None:
    text = str(server_id).strip()
    return int(text) if text.isdigit() else None


def _label_selector(labels: dict[str, str]) -> str:
    """Return a selector matching all of `labels`, such as `contract=42,platform=cloudmarket`."""
    for key, value in labels.items():
        if SELECTOR_SPECIAL_CHARACTERS & set(key + value) or not key:
            raise ValueError(f"label {key!r}={value!r} cannot be used in a Hetzner label selector")
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _format_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "(none)"


def _describe_server(name: str, labels: dict[str, str]) -> str:
    return f"server {name!r} (labels {_format_labels(labels)})"


def _has_labels(actual: dict[str, str], expected: dict[str, str]) -> bool:
    return all(actual.get(key) == value for key, value in expected.items())


def _md5_fingerprint(public_key: str) -> str | None:
    """Return the MD5 fingerprint Hetzner shows for an OpenSSH public key line, or None if the
    line is malformed (the API then rejects it with a clear message)."""
    parts = public_key.split()
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _distinct_key_lines(lines: tuple[str, ...]) -> list[str]:
    """Return the non-blank key lines, dropping repeats of the same key (same base64 blob)."""
    seen = set()
    result = []
    for raw_line in lines:
        line = raw_line.strip()
        if not line:
            continue
        identity = _md5_fingerprint(line) or line
        if identity in seen:
            continue
        seen.add(identity)
        result.append(line)
    return result


def _retry_after_seconds(headers: dict[str, str]) -> float | None:
    """Parse a Retry-After header given in seconds or as an HTTP date."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(Decimal(value.strip())))
    except InvalidOperation:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
