"""Shared pieces of the benchmarks: CPU pinning, per-process CPU / RSS accounting, the
interference loop, test data, the local S3 server and the latency proxy, child processes.

Nothing here prints credentials: child processes get their spec (which holds the local
server's dummy keys) on stdin, never on the command line, and errors quote only stderr tails.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DOCS = ROOT / "docs"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
# The server side (moto, the latency proxy) runs on this CPU, the measured client on the other.
SERVER_CPU = 0
CLIENT_CPU = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def can_pin() -> bool:
    """True when this machine can keep the server and the client on separate CPUs."""
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def pin(cpu: int, pid: int = 0) -> None:
    """Pin ``pid`` (0: this process) to ``cpu`` when :func:`can_pin`."""
    if can_pin():
        os.sched_setaffinity(pid, {cpu})


def child_env() -> dict[str, str]:
    """Environment for child processes: the source tree importable, nothing else changed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


# ---------------------------------------------------------------- per-process accounting


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (Linux /proc; just ``pid`` elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` (their own threads; /proc, so live processes)."""
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pids: Sequence[int]) -> dict[int, int]:
    """Reset the kernel's peak-RSS mark (VmHWM) of ``pids``; return their current RSS (KiB).

    Writing "5" to /proc/PID/clear_refs (Linux >= 4.0) sets VmHWM to the current RSS, so the
    peak read later belongs to what happened after this call, not to imports or set-up.
    """
    base = {}
    for p in pids:
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            pass
        base[p] = _status_kib(p, "VmRSS:")
    return base


def peak_rss_growth_mib(base: dict[int, int]) -> float:
    """Sum over the processes of (peak RSS since :func:`reset_peak_rss` - RSS then), MiB."""
    return sum(max(0, _status_kib(p, "VmHWM:") - b) for p, b in base.items()) / 1024


# ---------------------------------------------------------------- is the machine busy?

# A CPU counts as contended when a pinned spin loop gets less than this share of it.
BUSY_SHARE = 0.90
_SPIN_PROBE = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
seconds = float(sys.argv[2])
wall0, cpu0 = time.perf_counter(), time.thread_time()
while time.perf_counter() - wall0 < seconds:
    pass
print((time.thread_time() - cpu0) / (time.perf_counter() - wall0))
"""


def _cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def busy_probe(seconds: float = 0.5) -> dict[str, Any]:
    """How much of each usable CPU a spin loop pinned to it gets right now, and steal time.

    One short-lived process per CPU spins for ``seconds`` at the same time as the others; its
    share is its CPU time over its wall time (1.0: nobody else wanted that CPU). Run when this
    benchmark has nothing else running (before its servers start, after they stop).
    ``busy`` is True when any CPU gave less than :data:`BUSY_SHARE` or the hypervisor stole
    more than 5 % of the machine meanwhile.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    before = _cpu_ticks()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SPIN_PROBE, str(cpu), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for cpu in cpus
    ]
    shares = {}
    for cpu, proc in zip(cpus, procs, strict=True):
        out, _ = proc.communicate(timeout=60)
        shares[cpu] = round(float(out.strip() or 0.0), 3)
    after = _cpu_ticks()
    steal = None
    if before is not None and after is not None and after[1] > before[1]:
        steal = round((after[0] - before[0]) / (after[1] - before[1]), 3)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy = any(v < BUSY_SHARE for v in shares.values()) or (steal or 0.0) > 0.05
    return {"cpu_share": shares, "steal": steal, "loadavg_1min": load1, "busy": busy}


# ---------------------------------------------------------------- interference loop


def spin_chunk() -> int:
    """A slice of pure-Python work standing in for a training loop's Python side."""
    x = 0
    for i in range(2000):
        x += i * i % 7
    return x


def spin_rate(seconds: float) -> float:
    """Chunks of :func:`spin_chunk` per second with nothing else running."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        spin_chunk()
        n += 1
    return n / elapsed


def spin_until(done: Callable[[], bool]) -> tuple[int, float, float]:
    """Spin until ``done()``; return (chunks, wall seconds, this thread's CPU seconds)."""
    n, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while not done():
        spin_chunk()
        n += 1
    return n, time.perf_counter() - t0, time.thread_time() - c0


# ---------------------------------------------------------------- data, servers, children


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` files of ``size`` random bytes (nothing may profit from compressible data)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    chunk = 64 * MiB
    for i in range(count):
        path = folder / f"f{i:05d}.bin"
        with open(path, "wb") as f:
            left = size
            while left > 0:
                f.write(os.urandom(min(chunk, left)))
                left -= chunk
        files.append(path)
    return files


def start_moto(log_dir: Path) -> Any:
    """A moto S3 server (the test suite's fixture helper) pinned to the server CPU."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.servers.moto import start_moto_server

    server = start_moto_server(log_dir)
    pin(SERVER_CPU, server.process.pid)
    return server


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process and its process group."""
    from tests.servers._common import kill_group

    kill_group(proc)


def start_proxy(upstream: str, latency_ms: float, log_dir: Path) -> tuple[str, Any]:
    """Start ``latency_proxy.py`` in front of ``upstream``; return (endpoint URL, process)."""
    log = open(log_dir / "latency_proxy.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH / "latency_proxy.py"),
            upstream,
            "--latency-ms",
            str(latency_ms),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("LISTENING "):
        stop(proc)  # type: ignore[arg-type]
        raise RuntimeError(f"latency proxy did not start (see {log_dir / 'latency_proxy.log'})")
    # Not pinned: on the server's CPU it would take cycles from moto, on the client's from
    # the measured process; the scheduler puts it wherever there is room. (It inherited this
    # process's pin to the client CPU.)
    if can_pin():
        os.sched_setaffinity(proc.pid, range(os.cpu_count() or 1))
    return f"http://127.0.0.1:{int(line.split()[1])}", proc


def run_child(script: Path, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script`` with ``spec`` as JSON on stdin; return the JSON of its last stdout line."""
    proc = subprocess.run(
        [sys.executable, str(script)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"{script.name} failed ({spec.get('label', '')}, exit status {proc.returncode})"
            + (f":\n{tail}" if tail else "")
        ) from None
    if proc.returncode != 0:
        # Measured and reported, then died on the way out (seen with native extensions'
        # threads at interpreter exit): the numbers stand, the exit status is recorded.
        result["exit_status"] = proc.returncode
    return result


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[k]
