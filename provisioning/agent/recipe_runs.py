"""Recipes run by the agent: the platform's SSH recipe runner, with the log streamed to the platform.

`recipes.runner` imports no Django module, so the agent runs a recipe with the same code as the
platform's workers: the same wrapper, `bash -euo pipefail`, timeout, output cap and host key
check. The agent checks the host key it generated and reported for the VM, so there is no
trust on first use. The runner calls back from an asyncio loop in its own thread, and this
module sends the output chunks from the job thread, numbered from 0, retrying a failed send.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from provisioning.agent.client import LeaseLost, PlatformClient, PlatformError
from provisioning.agent.provisioners import VmResult
from recipes.runner import RecipeResult, RecipeRunError, RecipeStopped, run_recipe, wait_for_ssh

logger = logging.getLogger(__name__)

#: Tries per output chunk before the agent gives up on the run; the chunk endpoint ignores repeats.
CHUNK_SEND_TRIES = 5


class RecipeTakenAway(Exception):
    """The platform took the contract away or the agent is stopping; the recipe was killed."""


def run_contract_recipe(
    *,
    client: PlatformClient,
    spec: dict[str, Any],
    vm: VmResult,
    ssh_wait_timeout: float,
    should_stop: threading.Event,
) -> bool:
    """Run the contract's recipe on its new VM, stream the log, report the result; return whether it succeeded.

    A failed recipe is reported and the platform fails the contract. Raises `RecipeTakenAway`
    when `should_stop` is set while the recipe runs, `LeaseLost` when the platform rejects a
    report because the lease is gone, and `PlatformError` when the platform cannot be reached.
    The recipe is killed before either error leaves this function.
    """
    contract_id = spec["id"]
    recipe = spec["recipe"]
    run = client.recipe_run_start(contract_id)
    run_id = run["id"]
    logger.info("Contract %s: recipe run %s starting on %s:%s", contract_id, run_id, vm.address, vm.port)
    login = {
        "host": vm.address,
        "port": vm.port,
        "username": recipe["username"],
        "client_private_key": recipe["client_private_key"],
        "host_public_key": vm.host_public_key,
    }
    chunks: queue.Queue[str] = queue.Queue()
    outcome: dict[str, Any] = {}
    kill = threading.Event()
    started = time.monotonic()

    def target() -> None:
        try:
            wait_for_ssh(**login, deadline_seconds=ssh_wait_timeout)
            outcome["result"] = run_recipe(
                **login,
                script=recipe["script"],
                timeout_seconds=recipe["timeout_seconds"],
                on_output=chunks.put,
                max_output_bytes=recipe["max_output_bytes"],
                should_stop=kill.is_set,
            )
        except BaseException as exc:  # Handled in the job thread below.
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"recipe-{contract_id}", daemon=True)
    thread.start()
    sequence = 0
    while thread.is_alive() or not chunks.empty():
        if should_stop.is_set():
            kill.set()
        try:
            text = chunks.get(timeout=0.5)
        except queue.Empty:
            continue
        try:
            _send_chunk(client, contract_id, run_id, sequence, text)
        except (LeaseLost, PlatformError):
            kill.set()
            thread.join(timeout=30)
            raise
        sequence += 1
    thread.join()

    error = outcome.get("error")
    if isinstance(error, RecipeStopped):
        raise RecipeTakenAway(f"The recipe on contract {contract_id} was killed because the job stopped.") from error
    if error is not None and not isinstance(error, RecipeRunError):
        raise error
    result: RecipeResult | None = outcome.get("result")
    if result is None:
        logger.warning("Contract %s: recipe run %s failed over SSH: %s", contract_id, run_id, error)
        report = {
            "exit_code": None, "timed_out": False, "duration_seconds": round(time.monotonic() - started, 3),
            "output_bytes": 0, "truncated": False, "error": str(error),
        }
    else:
        report = {
            "exit_code": result.exit_code, "timed_out": result.timed_out, "duration_seconds": result.duration_seconds,
            "output_bytes": result.output_bytes, "truncated": result.truncated, "error": "",
        }
    answer = client.recipe_result(contract_id, run_id, server_id=vm.server_id, **report)
    logger.info("Contract %s: recipe run %s ended %s (exit code %s)", contract_id, run_id, answer["run_status"], report["exit_code"])
    return answer["run_status"] == "succeeded"


def _send_chunk(client: PlatformClient, contract_id: int, run_id: int, sequence: int, text: str) -> None:
    """Send one output chunk, retrying when the platform is unreachable or returns a server error."""
    for attempt in range(1, CHUNK_SEND_TRIES + 1):
        try:
            client.recipe_log(contract_id, run_id, sequence=sequence, text=text)
            return
        except LeaseLost:
            raise
        except PlatformError as exc:
            if (exc.status and exc.status < 500) or attempt == CHUNK_SEND_TRIES:
                raise
            delay = min(8.0, 0.5 * 2**attempt)
            logger.warning(
                "Contract %s: sending chunk %s of recipe run %s failed (try %s), retrying in %.1f s: %s",
                contract_id, sequence, run_id, attempt, delay, exc,
            )
            time.sleep(delay)
