"""The benchmark page's wording: verdicts that read right, ratios above 1 flagged as noise, and
the busy-machine warning only when the run's probe found the machine busy.

Pure report logic on hand-made run documents (no timing is asserted anywhere); the probe itself
is run once to check what it records, not how fast anything is.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _harness
import _report

IDLE = {"cpu_share": {0: 0.99, 1: 0.98}, "steal": 0.0, "loadavg_1min": 0.1, "busy": False}
BUSY = {"cpu_share": {0: 0.41, 1: 0.55}, "steal": 0.0, "loadavg_1min": 3.5, "busy": True}


def _doc(interference: dict[int, float], busy: dict[str, Any] | None) -> dict[str, Any]:
    results = [
        {
            "tool": "ours",
            "workload": "large",
            "concurrency": c,
            "interference": v,
            "wall": 1.0,
            "mb_per_s": 100.0,
            "objects_per_s": 1.0,
            "cpu_per_object_ms": 1.0,
            "cpu_per_gib_s": 1.0,
        }
        for c, v in interference.items()
    ]
    machine: dict[str, Any] = {"cpu_count": 2, "python": "3", "platform": "x", "pinned": True}
    if busy is not None:
        machine["busy_probe"] = {"start": busy, "end": IDLE}
        machine["busy"] = busy["busy"]
    doc: dict[str, Any] = {
        "command": "benchmarks/bench_s3.py --quick",
        "date": "today",
        "duration_s": 1.0,
        "machine": machine,
        "params": {
            "repeat": 1,
            "tools": ["ours"],
            "workloads": [{"name": "large", "count": 2, "size": 32 * 1024**2}],
        },
        "notes": {},
        "results": results,
        "events": [],
        "staging": {"rows": []},
    }
    doc["summary"] = _report.summarize(doc)
    return doc


def _target(doc: dict[str, Any], start: str) -> dict[str, Any]:
    return next(s for s in doc["summary"] if s["target"].startswith(start))


def test_a_miss_smaller_than_a_percent_still_reads_as_a_miss() -> None:
    met, text = _report._verdict([0.95, 0.897], 0.90, at_most=False)
    assert met is False
    assert "worst 0.897 against 0.90 (0.3% short)" in text
    assert "by 0%" not in text


def test_at_most_targets_say_over() -> None:
    met, text = _report._verdict([0.5, 0.84], 0.8, at_most=True)
    assert met is False
    assert text == "missed at 1 of 2 levels: worst 0.84 against 0.80 (5% over)"


def test_interference_above_one_is_noise_not_a_result() -> None:
    doc = _doc({1: 0.93, 16: 1.48}, busy=IDLE)
    target = _target(doc, "Interference ratio >= 0.90 while uploading the large workload, thread")
    assert target["measured"] == "0.93"  # 1.48 is not in the measured range
    assert target["met"] is True
    assert "1 level(s) above 1.00 not counted (noise" in target["verdict"]
    page = _report.markdown(doc)
    assert "| noise (1.48) |" in page
    assert "| 1.48 |" not in page
    assert "noise (1.48)" in _report.stdout_table(doc)


def test_only_noise_is_not_measured() -> None:
    target = _target(_doc({1: 1.02}, busy=IDLE), "Interference ratio >= 0.90")
    assert target["met"] is None
    assert target["verdict"].startswith("not measured")


def test_busy_warning_only_when_the_probe_found_the_machine_busy() -> None:
    idle = _doc({1: 0.93}, busy=IDLE)
    assert "noisy machine" not in _report.markdown(idle)
    assert "Nothing else competed for the CPUs" in _report.markdown(idle)
    assert "noisy machine" not in _report.stdout_table(idle)

    busy = _doc({1: 0.93}, busy=BUSY)
    page = _report.markdown(busy)
    assert '!!! warning "A shared, noisy machine"' in page
    assert "CPU 0: 41%, CPU 1: 55% at the start" in page
    assert "WARNING: A shared, noisy machine" in _report.stdout_table(busy)

    unknown = _doc({1: 0.93}, busy=None)
    assert "noisy machine" not in _report.markdown(unknown)
    assert "was not recorded for this run" in _report.markdown(unknown)


def test_busy_when_either_end_was_busy() -> None:
    doc = _doc({1: 0.93}, busy=IDLE)
    late = copy.deepcopy(doc)
    late["machine"]["busy_probe"]["end"] = BUSY
    late["machine"]["busy"] = True
    assert "noisy machine" in _report.markdown(late)


def test_probe_reports_a_share_per_usable_cpu() -> None:
    probe = _harness.busy_probe(seconds=0.2)
    assert set(probe["cpu_share"]) == os.sched_getaffinity(0)
    assert all(0.0 <= v <= 1.05 for v in probe["cpu_share"].values())
    assert probe["busy"] == (
        any(v < _harness.BUSY_SHARE for v in probe["cpu_share"].values())
        or (probe["steal"] or 0.0) > 0.05
    )
