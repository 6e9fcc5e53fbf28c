"""Tests of `HetznerBackend` against the fake Hetzner Cloud API in `tests.peers.hetzner_api`.

The backend talks to the fake through the real `hcloud` client over HTTP on 127.0.0.1, so these
tests also check that the fake speaks the request and response shapes that hcloud expects.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import hcloud
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning.backends.base import (
    CredentialsInvalid,
    RequestRejected,
    ServerInfo,
    ServerNotFound,
    ServerSpec,
    TransientCloudError,
)
from provisioning.backends.hetzner import HetznerBackend
from tests.peers.hetzner_api import (
    HetznerApiServer,
    parse_cloud_config_host_key,
    parse_label_selector,
    ssh_key_fingerprint,
)

TOKEN = "tok-3f9a1c2b7d"
REPO_ROOT = Path(__file__).resolve().parent.parent


class RecordingSshd:
    """A stand-in for the loopback sshd peer that records the cloud-init calls it receives."""

    def __init__(self) -> None:
        self.authorized_keys_calls: list[list[str]] = []
        self.host_keys: list[str] = []

    def set_authorized_keys(self, lines: list[str]) -> None:
        self.authorized_keys_calls.append(list(lines))

    def install_host_key(self, private_key_openssh: str) -> None:
        self.host_keys.append(private_key_openssh)


def make_keypair(comment: str = "user@example") -> tuple[str, str]:
    """Return a new ed25519 key pair as (OpenSSH private key text, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, f"{public.decode()} {comment}"


def make_spec(contract: int, *keys: str, user_data: str = "") -> ServerSpec:
    return ServerSpec(
        name=f"contract-{contract}",
        server_type="cx22",
        image="ubuntu-24.04",
        location="fsn1",
        labels={"platform": "cloudmarket", "contract": str(contract)},
        ssh_public_keys=keys,
        user_data=user_data,
    )


def wait_until_running(backend: HetznerBackend, server_id: str, timeout: float = 5.0) -> ServerInfo:
    deadline = time.monotonic() + timeout
    while True:
        server = backend.get_server(server_id)
        if server.is_running or time.monotonic() > deadline:
            return server
        time.sleep(0.05)


@pytest.fixture
def sshd() -> RecordingSshd:
    return RecordingSshd()


@pytest.fixture
def api(sshd: RecordingSshd):
    with HetznerApiServer(tokens={TOKEN}, sshd=sshd, boot_delay=0.2) as server:
        yield server


@pytest.fixture
def backend(api: HetznerApiServer) -> HetznerBackend:
    return HetznerBackend(token=TOKEN, endpoint=api.url, poll_interval=0.05, timeout=2.0)


# Catalog


def test_server_types_map_units_and_prices(backend: HetznerBackend):
    types = {item.name: item for item in backend.list_server_types()}

    assert set(types) == {"cx22", "cx32", "cpx21", "cax11"}
    assert types["cx22"].vcpu == 2
    assert types["cx22"].memory_mib == 4096
    assert types["cx22"].disk_gb == 40
    assert types["cx22"].architecture == "x86"
    assert types["cx22"].currency == "EUR"
    # 3.79 EUR net plus 19 % VAT is 4.5101 EUR gross.
    assert types["cx22"].monthly_price_cents == {"fsn1": 451, "nbg1": 451, "hel1": 451}
    assert types["cx32"].memory_mib == 8192
    assert types["cpx21"].monthly_price_cents["ash"] == 1070
    assert types["cax11"].architecture == "arm"


def test_locations_and_images_map(backend: HetznerBackend):
    locations = {item.code: item for item in backend.list_locations()}
    images = {(item.name, item.architecture) for item in backend.list_images()}

    assert set(locations) == {"fsn1", "nbg1", "hel1", "ash"}
    assert locations["hel1"].country == "FI"
    assert locations["fsn1"].city == "Falkenstein"
    assert ("ubuntu-24.04", "x86") in images
    assert ("ubuntu-24.04", "arm") in images
    assert ("debian-12", "x86") in images
    assert all(name != "ubuntu-20.04" for name, _ in images)


def test_validate_credentials_accepts_token(backend: HetznerBackend):
    backend.validate_credentials()


def test_wrong_token_raises_credentials_invalid(api: HetznerApiServer):
    bad_token = "wrong-token-77c1e0"
    backend = HetznerBackend(token=bad_token, endpoint=api.url, timeout=2.0)

    with pytest.raises(CredentialsInvalid) as info:
        backend.validate_credentials()

    assert info.value.status_code == 401
    assert info.value.code == "unauthorized"
    assert bad_token not in str(info.value)
    assert "validate_credentials" in str(info.value)


def test_revoked_token_on_create_names_labels(api: HetznerApiServer, backend: HetznerBackend):
    api.tokens.clear()

    with pytest.raises(CredentialsInvalid) as info:
        backend.create_server(make_spec(5))

    assert TOKEN not in str(info.value)
    assert "contract=5" in str(info.value)


# Creation and idempotency


def test_create_returns_server_that_boots(api: HetznerApiServer, backend: HetznerBackend):
    _, public = make_keypair()

    created = backend.create_server(make_spec(1, public))
    running = wait_until_running(backend, created.id)

    assert created.status == "initializing"
    assert created.name == "contract-1"
    assert created.labels == {"platform": "cloudmarket", "contract": "1"}
    assert running.is_running
    assert running.ipv4 == "127.0.0.1"
    assert api.servers[int(created.id)]["server_type"]["name"] == "cx22"


def test_create_twice_keeps_one_server_and_key_set(api: HetznerApiServer, backend: HetznerBackend):
    _, first_key = make_keypair("a@example")
    _, second_key = make_keypair("b@example")
    spec = make_spec(2, first_key, second_key, first_key)

    first = backend.create_server(spec)
    second = backend.create_server(spec)

    assert first.id == second.id
    assert len(api.servers) == 1
    assert len(api.ssh_keys) == 2
    assert sorted(key["name"] for key in api.ssh_keys.values()) == [
        "contract-2-k0",
        "contract-2-k1",
    ]
    assert all(key["labels"] == spec.labels for key in api.ssh_keys.values())
    assert len(api.requests_matching("POST", "/servers", status=201)) == 1
    assert len(api.requests_matching("POST", "/ssh_keys", status=201)) == 2


def test_create_with_other_labels_makes_second_server(
    api: HetznerApiServer, backend: HetznerBackend
):
    backend.create_server(make_spec(3))
    backend.create_server(make_spec(4))

    assert sorted(server["name"] for server in api.servers.values()) == ["contract-3", "contract-4"]


def test_create_without_labels_raises(backend: HetznerBackend):
    spec = ServerSpec(
        name="unlabelled", server_type="cx22", image="ubuntu-24.04", location="fsn1", labels={}
    )

    with pytest.raises(ValueError):
        backend.create_server(spec)


def test_create_race_reuses_concurrent_server(api: HetznerApiServer, backend: HetznerBackend):
    spec = make_spec(6)
    concurrent: dict[str, dict] = {}

    def create_concurrently() -> None:
        concurrent["server"] = api.create_server_behind_back(name=spec.name, labels=spec.labels)

    api.add_fault(
        "POST", "/servers", status=409, code="uniqueness_error", before=create_concurrently
    )

    server = backend.create_server(spec)

    assert server.id == str(concurrent["server"]["id"])
    assert len(api.servers) == 1


def test_create_with_name_taken_by_foreign_server(api: HetznerApiServer, backend: HetznerBackend):
    api.create_server_behind_back(name="contract-7", labels={"owner": "someone-else"})

    with pytest.raises(RequestRejected) as info:
        backend.create_server(make_spec(7))

    assert info.value.code == "uniqueness_error"
    assert "contract-7" in str(info.value)
    assert len(api.servers) == 1


def test_lost_create_response_then_retry_reuses(api: HetznerApiServer, backend: HetznerBackend):
    spec = make_spec(8)
    api.add_fault("POST", "/servers", drop_connection=True, process=True)

    with pytest.raises(TransientCloudError):
        backend.create_server(spec)
    server = backend.create_server(spec)

    assert len(api.servers) == 1
    assert server.id == str(next(iter(api.servers)))


def test_create_reuses_key_with_same_fingerprint(api: HetznerApiServer, backend: HetznerBackend):
    _, shared_key = make_keypair()
    backend.create_server(make_spec(9, shared_key))

    second = backend.create_server(make_spec(10, shared_key))
    backend.delete_server(second.id, labels=make_spec(10).labels)

    assert len(api.ssh_keys) == 1
    assert next(iter(api.ssh_keys.values()))["labels"]["contract"] == "9"


def test_create_replaces_stale_key_of_same_contract(api: HetznerApiServer, backend: HetznerBackend):
    _, old_key = make_keypair()
    _, new_key = make_keypair()
    spec = make_spec(11, new_key)
    client = hcloud.Client(token=TOKEN, api_endpoint=api.url, api_endpoint_hetzner=api.url)
    client.ssh_keys.create(name="contract-11-k0", public_key=old_key, labels=spec.labels)

    backend.create_server(spec)

    fingerprints = [key["fingerprint"] for key in api.ssh_keys.values()]
    assert fingerprints == [ssh_key_fingerprint(new_key)]


def test_create_with_foreign_key_name_is_rejected(api: HetznerApiServer, backend: HetznerBackend):
    _, foreign_key = make_keypair()
    _, own_key = make_keypair()
    client = hcloud.Client(token=TOKEN, api_endpoint=api.url, api_endpoint_hetzner=api.url)
    client.ssh_keys.create(name="contract-12-k0", public_key=foreign_key, labels={"owner": "me"})

    with pytest.raises(RequestRejected) as info:
        backend.create_server(make_spec(12, own_key))

    assert "contract-12-k0" in str(info.value)
    assert not api.servers


# Lookup and deletion


def test_find_servers_reads_every_page():
    with HetznerApiServer(tokens={TOKEN}, max_per_page=10) as api:
        backend = HetznerBackend(token=TOKEN, endpoint=api.url, timeout=2.0)
        for _ in range(30):
            api.create_server_behind_back(labels={"batch": "b1"})
        for _ in range(5):
            api.create_server_behind_back(labels={"batch": "b2"})

        found = backend.find_servers({"batch": "b1"})
        page_requests = api.requests_matching("GET", "/servers")

    assert len(found) == 30
    assert len({server.id for server in found}) == 30
    assert all(server.labels == {"batch": "b1"} for server in found)
    assert len(page_requests) == 3


def test_find_servers_matches_all_labels(api: HetznerApiServer, backend: HetznerBackend):
    api.create_server_behind_back(labels={"platform": "cloudmarket", "contract": "1"})
    api.create_server_behind_back(labels={"platform": "cloudmarket", "contract": "2"})
    api.create_server_behind_back(labels={"platform": "other", "contract": "1"})

    found = backend.find_servers({"platform": "cloudmarket", "contract": "1"})

    assert [server.labels for server in found] == [{"platform": "cloudmarket", "contract": "1"}]


def test_get_server_unknown_raises_not_found(backend: HetznerBackend):
    with pytest.raises(ServerNotFound):
        backend.get_server("999999")
    with pytest.raises(ServerNotFound):
        backend.get_server("not-a-number")


def test_delete_removes_server_and_keys(api: HetznerApiServer, backend: HetznerBackend):
    _, public = make_keypair()
    spec = make_spec(13, public)
    other = backend.create_server(make_spec(14, make_keypair()[1]))
    server = backend.create_server(spec)

    backend.delete_server(server.id, labels=spec.labels)
    backend.delete_server(server.id, labels=spec.labels)

    assert list(api.servers) == [int(other.id)]
    assert [key["labels"]["contract"] for key in api.ssh_keys.values()] == ["14"]
    with pytest.raises(ServerNotFound):
        backend.get_server(server.id)


def test_delete_server_removed_behind_back(api: HetznerApiServer, backend: HetznerBackend):
    spec = make_spec(15, make_keypair()[1])
    server = backend.create_server(spec)
    api.delete_server_behind_back(int(server.id))

    backend.delete_server(server.id, labels=spec.labels)

    assert not api.ssh_keys


# Error mapping


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (422, "invalid_input"),
        (400, "invalid_input"),
        (402, "payment_required"),
        (412, "placement_error"),
        (403, "resource_limit_exceeded"),
    ],
)
def test_rejected_requests_raise_request_rejected(
    api: HetznerApiServer, backend: HetznerBackend, status: int, code: str
):
    api.add_fault("POST", "/servers", status=status, code=code, message="scripted rejection")

    with pytest.raises(RequestRejected) as info:
        backend.create_server(make_spec(20))

    assert info.value.status_code == status
    assert info.value.code == code
    assert not info.value.retryable
    assert "create_server" in str(info.value)
    assert "contract=20" in str(info.value)


def test_forbidden_raises_credentials_invalid(api: HetznerApiServer, backend: HetznerBackend):
    api.add_fault("GET", "/servers", status=403, code="forbidden")

    with pytest.raises(CredentialsInvalid) as info:
        backend.find_servers({"contract": "21"})

    assert info.value.status_code == 403


def test_rate_limit_carries_retry_after(api: HetznerApiServer, backend: HetznerBackend):
    api.add_fault("GET", "/servers", status=429, retry_after=7)

    with pytest.raises(TransientCloudError) as info:
        backend.create_server(make_spec(22))

    assert info.value.retry_after == 7
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.retryable
    assert len(api.requests_matching("GET", "/servers")) == 1


@pytest.mark.parametrize(
    ("status", "code"), [(503, "unavailable"), (502, None), (500, "server_error")]
)
def test_server_errors_raise_transient_without_retry(
    api: HetznerApiServer, backend: HetznerBackend, status: int, code: str | None
):
    api.add_fault("POST", "/servers", status=status, code=code)

    with pytest.raises(TransientCloudError) as info:
        backend.create_server(make_spec(23))

    assert info.value.status_code == status
    assert info.value.retry_after is None
    assert len(api.requests_matching("POST", "/servers")) == 1
    assert not api.servers


def test_dropped_connection_raises_transient(api: HetznerApiServer, backend: HetznerBackend):
    server = backend.create_server(make_spec(24))
    api.add_fault("GET", r"/servers/\d+", drop_connection=True)

    with pytest.raises(TransientCloudError) as info:
        backend.get_server(server.id)

    assert server.id in str(info.value)
    assert backend.get_server(server.id).id == server.id


def test_slow_response_raises_transient(api: HetznerApiServer):
    backend = HetznerBackend(token=TOKEN, endpoint=api.url, timeout=0.3)
    api.add_fault("GET", "/locations", delay=1.0)

    with pytest.raises(TransientCloudError) as info:
        backend.list_locations()

    assert "timed out" in str(info.value)


def test_connection_refused_raises_transient():
    with HetznerApiServer(tokens={TOKEN}) as api:
        url = api.url
    backend = HetznerBackend(token=TOKEN, endpoint=url, timeout=1.0)

    with pytest.raises(TransientCloudError):
        backend.validate_credentials()


# Cloud-init emulation


def test_create_applies_keys_and_host_key_to_sshd(sshd: RecordingSshd, backend: HetznerBackend):
    _, user_key = make_keypair()
    host_private, host_public = make_keypair("host")
    indented = "\n".join("    " + line for line in host_private.strip().splitlines())
    user_data = (
        "#cloud-config\n"
        "ssh_keys:\n"
        "  ed25519_private: |\n"
        f"{indented}\n"
        f"  ed25519_public: {host_public}\n"
    )

    backend.create_server(make_spec(30, user_key, user_data=user_data))

    assert sshd.authorized_keys_calls == [[user_key]]
    assert sshd.host_keys == [host_private.strip() + "\n"]


def test_cloud_init_reaches_real_loopback_sshd(loopback_sshd):
    _, user_key = make_keypair()
    host_private, host_public = make_keypair("host")
    user_data = yaml.safe_dump(
        {"ssh_keys": {"ed25519_private": host_private, "ed25519_public": host_public}}
    )

    with HetznerApiServer(tokens={TOKEN}, sshd=loopback_sshd) as api:
        backend = HetznerBackend(token=TOKEN, endpoint=api.url, timeout=10.0)
        backend.create_server(make_spec(31, user_key, user_data="#cloud-config\n" + user_data))

    assert loopback_sshd.authorized_keys() == [user_key]
    assert loopback_sshd.host_public_key.split()[:2] == host_public.split()[:2]


def test_cloud_config_parser_shapes():
    host_key, authorized = parse_cloud_config_host_key(
        "#cloud-config\nssh_keys:\n  ed25519_private: KEY\nssh_authorized_keys:\n  - ssh-ed25519 AAAA x\n"
    )
    plain_host_key, plain_authorized = parse_cloud_config_host_key("#!/bin/sh\necho hi\n")

    assert host_key == "KEY"
    assert authorized == ["ssh-ed25519 AAAA x"]
    assert plain_host_key is None
    assert plain_authorized == []


# Fake API details that the backend does not reach


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "2"}, False),
        ("a", {"a": "x"}, True),
        ("!a", {"a": "x"}, False),
        ("!a", {"b": "x"}, True),
        ("a!=1", {"a": "2"}, True),
        ("a!=1", {}, True),
        ("a=1,b", {"a": "1"}, False),
        ("a in (1,2),b notin (3)", {"a": "2", "b": "4"}, True),
        ("a in (1,2)", {"a": "3"}, False),
    ],
)
def test_label_selector_terms(selector: str, labels: dict[str, str], expected: bool):
    predicates = parse_label_selector(selector)

    assert all(check(labels) for check in predicates) is expected


def test_ssh_keys_filter_and_uniqueness(api: HetznerApiServer):
    _, public = make_keypair()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"name": "k1", "public_key": public, "labels": {"team": "a"}}

    created = requests.post(f"{api.url}/ssh_keys", json=body, headers=headers, timeout=5)
    duplicate = requests.post(f"{api.url}/ssh_keys", json=body, headers=headers, timeout=5)
    by_fingerprint = requests.get(
        f"{api.url}/ssh_keys",
        params={"fingerprint": ssh_key_fingerprint(public)},
        headers=headers,
        timeout=5,
    )
    by_selector = requests.get(
        f"{api.url}/ssh_keys", params={"label_selector": "team!=a"}, headers=headers, timeout=5
    )

    assert created.status_code == 201
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "uniqueness_error"
    assert [key["name"] for key in by_fingerprint.json()["ssh_keys"]] == ["k1"]
    assert by_selector.json()["ssh_keys"] == []


def test_pagination_meta_defaults(api: HetznerApiServer):
    for _ in range(30):
        api.create_server_behind_back()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    first = requests.get(f"{api.url}/servers", headers=headers, timeout=5).json()
    second = requests.get(
        f"{api.url}/servers", params={"page": 2}, headers=headers, timeout=5
    ).json()

    assert len(first["servers"]) == 25
    assert first["meta"]["pagination"]["next_page"] == 2
    assert first["meta"]["pagination"]["total_entries"] == 30
    assert len(second["servers"]) == 5
    assert second["meta"]["pagination"]["next_page"] is None


def test_standalone_prints_url():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.hetzner_api", "--port", "0", "--token", "demo"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        response = requests.get(
            f"{url}/locations", headers={"Authorization": "Bearer demo"}, timeout=5
        )
    finally:
        process.terminate()
        process.wait(timeout=5)

    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/v1")
    assert response.status_code == 200
    assert len(response.json()["locations"]) == 4
