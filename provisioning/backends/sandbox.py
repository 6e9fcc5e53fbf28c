"""The Sandbox backend: simulated servers for demos and development.

It creates no machine. Servers are rows that report `running` after a configurable boot
delay, with an address from 203.0.113.0/24 (TEST-NET-3, reserved for documentation, RFC 5737),
so nothing ever answers at it. The pipeline records a recipe log that says nothing ran.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from provisioning.backends.base import (
    CloudBackend,
    Image,
    Location,
    ServerInfo,
    ServerNotFound,
    ServerSpec,
    ServerType,
)

logger = logging.getLogger(__name__)


class SandboxBackend(CloudBackend):
    executes_recipes = False
    # No machine exists, so an offering's specs are only what the offering states.
    editable_spec_fields = frozenset({"vcpu", "memory_mib", "disk_gb"})

    def __init__(self, *, account, boot_seconds: float | None = None):
        self.account = account
        self.boot_seconds = settings.SANDBOX_BOOT_SECONDS if boot_seconds is None else boot_seconds

    def validate_credentials(self) -> None:
        return None

    def list_server_types(self) -> list[ServerType]:
        from marketplace.demo.catalog import load_hetzner_catalog

        catalog = load_hetzner_catalog()
        return [
            ServerType(
                name=item.name,
                description=item.description,
                vcpu=item.vcpu,
                memory_mib=item.memory_mib,
                disk_gb=item.disk_gb,
                architecture=item.architecture,
                monthly_price_cents=dict(item.monthly_price_cents),
                currency=catalog.currency,
            )
            for item in catalog.server_types
        ]

    def list_locations(self) -> list[Location]:
        from marketplace.demo.catalog import load_hetzner_catalog

        return [
            Location(code=item.code, city=item.city, country=item.country, description=item.description)
            for item in load_hetzner_catalog().locations
        ]

    def list_images(self) -> list[Image]:
        from marketplace.demo.catalog import load_hetzner_catalog

        return [
            Image(name=item.name, description=item.description, architecture=item.architecture)
            for item in load_hetzner_catalog().images
        ]

    def _info(self, server) -> ServerInfo:
        powered_on_at = server.started_at or server.created_at
        booted = timezone.now() >= powered_on_at + timedelta(seconds=server.boot_seconds)
        if server.stopped_at is not None:
            status = "off"
        elif booted:
            status = "running"
        else:
            status = "starting" if server.started_at else "initializing"
        return ServerInfo(
            id=str(server.pk),
            name=server.name,
            status=status,
            ipv4=server.ipv4,
            labels=dict(server.labels),
        )

    def _live(self):
        from provisioning.models import SandboxServer

        return SandboxServer.objects.filter(account=self.account, deleted_at__isnull=True)

    def find_servers(self, labels: dict[str, str]) -> list[ServerInfo]:
        matching = [
            server for server in self._live() if all(server.labels.get(key) == value for key, value in labels.items())
        ]
        return [self._info(server) for server in matching]

    def create_server(self, spec: ServerSpec) -> ServerInfo:
        from provisioning.models import SandboxServer

        with transaction.atomic():
            existing = self.find_servers(spec.labels)
            if existing:
                logger.info("Sandbox: reusing server %s for labels %s", existing[0].id, spec.labels)
                return existing[0]
            server = SandboxServer.objects.create(
                account=self.account,
                name=spec.name,
                server_type=spec.server_type,
                image=spec.image,
                location=spec.location,
                labels=dict(spec.labels),
                ipv4="203.0.113.1",
                boot_seconds=self.boot_seconds,
            )
            server.ipv4 = f"203.0.113.{server.pk % 254 + 1}"
            server.save(update_fields=["ipv4"])
        logger.info("Sandbox: created simulated server %s (%s)", server.pk, spec.name)
        return self._info(server)

    def get_server(self, server_id: str) -> ServerInfo:
        server = self._live().filter(pk=int(server_id)).first() if server_id.isdigit() else None
        if server is None:
            raise ServerNotFound(f"Sandbox server {server_id} not found.")
        return self._info(server)

    def start_server(self, server_id: str) -> None:
        self.get_server(server_id)
        self._live().filter(pk=int(server_id), stopped_at__isnull=False).update(stopped_at=None, started_at=timezone.now())
        logger.info("Sandbox: started simulated server %s", server_id)

    def stop_server(self, server_id: str) -> None:
        self.get_server(server_id)
        self._live().filter(pk=int(server_id), stopped_at__isnull=True).update(stopped_at=timezone.now())
        logger.info("Sandbox: stopped simulated server %s", server_id)

    def delete_server(self, server_id: str, *, labels: dict[str, str] | None = None) -> None:
        if server_id.isdigit():
            self._live().filter(pk=int(server_id)).update(deleted_at=timezone.now())
        if labels:
            for info in self.find_servers(labels):
                self._live().filter(pk=int(info.id)).update(deleted_at=timezone.now())
        logger.info("Sandbox: deleted simulated server %s", server_id)


def simulated_recipe_log(script: str) -> str:
    lines = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return (
        "Sandbox backend: nothing was executed.\n"
        "No virtual machine exists for a Sandbox rental, so this recipe did not run. On a real\n"
        f"backend the platform would run its {len(lines)} command lines as root over SSH and\n"
        "store their output here.\n"
    )
