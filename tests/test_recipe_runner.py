"""Tests for recipes.runner and recipes.keys against a real OpenSSH server on loopback."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from recipes.keys import KeyPair, cloud_config_user_data, generate_keypair, known_host_line
from recipes.runner import (
    AuthenticationFailed,
    ConnectionLost,
    HostKeyMismatch,
    RecipeResult,
    RecipeStopped,
    SshUnreachable,
    _OutputStream,
    run_recipe,
    wait_for_ssh,
)
from tests.peers.sshd import LoopbackSshd


@pytest.fixture
def client_key() -> KeyPair:
    return generate_keypair("cloudmarket-test-client")


@pytest.fixture
def sshd(client_key: KeyPair) -> Iterator[LoopbackSshd]:
    with LoopbackSshd() as server:
        server.set_authorized_keys([client_key.public_line])
        yield server


def _run(
    sshd: LoopbackSshd, client_key: KeyPair, script: str, **options: object
) -> tuple[RecipeResult, list[str]]:
    chunks: list[str] = []
    arguments: dict[str, object] = {"timeout_seconds": 30, "on_output": chunks.append}
    arguments.update(options)
    result = run_recipe(
        host=sshd.host,
        port=sshd.port,
        username=sshd.username,
        client_private_key=client_key.private_openssh,
        host_public_key=sshd.host_public_key,
        script=script,
        **arguments,
    )
    return result, chunks


def _process_is_running(pid: int) -> bool:
    """Return whether `pid` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_run_captures_stdout_and_stderr_in_order(sshd, client_key) -> None:
    script = "echo out-1\necho err-1 >&2\necho out-2\necho err-2 >&2\n"

    result, chunks = _run(sshd, client_key, script)

    assert result.exit_code == 0
    assert result.timed_out is False
    assert result.truncated is False
    assert "".join(chunks) == "out-1\nerr-1\nout-2\nerr-2\n"
    assert result.output_bytes == len("out-1\nerr-1\nout-2\nerr-2\n")
    assert result.duration_seconds > 0


def test_run_reports_exit_code(sshd, client_key) -> None:
    result, chunks = _run(sshd, client_key, "echo failing\nexit 3\n")

    assert result.exit_code == 3
    assert result.timed_out is False
    assert "".join(chunks) == "failing\n"


@pytest.mark.parametrize(
    "failing_line",
    [
        pytest.param("false", id="errexit"),
        pytest.param("false | cat", id="pipefail"),
        pytest.param('echo "$NOT_DEFINED_ANYWHERE"', id="nounset"),
    ],
)
def test_run_stops_at_first_failing_command(sshd, client_key, failing_line: str) -> None:
    marker = sshd.workdir / "after"
    script = f"echo before\n{failing_line}\necho after\ntouch {marker}\n"

    result, chunks = _run(sshd, client_key, script)

    assert result.exit_code != 0
    assert "before\n" in "".join(chunks)
    assert "after" not in "".join(chunks)
    assert not marker.exists()


def test_run_script_commands_do_not_read_script(sshd, client_key) -> None:
    script = "read -r line || echo stdin-empty\ncat\necho after-read\n"

    result, chunks = _run(sshd, client_key, script)

    assert result.exit_code == 0
    assert "".join(chunks) == "stdin-empty\nafter-read\n"


def test_run_passes_environment_literally(sshd, client_key) -> None:
    value = 'it\'s $HOME `id` "quoted"'

    result, chunks = _run(sshd, client_key, 'printf "%s\\n" "$GREETING"\n', env={"GREETING": value})

    assert result.exit_code == 0
    assert "".join(chunks) == value + "\n"


def test_run_rejects_invalid_environment_name(sshd, client_key) -> None:
    with pytest.raises(ValueError, match="invalid environment variable name"):
        _run(sshd, client_key, "true\n", env={"BAD-NAME": "x"})


def test_run_decodes_invalid_utf8_with_replacement(sshd, client_key) -> None:
    result, chunks = _run(sshd, client_key, "printf 'caf\\xc3\\xa9 \\xff\\n'\n")

    assert result.exit_code == 0
    assert "".join(chunks) == "café \ufffd\n"


def test_run_timeout_kills_remote_processes(sshd, client_key) -> None:
    pid_file = sshd.workdir / "pids"
    script = f"sleep 600 &\necho $! > {pid_file}\necho $$ >> {pid_file}\necho started\nwait\n"
    started = time.monotonic()

    result, chunks = _run(sshd, client_key, script, timeout_seconds=2)

    elapsed = time.monotonic() - started
    assert result.timed_out is True
    assert result.exit_code is None
    assert "".join(chunks) == "started\n"
    assert elapsed < 10
    sleep_pid, shell_pid = (int(line) for line in pid_file.read_text().split())
    assert not _process_is_running(sleep_pid)
    assert not _process_is_running(shell_pid)


def test_run_timeout_kills_script_ignoring_sigterm(sshd, client_key) -> None:
    pid_file = sshd.workdir / "pid"
    script = f"trap '' TERM\necho $$ > {pid_file}\nwhile true; do sleep 0.1; done\n"

    result, _ = _run(sshd, client_key, script, timeout_seconds=3)  # Long enough for a loaded machine to start the script.

    assert result.timed_out is True
    # The kill is sent before run() returns; on a loaded machine the process may take a moment
    # to be reaped, so wait a little. A script the runner failed to kill would still be running.
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _process_is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _process_is_running(pid)


def test_run_truncates_output_and_drains(sshd, client_key) -> None:
    # Two MB after the limit: the script can only finish if the runner keeps reading.
    script = "head -c 2000000 /dev/zero | tr '\\0' x\necho\necho done >&2\nexit 0\n"

    result, chunks = _run(sshd, client_key, script, max_output_bytes=1000, chunk_bytes=256)

    output = "".join(chunks)
    assert result.exit_code == 0
    assert result.truncated is True
    assert result.output_bytes == 2_000_000 + len("\ndone\n")
    assert output == "x" * 1000 + "\n[output truncated after 1000 bytes]\n"


def test_run_redacts_secret_split_across_reads(sshd, client_key) -> None:
    secret = "s3cr3t-Token-value"
    script = 'printf "token=%s end\\n" "$TOKEN"\nprintf "%s\\n" "$TOKEN" >&2\n'

    result, chunks = _run(
        sshd, client_key, script, env={"TOKEN": secret}, secrets=[secret], chunk_bytes=5
    )

    output = "".join(chunks)
    assert result.exit_code == 0
    assert output == "token=[redacted] end\n[redacted]\n"
    assert len(chunks) > 1


def test_run_redacts_secret_split_across_flushes(sshd, client_key) -> None:
    # The interval flush runs while the script sleeps between the two halves of the secret.
    script = "printf 'pass:abc'\nsleep 0.5\nprintf 'def!\\n'\n"

    result, chunks = _run(sshd, client_key, script, secrets=["abcdef"], chunk_interval=0.1)

    assert result.exit_code == 0
    assert "".join(chunks) == "pass:[redacted]!\n"
    assert not any("abc" in chunk for chunk in chunks)


def test_run_flushes_output_every_interval(sshd, client_key) -> None:
    arrivals: list[tuple[float, str]] = []
    script = "echo first\nsleep 1.5\necho second\n"

    result = run_recipe(
        host=sshd.host,
        port=sshd.port,
        username=sshd.username,
        client_private_key=client_key.private_openssh,
        host_public_key=sshd.host_public_key,
        script=script,
        timeout_seconds=30,
        on_output=lambda text: arrivals.append((time.monotonic(), text)),
        chunk_interval=0.2,
    )
    finished = time.monotonic()

    assert result.exit_code == 0
    assert "".join(text for _, text in arrivals) == "first\nsecond\n"
    assert arrivals[0][1] == "first\n"
    assert finished - arrivals[0][0] > 1.0


def test_run_rejects_wrong_host_key(sshd, client_key) -> None:
    other_host_key = generate_keypair("some-other-server")

    with pytest.raises(HostKeyMismatch, match=f"{sshd.host}:{sshd.port}"):
        run_recipe(
            host=sshd.host,
            port=sshd.port,
            username=sshd.username,
            client_private_key=client_key.private_openssh,
            host_public_key=other_host_key.public_line,
            script="true\n",
            timeout_seconds=10,
            on_output=lambda text: None,
        )


def test_run_rejects_unauthorised_client_key(sshd) -> None:
    stranger = generate_keypair("stranger")

    with pytest.raises(AuthenticationFailed, match=f"{sshd.host}:{sshd.port}"):
        run_recipe(
            host=sshd.host,
            port=sshd.port,
            username=sshd.username,
            client_private_key=stranger.private_openssh,
            host_public_key=sshd.host_public_key,
            script="true\n",
            timeout_seconds=10,
            on_output=lambda text: None,
        )


def test_wait_for_ssh_closed_port_raises(client_key) -> None:
    port = _closed_port()
    host_key = generate_keypair("absent-server")
    started = time.monotonic()

    with pytest.raises(SshUnreachable, match=f"127.0.0.1:{port}") as raised:
        wait_for_ssh(
            host="127.0.0.1",
            port=port,
            username="root",
            client_private_key=client_key.private_openssh,
            host_public_key=host_key.public_line,
            deadline_seconds=1.5,
            interval=0.2,
        )

    assert time.monotonic() - started < 5
    assert "last error" in str(raised.value)


def test_wait_for_ssh_returns_when_reachable(sshd, client_key) -> None:
    wait_for_ssh(
        host=sshd.host,
        port=sshd.port,
        username=sshd.username,
        client_private_key=client_key.private_openssh,
        host_public_key=sshd.host_public_key,
        deadline_seconds=10,
    )


def test_wait_for_ssh_wrong_host_key_names_mismatch(sshd, client_key) -> None:
    with pytest.raises(SshUnreachable, match="does not match") as raised:
        wait_for_ssh(
            host=sshd.host,
            port=sshd.port,
            username=sshd.username,
            client_private_key=client_key.private_openssh,
            host_public_key=generate_keypair("other").public_line,
            deadline_seconds=1,
            interval=0.2,
        )

    assert isinstance(raised.value.__cause__, HostKeyMismatch)


def test_install_host_key_from_cloud_config(sshd, client_key) -> None:
    host_key = generate_keypair("rental-1-host")
    user_data = cloud_config_user_data(host_key=host_key)
    ssh_keys = yaml.safe_load(user_data)["ssh_keys"]
    started = time.monotonic()

    sshd.install_host_key(ssh_keys["ed25519_private"])

    install_seconds = time.monotonic() - started
    result, chunks = _run(sshd, client_key, "echo new-key\n")
    assert user_data.startswith("#cloud-config\nssh_keys:\n  ed25519_private: |\n")
    assert ssh_keys["ed25519_public"] == host_key.public_line
    assert sshd.host_public_key == host_key.public_line
    assert install_seconds < 10
    assert result.exit_code == 0
    assert "".join(chunks) == "new-key\n"


def test_install_host_key_old_key_rejected(sshd, client_key) -> None:
    old_host_key = sshd.host_public_key

    sshd.install_host_key(generate_keypair("replacement").private_openssh)

    with pytest.raises(HostKeyMismatch):
        run_recipe(
            host=sshd.host,
            port=sshd.port,
            username=sshd.username,
            client_private_key=client_key.private_openssh,
            host_public_key=old_host_key,
            script="true\n",
            timeout_seconds=10,
            on_output=lambda text: None,
        )


def test_set_authorized_keys_replaces_keys(sshd, client_key) -> None:
    other = generate_keypair("other-client")

    sshd.set_authorized_keys([other.public_line, ""])

    assert sshd.authorized_keys() == [other.public_line]
    with pytest.raises(AuthenticationFailed):
        _run(sshd, client_key, "true\n")


def test_known_host_line_formats_port() -> None:
    public_line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample comment"

    assert (
        known_host_line("10.0.0.5", 22, public_line)
        == "10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"
    )
    assert (
        known_host_line("10.0.0.5", 2222, public_line)
        == "[10.0.0.5]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"
    )


def _stream_output(pieces: list[bytes], **options: object) -> str:
    chunks: list[str] = []
    arguments: dict[str, object] = {
        "on_output": chunks.append,
        "secrets": ["SECRET"],
        "max_output_bytes": 1000,
        "chunk_bytes": 1,
    }
    arguments.update(options)
    stream = _OutputStream(**arguments)
    for piece in pieces:
        stream.feed(piece)
    stream.close()
    return "".join(chunks)


def test_output_stream_redacts_at_every_split() -> None:
    data = b"a SECRET b SECRETSECRET c SECRE"

    for split in range(len(data) + 1):
        output = _stream_output([data[:split], data[split:]])

        assert output == "a [redacted] b [redacted][redacted] c SECRE", split


def test_output_stream_redacts_longest_secret_first() -> None:
    output = _stream_output([b"x hunter2-extended y"], secrets=["hunter2", "hunter2-extended"])

    assert output == "x [redacted] y"


def test_output_stream_truncation_hides_partial_secret() -> None:
    output = _stream_output([b"0123SEC", b"RET"], max_output_bytes=7)

    assert output == "0123[redacted]\n[output truncated after 7 bytes]\n"


def test_output_stream_truncation_keeps_whole_characters() -> None:
    output = _stream_output(["aé".encode()], secrets=[], max_output_bytes=2)

    assert output == "a\n[output truncated after 2 bytes]\n"


def test_run_on_output_error_stops_script(sshd, client_key) -> None:
    pid_file = sshd.workdir / "pid"
    script = f"echo $$ > {pid_file}\necho started\nsleep 600\n"

    def reject_output(text: str) -> None:
        raise RuntimeError("log storage unavailable")

    with pytest.raises(RuntimeError, match="log storage unavailable"):
        _run(sshd, client_key, script, on_output=reject_output, chunk_bytes=1)

    assert not _process_is_running(int(pid_file.read_text()))


def test_run_connection_lost_raises_and_stops_script(sshd, client_key) -> None:
    pid_file = sshd.workdir / "pid"
    script = f"echo $$ > {pid_file}\necho started\nsleep 600\n"

    def stop_server(text: str) -> None:
        # Stopping sshd also ends the per-connection sshd processes, which drops the session.
        pid_file_copy.append(int(pid_file.read_text()))
        sshd.stop()

    pid_file_copy: list[int] = []
    with pytest.raises(ConnectionLost, match=f"{sshd.host}:{sshd.port}"):
        _run(sshd, client_key, script, on_output=stop_server, chunk_bytes=1)

    deadline = time.monotonic() + 5
    while _process_is_running(pid_file_copy[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _process_is_running(pid_file_copy[0])


def test_run_leaves_background_processes_after_normal_end(sshd, client_key) -> None:
    pid_file = sshd.workdir / "pid"
    script = f"sleep 30 > /dev/null 2>&1 &\necho $! > {pid_file}\n"

    result, _ = _run(sshd, client_key, script)

    pid = int(pid_file.read_text())
    try:
        time.sleep(0.5)
        assert result.exit_code == 0
        assert _process_is_running(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_run_reports_signal_as_exit_code(sshd, client_key) -> None:
    result, _ = _run(sshd, client_key, "kill -KILL $$\n")

    assert result.exit_code == 128 + signal.SIGKILL
    assert result.timed_out is False


def test_run_stops_when_caller_asks(sshd, client_key) -> None:
    pid_file = sshd.workdir / "stop-pid"
    script = f"echo $$ > {pid_file}\necho started\nsleep 600\n"
    started = time.monotonic()

    with pytest.raises(RecipeStopped):
        _run(sshd, client_key, script, should_stop=lambda: pid_file.exists() and time.monotonic() - started > 1)

    assert time.monotonic() - started < 15
    assert not _process_is_running(int(pid_file.read_text()))


def test_runs_on_one_server_never_overlap(sshd, client_key) -> None:
    import threading

    log = sshd.workdir / "overlap.log"
    script = f"echo start >> {log}\nsleep 1\necho end >> {log}\n"
    results: list[RecipeResult] = []
    threads = [threading.Thread(target=lambda: results.append(_run(sshd, client_key, script)[0])) for _ in range(2)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert [result.exit_code for result in results] == [0, 0]
    assert log.read_text().split() == ["start", "end", "start", "end"]
