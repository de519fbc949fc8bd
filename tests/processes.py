"""Driving a `memrl` subprocess: act on it once something has happened, then let it finish;
checking what its trials wrote."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd


ROOT = Path(__file__).resolve().parents[1]


def start_memrl(*args, env=None, cwd=ROOT) -> subprocess.Popen:
    """`memrl ARGS` in a subprocess of its own session (its own Ray), stdout+stderr to a pipe."""
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)


def act_when(process: subprocess.Popen, ready: Callable[[], bool], act: Callable[[], None],
             *, wait_s: float, what: str, finish_s: float = 300) -> str:
    """Poll `ready()` while the process runs (fail after wait_s: "never `what`"), call `act()`,
    wait for the process to end; its output. The process group is killed if it hangs."""
    try:
        deadline = time.monotonic() + wait_s
        while not ready():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, f"never {what}"
            time.sleep(0.1)
        act()
        output, _ = process.communicate(timeout=finish_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return output


def assert_progress_is_results(trial: Path) -> None:
    """progress.csv holds iterations 1, 2, ... once each, also after a restart, and each row
    holds, under each column of its header, the value of that key in the same line of
    result.json."""
    with open(trial / "progress.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    iterations = [int(row["training_iteration"]) for row in rows]
    assert iterations == list(range(1, len(rows) + 1)), iterations
    assert [r["training_iteration"] for r in results] == iterations, (len(rows), len(results))
    for row, result in zip(rows, results):
        flat = pd.json_normalize(result, sep="/").iloc[0].to_dict()
        assert None not in row and None not in row.values(), f"ragged row {row}"
        wrong = {key: (text, flat.get(key)) for key, text in row.items()
                 if not _same(text, flat[key] if key in flat else "")}
        assert not wrong, f"iteration {result['training_iteration']}: (csv, result) {wrong}"


def _same(text: str, value) -> bool:
    """A CSV cell shows `value` (a float32 may be written shorter than its JSON float64)."""
    if text == str(value):
        return True
    try:
        return math.isclose(float(text), float(value), rel_tol=1e-6)
    except (TypeError, ValueError):
        return False
