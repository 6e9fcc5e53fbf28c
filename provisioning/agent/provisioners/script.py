"""The script provisioner: an external command that speaks JSON on standard input and output.

For each operation the agent runs `command` once and writes one JSON object to its standard
input: `{"action": "provision" | "terminate" | "state" | "list" | "health", "contract": <spec>}`
(`contract` only for provision, terminate and state). The command exits 0 and prints one JSON object:

- provision: `{"server_id", "address", "port", "host_public_key"}`
- terminate: `{}`
- state: `{"state": "running"}`, another state such as `stopped`, or `missing` for a VM that
  does not exist. Health reports count every state but `running` as down.
- list: `{"servers": [{"server_id", "name"}]}`
- health: any object, for example `{"state": "ok", "free": {"vcpu": 8}}`

On failure it exits non-zero and may print `{"error": {"reason_code", "message"}}`. Without
that, the failure is `provisioner_error` with the end of standard error as its message. Lines
the command writes to standard error are logged.
"""

from __future__ import annotations

import json
import logging
import subprocess
from typing import Any

from provisioning.agent.provisioners import (
    REASON_CODES,
    ProgressCallback,
    Provisioner,
    ProvisionerError,
    RunningVm,
    VmResult,
    contract_id_from_name,
)

logger = logging.getLogger(__name__)


class ScriptProvisioner(Provisioner):
    type = "script"

    def __init__(self, settings: dict[str, Any]):
        command = settings.get("command")
        if isinstance(command, str):
            command = [command]
        if not command or not all(isinstance(part, str) and part for part in command):
            raise ValueError('The script provisioner needs "command": a program path or a list of program and arguments.')
        self.command = list(command)
        self.timeout = float(settings.get("timeout", 900))
        self._images = [str(name) for name in settings.get("images", [])]

    def _run(self, action: str, contract: dict[str, Any] | None = None) -> dict[str, Any]:
        request = {"action": action}
        if contract is not None:
            request["contract"] = contract
        label = f"{action} of contract {contract['id']}" if contract else action
        try:
            completed = subprocess.run(  # noqa: S603 (the provider configured the command)
                self.command, input=json.dumps(request), capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ProvisionerError("timeout", f"Script {self.command[0]} timed out after {self.timeout:.0f} s ({label}).") from exc
        except OSError as exc:
            raise ProvisionerError("provisioner_error", f"Script {self.command[0]} could not be started: {exc}") from exc
        for line in completed.stderr.splitlines()[-50:]:
            logger.info("Script %s (%s): %s", self.command[0], label, line)
        try:
            output = json.loads(completed.stdout) if completed.stdout.strip() else {}
        except json.JSONDecodeError:
            output = None
        if completed.returncode != 0:
            error = output.get("error") if isinstance(output, dict) else None
            if isinstance(error, dict) and error.get("reason_code") in REASON_CODES:
                raise ProvisionerError(error["reason_code"], str(error.get("message", ""))[:2000])
            tail = completed.stderr.strip()[-500:] or "no output on standard error"
            raise ProvisionerError(
                "provisioner_error", f"Script {self.command[0]} exited with code {completed.returncode} ({label}): {tail}"
            )
        if not isinstance(output, dict):
            raise ProvisionerError(
                "provisioner_error", f"Script {self.command[0]} printed no JSON object ({label}): {completed.stdout[:200]!r}"
            )
        return output

    def provision(self, spec: dict[str, Any], progress: ProgressCallback) -> VmResult:
        progress("creating_server")
        output = self._run("provision", spec)
        try:
            return VmResult(
                server_id=str(output["server_id"]),
                address=str(output["address"]),
                port=int(output.get("port", 22)),
                host_public_key=str(output["host_public_key"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProvisionerError(
                "provisioner_error",
                f"Script {self.command[0]} printed an invalid provision result (needs server_id, address, port, "
                f"host_public_key): {exc}",
            ) from exc

    def terminate(self, spec: dict[str, Any]) -> None:
        self._run("terminate", spec)

    @property
    def endpoint(self) -> str:
        return self.command[0]

    def list_running(self) -> list[RunningVm]:
        output = self._run("list")
        servers = output.get("servers")
        if not isinstance(servers, list):
            raise ProvisionerError("provisioner_error", f'Script {self.command[0]} printed no "servers" list for list.')
        result = []
        for item in servers:
            name = str(item.get("name", ""))
            result.append(RunningVm(server_id=str(item.get("server_id", "")), name=name, contract_id=contract_id_from_name(name)))
        return result

    def vm_state(self, spec: dict[str, Any]) -> str:
        output = self._run("state", spec)
        state = output.get("state")
        if not isinstance(state, str) or not state:
            raise ProvisionerError("provisioner_error", f'Script {self.command[0]} printed no "state" string for state of contract {spec["id"]}.')
        return state

    def health(self) -> dict[str, Any]:
        return self._run("health")

    def images(self) -> list[str]:
        return list(self._images)
