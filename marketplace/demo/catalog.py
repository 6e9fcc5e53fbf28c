"""Load the Hetzner Cloud catalog fixture that the demo Sandbox provider's offerings are built from.

The fixture is ``hetzner_catalog.json`` next to this module. Its ``source`` block records where
the numbers came from and how old they are. This module is plain Python with no Django imports,
so management commands, tests and scripts can all read the catalog the same way.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)

CATALOG_PATH = Path(__file__).with_name("hetzner_catalog.json")

ARCHITECTURES = frozenset({"x86", "arm"})
CPU_TYPES = frozenset({"shared", "dedicated"})


class CatalogError(ValueError):
    """Raised when the catalog file is missing, is not valid JSON, or has a field of the wrong shape."""


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """Provenance of the catalog: where the data was retrieved from and the date it shows."""

    description: str
    retrieved_from: tuple[str, ...]
    data_date: datetime.date
    notes: str


@dataclass(frozen=True, slots=True)
class Location:
    """A Hetzner Cloud location, such as ``fsn1`` (Falkenstein, Germany)."""

    code: str
    city: str
    country: str
    description: str


@dataclass(frozen=True, slots=True)
class Image:
    """A Hetzner system image. Each name exists once per CPU architecture."""

    name: str
    description: str
    architecture: str


@dataclass(frozen=True, slots=True)
class ServerType:
    """A Hetzner Cloud server type with its net monthly price in each location that sells it."""

    name: str
    description: str
    vcpu: int
    memory_mib: int
    disk_gb: int
    architecture: str
    cpu_type: str
    monthly_price_cents: Mapping[str, int]

    @property
    def location_codes(self) -> tuple[str, ...]:
        """Codes of the locations that have a price for this type, in file order."""
        return tuple(self.monthly_price_cents)

    def price_cents(self, *, location: str) -> int | None:
        """Return the net monthly price in cents at ``location``, or None if it is not sold there."""
        return self.monthly_price_cents.get(location)


@dataclass(frozen=True, slots=True)
class HetznerCatalog:
    """The whole fixture: provenance, currency, locations, images and server types."""

    source: CatalogSource
    currency: str
    locations: tuple[Location, ...]
    images: tuple[Image, ...]
    server_types: tuple[ServerType, ...]

    def location(self, *, code: str) -> Location:
        """Return the location with ``code``. Raises KeyError if the catalog has none."""
        for location in self.locations:
            if location.code == code:
                return location
        raise KeyError(f"location {code!r} is not in the Hetzner catalog")

    def server_type(self, *, name: str) -> ServerType:
        """Return the server type called ``name``. Raises KeyError if the catalog has none."""
        for server_type in self.server_types:
            if server_type.name == name:
                return server_type
        raise KeyError(f"server type {name!r} is not in the Hetzner catalog")

    def images_for(self, *, architecture: str) -> tuple[Image, ...]:
        """Return the images that can boot a server type of ``architecture``."""
        return tuple(image for image in self.images if image.architecture == architecture)


def load_hetzner_catalog(*, path: Path | None = None) -> HetznerCatalog:
    """Read and validate the catalog fixture (``CATALOG_PATH`` unless ``path`` is given).

    Raises CatalogError naming the file and the offending field when the file is missing,
    is not JSON, or breaks a rule: wrong types, non-positive numbers, duplicate names, or a
    price for a location code that the catalog does not define.
    """
    catalog_path = CATALOG_PATH if path is None else path
    try:
        raw_text = catalog_path.read_text(encoding="utf-8")
    except OSError as error:
        raise CatalogError(f"{catalog_path}: cannot read the Hetzner catalog: {error}") from error
    try:
        document = json.loads(raw_text)
    except json.JSONDecodeError as error:
        raise CatalogError(f"{catalog_path}: invalid JSON: {error}") from error

    try:
        catalog = _parse_catalog(document)
    except CatalogError as error:
        raise CatalogError(f"{catalog_path}: {error}") from None

    logger.debug(
        "Loaded Hetzner catalog from %s: %d locations, %d images, %d server types",
        catalog_path,
        len(catalog.locations),
        len(catalog.images),
        len(catalog.server_types),
    )
    return catalog


def _parse_catalog(document: Any) -> HetznerCatalog:
    root = _require_object(document, "top level")
    source = _parse_source(_require_object(root.get("source"), "source"))
    currency = _require_text(root.get("currency"), "currency")
    if len(currency) != 3 or not currency.isupper():
        raise CatalogError(f"currency: expected an ISO 4217 code such as 'EUR', got {currency!r}")

    locations = tuple(
        _parse_location(item, f"locations[{index}]")
        for index, item in enumerate(_require_list(root.get("locations"), "locations"))
    )
    _reject_duplicates([location.code for location in locations], "locations", "code")
    location_codes = frozenset(location.code for location in locations)

    images = tuple(
        _parse_image(item, f"images[{index}]")
        for index, item in enumerate(_require_list(root.get("images"), "images"))
    )
    _reject_duplicates(
        [f"{image.name} ({image.architecture})" for image in images],
        "images",
        "name and architecture",
    )

    server_types = tuple(
        _parse_server_type(item, f"server_types[{index}]", location_codes=location_codes)
        for index, item in enumerate(_require_list(root.get("server_types"), "server_types"))
    )
    _reject_duplicates([server_type.name for server_type in server_types], "server_types", "name")

    return HetznerCatalog(
        source=source,
        currency=currency,
        locations=locations,
        images=images,
        server_types=server_types,
    )


def _parse_source(raw: dict[str, Any]) -> CatalogSource:
    retrieved_from = _require_list(raw.get("retrieved_from"), "source.retrieved_from")
    data_date_text = _require_text(raw.get("data_date"), "source.data_date")
    try:
        data_date = datetime.date.fromisoformat(data_date_text)
    except ValueError:
        raise CatalogError(
            f"source.data_date: expected a YYYY-MM-DD date, got {data_date_text!r}"
        ) from None
    return CatalogSource(
        description=_require_text(raw.get("description"), "source.description"),
        retrieved_from=tuple(
            _require_text(item, f"source.retrieved_from[{index}]")
            for index, item in enumerate(retrieved_from)
        ),
        data_date=data_date,
        notes=_require_text(raw.get("notes"), "source.notes"),
    )


def _parse_location(raw: Any, where: str) -> Location:
    item = _require_object(raw, where)
    return Location(
        code=_require_text(item.get("code"), f"{where}.code"),
        city=_require_text(item.get("city"), f"{where}.city"),
        country=_require_text(item.get("country"), f"{where}.country"),
        description=_require_text(item.get("description"), f"{where}.description"),
    )


def _parse_image(raw: Any, where: str) -> Image:
    item = _require_object(raw, where)
    return Image(
        name=_require_text(item.get("name"), f"{where}.name"),
        description=_require_text(item.get("description"), f"{where}.description"),
        architecture=_require_choice(
            item.get("architecture"), f"{where}.architecture", ARCHITECTURES
        ),
    )


def _parse_server_type(raw: Any, where: str, *, location_codes: frozenset[str]) -> ServerType:
    item = _require_object(raw, where)
    name = _require_text(item.get("name"), f"{where}.name")

    raw_prices = _require_object(item.get("monthly_price_cents"), f"{where}.monthly_price_cents")
    if not raw_prices:
        raise CatalogError(
            f"{where}.monthly_price_cents: server type {name!r} has no location price"
        )
    prices: dict[str, int] = {}
    for code, cents in raw_prices.items():
        if code not in location_codes:
            raise CatalogError(
                f"{where}.monthly_price_cents: location {code!r} of server type {name!r} "
                f"is not defined under 'locations'"
            )
        prices[code] = _require_positive_int(cents, f"{where}.monthly_price_cents[{code!r}]")

    return ServerType(
        name=name,
        description=_require_text(item.get("description"), f"{where}.description"),
        vcpu=_require_positive_int(item.get("vcpu"), f"{where}.vcpu"),
        memory_mib=_require_positive_int(item.get("memory_mib"), f"{where}.memory_mib"),
        disk_gb=_require_positive_int(item.get("disk_gb"), f"{where}.disk_gb"),
        architecture=_require_choice(
            item.get("architecture"), f"{where}.architecture", ARCHITECTURES
        ),
        cpu_type=_require_choice(item.get("cpu_type"), f"{where}.cpu_type", CPU_TYPES),
        monthly_price_cents=MappingProxyType(prices),
    )


def _require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _require_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise CatalogError(f"{where}: expected a non-empty JSON array, got {value!r}")
    return value


def _require_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _require_choice(value: Any, where: str, choices: frozenset[str]) -> str:
    if value not in choices:
        raise CatalogError(f"{where}: expected one of {sorted(choices)}, got {value!r}")
    return value


def _require_positive_int(value: Any, where: str) -> int:
    # bool is a subclass of int, and 3.29 or "329" must not pass as a price in cents.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CatalogError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _reject_duplicates(keys: list[str], where: str, key_name: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise CatalogError(f"{where}: duplicate {key_name} {key!r}")
        seen.add(key)
