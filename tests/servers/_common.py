"""Helpers shared by the real-server fixtures.

Every server process is started by :func:`start_logged`: its own process group (teardown kills
the group), output to a log file, and a parent-death signal so a hard-killed pytest does not
leave servers behind. Ports are never guessed and then trusted: a server either binds port 0
and reports the port it got (:func:`wait_for_port`), or the port that answers is checked to be
held by the server's own process (:func:`owns_listener`), so parallel sessions cannot end up
talking to each other's servers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

READY_DEADLINE = 30.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers must verify who binds it)."""
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


def _parent_death_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` that has the child SIGKILLed when the process that forked it dies.

    Linux delivers PR_SET_PDEATHSIG when the *thread* that forked the child exits, so servers
    must be started from the main thread (session fixtures are). If the parent is already gone
    by the time the child calls prctl, the child kills itself.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    # Resolved here, in the parent: the forked child of a threaded process should do as little
    # as possible (no dlsym, which takes a loader lock another thread may have held).
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def start_logged(
    argv: Sequence[str], log_path: Path, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a server: output to ``log_path``, own process group, killed with its parent."""
    # Only the main thread outlives the session; a server forked from a short-lived thread
    # would be killed as soon as that thread ends.
    assert threading.current_thread() is threading.main_thread(), "start servers from main"
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so teardown can kill it and anything it spawned.
            start_new_session=True,
            preexec_fn=_parent_death_preexec(),
        )


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


def _died(proc: subprocess.Popen[bytes], what: str, log_path: Path) -> RuntimeError:
    return RuntimeError(
        f"{what} exited with {proc.returncode} before it was ready; log tail:\n"
        + log_tail(log_path)
    )


def wait_for_port(
    proc: subprocess.Popen[bytes], log_path: Path, pattern: bytes, *, what: str = "server"
) -> int:
    """The port a server started on port 0 reports in its log (``pattern``'s first group).

    Raises:
        RuntimeError: The process died first (with the log tail), or the deadline passed (the
            process is killed).
    """
    regex = re.compile(pattern)
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        match = regex.search(log_path.read_bytes())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise _died(proc, what, log_path)
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)
    raise RuntimeError(
        f"{what} did not report its port within {READY_DEADLINE:.0f}s; log tail:\n"
        + log_tail(log_path)
    )


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1:``port`` (or any address), from /proc/net/tcp."""
    inodes: set[str] = set()
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                # fields: sl local rem st ... uid timeout inode; 0A is LISTEN.
                if fields[1] in wanted and fields[3] == "0A":
                    inodes.add(fields[9])
    except OSError:
        pass
    return inodes


def owns_listener(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port``."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    *,
    what: str = "server",
    port: int | None = None,
) -> bool:
    """Poll ``url`` until it answers 200 (True) or the process dies (False); fail at deadline.

    With ``port``, an answer only counts once ``proc`` itself holds the listening socket: a
    server of another session that got the same port first answers too, while ours dies.
    """
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and (port is None or owns_listener(proc.pid, port)):
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


def start_on_port_zero(
    argv: Sequence[str],
    log_path: Path,
    port_pattern: bytes,
    ready_path: str,
    *,
    what: str,
    cwd: Path | None = None,
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start a server that binds port 0 and logs its port; return once ``ready_path`` answers.

    Raises:
        RuntimeError: The server died (with its log tail) or was not ready in time.
    """
    proc = start_logged(argv, log_path, cwd=cwd)
    try:
        port = wait_for_port(proc, log_path, port_pattern, what=what)
        if not wait_ready(proc, f"http://127.0.0.1:{port}{ready_path}", log_path, what=what):
            raise _died(proc, what, log_path)
    except BaseException:
        kill_group(proc)
        raise
    return port, proc
