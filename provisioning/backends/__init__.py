"""Cloud backends behind one interface; `get_backend` builds the one for a cloud account."""

from __future__ import annotations

from django.conf import settings

from provisioning.backends.base import CloudBackend


def get_backend(account) -> CloudBackend:
    if account.backend == "sandbox":
        from provisioning.backends.sandbox import SandboxBackend

        return SandboxBackend(account=account)
    if account.backend == "hetzner":
        from provisioning.backends.hetzner import HetznerBackend

        return HetznerBackend(
            token=account.get_token(),
            endpoint=settings.HCLOUD_API_ENDPOINT,
            ssh_port=settings.PROVISIONING_SSH_PORT,
            poll_interval=min(settings.PROVISIONING_POLL_INTERVAL, 1.0),
        )
    raise ValueError(f"Unknown cloud backend {account.backend!r} on cloud account {account.pk}.")
