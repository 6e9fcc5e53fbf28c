"""A TCP connect probe shared by the platform's health checks and the agent; imports no Django module."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one TCP connect: `latency_ms` when it connected, else the error in `detail`."""

    up: bool
    latency_ms: float | None
    detail: str


def tcp_probe(*, host: str, port: int, timeout: float) -> ProbeResult:
    """Open a TCP connection to `host`:`port`, close it, and return the time it took to connect."""
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            elapsed_ms = (time.perf_counter() - started) * 1000
    except TimeoutError:
        return ProbeResult(up=False, latency_ms=None, detail=f"Connecting to {host} port {port} timed out after {timeout:g} s.")
    except OSError as exc:
        return ProbeResult(up=False, latency_ms=None, detail=f"Connecting to {host} port {port} failed: {exc.strerror or exc}.")
    return ProbeResult(up=True, latency_ms=round(elapsed_ms, 2), detail="")
