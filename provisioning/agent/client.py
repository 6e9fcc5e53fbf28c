"""HTTP client of the agent API (/api/v1/agent/), on the standard library's urllib."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from provisioning.agent import VERSION

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/agent"


class PlatformError(Exception):
    """The platform returned an error status, or could not be reached (`status` 0)."""

    def __init__(self, message: str, *, status: int, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class CredentialRejected(PlatformError):
    """401: the credential is unknown or revoked; the agent must stop."""


class LeaseLost(PlatformError):
    """409: this agent does not hold the contract's lease, or the contract moved on."""


class PlatformClient:
    def __init__(self, *, base_url: str, credential: str = "", timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        url = f"{self.base_url}{API_PREFIX}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": f"cloudmarket-agent/{VERSION}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.credential:
            headers["Authorization"] = f"Bearer {self.credential}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (URL checked in config)
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                parsed = raw.decode(errors="replace")[:500]
            detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
            message = f"{method} {path} failed with HTTP {exc.code}: {detail}"
            error_class = {401: CredentialRejected, 409: LeaseLost}.get(exc.code, PlatformError)
            raise error_class(message, status=exc.code, body=parsed) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise PlatformError(f"{method} {path} failed: platform unreachable at {self.base_url}: {exc}", status=0) from exc
        return json.loads(payload) if payload else None

    def setup(self, *, token: str, name: str) -> dict:
        return self._request("POST", "/setup/", {"token": token, "name": name, "version": VERSION})

    def heartbeat(self, *, capabilities: dict, free_resources: dict) -> dict:
        return self._request(
            "POST", "/heartbeat/", {"version": VERSION, "capabilities": capabilities, "free_resources": free_resources}
        )

    def work(self) -> list[dict]:
        return self._request("GET", "/work/")["items"]

    def claim(self, contract_id: int) -> dict:
        return self._request("POST", f"/contracts/{contract_id}/claim/")

    def progress(self, contract_id: int, step: str = "") -> dict:
        return self._request("POST", f"/contracts/{contract_id}/progress/", {"step": step})

    def succeed(self, contract_id: int, *, server_id: str, address: str, port: int, host_public_key: str) -> dict:
        body = {"server_id": server_id, "address": address, "port": port, "host_public_key": host_public_key}
        return self._request("POST", f"/contracts/{contract_id}/success/", body)

    def fail(self, contract_id: int, *, reason_code: str, message: str, server_id: str = "") -> dict:
        body = {"reason_code": reason_code, "message": message[:2000], "server_id": server_id}
        return self._request("POST", f"/contracts/{contract_id}/failure/", body)

    def recipe_run_start(self, contract_id: int) -> dict:
        return self._request("POST", f"/contracts/{contract_id}/recipe-runs/")

    def recipe_log(self, contract_id: int, run_id: int, *, sequence: int, text: str) -> dict:
        body = {"sequence": sequence, "text": text}
        return self._request("POST", f"/contracts/{contract_id}/recipe-runs/{run_id}/log/", body)

    def recipe_result(self, contract_id: int, run_id: int, **result: Any) -> dict:
        """Report how the run ended: exit_code, timed_out, duration_seconds, output_bytes, truncated, error, server_id."""
        return self._request("POST", f"/contracts/{contract_id}/recipe-runs/{run_id}/result/", result)

    def terminated(self, contract_id: int) -> dict:
        return self._request("POST", f"/contracts/{contract_id}/terminated/")

    def health(self, reports: list[dict]) -> list[dict]:
        """Send health reports; return one result per report with `accepted` and, if rejected, `reason`."""
        return self._request("POST", "/health/", {"reports": reports})["results"]

    def reconcile(self, servers: list[dict]) -> list[dict]:
        return self._request("POST", "/reconcile/", {"servers": servers})["decisions"]
