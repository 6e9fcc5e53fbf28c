"""The real agent process (`python -m provisioning.agent`) against the real platform (live_server).

The Proxmox provisioner runs against the fake Proxmox VE API, whose guest agent installs the
host key into the loopback sshd. The script provisioner runs a real script that keeps its VMs
in a JSON file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest
from django.urls import reverse

from marketplace.models import Contract, ContractEvent, ContractStatus
from marketplace.selectors import catalog_offerings
from marketplace.services import contracts as contract_services
from provisioning.agent_services import agent_revoke, agent_setup_token_create
from provisioning.models import Agent, AgentSetupToken, HealthCheck, HealthSource, HealthStatus
from recipes.models import RecipeRun, RecipeRunStatus
from tests.agent_helpers import make_agent, make_pool
from tests.conftest import REPO_ROOT, TEST_PROXMOX_TOKEN_ID, TEST_PROXMOX_TOKEN_SECRET
from tests.factories import make_contract, make_recipe, make_user

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]

FAST_LOOP = {
    "heartbeat_interval": 0.5, "poll_interval": 0.3, "reconcile_interval": 1.0, "health_interval": 0.5, "orphan_grace_seconds": 0.0,
}


def wait_for(condition: Callable[[], object], *, timeout: float = 30.0, what: str = "condition", log=None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    tail = log() if log else ""
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}.\n{tail}")


def run_agent_command(*args: str, config: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "provisioning.agent", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, check=False,
    )


class AgentProcess:
    """One `run` process with its output in a log file."""

    def __init__(self, config: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "provisioning.agent", "--config", str(config), "run"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )

    def log(self) -> str:
        return self.log_path.read_text()[-6000:]

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode


@pytest.fixture
def agents(tmp_path):
    started: list[AgentProcess] = []

    def start(config: Path, name: str = "agent") -> AgentProcess:
        process = AgentProcess(config, tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def set_up_agent(live_server, pool, config: Path, provisioner: dict, *, name: str) -> Path:
    """Run `setup` with a fresh token, then write the provisioner settings and fast loop intervals."""
    _row, token = agent_setup_token_create(pool=pool, actor=pool.cloud_account.owner)
    result = run_agent_command(
        "setup", "--platform", live_server.url, "--token", token, "--name", name,
        "--provisioner", json.dumps(provisioner), config=config,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(config.read_text())
    data.update(FAST_LOOP)
    config.write_text(json.dumps(data))
    return config


def proxmox_settings(proxmox_api, session_sshd) -> dict:
    return {
        "type": "proxmox",
        "api_url": proxmox_api.url,
        "token_id": TEST_PROXMOX_TOKEN_ID,
        "token_secret": TEST_PROXMOX_TOKEN_SECRET,
        "node": proxmox_api.node,
        "ssh_port": session_sshd.port,
        "poll_interval": 0.2,
        "boot_timeout": 30,
    }


def contract_status(contract_id: int) -> str:
    return Contract.objects.get(pk=contract_id).status


def host_key_presented(port: int) -> str:
    """Return the host key the loopback sshd presents, as an OpenSSH public key line without comment."""
    import asyncio

    async def fetch() -> str:
        key = await asyncssh.get_server_host_key("127.0.0.1", port, server_host_key_algs=["ssh-ed25519"])
        return key.export_public_key("openssh").decode().strip()

    return asyncio.run(fetch())


# --- setup ----------------------------------------------------------------------------------


def test_setup_writes_config_and_token_works_once(live_server, tmp_path):
    _provider, pool, _offering = make_pool()
    _row, token = agent_setup_token_create(pool=pool, actor=pool.cloud_account.owner)
    config = tmp_path / "agent.json"

    first = run_agent_command("setup", "--platform", live_server.url, "--token", token, "--name", "host-1", config=config)
    second = run_agent_command(
        "setup", "--platform", live_server.url, "--token", token, "--name", "host-2", config=tmp_path / "second.json"
    )

    assert first.returncode == 0, first.stdout + first.stderr
    data = json.loads(config.read_text())
    assert data["credential"].startswith("cmagent_")
    assert data["provisioner"] == {"type": "proxmox"}
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert second.returncode == 1
    assert "already used" in second.stdout
    assert not (tmp_path / "second.json").exists()
    assert Agent.objects.filter(pool=pool).count() == 1
    assert AgentSetupToken.objects.get().used_at is not None


def test_doctor_and_test_provision(live_server, proxmox_api, session_sshd, tmp_path):
    _provider, pool, _offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")

    doctor = run_agent_command("doctor", config=config)
    test = run_agent_command("test-provision", "--image", "ubuntu-24.04", "--contract-id", "7", config=config)

    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"ok   platform: {live_server.url} is reachable and accepted the credential" in doctor.stdout
    assert f"ok   hypervisor: proxmox at {proxmox_api.url}" in doctor.stdout
    assert test.returncode == 0, test.stdout + test.stderr
    assert "test provisioning succeeded" in test.stdout
    assert len(proxmox_api.requests_matching("POST", r".*/qemu/\d+/clone")) == 1
    assert proxmox_api.vms == {}


def test_doctor_reports_unreachable_hypervisor(live_server, tmp_path):
    _provider, pool, _offering = make_pool()
    settings = {"type": "proxmox", "api_url": "http://127.0.0.1:9", "token_id": "a@pve!b", "token_secret": "x", "node": "pve"}
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", settings, name="host-1")

    doctor = run_agent_command("doctor", config=config)

    assert doctor.returncode == 1
    assert "FAIL hypervisor: proxmox at http://127.0.0.1:9/api2/json is unreachable" in doctor.stdout
    assert "ok   platform" in doctor.stdout


def test_doctor_reports_unreachable_platform(live_server, proxmox_api, session_sshd, tmp_path):
    _provider, pool, _offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    config.write_text(json.dumps({**json.loads(config.read_text()), "platform_url": "http://127.0.0.1:9", "request_timeout": 5}))

    doctor = run_agent_command("doctor", config=config)

    assert doctor.returncode == 1
    assert "FAIL platform: http://127.0.0.1:9 is unreachable; check the address, DNS and firewall" in doctor.stdout
    assert "ok   hypervisor" in doctor.stdout


def test_doctor_reports_revoked_credential(live_server, proxmox_api, session_sshd, tmp_path):
    _provider, pool, _offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    agent_revoke(agent=Agent.objects.get(pool=pool), actor=pool.cloud_account.owner)

    doctor = run_agent_command("doctor", config=config)

    assert doctor.returncode == 1
    assert f"FAIL platform: {live_server.url} is reachable but rejected the credential" in doctor.stdout


# --- the Proxmox provisioner end to end --------------------------------------------------------


def test_proxmox_agent_full_lifecycle(live_server, proxmox_api, session_sshd, tmp_path, agents):
    _provider, pool, offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    assert offering not in catalog_offerings()
    agent = agents(config)

    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)
    stored = Agent.objects.get(pool=pool)
    assert stored.capabilities["provisioner"] == "proxmox"
    assert "ubuntu-24.04" in stored.capabilities["images"]

    contract = make_contract(tenant=make_user(), offering=offering)
    wait_for(lambda: contract_status(contract.pk) == ContractStatus.ACTIVE, what="the rental to become active", log=agent.log)
    contract.refresh_from_db()
    vmid = int(contract.cloud_server_id)
    assert vmid in proxmox_api.vms
    assert proxmox_api.vms[vmid]["config"]["name"] == f"cm-local-{contract.pk}"
    assert contract.ip_address == "127.0.0.1"
    assert contract.ssh_port == session_sshd.port
    assert host_key_presented(session_sshd.port) == " ".join(contract.host_public_key.split()[:2])
    steps = list(ContractEvent.objects.filter(contract=contract).exclude(step="").values_list("step", flat=True))
    assert "waiting_for_boot" in steps

    contract_services.contract_terminate(contract=contract, actor=None, actor_label="staff", reason="Test ends.")
    wait_for(lambda: contract_status(contract.pk) == ContractStatus.TERMINATED, what="termination", log=agent.log)
    assert vmid not in proxmox_api.vms

    # Reconciliation: a VM named for the ended contract is deleted; one for an unknown id is kept.
    proxmox_api.create_vm_behind_back(vmid=vmid, name=f"cm-local-{contract.pk}")
    proxmox_api.create_vm_behind_back(vmid=vmid + 1, name="cm-local-999999")
    wait_for(lambda: vmid not in proxmox_api.vms, what="the orphan VM to be deleted", log=agent.log)
    wait_for(lambda: "unknown to the platform" in agent.log(), what="the unknown VM to be reported", log=agent.log)
    assert vmid + 1 in proxmox_api.vms


def test_cancel_during_provisioning_deletes_vm(live_server, proxmox_api, session_sshd, tmp_path, agents):
    _provider, pool, offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    proxmox_api.agent_delay = 3.0
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)

    contract = make_contract(tenant=make_user(), offering=offering)
    wait_for(
        lambda: Contract.objects.get(pk=contract.pk).provisioning_step == "waiting_for_boot",
        what="the VM to boot", log=agent.log,
    )
    contract_services.contract_cancel(contract=Contract.objects.get(pk=contract.pk), actor=contract.tenant)

    wait_for(lambda: contract_status(contract.pk) == ContractStatus.TERMINATED, what="termination", log=agent.log)
    assert proxmox_api.vms == {}
    assert not ContractEvent.objects.filter(contract=contract, to_status=ContractStatus.ACTIVE).exists()


def test_hypervisor_failure_retried_then_succeeds(live_server, proxmox_api, session_sshd, tmp_path, agents, settings):
    settings.PROVISIONING_BACKOFF_BASE_SECONDS = 0.2
    _provider, pool, offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    proxmox_api.add_fault("POST", r".*/qemu/\d+/clone", status=500, message="can't lock file", times=1)
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)

    contract = make_contract(tenant=make_user(), offering=offering)

    wait_for(lambda: contract_status(contract.pk) == ContractStatus.ACTIVE, what="the rental to become active", log=agent.log)
    contract.refresh_from_db()
    assert contract.attempts == 2
    assert ContractEvent.objects.filter(contract=contract, reason__contains="hypervisor could not be reached").exists()


def test_missing_template_fails_rental(live_server, proxmox_api, session_sshd, tmp_path, agents):
    _provider, pool, offering = make_pool()
    offering.image = "windows-95"
    offering.save()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)

    contract = make_contract(tenant=make_user(), offering=offering)

    wait_for(lambda: contract_status(contract.pk) == ContractStatus.FAILED, what="the rental to fail", log=agent.log)
    contract.refresh_from_db()
    assert "windows-95" in contract.status_reason
    assert contract.payments.get().refunds.exists()


def test_two_agents_never_share_contract(live_server, proxmox_api, session_sshd, tmp_path, agents):
    _provider, pool, offering = make_pool()
    settings = proxmox_settings(proxmox_api, session_sshd)
    configs = []
    for name in ("first", "second"):
        config = set_up_agent(live_server, pool, tmp_path / f"{name}.json", settings, name=name)
        # Each agent may take every contract, so both compete for all of them.
        config.write_text(json.dumps({**json.loads(config.read_text()), "max_parallel": 6}))
        configs.append(config)
    first = agents(configs[0], name="first")
    second = agents(configs[1], name="second")
    wait_for(lambda: Agent.objects.filter(pool=pool, last_heartbeat_at__isnull=False).count() == 2, what="two heartbeats")
    contracts = [make_contract(tenant=make_user(), offering=offering, pay=False) for _ in range(6)]

    for contract in contracts:
        contract_services.contract_pay(contract=contract, actor=contract.tenant)

    def all_active() -> bool:
        return all(contract_status(contract.pk) == ContractStatus.ACTIVE for contract in contracts)

    wait_for(all_active, timeout=90, what="six active rentals", log=lambda: first.log() + second.log())
    clones = proxmox_api.requests_matching("POST", r".*/qemu/\d+/clone")
    assert len(clones) == 6
    for contract in contracts:
        activations = ContractEvent.objects.filter(contract=contract, to_status=ContractStatus.ACTIVE)
        assert activations.count() == 1
        assert Contract.objects.get(pk=contract.pk).attempts == 1
    workers = set(
        ContractEvent.objects.filter(contract__in=contracts, to_status=ContractStatus.ACTIVE).values_list("actor_label", flat=True)
    )
    assert workers <= {f"agent:{agent.pk}" for agent in Agent.objects.filter(pool=pool)}


def test_revoked_agent_stops(live_server, proxmox_api, session_sshd, tmp_path, agents):
    _provider, pool, offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)

    agent_revoke(agent=Agent.objects.get(pool=pool), actor=pool.cloud_account.owner)

    wait_for(lambda: agent.process.poll() is not None, timeout=15, what="the agent to exit", log=agent.log)
    assert agent.process.returncode == 3
    assert "revoked" in agent.log()
    assert offering not in catalog_offerings()


# --- recipes run by the agent ----------------------------------------------------------------


RECIPE_SCRIPT = 'for i in 1 2 3; do echo "line $i of the recipe"; sleep 0.2; done\necho "recipe done"\n'


def start_recipe_agent(live_server, proxmox_api, session_sshd, tmp_path, agents, *, script: str, **config_overrides):
    """Start a Proxmox agent whose pool's offering has a recipe with `script`; return the offering and the agent."""
    provider, pool, offering = make_pool()
    offering.recipe_version = make_recipe(author=provider.user, script=script)
    offering.save()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    config.write_text(json.dumps({**json.loads(config.read_text()), **config_overrides}))
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)
    return offering, agent


def test_agent_runs_recipe_over_ssh(live_server, proxmox_api, session_sshd, tmp_path, agents, settings):
    settings.PROVISIONING_SSH_USERNAME = session_sshd.username
    offering, agent = start_recipe_agent(live_server, proxmox_api, session_sshd, tmp_path, agents, script=RECIPE_SCRIPT)

    contract = make_contract(tenant=make_user(), offering=offering)

    wait_for(lambda: contract_status(contract.pk) == ContractStatus.ACTIVE, what="the rental to become active", log=agent.log)
    contract.refresh_from_db()
    run = RecipeRun.objects.get(contract=contract)
    assert run.status == RecipeRunStatus.SUCCEEDED
    assert run.exit_code == 0
    assert run.executed is True
    assert run.duration_seconds > 0.5
    assert "line 1 of the recipe\nline 2 of the recipe\nline 3 of the recipe\nrecipe done\n" == run.output
    assert run.output_bytes == len(run.output.encode())
    sequences = list(run.chunks.values_list("sequence", flat=True))
    assert sequences == list(range(len(sequences)))
    assert contract.platform_public_key.split()[1] in " ".join(session_sshd.authorized_keys())
    steps = list(ContractEvent.objects.filter(contract=contract).exclude(step="").values_list("step", flat=True))
    assert "running_recipe" in steps


def test_agent_recipe_failure_fails_rental(live_server, proxmox_api, session_sshd, tmp_path, agents, settings):
    settings.PROVISIONING_SSH_USERNAME = session_sshd.username
    offering, agent = start_recipe_agent(
        live_server, proxmox_api, session_sshd, tmp_path, agents, script="echo starting\nfalse\necho never printed\n"
    )

    contract = make_contract(tenant=make_user(), offering=offering)

    wait_for(lambda: contract_status(contract.pk) == ContractStatus.FAILED, what="the rental to fail", log=agent.log)
    contract.refresh_from_db()
    run = RecipeRun.objects.get(contract=contract)
    assert contract.status_reason == "The recipe failed with exit code 1."
    assert run.status == RecipeRunStatus.FAILED
    assert run.exit_code == 1
    assert run.output == "starting\n"
    assert contract.payments.get().refunds.exists()
    assert not ContractEvent.objects.filter(contract=contract, to_status=ContractStatus.ACTIVE).exists()


def test_agent_recipe_rejects_wrong_host_key(live_server, proxmox_api, session_sshd, tmp_path, agents, settings):
    settings.PROVISIONING_SSH_USERNAME = session_sshd.username
    # The guest agent does not install the generated host key, so the sshd keeps presenting its old one.
    proxmox_api.skip_host_key_install = True
    offering, agent = start_recipe_agent(
        live_server, proxmox_api, session_sshd, tmp_path, agents, script="echo ready\n", ssh_wait_timeout=2
    )

    contract = make_contract(tenant=make_user(), offering=offering)

    wait_for(lambda: contract_status(contract.pk) == ContractStatus.FAILED, what="the rental to fail", log=agent.log)
    contract.refresh_from_db()
    assert contract.status_reason.startswith("The recipe run failed over SSH: SSH on 127.0.0.1")
    assert "does not match the key generated for this server" in contract.status_reason
    assert RecipeRun.objects.get(contract=contract).exit_code is None


# --- health reports ---------------------------------------------------------------------------


def test_agent_reports_health(live_server, proxmox_api, session_sshd, tmp_path, agents, settings, client):
    # A few seconds of checks cover a tiny part of a day, so allow uptime from that little.
    settings.HEALTH_UPTIME_MIN_COVERAGE = 0.000001
    _provider, pool, offering = make_pool()
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", proxmox_settings(proxmox_api, session_sshd), name="host-1")
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)
    contract = make_contract(tenant=make_user(), offering=offering)
    wait_for(lambda: contract_status(contract.pk) == ContractStatus.ACTIVE, what="the rental to become active", log=agent.log)
    vmid = int(Contract.objects.get(pk=contract.pk).cloud_server_id)

    wait_for(
        lambda: HealthCheck.objects.filter(contract=contract, status=HealthStatus.UP).count() >= 2,
        what="two up reports", log=agent.log,
    )
    proxmox_api.set_vm_status_behind_back(vmid, "stopped")
    down = wait_for(
        lambda: HealthCheck.objects.filter(contract=contract, status=HealthStatus.DOWN).first(),
        what="a down report", log=agent.log,
    )

    up = HealthCheck.objects.filter(contract=contract, status=HealthStatus.UP).first()
    assert up.source == HealthSource.AGENT
    assert up.hypervisor_state == "running"
    assert up.latency_ms is not None
    assert down.source == HealthSource.AGENT
    assert down.hypervisor_state == "stopped"
    assert down.latency_ms is None
    assert f"VM {vmid} as stopped" in down.detail
    assert not HealthCheck.objects.filter(contract=contract, source=HealthSource.PLATFORM).exists()
    client.force_login(contract.tenant)
    body = client.get(reverse("api-rental-health", kwargs={"public_id": contract.public_id})).json()
    assert 0 < body["uptime"][0]["uptime_percent"] < 100
    assert body["recent_checks"][0]["source"] == "agent"
    html = client.get(contract.get_absolute_url()).content.decode()
    assert 'id="health-heading"' in html
    assert re.search(r"\d+\.\d+ %", html)


def test_health_reports_rejected_per_item(live_server, tmp_path):
    from provisioning.agent.client import PlatformClient, PlatformError

    _provider, pool, offering = make_pool()
    agent, credential = make_agent(pool)
    own = make_contract(tenant=make_user(), offering=offering)
    # Test setup only: the rental runs on a VM.
    Contract.objects.filter(pk=own.pk).update(status=ContractStatus.ACTIVE, ip_address="127.0.0.1", cloud_server_id="100001")
    waiting = make_contract(tenant=make_user(), offering=offering)
    _other_provider, other_pool, other_offering = make_pool(name="Other rack")
    make_agent(other_pool)
    foreign = make_contract(tenant=make_user(), offering=other_offering)
    client = PlatformClient(base_url=live_server.url, credential=credential)
    now = datetime.now(UTC).isoformat()

    results = client.health(
        [
            {"contract_id": own.pk, "checked_at": now, "up": True, "latency_ms": 1.5, "hypervisor_state": "running"},
            {"contract_id": foreign.pk, "checked_at": now, "up": True, "latency_ms": 1.5},
            {"contract_id": 999999, "checked_at": now, "up": False},
            {"contract_id": waiting.pk, "checked_at": now, "up": False},
        ]
    )
    with pytest.raises(PlatformError) as invalid:
        client.health([{"contract_id": own.pk, "checked_at": "yesterday", "up": True}])

    assert [result["accepted"] for result in results] == [True, False, False, False]
    assert results[0]["health_check_id"] == HealthCheck.objects.get(contract=own).pk
    assert f"No contract of agent pool {pool.pk} has id {foreign.pk}" in results[1]["reason"]
    assert "has id 999999" in results[2]["reason"]
    assert f"Contract {waiting.pk} is provisioning" in results[3]["reason"]
    assert not HealthCheck.objects.filter(contract=foreign).exists()
    assert invalid.value.status == 400
    assert "(got 'yesterday')" in invalid.value.body["reports"]["0"]["checked_at"][0]


# --- the script provisioner ------------------------------------------------------------------

VM_SCRIPT = textwrap.dedent(
    """\
    #!{python}
    # Keeps "VMs" in a JSON file; speaks the script provisioner's JSON protocol.
    import json, os, sys
    state_path = {state!r}
    try:
        with open(state_path) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        state = {{}}
    request = json.load(sys.stdin)
    action = request["action"]
    contract = request.get("contract") or {{}}
    if action == "provision":
        if contract["image"] == "broken":
            print(json.dumps({{"error": {{"reason_code": "image_not_found", "message": "no image broken here"}}}}))
            sys.exit(1)
        server_id = "vm-" + str(contract["id"])
        state[server_id] = {{"name": contract["name"], "vcpu": contract["vcpu"]}}
        print("created " + server_id, file=sys.stderr)
        # The image "named" makes the script return a host name, which the platform rejects.
        address = "vm.example.internal" if contract["image"] == "named" else "192.0.2.7"
        result = {{"server_id": server_id, "address": address, "port": 2200, "host_public_key": {host_key!r}}}
    elif action == "terminate":
        state.pop(contract.get("cloud_server_id") or "vm-" + str(contract["id"]), None)
        result = {{}}
    elif action == "list":
        result = {{"servers": [{{"server_id": key, "name": value["name"]}} for key, value in state.items()]}}
    elif action == "state":
        result = {{"state": "running" if contract["cloud_server_id"] in state else "missing"}}
    else:
        result = {{"state": "ok", "free": {{"vcpu": 8 - len(state)}}}}
    if action in ("provision", "terminate"):
        # Replaced whole, because the agent runs other actions and the test reads the file meanwhile.
        with open(state_path + ".tmp", "w") as handle:
            json.dump(state, handle)
        os.replace(state_path + ".tmp", state_path)
    print(json.dumps(result))
    """
)


def write_vm_script(tmp_path: Path) -> tuple[Path, Path]:
    """Write VM_SCRIPT as an executable; return it and the JSON file it keeps its VMs in."""
    from tests.factories import ssh_public_key

    state = tmp_path / "vms.json"
    script = tmp_path / "vm-script"
    script.write_text(VM_SCRIPT.format(python=sys.executable, state=str(state), host_key=ssh_public_key("root@vm")))
    script.chmod(0o755)
    return script, state


def test_script_provisioner_lifecycle(live_server, tmp_path, agents):
    _provider, pool, offering = make_pool(provisioner_type="script")
    script, state = write_vm_script(tmp_path)
    settings = {"type": "script", "command": [str(script)], "images": ["ubuntu-24.04", "broken"]}
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", settings, name="host-1")
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)

    contract = make_contract(tenant=make_user(), offering=offering)
    wait_for(lambda: contract_status(contract.pk) == ContractStatus.ACTIVE, what="the rental to become active", log=agent.log)
    contract.refresh_from_db()
    assert contract.cloud_server_id == f"vm-{contract.pk}"
    assert contract.ip_address == "192.0.2.7"
    assert contract.ssh_port == 2200
    assert json.loads(state.read_text())[f"vm-{contract.pk}"]["vcpu"] == contract.vcpu
    wait_for(lambda: Agent.objects.get(pool=pool).free_resources.get("vcpu") == 7, what="a heartbeat with free resources")
    # The script's "state" result counts: 192.0.2.7 is unreachable, so the report is down with state "running".
    check = wait_for(lambda: HealthCheck.objects.filter(contract=contract).first(), what="a health report", log=agent.log)
    assert check.source == HealthSource.AGENT
    assert check.hypervisor_state == "running"

    contract_services.contract_terminate(contract=contract, actor=None, actor_label="staff", reason="Test ends.")
    wait_for(lambda: contract_status(contract.pk) == ContractStatus.TERMINATED, what="termination", log=agent.log)
    assert json.loads(state.read_text()) == {}
    assert f"created vm-{contract.pk}" in agent.log()

    offering.image = "broken"
    offering.save()
    failing = make_contract(tenant=make_user(), offering=offering)
    wait_for(lambda: contract_status(failing.pk) == ContractStatus.FAILED, what="the rental to fail", log=agent.log)
    assert "no image broken here" in Contract.objects.get(pk=failing.pk).status_reason


def test_rejected_vm_details_fail_rental(live_server, tmp_path, agents):
    _provider, pool, offering = make_pool(provisioner_type="script")
    offering.image = "named"
    offering.save()
    script, state = write_vm_script(tmp_path)
    settings = {"type": "script", "command": [str(script)], "images": ["named"]}
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", settings, name="host-1")
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)

    contract = make_contract(tenant=make_user(), offering=offering)

    wait_for(lambda: contract_status(contract.pk) == ContractStatus.FAILED, what="the rental to fail", log=agent.log)
    contract.refresh_from_db()
    assert "Enter a valid IPv4 or IPv6 address" in contract.status_reason
    assert contract.cloud_server_id == f"vm-{contract.pk}"
    # Reconciliation returns "terminate" for the failed rental's VM, and the grace period is 0 here.
    wait_for(lambda: json.loads(state.read_text()) == {}, what="the VM to be deleted", log=agent.log)


def test_agent_package_imports_no_django():
    code = (
        "import sys, provisioning.agent.cli, provisioning.agent.runner, provisioning.agent.provisioners.proxmox, "
        "provisioning.agent.provisioners.script, provisioning.agent.provisioners.docker, provisioning.agent.recipe_runs, "
        "provisioning.agent.health_reports, recipes.runner; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'django'))"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=False, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the Docker provisioner ------------------------------------------------------------------


@pytest.fixture
def docker_api(session_sshd):
    from tests.peers.docker_api import DockerApiServer

    with DockerApiServer(sshd=session_sshd) as api:
        yield api


def test_docker_provisioner_lifecycle(live_server, docker_api, session_sshd, tmp_path, agents):
    _provider, pool, offering = make_pool(provisioner_type="docker")
    offering.image = "cloudmarket/sshd:latest"
    offering.save()
    settings = {"type": "docker", "docker_url": docker_api.url, "public_address": "127.0.0.1", "poll_interval": 0.2}
    config = set_up_agent(live_server, pool, tmp_path / "agent.json", settings, name="host-1")
    agent = agents(config)
    wait_for(lambda: offering in catalog_offerings(), what="the offering to be listed", log=agent.log)
    assert Agent.objects.get(pool=pool).capabilities["images"] == ["cloudmarket/sshd:latest"]

    contract = make_contract(tenant=make_user(), offering=offering)
    wait_for(lambda: contract_status(contract.pk) == ContractStatus.ACTIVE, what="the rental to become active", log=agent.log)
    contract.refresh_from_db()
    container = docker_api.containers[contract.cloud_server_id]
    assert container["Name"] == f"/cm-local-{contract.pk}"
    assert container["Config"]["Labels"]["cloudmarket-contract"] == str(contract.pk)
    assert container["HostConfig"]["NanoCpus"] == contract.vcpu * 1_000_000_000
    assert contract.ssh_port == session_sshd.port
    assert host_key_presented(session_sshd.port) == " ".join(contract.host_public_key.split()[:2])
    check = wait_for(
        lambda: HealthCheck.objects.filter(contract=contract, status=HealthStatus.UP).first(), what="an up report", log=agent.log
    )
    assert check.hypervisor_state == "running"

    contract_services.contract_terminate(contract=contract, actor=None, actor_label="staff", reason="Test ends.")
    wait_for(lambda: contract_status(contract.pk) == ContractStatus.TERMINATED, what="termination", log=agent.log)
    assert docker_api.containers == {}

    orphan = docker_api.add_container_behind_back(
        name=f"cm-local-{contract.pk}", labels={"cloudmarket-contract": str(contract.pk)}
    )
    wait_for(lambda: orphan not in docker_api.containers, what="the orphan container to be deleted", log=agent.log)

    offering.image = "missing/image:1"
    offering.save()
    failing = make_contract(tenant=make_user(), offering=offering)
    wait_for(lambda: contract_status(failing.pk) == ContractStatus.FAILED, what="the rental to fail", log=agent.log)
    assert "No such image" in Contract.objects.get(pk=failing.pk).status_reason


def test_docker_provisioner_over_unix_socket(tmp_path):
    from provisioning.agent.provisioners import build_provisioner
    from tests.peers.docker_api import DockerApiServer

    with DockerApiServer(unix_path=str(tmp_path / "docker.sock")) as api:
        provisioner = build_provisioner({"type": "docker", "docker_url": api.url, "public_address": "192.0.2.1"})

        health = provisioner.health()
        images = provisioner.images()

    assert health["free"] == {"vcpu": 8, "memory_mib": 32768}
    assert images == ["cloudmarket/sshd:latest"]
    assert ("GET", "/info") in api.requests


@pytest.mark.parametrize(
    "docker_url", ["", "tcp://127.0.0.1:2375", "http://192.0.2.1:2375", "https://docker.example.com"]
)
def test_docker_provisioner_rejects_url(docker_url):
    from provisioning.agent.provisioners import build_provisioner

    with pytest.raises(ValueError, match="docker_url"):
        build_provisioner({"type": "docker", "docker_url": docker_url, "public_address": "192.0.2.1"})
