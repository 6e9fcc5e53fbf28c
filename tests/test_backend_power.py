"""Stopping and starting servers through every backend, against the fake Hetzner and Proxmox VE APIs and the Sandbox."""

from __future__ import annotations

import time

import pytest

from provisioning.backends.base import ServerNotFound
from provisioning.backends.hetzner import HetznerBackend
from provisioning.backends.sandbox import SandboxBackend
from tests.factories import make_cloud_account, make_user
from tests.peers.hetzner_api import HetznerApiServer
from tests.test_hetzner_backend import TOKEN, RecordingSshd
from tests.test_hetzner_backend import make_spec as make_hetzner_spec
from tests.test_proxmox_backend import make_backend as make_proxmox_backend
from tests.test_proxmox_backend import make_spec as make_proxmox_spec
from tests.test_proxmox_backend import wait_until_ready


def wait_for_status(backend, server_id: str, status: str, *, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        current = backend.get_server(server_id).status
        if current == status or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


@pytest.fixture
def hetzner_backend():
    with HetznerApiServer(tokens={TOKEN}, sshd=RecordingSshd(), boot_delay=0.2) as server:
        yield server, HetznerBackend(token=TOKEN, endpoint=server.url, poll_interval=0.05, timeout=2.0)


def test_hetzner_stop_and_start(hetzner_backend):
    api, backend = hetzner_backend
    server = backend.create_server(make_hetzner_spec(7))
    assert wait_for_status(backend, server.id, "running") == "running"

    backend.stop_server(server.id)
    stopped = wait_for_status(backend, server.id, "off")
    backend.start_server(server.id)
    started = wait_for_status(backend, server.id, "running")

    assert stopped == "off"
    assert started == "running"
    commands = [action["command"] for action in api._actions.values()]
    assert "stop_server" in commands
    assert commands.count("start_server") == 2


def test_hetzner_stop_missing_server(hetzner_backend):
    _api, backend = hetzner_backend

    with pytest.raises(ServerNotFound):
        backend.stop_server("999999")


def test_proxmox_stop_and_start(proxmox_api):
    backend = make_proxmox_backend(proxmox_api)
    spec = make_proxmox_spec(51)
    server = backend.create_server(spec)
    wait_until_ready(backend, server.id, spec)

    backend.stop_server(server.id)
    stopped = backend.get_server(server.id).status
    backend.stop_server(server.id)
    backend.start_server(server.id)
    started = wait_until_ready(backend, server.id, spec)

    assert stopped == "off"
    assert started.status == "running"
    backend.delete_server(server.id, labels=spec.labels)


@pytest.mark.django_db
def test_sandbox_stop_and_start():
    account = make_cloud_account(owner=make_user())
    backend = SandboxBackend(account=account, boot_seconds=0.0)
    server = backend.create_server(make_hetzner_spec(3))

    backend.stop_server(server.id)
    stopped = backend.get_server(server.id).status
    backend.start_server(server.id)
    started = backend.get_server(server.id).status

    assert stopped == "off"
    assert started == "running"
    with pytest.raises(ServerNotFound):
        backend.stop_server("424242")
