"""Helpers shared by the real-server fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the server binds it right after; a race is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a server log, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


READY_DEADLINE = 30.0


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, *, what: str = "server"
) -> bool:
    """Poll ``url`` until it answers 200 (True) or the process dies (False); fail at deadline."""
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        # Waiting on the process doubles as the poll interval and notices an early death at once.
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)
    raise RuntimeError(
        f"{what} did not answer {url} within {READY_DEADLINE:.0f}s; log tail:\n"
        + log_tail(log_path)
    )
