"""The Proxmox VE backend with the real proxmoxer client against the fake Proxmox VE API.

The fake's VMs are the loopback sshd: starting a VM applies its cloud-init SSH keys there, and
the host key install through the guest agent replaces the sshd's host key.
"""

from __future__ import annotations

import time
from urllib.parse import unquote

import pytest
from django.core.exceptions import ValidationError

from provisioning.backends import get_backend
from provisioning.backends.base import (
    CredentialsInvalid,
    RequestRejected,
    ServerNotFound,
    ServerSpec,
    TransientCloudError,
)
from provisioning.backends.proxmox import ProxmoxBackend, label_tag, labels_description
from provisioning.backends.proxmox_settings import (
    DEFAULT_VMID_RANGE,
    parse_api_url,
    parse_server_types,
    parse_token_id,
    validate_ipconfig0,
    validate_vmid_range,
)
from provisioning.models import Backend, CloudAccount, ValidationStatus
from provisioning.services import (
    cloud_account_create,
    cloud_account_create_proxmox,
    cloud_account_validate,
)
from recipes.keys import cloud_config_user_data, generate_keypair
from tests.conftest import TEST_PROXMOX_TOKEN_ID, TEST_PROXMOX_TOKEN_SECRET

CLONE_PATH = r"/nodes/pve/qemu/9000/clone"


def make_backend(api, **overrides) -> ProxmoxBackend:
    options = {
        "api_url": api.url,
        "token_id": TEST_PROXMOX_TOKEN_ID,
        "token_secret": TEST_PROXMOX_TOKEN_SECRET,
        "node": "pve",
        "poll_interval": 0.02,
        "task_timeout": 5.0,
    }
    options.update(overrides)
    return ProxmoxBackend(**options)


def make_spec(contract_id: int = 42, *, server_type: str = "pve-medium", image: str = "ubuntu-24.04", keys=None, host_key=None):
    host_key = host_key or generate_keypair(f"host-{contract_id}")
    return ServerSpec(
        name=f"cm-test-{contract_id}",
        server_type=server_type,
        image=image,
        location="pve",
        labels={"cloudmarket-contract": str(contract_id), "cloudmarket-deployment": "test"},
        ssh_public_keys=tuple(keys if keys is not None else (generate_keypair("tenant@laptop").public_line,)),
        user_data=cloud_config_user_data(host_key=host_key),
    )


def wait_until_ready(backend: ProxmoxBackend, server_id: str, spec: ServerSpec, *, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = backend.get_server(server_id)
        if info.is_running and backend.prepare_for_ssh(server=info, spec=spec):
            return info
        time.sleep(0.05)
    raise AssertionError(f"VM {server_id} not ready after {timeout} s")


# Account settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://pve.example.com", "https://pve.example.com:8006/api2/json"),
        ("https://pve.example.com:443/", "https://pve.example.com:443/api2/json"),
        ("https://pve.example.com:8006/api2/json", "https://pve.example.com:8006/api2/json"),
        ("https://proxy.example.com/pve", "https://proxy.example.com:8006/pve/api2/json"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123/api2/json"),
        ("https://[2001:db8::1]:8006", "https://[2001:db8::1]:8006/api2/json"),
    ],
)
def test_api_url_parsed(url, expected) -> None:
    assert parse_api_url(url).base_url == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "missing"),
        ("pve.example.com:8006", "must start with https://"),
        ("ftp://pve.example.com", "must start with https://"),
        ("http://pve.example.com:8006", "unencrypted"),
        ("https://user:pass@pve.example.com", "must not contain"),
        ("https://pve.example.com:99999", "invalid port"),
    ],
)
def test_api_url_rejected(url, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_api_url(url)


def test_token_id_parsed_and_rejected() -> None:
    assert parse_token_id("cloudmarket@pve!provisioning") == ("cloudmarket@pve", "provisioning")

    for bad in ("cloudmarket@pve", "cloudmarket!tok", "a@pve!tok=secret", "a@pve!1tok", ""):
        with pytest.raises(ValueError, match="USER@REALM!TOKENNAME"):
            parse_token_id(bad)


def test_settings_checks() -> None:
    assert validate_vmid_range(None, None) == DEFAULT_VMID_RANGE
    assert validate_vmid_range(5000, 5999) == (5000, 5999)
    with pytest.raises(ValueError, match="both ends"):
        validate_vmid_range(5000, None)
    with pytest.raises(ValueError, match="between 100"):
        validate_vmid_range(50, 5000)
    with pytest.raises(ValueError, match="too small"):
        validate_vmid_range(5000, 5010)
    assert validate_ipconfig0("") == "ip=dhcp"
    assert validate_ipconfig0("ip=10.0.0.5/24,gw=10.0.0.1") == "ip=10.0.0.5/24,gw=10.0.0.1"
    with pytest.raises(ValueError, match="ip=dhcp"):
        validate_ipconfig0("dhcp")


def test_server_types_parsed_and_rejected() -> None:
    [custom] = parse_server_types([{"name": "gpu-box", "vcpu": 8, "memory_mib": 32768, "disk_gb": 200}])

    assert (custom.name, custom.vcpu, custom.memory_mib, custom.disk_gb) == ("gpu-box", 8, 32768, 200)
    assert custom.monthly_price_cents == {}
    assert [item.name for item in parse_server_types([])] == ["pve-small", "pve-medium", "pve-large"]
    with pytest.raises(ValueError, match="memory_mib must be a whole number"):
        parse_server_types([{"name": "a", "vcpu": 1, "memory_mib": "16 GB", "disk_gb": 10}])
    with pytest.raises(ValueError, match="used twice"):
        parse_server_types([{"name": "a", "vcpu": 1, "memory_mib": 1024, "disk_gb": 10}] * 2)
    with pytest.raises(ValueError, match="unknown field"):
        parse_server_types([{"name": "a", "vcpu": 1, "memory_mib": 1024, "disk_gb": 10, "gpu": 1}])


# Credentials


def test_validate_credentials_accepts_token(proxmox_api) -> None:
    make_backend(proxmox_api).validate_credentials()

    header_paths = [request.path for request in proxmox_api.requests]
    assert header_paths == ["/version", "/nodes", "/nodes/pve/status"]


def test_wrong_secret_is_credentials_invalid(proxmox_api) -> None:
    backend = make_backend(proxmox_api, token_secret="11111111-2222-3333-4444-555555555555")

    with pytest.raises(CredentialsInvalid) as caught:
        backend.validate_credentials()

    assert caught.value.status_code == 401
    assert "invalid token value" in str(caught.value)
    assert "11111111-2222" not in str(caught.value)


def test_revoked_token_is_credentials_invalid(proxmox_api) -> None:
    backend = make_backend(proxmox_api)
    backend.validate_credentials()
    proxmox_api.tokens.clear()

    with pytest.raises(CredentialsInvalid, match="no such token 'provisioning'"):
        backend.list_images()


def test_missing_privilege_is_credentials_invalid(proxmox_api) -> None:
    proxmox_api.add_fault("GET", r"/nodes/pve/status", status=403, message="Permission check failed (/nodes/pve, Sys.Audit)")

    with pytest.raises(CredentialsInvalid, match=r"Sys\.Audit") as caught:
        make_backend(proxmox_api).validate_credentials()

    assert caught.value.code == "forbidden"


def test_unknown_node_is_rejected(proxmox_api) -> None:
    with pytest.raises(RequestRejected, match="node 'pve9' was not found; the token sees these nodes: pve") as caught:
        make_backend(proxmox_api, node="pve9").validate_credentials()

    assert caught.value.code == "node_not_found"


def test_unreachable_api_is_transient() -> None:
    backend = ProxmoxBackend(
        api_url="http://127.0.0.1:9", token_id=TEST_PROXMOX_TOKEN_ID, token_secret="secret", node="pve"
    )

    with pytest.raises(TransientCloudError, match="connection failed"):
        backend.validate_credentials()


def test_tls_verification_on_rejects_self_signed_certificate() -> None:
    from tests.peers.proxmox_api import ProxmoxApiServer

    with ProxmoxApiServer(tokens={TEST_PROXMOX_TOKEN_ID: TEST_PROXMOX_TOKEN_SECRET}, tls=True) as api:
        assert api.url.startswith("https://")
        with pytest.raises(CredentialsInvalid, match="TLS certificate") as caught:
            make_backend(api).validate_credentials()
        assert caught.value.code == "tls_verification_failed"
        assert not api.requests

        make_backend(api, verify_tls=False).validate_credentials()
        assert [request.path for request in api.requests] == ["/version", "/nodes", "/nodes/pve/status"]


# Catalog


def test_catalog_lists_templates_node_and_sizes(proxmox_api) -> None:
    proxmox_api.create_vm_behind_back(vmid=150, name="not-a-template")
    backend = make_backend(proxmox_api, server_types=[{"name": "tiny", "vcpu": 1, "memory_mib": 512, "disk_gb": 5}])

    images = backend.list_images()
    locations = backend.list_locations()
    server_types = backend.list_server_types()

    assert [image.name for image in images] == ["ubuntu-24.04", "debian-12"]
    assert [location.code for location in locations] == ["pve"]
    assert [(item.name, item.vcpu, item.memory_mib, item.disk_gb) for item in server_types] == [("tiny", 1, 512, 5)]


# Create, boot, delete


def test_create_boot_and_delete_cycle(proxmox_api, session_sshd) -> None:
    backend = make_backend(proxmox_api)
    host_key = generate_keypair("host-42")
    tenant_key = generate_keypair("tenant key with spaces+plus/slash=").public_line
    platform_key = generate_keypair("platform").public_line
    spec = make_spec(42, keys=(tenant_key, platform_key), host_key=host_key)

    created = backend.create_server(spec)

    assert created.status == "starting"
    vmid = int(created.id)
    assert DEFAULT_VMID_RANGE[0] <= vmid <= DEFAULT_VMID_RANGE[1]
    vm = proxmox_api.vms[vmid]
    config = vm["config"]
    assert vm["status"] == "running"
    assert config["name"] == "cm-test-42"
    assert (config["cores"], config["memory"]) == ("2", "4096")
    assert "size=40G" in config["scsi0"]
    assert config["ciuser"] == "root"
    assert config["ipconfig0"] == "ip=dhcp"
    assert config["agent"] == "1"
    assert unquote(config["sshkeys"]).splitlines() == [tenant_key, platform_key]
    assert "cloudmarket-labels: " in config["description"]
    assert set(config["tags"].split(";")) == {
        "cloudmarket",
        label_tag("cloudmarket-contract", "42"),
        label_tag("cloudmarket-deployment", "test"),
    }
    [clone] = proxmox_api.requests_matching("POST", CLONE_PATH)
    assert clone.params["newid"] == [str(vmid)]
    assert clone.params["full"] == ["1"]
    assert session_sshd.authorized_keys() == [tenant_key, platform_key]

    ready = wait_until_ready(backend, created.id, spec)

    assert ready.ipv4 == "127.0.0.1"
    assert ready.labels == spec.labels
    assert session_sshd.host_public_key.split()[1] == host_key.public_line.split()[1]
    [command] = proxmox_api.guest_commands
    assert command.input_data == host_key.private_openssh
    assert proxmox_api.requests_matching("GET", rf"/nodes/pve/qemu/{vmid}/agent/network-get-interfaces", status=500)

    backend.delete_server(created.id, labels=spec.labels)

    assert vmid not in proxmox_api.vms
    assert proxmox_api.requests_matching("POST", rf"/nodes/pve/qemu/{vmid}/status/stop", status=200)
    [destroy] = proxmox_api.requests_matching("DELETE", rf"/nodes/pve/qemu/{vmid}", status=200)
    assert destroy.params["purge"] == ["1"]
    assert destroy.params["destroy-unreferenced-disks"] == ["1"]
    with pytest.raises(ServerNotFound):
        backend.get_server(created.id)
    backend.delete_server(created.id, labels=spec.labels)


def test_create_twice_clones_once(proxmox_api) -> None:
    spec = make_spec(7)

    first = make_backend(proxmox_api).create_server(spec)
    second = make_backend(proxmox_api).create_server(spec)

    assert first.id == second.id
    assert len(proxmox_api.requests_matching("POST", CLONE_PATH)) == 1
    assert len(proxmox_api.requests_matching("POST", r"/nodes/pve/qemu/\d+/status/start")) == 1
    assert list(proxmox_api.vms) == [int(first.id)]


def test_vm_id_derived_from_labels(proxmox_api) -> None:
    backend = make_backend(proxmox_api, vmid_range=(5000, 5999))

    first = backend.create_server(make_spec(1))
    second = backend.create_server(make_spec(2))
    backend.delete_server(first.id, labels=make_spec(1).labels)
    again = backend.create_server(make_spec(1))

    assert 5000 <= int(first.id) <= 5999
    assert first.id != second.id
    assert again.id == first.id


def test_lost_clone_response_retry_reuses_vm(proxmox_api) -> None:
    proxmox_api.add_fault("POST", CLONE_PATH, drop_connection=True, process=True)
    spec = make_spec(11)
    backend = make_backend(proxmox_api)

    with pytest.raises(TransientCloudError):
        backend.create_server(spec)
    [vmid] = proxmox_api.vms
    assert "tags" not in proxmox_api.vms[vmid]["config"]

    info = make_backend(proxmox_api).create_server(spec)

    assert info.id == str(vmid)
    assert len(proxmox_api.requests_matching("POST", CLONE_PATH)) == 1
    assert proxmox_api.vms[vmid]["status"] == "running"


def test_retry_waits_for_running_clone(proxmox_api) -> None:
    proxmox_api.task_seconds["qmclone"] = 30
    spec = make_spec(12)

    with pytest.raises(TransientCloudError, match="still running after 0 s") as caught:
        make_backend(proxmox_api, task_timeout=0.3).create_server(spec)
    assert caught.value.code == "task_timeout"
    [vmid] = proxmox_api.vms
    assert proxmox_api.vms[vmid]["config"]["lock"] == "clone"
    assert make_backend(proxmox_api).get_server(str(vmid)).status == "initializing"

    proxmox_api.finish_tasks_now()
    info = make_backend(proxmox_api).create_server(spec)

    assert info.id == str(vmid)
    assert len(proxmox_api.requests_matching("POST", CLONE_PATH)) == 1


def test_failed_clone_task_raises_and_leaves_no_vm(proxmox_api) -> None:
    proxmox_api.fail_next_task("qmclone", "clone failed: no space left on device")

    with pytest.raises(RequestRejected, match="no space left on device") as caught:
        make_backend(proxmox_api).create_server(make_spec(13))

    assert caught.value.code == "task_failed"
    assert proxmox_api.vms == {}


def test_failed_start_task_raises(proxmox_api) -> None:
    proxmox_api.fail_next_task("qmstart", "start failed: QEMU exited with code 1")

    with pytest.raises(RequestRejected, match="QEMU exited with code 1"):
        make_backend(proxmox_api).create_server(make_spec(14))

    [vm] = proxmox_api.vms.values()
    assert vm["status"] == "stopped"


def test_server_error_is_transient(proxmox_api) -> None:
    proxmox_api.add_fault("POST", CLONE_PATH, status=500, message="got timeout")

    with pytest.raises(TransientCloudError, match="got timeout"):
        make_backend(proxmox_api).create_server(make_spec(15))

    assert proxmox_api.vms == {}


def test_parameter_error_is_rejected(proxmox_api) -> None:
    spec = make_spec(16)
    bad = ServerSpec(**{**spec.__dict__, "name": "not a dns name"})

    with pytest.raises(RequestRejected, match="Parameter verification failed") as caught:
        make_backend(proxmox_api).create_server(bad)

    assert caught.value.status_code == 400
    assert "name" in str(caught.value)


def test_unknown_template_and_server_type_rejected(proxmox_api) -> None:
    backend = make_backend(proxmox_api)

    with pytest.raises(RequestRejected, match="no template named 'fedora-40'.*debian-12, ubuntu-24.04"):
        backend.create_server(make_spec(17, image="fedora-40"))
    with pytest.raises(RequestRejected, match="server type 'cx22' is not configured"):
        backend.create_server(make_spec(17, server_type="cx22"))

    assert proxmox_api.vms == {}


def test_taken_vm_ids_are_skipped(proxmox_api) -> None:
    backend = make_backend(proxmox_api, vmid_range=(5000, 5999))
    spec = make_spec(18)
    first_choice = next(backend.vmid_candidates(spec.labels))
    proxmox_api.create_vm_behind_back(vmid=first_choice, name="someone-else")
    proxmox_api.elsewhere_vmids.add(first_choice + 1 if first_choice < 5999 else 5000)

    info = backend.create_server(spec)

    assert int(info.id) not in (first_choice, first_choice + 1)
    assert proxmox_api.vms[first_choice]["config"]["name"] == "someone-else"
    assert len(proxmox_api.requests_matching("POST", CLONE_PATH)) == 2
    assert backend.find_servers(spec.labels)[0].id == info.id


def test_boot_disk_not_shrunk(proxmox_api) -> None:
    backend = make_backend(proxmox_api)

    info = backend.create_server(make_spec(19, server_type="pve-small"))

    config = proxmox_api.vms[int(info.id)]["config"]
    assert "size=20G" in config["scsi0"]
    tiny = make_backend(proxmox_api, server_types=[{"name": "tiny", "vcpu": 1, "memory_mib": 512, "disk_gb": 5}])
    other = tiny.create_server(make_spec(20, server_type="tiny"))
    assert "size=10G" in proxmox_api.vms[int(other.id)]["config"]["scsi0"]
    assert not proxmox_api.requests_matching("PUT", rf"/nodes/pve/qemu/{other.id}/resize")


def test_host_key_install_failure_raises(proxmox_api) -> None:
    backend = make_backend(proxmox_api)
    spec = make_spec(21)
    info = backend.create_server(spec)
    proxmox_api.fail_next_guest_command(127, "sh: systemctl: not found")

    with pytest.raises(RequestRejected, match="exit code 127: sh: systemctl: not found"):
        wait_until_ready(backend, info.id, spec)


def test_slow_guest_agent_reports_starting(proxmox_api) -> None:
    proxmox_api.agent_delay = 1.5
    backend = make_backend(proxmox_api)
    spec = make_spec(22)
    info = backend.create_server(spec)

    early = backend.get_server(info.id)

    assert early.status == "starting"
    assert early.ipv4 is None
    assert not early.is_running
    ready = wait_until_ready(backend, info.id, spec)
    assert ready.ipv4 == "127.0.0.1"


# Lookup and deletion


def test_find_servers_by_labels(proxmox_api) -> None:
    backend = make_backend(proxmox_api)
    one = backend.create_server(make_spec(31))
    two = backend.create_server(make_spec(32))
    proxmox_api.create_vm_behind_back(vmid=151, name="foreign")
    proxmox_api.create_vm_behind_back(
        vmid=152, name="forged-tags", tags=label_tag("cloudmarket-deployment", "test"), description="no labels here"
    )

    deployment = backend.find_servers({"cloudmarket-deployment": "test"})
    contract = backend.find_servers({"cloudmarket-contract": "32", "cloudmarket-deployment": "test"})
    everything = backend.find_servers({})

    assert [server.id for server in deployment] == sorted([one.id, two.id], key=int)
    assert [server.id for server in contract] == [two.id]
    assert contract[0].labels == {"cloudmarket-contract": "32", "cloudmarket-deployment": "test"}
    assert contract[0].status == "running"
    assert [server.id for server in everything] == [server.id for server in deployment]
    assert backend.find_servers({"cloudmarket-deployment": "other"}) == []


def test_find_servers_finds_vm_without_tags(proxmox_api) -> None:
    backend = make_backend(proxmox_api)
    spec = make_spec(33)
    vmid = next(backend.vmid_candidates(spec.labels))
    proxmox_api.create_vm_behind_back(vmid=vmid, name=spec.name, description=labels_description(spec.labels))

    found = backend.find_servers(spec.labels)

    assert [server.id for server in found] == [str(vmid)]


def test_delete_refuses_vm_without_labels(proxmox_api) -> None:
    proxmox_api.create_vm_behind_back(vmid=153, name="reused-id", status="running")
    backend = make_backend(proxmox_api)

    with pytest.raises(RequestRejected, match="does not record these labels"):
        backend.delete_server("153", labels={"cloudmarket-contract": "1"})
    with pytest.raises(RequestRejected, match="template"):
        backend.delete_server("9000")

    assert 153 in proxmox_api.vms
    assert not proxmox_api.requests_matching("DELETE", r"/nodes/pve/qemu/\d+")


def test_delete_other_contracts_vm_refused(proxmox_api) -> None:
    backend = make_backend(proxmox_api)
    info = backend.create_server(make_spec(34))

    with pytest.raises(RequestRejected, match="cloudmarket-contract=34"):
        backend.delete_server(info.id, labels={"cloudmarket-contract": "35", "cloudmarket-deployment": "test"})

    assert int(info.id) in proxmox_api.vms


def test_delete_locked_vm_is_transient(proxmox_api) -> None:
    proxmox_api.task_seconds["qmclone"] = 30
    spec = make_spec(36)
    with pytest.raises(TransientCloudError):
        make_backend(proxmox_api, task_timeout=0.2).create_server(spec)
    [vmid] = proxmox_api.vms

    with pytest.raises(TransientCloudError, match=r"locked \(clone\)"):
        make_backend(proxmox_api).delete_server(str(vmid), labels=spec.labels)

    assert vmid in proxmox_api.vms


def test_failed_destroy_task_is_transient(proxmox_api) -> None:
    backend = make_backend(proxmox_api)
    spec = make_spec(37)
    info = backend.create_server(spec)
    proxmox_api.fail_next_task("qmdestroy", "can't remove disk: storage busy")

    with pytest.raises(TransientCloudError, match="storage busy"):
        backend.delete_server(info.id, labels=spec.labels)

    backend.delete_server(info.id, labels=spec.labels)
    assert proxmox_api.vms == {}


def test_get_server_unknown_ids(proxmox_api) -> None:
    backend = make_backend(proxmox_api)

    with pytest.raises(ServerNotFound):
        backend.get_server("123456")
    with pytest.raises(ServerNotFound):
        backend.get_server("abc")


# Cloud accounts


pytestmark_db = pytest.mark.django_db


def make_owner(email: str = "pve-owner@example.com"):
    from marketplace.models import User

    return User.objects.create_user(email=email, password="owner-password-1")


def create_account(api, **overrides) -> CloudAccount:
    options = {
        "label": "Rack 1",
        "api_url": api.url,
        "token_id": TEST_PROXMOX_TOKEN_ID,
        "token_secret": TEST_PROXMOX_TOKEN_SECRET,
        "node": "pve",
    }
    options.update(overrides)
    if "owner" not in options:
        options["owner"] = make_owner()
    return cloud_account_create_proxmox(**options)


@pytestmark_db
def test_account_created_after_validation(proxmox_api) -> None:
    account = create_account(proxmox_api, vmid_min=7000, vmid_max=7999)

    account.refresh_from_db()
    assert account.backend == Backend.PROXMOX
    assert account.validation_status == ValidationStatus.VALID
    assert account.proxmox_verify_tls is True
    assert TEST_PROXMOX_TOKEN_SECRET not in account.token_ciphertext
    assert account.get_token() == TEST_PROXMOX_TOKEN_SECRET
    backend = get_backend(account)
    assert isinstance(backend, ProxmoxBackend)
    assert backend.vmid_range == (7000, 7999)
    assert [request.path for request in proxmox_api.requests] == ["/version", "/nodes", "/nodes/pve/status"]


@pytestmark_db
@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"token_secret": "wrong-secret"}, "token", "invalid token value"),
        ({"token_secret": ""}, "token", "secret is required"),
        ({"token_id": "root@pam"}, "proxmox_token_id", "USER@REALM!TOKENNAME"),
        ({"node": "pve7"}, "proxmox_node", "'pve7' was not found"),
        ({"api_url": "http://pve.example.com:8006"}, "proxmox_api_url", "unencrypted"),
        ({"api_url": "http://127.0.0.1:9"}, "proxmox_api_url", "Could not check the account"),
        ({"vmid_min": 10, "vmid_max": 20}, "proxmox_vmid_min", "between 100"),
        ({"server_types": [{"name": "x", "vcpu": 0, "memory_mib": 512, "disk_gb": 5}]}, "proxmox_server_types", "vcpu"),
    ],
)
def test_account_rejected_before_saving(proxmox_api, overrides, field, message) -> None:
    with pytest.raises(ValidationError) as caught:
        create_account(proxmox_api, **overrides)

    assert field in caught.value.message_dict
    assert message in " ".join(caught.value.message_dict[field])
    assert "wrong-secret" not in str(caught.value)
    assert not CloudAccount.objects.exists()


@pytestmark_db
def test_account_tls_failure_names_verification_field() -> None:
    from tests.peers.proxmox_api import ProxmoxApiServer

    owner = make_owner()
    with ProxmoxApiServer(tokens={TEST_PROXMOX_TOKEN_ID: TEST_PROXMOX_TOKEN_SECRET}, tls=True) as api:
        with pytest.raises(ValidationError) as caught:
            create_account(api, owner=owner)
        account = create_account(api, owner=owner, verify_tls=False)

    assert "proxmox_verify_tls" in caught.value.message_dict
    assert account.validation_status == ValidationStatus.VALID
    assert account.proxmox_verify_tls is False


@pytestmark_db
def test_generic_create_points_to_proxmox_form() -> None:
    with pytest.raises(ValidationError) as caught:
        cloud_account_create(owner=make_owner(), backend="proxmox", label="Rack", token="secret")

    assert "Proxmox VE form" in caught.value.message_dict["backend"][0]


@pytestmark_db
def test_revoked_token_marks_account_invalid(proxmox_api) -> None:
    account = create_account(proxmox_api)
    proxmox_api.tokens.clear()

    account = cloud_account_validate(account=account)

    assert account.validation_status == ValidationStatus.INVALID
    assert "no such token" in account.last_error
    assert TEST_PROXMOX_TOKEN_SECRET not in account.last_error


@pytestmark_db
def test_removed_node_marks_account_invalid(proxmox_api) -> None:
    account = create_account(proxmox_api)
    CloudAccount.objects.filter(pk=account.pk).update(proxmox_node="pve2")
    account.refresh_from_db()

    account = cloud_account_validate(account=account)

    assert account.validation_status == ValidationStatus.INVALID
    assert "'pve2' was not found" in account.last_error


@pytestmark_db
def test_reconciler_reports_orphan_vm(proxmox_api, settings) -> None:
    from provisioning.models import OrphanServer
    from provisioning.reconcile import reconcile_account

    settings.DEPLOYMENT_NAME = "test"
    settings.PROVISIONING_POLL_INTERVAL = 0.05
    account = create_account(proxmox_api)
    backend = get_backend(account)
    orphan = backend.create_server(make_spec(999_001))
    proxmox_api.create_vm_behind_back(vmid=154, name="foreign")

    report = reconcile_account(account=account)

    assert report.servers_seen == 1
    assert report.orphans_reported == [orphan.id]
    row = OrphanServer.objects.get()
    assert row.server_id == orphan.id
    assert row.reason == "unknown_contract"


@pytestmark_db
def test_admin_adds_and_revalidates_proxmox_account(proxmox_api) -> None:
    from django.test import Client
    from django.urls import reverse

    from tests.factories import make_superuser

    client = Client()
    client.force_login(make_superuser(email="staff@example.com"))
    owner = make_owner()
    form = {
        "owner": owner.pk,
        "backend": "proxmox",
        "label": "Rack in admin",
        "new_token": TEST_PROXMOX_TOKEN_SECRET,
        "proxmox_api_url": proxmox_api.url,
        "proxmox_token_id": TEST_PROXMOX_TOKEN_ID,
        "proxmox_node": "pve",
        "proxmox_verify_tls": "on",
        "proxmox_server_types": "[]",
        "proxmox_ipconfig0": "ip=dhcp",
        "_save": "Save",
    }

    added = client.post(reverse("admin:provisioning_cloudaccount_add"), form)
    account = CloudAccount.objects.get(owner=owner)
    page = client.get(reverse("admin:provisioning_cloudaccount_change", args=[account.pk]))
    changed = client.post(
        reverse("admin:provisioning_cloudaccount_change", args=[account.pk]),
        {**form, "proxmox_node": "pve3", "new_token": ""},
    )
    account.refresh_from_db()

    assert added.status_code == 302
    assert page.status_code == 200
    assert b'name="proxmox_node"' in page.content
    assert TEST_PROXMOX_TOKEN_SECRET.encode() not in page.content
    assert changed.status_code == 302
    assert account.proxmox_node == "pve3"
    assert account.validation_status == ValidationStatus.INVALID
    assert "'pve3' was not found" in account.last_error
    assert account.get_token() == TEST_PROXMOX_TOKEN_SECRET


@pytestmark_db
def test_admin_rejects_invalid_proxmox_settings(proxmox_api) -> None:
    from django.test import Client
    from django.urls import reverse

    from tests.factories import make_superuser

    client = Client()
    client.force_login(make_superuser(email="staff@example.com"))

    response = client.post(
        reverse("admin:provisioning_cloudaccount_add"),
        {
            "owner": make_owner().pk,
            "backend": "proxmox",
            "label": "Bad rack",
            "new_token": TEST_PROXMOX_TOKEN_SECRET,
            "proxmox_api_url": "http://pve.example.com:8006",
            "proxmox_token_id": "root",
            "proxmox_node": "pve",
            "proxmox_server_types": "[]",
            "_save": "Save",
        },
    )

    assert response.status_code == 200
    assert "unencrypted" in response.content.decode()
    assert "USER@REALM!TOKENNAME" in response.content.decode()
    assert not CloudAccount.objects.exists()
