"""An asyncssh server that plays many booted cloud servers at once, one loopback address each.

`tests.peers.sshd.LoopbackSshd` is one real OpenSSH server with one host key, so two servers
booting at the same time overwrite each other's keys. `SshFleet` listens on the same port of
many loopback addresses (127.0.0.2, 127.0.0.3, ...; Linux routes all of 127.0.0.0/8 to the
loopback interface). Each address has the host key and authorized keys that the fake cloud's
cloud-init emulation gave the server owning that address, so concurrent contracts stay apart.

Only public-key authentication is offered, for one login user. A session must carry a command
(no interactive shell), which runs as `bash -c COMMAND` on the test machine in a working
directory of its own per address, in a new session like sshd does. That is enough for the
provisioning pipeline: the SSH wait only logs in, and the recipe runner sends one wrapper
command. The asyncio event loop runs in a background thread, and every public method may be
called from any other thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

logger = logging.getLogger(__name__)

# Seconds a call from another thread waits for the event loop to finish the work.
LOOP_CALL_TIMEOUT_SECONDS = 15.0
READ_SIZE = 65536


class SshFleetError(RuntimeError):
    """Raised when the fleet cannot start or cannot listen on an address."""


@dataclass
class _Host:
    """The SSH identity and listener of one loopback address."""

    address: str
    workdir: Path
    authorized: set[bytes] = field(default_factory=set)
    authorized_lines: list[str] = field(default_factory=list)
    host_public_line: str = ""
    acceptor: asyncssh.SSHAcceptor | None = None


class _FleetServer(asyncssh.SSHServer):
    """Per-connection server object: checks the login user and key against the address's state."""

    def __init__(self, fleet: SshFleet, address: str):
        self._fleet = fleet
        self._address = address

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        host = self._fleet._hosts.get(self._address)
        if host is None or username != self._fleet.username:
            return False
        return key.public_data in host.authorized


class SshFleet:
    """SSH servers on port `port` of many loopback addresses, started by `start()` or `with`.

    `set_authorized_keys` and `install_host_key` take the address of the server they apply
    to, so the class fits the per-server hooks of `tests.peers.hetzner_api.HetznerApiServer`
    when it hands out one address per server. An address starts listening once it has a host
    key. `forget` stops it again.
    """

    def __init__(self, *, username: str | None = None):
        self.username = username or getpass.getuser()
        self.port = 0
        self.commands_started = 0
        self._root = Path(tempfile.mkdtemp(prefix="ssh-fleet-"))
        self._hosts: dict[str, _Host] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._children: set[asyncio.subprocess.Process] = set()

    def __enter__(self) -> SshFleet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Lifecycle

    def start(self) -> SshFleet:
        """Pick a free port and start the event loop thread."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(ready.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="ssh-fleet", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=LOOP_CALL_TIMEOUT_SECONDS):
            raise SshFleetError("the SSH fleet's event loop did not start")
        logger.info("SSH fleet started on port %s", self.port)
        return self

    def stop(self) -> None:
        """Close every listener, end running commands, stop the loop and delete the work folders."""
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._forget_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=LOOP_CALL_TIMEOUT_SECONDS)
        self._loop.close()
        self._loop = None
        shutil.rmtree(self._root, ignore_errors=True)
        logger.info("SSH fleet on port %s stopped", self.port)

    # Hooks for the fake cloud's cloud-init emulation

    def set_authorized_keys(self, lines: list[str], *, address: str) -> None:
        """Replace the authorized keys of the server at `address`."""
        keys = set()
        kept = []
        for raw_line in lines:
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            keys.add(asyncssh.import_public_key(line).public_data)
            kept.append(line)

        host = self._host(address)
        host.authorized = keys
        host.authorized_lines = kept

    def install_host_key(self, private_key_openssh: str, *, address: str) -> None:
        """Serve this private key as the host key of `address`, listening there from now on."""
        key = asyncssh.import_private_key(private_key_openssh)
        self._call(self._listen(self._host(address), key))

    def forget(self, address: str) -> None:
        """Stop listening on `address`, end its commands and delete its work folder."""
        self._call(self._forget(address))

    def reset(self) -> None:
        """Forget every address."""
        self._call(self._forget_all())

    # Inspection

    @property
    def addresses(self) -> list[str]:
        """The addresses that have a host key or authorized keys, in the order they were added."""
        return list(self._hosts)

    def workdir(self, address: str) -> Path:
        """The folder commands for `address` run in (the server's "disk")."""
        return self._host(address).workdir

    def authorized_keys(self, address: str) -> list[str]:
        host = self._hosts.get(address)
        return list(host.authorized_lines) if host else []

    def host_public_key(self, address: str) -> str:
        """The public line of the host key `address` serves, or "" when it has none."""
        host = self._hosts.get(address)
        return host.host_public_line if host else ""

    # Event loop side

    def _host(self, address: str) -> _Host:
        host = self._hosts.get(address)
        if host is None:
            workdir = self._root / address
            workdir.mkdir(parents=True, exist_ok=True)
            host = _Host(address=address, workdir=workdir)
            self._hosts[address] = host
        return host

    def _call(self, coroutine):
        if self._loop is None:
            coroutine.close()
            raise SshFleetError("the SSH fleet is not running; call start() first")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=LOOP_CALL_TIMEOUT_SECONDS)

    async def _listen(self, host: _Host, key: asyncssh.SSHKey) -> None:
        if host.acceptor is not None:
            host.acceptor.close()
            await host.acceptor.wait_closed()
            host.acceptor = None
        address = host.address
        try:
            host.acceptor = await asyncssh.create_server(
                lambda: _FleetServer(self, address),
                address,
                self.port,
                server_host_keys=[key],
                process_factory=lambda process: self._run_command(address, process),
                encoding=None,
                line_editor=False,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                reuse_address=True,
            )
        except OSError as error:
            raise SshFleetError(f"cannot listen on {address}:{self.port}: {error}") from error
        host.host_public_line = key.export_public_key().decode().strip()
        logger.debug("SSH fleet listening on %s:%s", address, self.port)

    async def _forget(self, address: str) -> None:
        host = self._hosts.pop(address, None)
        if host is None:
            return
        if host.acceptor is not None:
            host.acceptor.close()
            await host.acceptor.wait_closed()
        shutil.rmtree(host.workdir, ignore_errors=True)

    async def _forget_all(self) -> None:
        for address in list(self._hosts):
            await self._forget(address)
        for child in list(self._children):
            _kill_session(child)

    async def _run_command(self, address: str, process: asyncssh.SSHServerProcess) -> None:
        """Run the session's command with bash and connect its pipes to the SSH channel."""
        command = process.command
        if not command:
            process.stderr.write(b"this test SSH server runs commands only, not shells\n")
            process.exit(1)
            return
        host = self._hosts.get(address)
        workdir = host.workdir if host else self._root
        self.commands_started += 1
        child = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=workdir,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._children.add(child)
        feeder = asyncio.create_task(_feed_stdin(process, child))
        try:
            await asyncio.gather(
                _pump_output(child.stdout, process.stdout),
                _pump_output(child.stderr, process.stderr),
            )
            returncode = await child.wait()
        finally:
            feeder.cancel()
            self._children.discard(child)
            if child.returncode is None:
                _kill_session(child)
        exit_status = returncode if returncode >= 0 else 128 - returncode
        with contextlib.suppress(Exception):
            process.exit(exit_status)


async def _feed_stdin(process: asyncssh.SSHServerProcess, child: asyncio.subprocess.Process) -> None:
    """Copy the channel's input to the command's stdin; close it when the channel ends.

    When the client disconnects, the closed stdin is what the recipe wrapper's watcher waits
    for, and it then ends the script's process group, as with a real sshd.
    """
    try:
        while data := await process.stdin.read(READ_SIZE):
            child.stdin.write(data)
            await child.stdin.drain()
    except (asyncssh.Error, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()


async def _pump_output(reader: asyncio.StreamReader | None, writer) -> None:
    if reader is None:
        return
    while data := await reader.read(READ_SIZE):
        with contextlib.suppress(asyncssh.Error, OSError):
            writer.write(data)


def _kill_session(child: asyncio.subprocess.Process) -> None:
    # The command runs in a session of its own, so its process id is also its group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
