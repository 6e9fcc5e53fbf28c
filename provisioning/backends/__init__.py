"""Cloud backends behind one interface; `get_backend` builds the one for a cloud account."""

from __future__ import annotations

import threading
from collections import OrderedDict

from django.conf import settings

from provisioning.backends.base import CloudBackend

# Hetzner clients per process, so a worker reuses its HTTP connections across tasks. The key
# contains the token's ciphertext, so a replaced token gets a new client.
_CLIENT_CACHE_SIZE = 64
_clients: OrderedDict[tuple, CloudBackend] = OrderedDict()
_clients_lock = threading.Lock()


def get_backend(account) -> CloudBackend:
    if account.backend == "sandbox":
        from provisioning.backends.sandbox import SandboxBackend

        return SandboxBackend(account=account)
    if account.backend == "hetzner":
        from provisioning.backends.hetzner import HetznerBackend

        key = (
            account.pk,
            account.token_ciphertext,
            settings.HCLOUD_API_ENDPOINT,
            settings.PROVISIONING_SSH_PORT,
            settings.PROVISIONING_POLL_INTERVAL,
            settings.PROVISIONING_SSH_USERNAME,
        )
        with _clients_lock:
            backend = _clients.get(key) if account.pk is not None else None
            if backend is not None:
                _clients.move_to_end(key)
                return backend
        backend = HetznerBackend(
            token=account.get_token(),
            endpoint=settings.HCLOUD_API_ENDPOINT,
            ssh_port=settings.PROVISIONING_SSH_PORT,
            poll_interval=min(settings.PROVISIONING_POLL_INTERVAL, 1.0),
        )
        backend.ssh_username = settings.PROVISIONING_SSH_USERNAME
        if account.pk is not None:
            with _clients_lock:
                _clients[key] = backend
                while len(_clients) > _CLIENT_CACHE_SIZE:
                    _clients.popitem(last=False)
        return backend
    raise ValueError(f"Unknown cloud backend {account.backend!r} on cloud account {account.pk}.")
