"""A real OpenSSH server on 127.0.0.1 for tests, with its own config, host key and authorized_keys.

`LoopbackSshd` runs Debian's `/usr/sbin/sshd` in the foreground on a free loopback port. It
plays a freshly booted cloud server: the fake cloud calls `install_host_key` and
`set_authorized_keys` with what cloud-init would write, and recipes run against it over SSH.

Tests run as root (CI does too), so the login user is the current user and sshd is configured
for public-key authentication only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

logger = logging.getLogger(__name__)

SSHD_BINARY = "/usr/sbin/sshd"
# sshd refuses to start without its privilege separation directory.
PRIVSEP_DIRECTORY = Path("/run/sshd")
STARTUP_TIMEOUT_SECONDS = 15.0
START_ATTEMPTS = 3


class LoopbackSshdError(RuntimeError):
    """Raised when the loopback sshd does not start or does not serve the expected host key."""


class LoopbackSshd:
    """A foreground OpenSSH server on 127.0.0.1 whose files all live in one temporary directory."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.username = getpass.getuser()
        self._root = Path(tempfile.mkdtemp(prefix="loopback-sshd-"))
        self.workdir = self._root / "work"
        self.workdir.mkdir()
        self.authorized_keys_path = self._root / "authorized_keys"
        self.authorized_keys_path.write_text("")
        self.host_key_path = self._root / "ssh_host_ed25519_key"
        self._config_path = self._root / "sshd_config"
        self._pid_path = self._root / "sshd.pid"
        self.log_path = self._root / "sshd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file = None
        # The fake cloud API calls the set/install methods from its request threads.
        self._lock = threading.RLock()
        host_key = asyncssh.generate_private_key("ssh-ed25519", comment="loopback-sshd")
        self._write_host_key(host_key.export_private_key().decode())

    def __enter__(self) -> LoopbackSshd:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host_public_key(self) -> str:
        """The public line of the host key sshd currently serves (from the key file)."""
        return self._host_public_line

    def start(self) -> None:
        """Start sshd on a free port and wait until it sends its SSH banner."""
        PRIVSEP_DIRECTORY.mkdir(mode=0o755, parents=True, exist_ok=True)
        last_error: Exception | None = None
        # The free port is found by binding port 0 and closing the socket, so another process
        # can take it before sshd binds. A retry with a new port covers that race.
        for _attempt in range(START_ATTEMPTS):
            self.port = _find_free_port(self.host)
            self._write_config()
            try:
                self._spawn()
                self._wait_for_banner(deadline=time.monotonic() + STARTUP_TIMEOUT_SECONDS)
            except LoopbackSshdError as error:
                last_error = error
                self._terminate()
                continue
            logger.info("Loopback sshd started on %s:%s, pid %s", self.host, self.port, self.pid)
            return
        raise LoopbackSshdError(f"sshd did not start after {START_ATTEMPTS} attempts: {last_error}")

    @property
    def pid(self) -> int | None:
        """Process id of the listening sshd, or None when it is not running."""
        return self._process.pid if self._process is not None else None

    def set_authorized_keys(self, lines: list[str]) -> None:
        """Replace the authorized keys, as cloud-init does for the server's first boot."""
        text = "".join(line.strip() + "\n" for line in lines if line.strip())
        with self._lock:
            staging = self.authorized_keys_path.with_suffix(".new")
            staging.write_text(text)
            staging.chmod(0o600)
            staging.replace(self.authorized_keys_path)

    def authorized_keys(self) -> list[str]:
        """Return the key lines currently in the authorized_keys file, without comments."""
        lines = self.authorized_keys_path.read_text().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    def install_host_key(self, private_key_openssh: str) -> None:
        """Make sshd serve this ed25519 private key as its host key.

        Writes the key file and sends SIGHUP, which makes sshd re-execute itself and reload its
        host keys on the same port. Returns once a new connection is offered the new key, which
        usually takes well under a second.
        """
        with self._lock:
            self._install_host_key(private_key_openssh)

    def _install_host_key(self, private_key_openssh: str) -> None:
        self._write_host_key(private_key_openssh)
        if self._process is None:
            return
        os.kill(self._process.pid, signal.SIGHUP)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        expected = asyncssh.import_public_key(self._host_public_line)
        while True:
            served = _fetch_server_host_key(self.host, self.port)
            if served is not None and served.public_data == expected.public_data:
                logger.info("Loopback sshd on %s:%s serves the new host key", self.host, self.port)
                return
            if self._process.poll() is not None:
                raise LoopbackSshdError(
                    f"sshd exited with code {self._process.returncode} after SIGHUP. "
                    f"Log:\n{self._read_log()}"
                )
            if time.monotonic() > deadline:
                raise LoopbackSshdError(
                    f"sshd on {self.host}:{self.port} did not serve the new host key within "
                    f"{STARTUP_TIMEOUT_SECONDS} s. Log:\n{self._read_log()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop sshd and its connection processes, and delete the temporary directory."""
        self._terminate()
        shutil.rmtree(self._root, ignore_errors=True)
        logger.info("Loopback sshd on %s:%s stopped", self.host, self.port)

    def _write_host_key(self, private_key_openssh: str) -> None:
        key = asyncssh.import_private_key(private_key_openssh)
        if key.get_algorithm() != "ssh-ed25519":
            raise ValueError(f"host key must be ssh-ed25519, got {key.get_algorithm()}")
        # Write to a new file and rename it, so a restarting sshd never reads half a key.
        staging = self.host_key_path.with_suffix(".new")
        staging.write_text(private_key_openssh.strip() + "\n")
        staging.chmod(0o600)
        staging.replace(self.host_key_path)
        self._host_public_line = key.export_public_key().decode().strip()
        self.host_key_path.with_suffix(".pub").write_text(self._host_public_line + "\n")

    def _write_config(self) -> None:
        settings = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self._pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            f"AllowUsers {self.username}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "PermitUserEnvironment no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "PrintMotd no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        self._config_path.write_text("\n".join(settings) + "\n")

    def _spawn(self) -> None:
        self._log_file = self.log_path.open("ab")
        # A new session lets stop() signal the listener and its per-connection processes at once.
        self._process = subprocess.Popen(
            [SSHD_BINARY, "-D", "-e", "-f", str(self._config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_for_banner(self, *, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise LoopbackSshdError(
                    f"sshd exited with code {self._process.returncode}. Log:\n{self._read_log()}"
                )
            if _read_banner(self.host, self.port).startswith(b"SSH-2.0-"):
                return
            if time.monotonic() > deadline:
                raise LoopbackSshdError(
                    f"sshd on {self.host}:{self.port} sent no SSH banner. Log:\n{self._read_log()}"
                )
            time.sleep(0.05)

    def _terminate(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            # Each connection's sshd process calls setsid, so signalling the listener's process
            # group misses it. Ending those processes closes the open SSH connections.
            for child_pid in _child_pids(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child_pid, signal.SIGTERM)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(no log)"


def _child_pids(parent_pid: int) -> list[int]:
    """Return the ids of the processes whose parent is `parent_pid`, read from /proc."""
    children = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces, so split after its closing bracket.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent_pid:
            children.append(int(stat_path.parent.name))
    return children


def _find_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _read_banner(host: str, port: int) -> bytes:
    """Return the first bytes the server sends, or b"" if it does not accept connections."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as connection:
            return connection.recv(64)
    except OSError:
        return b""


def _fetch_server_host_key(host: str, port: int) -> asyncssh.SSHKey | None:
    """Return the ed25519 host key the server offers, or None if the handshake fails."""

    async def fetch() -> asyncssh.SSHKey | None:
        return await asyncio.wait_for(
            asyncssh.get_server_host_key(
                host, port, server_host_key_algs=["ssh-ed25519"], config=None
            ),
            timeout=2,
        )

    def fetch_in_new_loop() -> asyncssh.SSHKey | None:
        try:
            return asyncio.run(fetch())
        except (TimeoutError, OSError, asyncssh.Error):
            return None

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fetch_in_new_loop()
    # asyncio.run cannot nest inside a running event loop, so use a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(fetch_in_new_loop).result()


@pytest.fixture
def loopback_sshd() -> Iterator[LoopbackSshd]:
    """A running `LoopbackSshd`, stopped after the test."""
    with LoopbackSshd() as sshd:
        yield sshd
