"""The interface every cloud backend implements, and the errors it raises.

A backend turns a `ServerSpec` into a running VM with a reachable address and root SSH access.
Every object a backend creates carries the labels of the spec, so a retry after a crash finds
and reuses what an earlier attempt created instead of creating a second server.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


class CloudError(Exception):
    """A cloud API call failed; the subclass tells whether and how to retry."""

    retryable = False

    def __init__(self, message: str, *, status_code: int | None = None, code: str = ""):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class CredentialsInvalid(CloudError):
    """The API token is missing, wrong or revoked (HTTP 401/403)."""


class RequestRejected(CloudError):
    """The cloud refused the request for good: payment required, quota, invalid parameters."""


class TransientCloudError(CloudError):
    """Rate limit, 5xx, timeout or dropped connection; the same call may succeed later."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerNotFound(CloudError):
    """The server id does not exist (any more)."""


@dataclass(frozen=True)
class ServerType:
    """A machine size the cloud sells, with specs in fixed units."""

    name: str
    description: str
    vcpu: int
    memory_mib: int
    disk_gb: int
    architecture: str = "x86"
    # Monthly price per location code, in cents of `currency`.
    monthly_price_cents: dict[str, int] = field(default_factory=dict)
    currency: str = "EUR"


@dataclass(frozen=True)
class Location:
    """A data centre location with its backend code (for example `fsn1`)."""

    code: str
    city: str
    country: str
    description: str = ""


@dataclass(frozen=True)
class Image:
    """An operating system image a server can boot from (for example `ubuntu-24.04`)."""

    name: str
    description: str
    architecture: str = "x86"


@dataclass(frozen=True)
class ServerSpec:
    """Everything needed to create one server.

    `labels` identify the server across retries, so they must be the same on every attempt
    for the same contract. `ssh_public_keys` are OpenSSH public key lines authorised for root.
    `user_data` is cloud-init user data (for example the host key the platform generated).
    """

    name: str
    server_type: str
    image: str
    location: str
    labels: dict[str, str]
    ssh_public_keys: tuple[str, ...] = ()
    user_data: str = ""


@dataclass(frozen=True)
class ServerInfo:
    """A server as the cloud reports it."""

    id: str
    name: str
    status: str  # "initializing", "starting", "running", "stopping", "off", "deleting", "unknown"
    ipv4: str | None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def is_running(self) -> bool:
        return self.status == "running" and bool(self.ipv4)


class CloudBackend(abc.ABC):
    """A cloud provider API, bound to one account's credentials."""

    #: Whether recipes really run on the servers this backend creates. The Sandbox backend
    #: creates no machine, so the pipeline records a simulated recipe log instead.
    executes_recipes: bool = True

    #: TCP port of the SSH server on created machines.
    ssh_port: int = 22

    #: Login user for recipe execution.
    ssh_username: str = "root"

    #: Offering specs ("vcpu", "memory_mib", "disk_gb") that may differ from the server type's.
    #: Real clouds create servers of exactly the server type's size, so none by default.
    editable_spec_fields: frozenset[str] = frozenset()

    @abc.abstractmethod
    def validate_credentials(self) -> None:
        """Raise `CredentialsInvalid` unless the token is accepted."""

    @abc.abstractmethod
    def list_server_types(self) -> list[ServerType]: ...

    @abc.abstractmethod
    def list_locations(self) -> list[Location]: ...

    @abc.abstractmethod
    def list_images(self) -> list[Image]: ...

    @abc.abstractmethod
    def create_server(self, spec: ServerSpec) -> ServerInfo:
        """Create a server, or return the one that already carries `spec.labels`.

        Idempotent: calling it twice with the same labels leaves exactly one server. SSH key
        objects the cloud needs are created (or reused) under the same labels.
        """

    @abc.abstractmethod
    def get_server(self, server_id: str) -> ServerInfo:
        """Return the server, or raise `ServerNotFound`."""

    @abc.abstractmethod
    def find_servers(self, labels: dict[str, str]) -> list[ServerInfo]:
        """Return every server carrying all of `labels`."""

    def prepare_for_ssh(self, *, server: ServerInfo, spec: ServerSpec) -> bool:
        """Finish setting up a running server before the platform connects over SSH.

        Returns True when done, or False to be called again after the next `get_server` poll.
        Backends whose cloud-init applies `spec.user_data` have nothing to do here. The Proxmox
        backend installs the host key through the guest agent, because its API cannot pass
        user data.
        """
        return True

    @abc.abstractmethod
    def start_server(self, server_id: str) -> None:
        """Power on a stopped server; poll `get_server` until it runs. Starting a running one does nothing.

        Raises `ServerNotFound` when the server does not exist.
        """

    @abc.abstractmethod
    def stop_server(self, server_id: str) -> None:
        """Power off the server, as pulling the plug does; stopping a stopped one does nothing.

        Raises `ServerNotFound` when the server does not exist.
        """

    @abc.abstractmethod
    def delete_server(self, server_id: str, *, labels: dict[str, str] | None = None) -> None:
        """Delete the server and the objects created for it under `labels`.

        Deleting a server that no longer exists is not an error.
        """
