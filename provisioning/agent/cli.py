"""Command line of the agent: `setup`, `run`, `doctor` and `test-provision`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys

from provisioning.agent import VERSION
from provisioning.agent.client import CredentialRejected, PlatformClient, PlatformError
from provisioning.agent.config import (
    AgentConfig,
    ConfigError,
    check_platform_url,
    config_path,
    load_config,
    save_config,
)
from provisioning.agent.provisioners import ProvisionerError, build_provisioner

logger = logging.getLogger("provisioning.agent")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _client(config: AgentConfig) -> PlatformClient:
    return PlatformClient(base_url=config.platform_url, credential=config.credential, timeout=config.request_timeout)


def command_setup(args: argparse.Namespace) -> int:
    """Exchange the setup token for a credential and write the configuration file."""
    path = config_path(args.config)
    try:
        platform_url = check_platform_url(args.platform)
        provisioner = json.loads(args.provisioner) if args.provisioner else {}
    except ConfigError as exc:
        _out(f"error: {exc}")
        return 2
    except json.JSONDecodeError as exc:
        _out(f"error: --provisioner is not valid JSON: {exc}")
        return 2
    name = args.name or socket.gethostname()
    try:
        response = PlatformClient(base_url=platform_url).setup(token=args.token, name=name)
    except PlatformError as exc:
        _out(f"error: setup failed: {exc}")
        return 1
    pool = response["pool"]
    provisioner.setdefault("type", pool["provisioner_type"])
    config = AgentConfig(
        platform_url=platform_url,
        credential=response["credential"],
        agent_id=response["agent_id"],
        name=name,
        provisioner=provisioner,
    )
    save_config(path, config)
    _out(f"Agent {response['agent_id']} ({name}) joined pool {pool['name']!r} ({pool['provisioner_type']}, {pool['region']}).")
    _out(f"Configuration written to {path}; add the provisioner settings there (docs/agent.md), then run `doctor`.")
    return 0


def _load(args: argparse.Namespace) -> AgentConfig:
    return load_config(config_path(args.config))


def command_run(args: argparse.Namespace) -> int:
    from provisioning.agent.runner import AgentRunner

    config = _load(args)
    runner = AgentRunner(config=config, client=_client(config), provisioner=build_provisioner(config.provisioner))

    def handle_signal(signum, _frame) -> None:
        logger.info("Signal %s received; stopping after the running jobs", signum)
        runner.stop()

    signal.signal(signal.SIGTERM, handle_signal)
    signal.signal(signal.SIGINT, handle_signal)
    return runner.run()


def command_doctor(args: argparse.Namespace) -> int:
    """Check the configuration, then whether the hypervisor and the platform are reachable; print one line per check."""
    try:
        config = _load(args)
    except ConfigError as exc:
        _out(f"FAIL configuration: {exc}")
        return 1
    _out(f"ok   configuration: {config_path(args.config)} (agent {config.agent_id}, provisioner {config.provisioner_type})")
    try:
        provisioner = build_provisioner(config.provisioner)
    except ValueError as exc:
        _out(f"FAIL provisioner settings: {exc}")
        return 1
    health, capabilities, hypervisor_ok = _check_hypervisor(provisioner, config)
    platform_ok = _check_platform(config, provisioner, health, capabilities)
    return 0 if hypervisor_ok and platform_ok else 1


def _check_hypervisor(provisioner, config: AgentConfig) -> tuple[dict, dict, bool]:
    """Print whether the hypervisor is reachable; return its health, the agent's capabilities and the verdict."""
    where = f"{provisioner.type} at {provisioner.endpoint}"
    try:
        health = provisioner.health()
        images = provisioner.images()
    except ProvisionerError as exc:
        if exc.reason_code == "hypervisor_unavailable":
            _out(f"FAIL hypervisor: {where} is unreachable: {exc}")
        else:
            _out(f"FAIL hypervisor: {where} is reachable but its health check failed ({exc.reason_code}): {exc}")
        return {}, {"provisioner": provisioner.type}, False
    _out(f"ok   hypervisor: {where} is reachable: {json.dumps(health, sort_keys=True)}")
    return health, {"provisioner": provisioner.type, "images": images, "max_parallel": config.max_parallel}, True


def _check_platform(config: AgentConfig, provisioner, health: dict, capabilities: dict) -> bool:
    """Send a heartbeat and print whether the platform is reachable and accepts the credential."""
    try:
        response = _client(config).heartbeat(capabilities=capabilities, free_resources=health.get("free", {}))
    except CredentialRejected as exc:
        _out(
            f"FAIL platform: {config.platform_url} is reachable but rejected the credential (revoked or unknown); "
            f"create a setup token on the agent pool's page and run setup again: {exc}"
        )
        return False
    except PlatformError as exc:
        if exc.status == 0:
            _out(f"FAIL platform: {config.platform_url} is unreachable; check the address, DNS and firewall: {exc}")
        else:
            _out(f"FAIL platform: {config.platform_url} is reachable but returned HTTP {exc.status}: {exc}")
        return False
    pool = response["pool"]
    _out(f"ok   platform: {config.platform_url} is reachable and accepted the credential (pool {pool['name']!r})")
    if not response["provisioner_matches"]:
        _out(f"FAIL provisioner type: this agent runs {provisioner.type}, the pool uses {pool['provisioner_type']}")
        return False
    return True


def command_test_provision(args: argparse.Namespace) -> int:
    """Create one VM with the configured provisioner, print its details, and delete it."""
    config = _load(args)
    provisioner = build_provisioner(config.provisioner)
    spec = {
        "id": args.contract_id,
        "public_id": "",
        "action": "provision",
        "name": f"cm-agent-test-{args.contract_id}",
        "labels": {"cloudmarket-contract": str(args.contract_id)},
        "vcpu": args.vcpu,
        "memory_mib": args.memory_mib,
        "disk_gb": args.disk_gb,
        "image": args.image,
        "server_type": "",
        "location_code": "",
        "ssh_public_keys": [],
        "cloud_server_id": "",
    }
    try:
        result = provisioner.provision(spec, lambda step: _out(f"step: {step}"))
        _out(f"created VM {result.server_id} at {result.address}:{result.port}, host key {result.host_public_key}")
        provisioner.terminate({**spec, "cloud_server_id": result.server_id})
    except ProvisionerError as exc:
        _out(f"FAIL ({exc.reason_code}): {exc}")
        return 1
    _out(f"deleted VM {result.server_id}; test provisioning succeeded")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudmarket-agent", description="Provision Cloudmarket rentals on this host.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--config", help="Configuration file (default: $CLOUDMARKET_AGENT_CONFIG or /etc/cloudmarket-agent/config.json).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    commands = parser.add_subparsers(dest="command", required=True)

    setup = commands.add_parser("setup", help="Exchange a setup token for a credential and write the configuration file.")
    setup.add_argument("--platform", required=True, help="The platform's address, for example https://cloudmarket.example.com.")
    setup.add_argument("--token", required=True, help="The one-time setup token from the agent pool's page.")
    setup.add_argument("--name", help="This agent's name on the platform (default: the host name).")
    setup.add_argument("--provisioner", help='Provisioner settings as a JSON object, for example \'{"command": ["/usr/local/bin/vm"]}\'.')
    setup.set_defaults(handler=command_setup)

    run = commands.add_parser("run", help="Send heartbeats and provision, terminate and reconcile until stopped.")
    run.set_defaults(handler=command_run)

    doctor = commands.add_parser("doctor", help="Check the configuration and reach the platform and the hypervisor.")
    doctor.set_defaults(handler=command_doctor)

    test = commands.add_parser("test-provision", help="Create one VM locally and delete it again.")
    test.add_argument("--image", required=True, help="Image or template name to create the VM from.")
    test.add_argument("--vcpu", type=int, default=1, help="vCPUs of the test VM (default 1).")
    test.add_argument("--memory-mib", type=int, default=1024, help="Memory of the test VM in MiB (default 1024).")
    test.add_argument("--disk-gb", type=int, default=10, help="Disk of the test VM in GB (default 10).")
    test.add_argument("--contract-id", type=int, default=0, help="Contract id the test VM's id and name are derived from (default 0).")
    test.set_defaults(handler=command_test_provision)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except ConfigError as exc:
        _out(f"error: {exc}")
        return 2
    except ValueError as exc:
        _out(f"error: invalid provisioner settings: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
