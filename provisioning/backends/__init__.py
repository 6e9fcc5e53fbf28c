"""Cloud backends behind one interface; `get_backend` builds the one for a cloud account."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable

from django.conf import settings

from provisioning.backends.base import CloudBackend

# Hetzner and Proxmox clients per process, so a worker reuses its HTTP connections across tasks.
# The key contains the token's ciphertext and every connection setting, so a replaced token or a
# changed setting gets a new client.
_CLIENT_CACHE_SIZE = 64
_clients: OrderedDict[tuple, CloudBackend] = OrderedDict()
_clients_lock = threading.Lock()


def get_backend(account) -> CloudBackend:
    if account.backend == "sandbox":
        from provisioning.backends.sandbox import SandboxBackend

        return SandboxBackend(account=account)
    if account.backend == "hetzner":
        key = (
            "hetzner",
            account.pk,
            account.token_ciphertext,
            settings.HCLOUD_API_ENDPOINT,
            settings.PROVISIONING_SSH_PORT,
            settings.PROVISIONING_POLL_INTERVAL,
            settings.PROVISIONING_SSH_USERNAME,
        )
        return _cached(account, key, lambda: _hetzner_backend(account))
    if account.backend == "proxmox":
        key = (
            "proxmox",
            account.pk,
            account.token_ciphertext,
            account.proxmox_api_url,
            account.proxmox_token_id,
            account.proxmox_node,
            account.proxmox_verify_tls,
            account.proxmox_vmid_min,
            account.proxmox_vmid_max,
            json.dumps(account.proxmox_server_types, sort_keys=True),
            account.proxmox_ipconfig0,
            settings.PROVISIONING_SSH_PORT,
            settings.PROVISIONING_POLL_INTERVAL,
            settings.PROVISIONING_SSH_USERNAME,
            settings.PROXMOX_TASK_TIMEOUT,
        )
        return _cached(account, key, lambda: _proxmox_backend(account))
    if account.backend == "agent":
        from provisioning.backends.agent_pool import AgentPoolBackend

        return AgentPoolBackend(account=account)
    raise ValueError(f"Unknown cloud backend {account.backend!r} on cloud account {account.pk}.")


def _cached(account, key: tuple, build: Callable[[], CloudBackend]) -> CloudBackend:
    """Return the cached client for `key`, or build one; unsaved accounts are never cached."""
    if account.pk is None:
        return build()
    with _clients_lock:
        backend = _clients.get(key)
        if backend is not None:
            _clients.move_to_end(key)
            return backend
    backend = build()
    with _clients_lock:
        _clients[key] = backend
        while len(_clients) > _CLIENT_CACHE_SIZE:
            _clients.popitem(last=False)
    return backend


def _hetzner_backend(account) -> CloudBackend:
    from provisioning.backends.hetzner import HetznerBackend

    backend = HetznerBackend(
        token=account.get_token(),
        endpoint=settings.HCLOUD_API_ENDPOINT,
        ssh_port=settings.PROVISIONING_SSH_PORT,
        poll_interval=min(settings.PROVISIONING_POLL_INTERVAL, 1.0),
    )
    backend.ssh_username = settings.PROVISIONING_SSH_USERNAME
    return backend


def _proxmox_backend(account) -> CloudBackend:
    from provisioning.backends.proxmox import ProxmoxBackend

    backend = ProxmoxBackend(
        api_url=account.proxmox_api_url,
        token_id=account.proxmox_token_id,
        token_secret=account.get_token(),
        node=account.proxmox_node,
        verify_tls=account.proxmox_verify_tls,
        vmid_range=(account.proxmox_vmid_min, account.proxmox_vmid_max),
        server_types=account.proxmox_server_types,
        ipconfig0=account.proxmox_ipconfig0,
        ssh_port=settings.PROVISIONING_SSH_PORT,
        poll_interval=min(settings.PROVISIONING_POLL_INTERVAL, 1.0),
        task_timeout=settings.PROXMOX_TASK_TIMEOUT,
    )
    backend.ssh_username = settings.PROVISIONING_SSH_USERNAME
    return backend
