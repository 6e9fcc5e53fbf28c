"""Run a recipe, a bash script, on a server over SSH and stream its output.

The server must present exactly the host key the platform generated and passed to cloud-init.
There is no trust on first use. The callers are Celery tasks, so `run_recipe` and `wait_for_ssh`
are synchronous wrappers around the `*_async` coroutines.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import re
import shlex
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncssh

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"

# The first line the wrapper command writes to stderr, followed by its PID. sshd starts each
# session in a new session (setsid), so that PID is also the id of the process group that a
# timeout kills.
_PGID_MARKER = "__recipe_pgid__="
_LOCK_PATH = "/tmp/cloudmarket-recipe.lock"


def _wrapper_command(script_length: int) -> str:
    """Build the POSIX shell command that receives and runs a script of `script_length` bytes.

    The wrapper copies the script from stdin into a private temporary file and runs it with
    stdin from /dev/null. Running `bash -s` on the script fed through stdin would let any
    command in the script that reads stdin (apt-get prompts, `read`, ssh) consume the rest of
    the script. The file is deleted as soon as fd 3 refers to it, so nothing is left behind
    even when the run is killed. bash reads the script through /dev/fd/3, which is
    Linux-specific and makes bash name the script "/dev/fd/3" in error messages.

    The client keeps stdin open after the script. A background watcher waits for stdin to
    close and then sends SIGHUP to the process group, so the script dies with the SSH
    connection instead of running on unsupervised. After a normal end the wrapper kills the
    watcher first, so processes the script left in the background keep running.
    """
    return (
        f'echo "{_PGID_MARKER}$$" >&2; '
        "f=$(mktemp) || exit 125; "
        f'head -c {script_length} > "$f" || {{ rm -f "$f"; exit 125; }}; '
        'exec 3< "$f"; rm -f "$f"; '
        # A background list gets /dev/null as stdin, so the watcher reads the saved fd 4.
        "exec 4<&0; "
        "( cat > /dev/null; kill -HUP -$$ ) <&4 > /dev/null 2>&1 4<&- 3<&- & "
        "watcher=$!; exec 4<&-; "
        # One recipe at a time per server: a run that another worker started and lost keeps
        # the lock until it is killed or ends, and this run waits for it.
        f"exec 5> {_LOCK_PATH}; flock 5; "
        "bash -euo pipefail /dev/fd/3 < /dev/null 2>&1 5>&-; status=$?; "
        'kill "$watcher" 2> /dev/null; exit "$status"'
    )


# Seconds between SIGTERM and SIGKILL when a timed-out script is stopped.
_KILL_GRACE_SECONDS = 2
# Seconds to wait for the output streams to close after the remote processes were killed.
_DRAIN_AFTER_KILL_SECONDS = 5.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RecipeRunError(Exception):
    """Base class for failures to reach or use a server over SSH."""


class SshUnreachable(RecipeRunError):
    """Raised when no SSH connection to the server could be made."""


class HostKeyMismatch(RecipeRunError):
    """Raised when the server does not present the host key the platform generated for it."""


class AuthenticationFailed(RecipeRunError):
    """Raised when the server rejects the platform's client key."""


class RecipeStopped(RecipeRunError):
    """Raised when the caller's `should_stop` asked to stop the run; the script was killed."""


class ConnectionLost(RecipeRunError):
    """Raised when the SSH connection breaks while a recipe runs."""


@dataclass(frozen=True)
class RecipeResult:
    """Outcome of one recipe run.

    `exit_code` is None when the run timed out or the wrapper shell was ended by a signal. A
    script ended by a signal reports 128 plus the signal number, as shells do.
    `output_bytes` counts all output the script produced, including bytes dropped after
    `max_output_bytes` was reached (then `truncated` is True).
    """

    exit_code: int | None
    timed_out: bool
    duration_seconds: float
    output_bytes: int
    truncated: bool


class _OutputStream:
    """Output pipeline that decodes, redacts, caps and batches remote output for `on_output`.

    Decoded text that could still be the start of a secret is held back until more output
    arrives or the stream ends, so a secret split across reads is still redacted.
    """

    def __init__(
        self,
        *,
        on_output: Callable[[str], None],
        secrets: Sequence[str],
        max_output_bytes: int,
        chunk_bytes: int,
    ) -> None:
        self._on_output = on_output
        self._max_output_bytes = max_output_bytes
        self._chunk_bytes = chunk_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Longest first, so a secret that contains another one is redacted whole.
        unique_secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
        self._secrets = unique_secrets
        self._pattern = (
            re.compile("|".join(re.escape(secret) for secret in unique_secrets))
            if unique_secrets
            else None
        )
        self._hold_chars = max((len(secret) for secret in unique_secrets), default=1) - 1
        self._pending = ""
        self._ready: list[str] = []
        self._ready_bytes = 0
        self._ends_with_newline = True
        self.received_bytes = 0
        self.stored_bytes = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        """Add bytes received from the server."""
        self.received_bytes += len(data)
        if self.truncated:
            return

        room = self._max_output_bytes - self.stored_bytes
        kept = data[:room]
        self.stored_bytes += len(kept)
        self._pending += self._decoder.decode(kept)

        if len(data) > room:
            # Bytes of a character cut at the limit stay in the decoder and are dropped.
            self.truncated = True
            self._release(final=True, redact_partial_secret=True)
            self._add_ready(
                ("" if self._ends_with_newline else "\n")
                + f"[output truncated after {self._max_output_bytes} bytes]\n"
            )
            self.flush()
            return

        self._release(final=False)
        if self._ready_bytes >= self._chunk_bytes:
            self.flush()

    def close(self) -> None:
        """Release everything still held back and flush it."""
        if not self.truncated:
            self._pending += self._decoder.decode(b"", final=True)
            self._release(final=True)
        self.flush()

    def flush(self) -> None:
        """Pass the text that is ready to `on_output`, if there is any."""
        if not self._ready:
            return
        text = "".join(self._ready)
        self._ready = []
        self._ready_bytes = 0
        self._on_output(text)

    def _release(self, *, final: bool, redact_partial_secret: bool = False) -> None:
        raw = self._pending
        if redact_partial_secret:
            raw = self._redact_secret_prefix_at_end(raw)
        cut = len(raw) if final else max(0, len(raw) - self._hold_chars)

        # Any secret that starts before `cut` ends inside `raw`, because at most
        # `_hold_chars` characters (the longest secret minus one) are held back.
        pieces: list[str] = []
        position = 0
        if self._pattern is not None:
            for match in self._pattern.finditer(raw):
                if match.start() >= cut:
                    break
                pieces.append(raw[position : match.start()])
                pieces.append(REDACTED)
                position = match.end()
        cut = max(cut, position)
        pieces.append(raw[position:cut])

        self._pending = raw[cut:]
        self._add_ready("".join(pieces))

    def _redact_secret_prefix_at_end(self, raw: str) -> str:
        """Replace a trailing start of a secret, as output cut at the limit may end mid-secret."""
        for secret in self._secrets:
            for length in range(min(len(secret) - 1, len(raw)), 0, -1):
                if raw.endswith(secret[:length]):
                    return raw[:-length] + REDACTED
        return raw

    def _add_ready(self, text: str) -> None:
        if not text:
            return
        self._ready.append(text)
        self._ready_bytes += len(text.encode("utf-8"))
        self._ends_with_newline = text.endswith("\n")


def _import_keys(
    *, client_private_key: str, host_public_key: str
) -> tuple[asyncssh.SSHKey, asyncssh.SSHKey]:
    # Error messages leave the key text out, because the private key is a secret.
    try:
        client_key = asyncssh.import_private_key(client_private_key)
    except (asyncssh.KeyImportError, ValueError) as error:
        raise ValueError("client_private_key is not a valid unencrypted private key") from error
    try:
        host_key = asyncssh.import_public_key(host_public_key)
    except (asyncssh.KeyImportError, ValueError) as error:
        raise ValueError("host_public_key is not a valid OpenSSH public key") from error
    return client_key, host_key


@asynccontextmanager
async def _connect(
    *,
    host: str,
    port: int,
    username: str,
    client_private_key: str,
    host_public_key: str,
    connect_timeout: float,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Open an SSH connection that trusts only `host_public_key` and logs in with the client key."""
    client_key, host_key = _import_keys(
        client_private_key=client_private_key, host_public_key=host_public_key
    )
    address = f"{host}:{port}"
    try:
        connection = await asyncssh.connect(
            host,
            port,
            username=username,
            # Trusted host keys, trusted CA keys, revoked keys.
            known_hosts=([host_key], [], []),
            server_host_key_algs=[host_key.get_algorithm()],
            client_keys=[client_key],
            # Ignore ~/.ssh/config, ssh-agent and other local credentials of the worker.
            config=None,
            agent_path=None,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_auth=False,
            gss_kex=False,
            connect_timeout=connect_timeout,
            keepalive_interval=30,
            keepalive_count_max=4,
        )
    except asyncssh.HostKeyNotVerifiable as error:
        raise HostKeyMismatch(
            f"SSH host key of {address} does not match the key generated for this server "
            f"({host_key.get_fingerprint()}): {error.reason}"
        ) from error
    except asyncssh.PermissionDenied as error:
        raise AuthenticationFailed(
            f"SSH server {address} rejected the client key for user {username!r}: {error.reason}"
        ) from error
    except asyncssh.Error as error:
        raise SshUnreachable(f"SSH connection to {address} failed: {error.reason}") from error
    except (TimeoutError, OSError) as error:
        reason = str(error) or type(error).__name__
        raise SshUnreachable(f"SSH connection to {address} failed: {reason}") from error

    try:
        yield connection
    finally:
        connection.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.wait_closed(), timeout=5)


def _script_with_environment(script: str, env: dict[str, str] | None) -> str:
    """Prefix `script` with exports of `env` on its first line, so line numbers stay the same.

    Values travel inside the script file instead of the command line, which other users on
    the server could read in the process list.
    """
    if not env:
        return script
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return f"export {assignments}; {script}"


async def _kill_process_group(
    connection: asyncssh.SSHClientConnection, *, process_group: int | None
) -> None:
    """Stop the script and everything it started in the same process group.

    Sends SIGTERM, then SIGKILL after a grace period. Processes that left the group (setsid,
    double-forked daemons) survive.
    """
    if process_group is None:
        return
    group = f"-{process_group}"
    grace_ticks = _KILL_GRACE_SECONDS * 10
    # POSIX shell syntax, because the login shell runs this command and may be dash.
    command = (
        f"kill -TERM {group} 2>/dev/null || exit 0; "
        f"i=0; while [ $i -lt {grace_ticks} ] && kill -0 {group} 2>/dev/null; "
        "do sleep 0.1; i=$((i+1)); done; "
        f"kill -KILL {group} 2>/dev/null; exit 0"
    )
    try:
        await asyncio.wait_for(
            connection.run(command, check=False, stdin=asyncssh.DEVNULL),
            timeout=_KILL_GRACE_SECONDS + 10,
        )
    except (TimeoutError, asyncssh.Error, OSError) as error:
        logger.warning("Killing process group %s over SSH failed: %s", process_group, error)


class _ScriptSession:
    """One SSH session running the wrapper command: sends the script, pumps output, kills on demand."""

    def __init__(
        self,
        *,
        connection: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess,
        stream: _OutputStream,
        address: str,
        read_size: int,
    ) -> None:
        self._connection = connection
        self._process = process
        self._stream = stream
        self._address = address
        self._read_size = read_size
        self._process_group: int | None = None
        self._process_group_known = asyncio.Event()

    async def run(
        self,
        *,
        script_bytes: bytes,
        timeout_seconds: float,
        chunk_interval: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> bool:
        """Run the script until it ends or `timeout_seconds` pass, and return whether it timed out.

        `should_stop` is polled twice a second; when it returns True the script is killed and
        `RecipeStopped` is raised.
        """
        workers = [
            asyncio.create_task(self._send_script(script_bytes)),
            asyncio.create_task(self._pump_stdout()),
            asyncio.create_task(self._pump_stderr()),
        ]
        finished = asyncio.create_task(self._wait_finished(workers))
        flusher = asyncio.create_task(self._flush_periodically(chunk_interval))
        stopper = asyncio.create_task(self._wait_for_stop(should_stop))
        try:
            # The flusher only ends early when on_output raised, and result() re-raises that.
            done, _ = await asyncio.wait(
                {finished, flusher, stopper}, timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if flusher in done:
                flusher.result()
            if finished in done:
                finished.result()
                return False
            if stopper in done:
                logger.warning("Recipe on %s stopped by the caller, killing process group %s", self._address, self._process_group)
                await self.kill()
                await asyncio.wait({finished}, timeout=_DRAIN_AFTER_KILL_SECONDS)
                raise RecipeStopped(f"The recipe run on {self._address} was stopped by the platform.")

            logger.warning(
                "Recipe on %s timed out after %s s, killing process group %s",
                self._address,
                timeout_seconds,
                self._process_group,
            )
            await self.kill()
            await asyncio.wait({finished}, timeout=_DRAIN_AFTER_KILL_SECONDS)
            return True
        except RecipeStopped:
            raise
        except (asyncssh.Error, OSError) as error:
            raise ConnectionLost(
                f"SSH connection to {self._address} broke during the recipe: {error}"
            ) from error
        except BaseException:
            # on_output raised or the caller was cancelled, so stop the script before leaving.
            # Killing a process group that has already exited does nothing.
            await self.kill()
            raise
        finally:
            for task in (*workers, finished, flusher, stopper):
                task.cancel()

    async def _wait_for_stop(self, should_stop: Callable[[], bool] | None) -> None:
        if should_stop is None:
            await asyncio.Event().wait()  # never set: without a callback the run is not stopped
        while not should_stop():
            await asyncio.sleep(0.5)

    async def kill(self) -> None:
        """Kill the script's process group and close the session."""
        if self._process_group is None:
            # The marker line may still be on its way when the run fails right after starting.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process_group_known.wait(), timeout=2)
        if self._process_group is None:
            logger.warning(
                "Process group of the recipe on %s is unknown, so only the session is closed",
                self._address,
            )
        else:
            await _kill_process_group(self._connection, process_group=self._process_group)
        self._process.close()

    async def _send_script(self, script_bytes: bytes) -> None:
        try:
            # No EOF follows: stdin stays open until the session closes (see _wrapper_command).
            self._process.stdin.write(script_bytes)
            await self._process.stdin.drain()
        except BrokenPipeError:
            # The wrapper exited before reading the script, and its exit status reports why.
            logger.warning("Recipe wrapper on %s closed stdin early", self._address)

    async def _pump_stdout(self) -> None:
        while data := await self._process.stdout.read(self._read_size):
            self._stream.feed(data)

    async def _pump_stderr(self) -> None:
        # Only the wrapper writes to stderr, because the script's stderr goes to stdout.
        while line := await self._process.stderr.readline():
            text = line.decode("utf-8", errors="replace")
            if self._process_group is None and text.startswith(_PGID_MARKER):
                self._process_group = int(text[len(_PGID_MARKER) :].strip())
                self._process_group_known.set()
            else:
                self._stream.feed(line)

    async def _wait_finished(self, workers: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*workers)
        await self._process.wait_closed()

    async def _flush_periodically(self, chunk_interval: float) -> None:
        while True:
            await asyncio.sleep(chunk_interval)
            self._stream.flush()


async def run_recipe_async(
    *,
    host: str,
    port: int,
    username: str,
    client_private_key: str,
    host_public_key: str,
    script: str,
    timeout_seconds: float,
    on_output: Callable[[str], None],
    max_output_bytes: int = 1_000_000,
    chunk_bytes: int = 4096,
    chunk_interval: float = 1.0,
    secrets: Sequence[str] = (),
    connect_timeout: float = 10.0,
    env: dict[str, str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RecipeResult:
    """Run `script` with `bash -euo pipefail` on the server and stream its merged output.

    `timeout_seconds` counts from the moment the SSH connection is open. When it runs out, the
    script's process group is killed and the result has `timed_out=True`. Output reaches
    `on_output` in chunks of about `chunk_bytes`, at least every `chunk_interval` seconds
    while output arrives, and once more at the end, with every string in `secrets` replaced
    by "[redacted]".
    """
    address = f"{host}:{port}"
    script_bytes = _script_with_environment(script, env).encode("utf-8")
    stream = _OutputStream(
        on_output=on_output,
        secrets=secrets,
        max_output_bytes=max_output_bytes,
        chunk_bytes=chunk_bytes,
    )
    logger.info("Recipe run starting on %s as %s, timeout %s s", address, username, timeout_seconds)

    async with _connect(
        host=host,
        port=port,
        username=username,
        client_private_key=client_private_key,
        host_public_key=host_public_key,
        connect_timeout=connect_timeout,
    ) as connection:
        started = time.monotonic()
        try:
            process = await connection.create_process(
                _wrapper_command(len(script_bytes)), encoding=None
            )
        except (asyncssh.Error, OSError) as error:
            raise ConnectionLost(f"opening an SSH session on {address} failed: {error}") from error
        session = _ScriptSession(
            connection=connection,
            process=process,
            stream=stream,
            address=address,
            read_size=chunk_bytes,
        )
        timed_out = await session.run(
            script_bytes=script_bytes,
            timeout_seconds=timeout_seconds,
            chunk_interval=chunk_interval,
            should_stop=should_stop,
        )
        stream.close()
        duration = time.monotonic() - started

    exit_code = None if timed_out else process.exit_status
    if not timed_out and exit_code is None:
        logger.warning("Recipe on %s ended by signal %s", address, process.exit_signal)
    logger.info(
        "Recipe run finished on %s: exit code %s, timed out %s, %.1f s, %d output bytes",
        address,
        exit_code,
        timed_out,
        duration,
        stream.received_bytes,
    )
    return RecipeResult(
        exit_code=exit_code,
        timed_out=timed_out,
        duration_seconds=duration,
        output_bytes=stream.received_bytes,
        truncated=stream.truncated,
    )


async def wait_for_ssh_async(
    *,
    host: str,
    port: int,
    username: str,
    client_private_key: str,
    host_public_key: str,
    deadline_seconds: float,
    interval: float = 1.0,
) -> None:
    """Retry until an SSH login with the expected host key succeeds or `deadline_seconds` pass.

    Every failure is retried, including host key and authentication errors, because a booting
    server may accept connections before cloud-init has installed its keys. Raises `SshUnreachable` naming
    the last error once the deadline has passed.
    """
    address = f"{host}:{port}"
    deadline = time.monotonic() + deadline_seconds
    attempts = 0
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        try:
            async with _connect(
                host=host,
                port=port,
                username=username,
                client_private_key=client_private_key,
                host_public_key=host_public_key,
                connect_timeout=max(min(remaining, 10.0), 0.5),
            ):
                logger.info("SSH on %s reachable after %d attempts", address, attempts)
                return
        except RecipeRunError as error:
            last_error = error
            logger.debug("SSH attempt %d on %s failed: %s", attempts, address, error)

        if time.monotonic() + interval >= deadline:
            logger.warning(
                "SSH on %s unreachable after %d attempts: %s", address, attempts, last_error
            )
            raise SshUnreachable(
                f"SSH on {address} not reachable within {deadline_seconds} s "
                f"({attempts} attempts); last error: {last_error}"
            ) from last_error
        await asyncio.sleep(interval)


def run_recipe(
    *,
    host: str,
    port: int,
    username: str,
    client_private_key: str,
    host_public_key: str,
    script: str,
    timeout_seconds: float,
    on_output: Callable[[str], None],
    max_output_bytes: int = 1_000_000,
    chunk_bytes: int = 4096,
    chunk_interval: float = 1.0,
    secrets: Sequence[str] = (),
    connect_timeout: float = 10.0,
    env: dict[str, str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RecipeResult:
    """Run a recipe synchronously with `run_recipe_async`. Raises RuntimeError inside an event loop."""
    return asyncio.run(
        run_recipe_async(
            host=host,
            port=port,
            username=username,
            client_private_key=client_private_key,
            host_public_key=host_public_key,
            script=script,
            timeout_seconds=timeout_seconds,
            on_output=on_output,
            max_output_bytes=max_output_bytes,
            chunk_bytes=chunk_bytes,
            chunk_interval=chunk_interval,
            secrets=secrets,
            connect_timeout=connect_timeout,
            env=env,
            should_stop=should_stop,
        )
    )


def wait_for_ssh(
    *,
    host: str,
    port: int,
    username: str,
    client_private_key: str,
    host_public_key: str,
    deadline_seconds: float,
    interval: float = 1.0,
) -> None:
    """Wait for SSH synchronously with `wait_for_ssh_async`. Raises RuntimeError inside an event loop."""
    asyncio.run(
        wait_for_ssh_async(
            host=host,
            port=port,
            username=username,
            client_private_key=client_private_key,
            host_public_key=host_public_key,
            deadline_seconds=deadline_seconds,
            interval=interval,
        )
    )
