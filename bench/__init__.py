"""Benchmarks of tf_dessilbi: `python -m bench.run [--quick]` runs them all.

Each benchmark module exposes ``run(quick: bool) -> dict`` (plain JSON data)
and ``to_markdown(results: dict) -> str``; `bench.run` collects them into
``bench/RESULTS.md``. Helpers shared by the modules live here.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Raw results, worker logs and caches; tests point it at a temporary folder.
# The research record's reports (docs/research/reports/*.md) and the figures of the docs.
REPORTS_DIR = os.path.join(REPO_ROOT, "docs", "research", "reports")
FIGURES_DIR = os.path.join(REPO_ROOT, "docs", "figures")
WORK_DIR = os.environ.get("TF_DESSILBI_BENCH_WORK") or os.path.join(REPO_ROOT, "bench", "_work")


def logger(prefix: str) -> Callable[[str], None]:
    """A progress printer for one benchmark: ``logger("parity")("msg")`` writes
    ``[parity HH:MM:SS] msg`` to stderr, flushed (stdout stays for reports)."""

    def log(message: str) -> None:
        print(f"[{prefix} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return log


def quiet_tf():
    """Silences TensorFlow's C++ start-up chatter (call before importing TF)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def optional_import(name: str):
    """``(module, None)`` or ``(None, "why it is not available")``."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # noqa: BLE001 - any failure means "not available"
        return None, f"{type(e).__name__}: {e}"


def median_ms(seconds) -> float:
    return 1000.0 * statistics.median(seconds)


def alternate_timings(
    contenders: dict,
    batches,
    warmup: int,
    steps_per_block: int,
    blocks: int,
) -> dict:
    """Times train steps of several contenders alternately, in blocks.

    Args:
        contenders: ``{name: step}``, ``step(x, y)`` returning a tensor
            (its ``.numpy()`` is read each step so every step has finished).
        batches: a list of ``(x, y)`` held in memory (no input pipeline).
        warmup: untimed steps per contender first (tracing, caches).
        steps_per_block: consecutive timed steps of one contender.
        blocks: rounds over all contenders; odd rounds go in reverse order,
            so slow drifts of the machine hit every contender alike.

    Returns:
        ``{name: {"median_ms", "steps", "p10_ms", "p90_ms", "block_median_ms",
        "cpu_median_ms"}}``.
    """
    names = list(contenders)
    for name in names:
        for i in range(warmup):
            x, y = batches[i % len(batches)]
            _sync(contenders[name](x, y))
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    block_medians = {name: [] for name in names}
    k = 0
    for block in range(blocks):
        order = names if block % 2 == 0 else names[::-1]
        for name in order:
            step = contenders[name]
            block_times = []
            for _ in range(steps_per_block):
                x, y = batches[k % len(batches)]
                k += 1
                c0 = time.process_time()
                t0 = time.perf_counter()
                _sync(step(x, y))
                block_times.append(time.perf_counter() - t0)
                cpu_times[name].append(time.process_time() - c0)
            times[name] += block_times
            block_medians[name].append(statistics.median(block_times))
    out = {}
    for name, ts in times.items():
        qs = (statistics.quantiles(ts, n=10, method="inclusive") if len(ts) > 1
              else [ts[0]] * 9)
        out[name] = {
            "median_ms": median_ms(ts),
            "p10_ms": 1000.0 * qs[0],
            "p90_ms": 1000.0 * qs[-1],
            "steps": len(ts),
            "block_median_ms": [1000.0 * t for t in block_medians[name]],
            # CPU time of this process (all threads) per step: less sensitive
            # than wall time to other jobs on a shared machine.
            "cpu_median_ms": median_ms(cpu_times[name]),
        }
    return out


def block_ratio_spread(timings: dict, name: str, base: str):
    """Quartiles of the per-block ratios ``median(name) / median(base)``.

    Each block of `name` is paired with the block of `base` of the same round
    (run next to it), so the spread shows how much the load of the machine
    moved the ratio. ``None`` when blocks were not recorded.
    """
    a = timings[name].get("block_median_ms")
    b = timings[base].get("block_median_ms")
    if not a or not b:
        return None
    ratios = sorted(x / y for x, y in zip(a, b))
    if len(ratios) < 2:
        return (ratios[0], ratios[0])
    q = statistics.quantiles(ratios, n=4)
    return (q[0], q[2])


def _sync(value):
    if hasattr(value, "numpy"):
        value.numpy()
    return value


def run_worker(module: str, args: list, timeout: Optional[float] = None) -> dict:
    """Runs ``python -m <module> <args> --json <file>`` in a fresh process.

    Used for everything that needs tf_keras / TF-MOT, which sets
    ``TF_USE_LEGACY_KERAS=1`` for the whole process: our Keras 3 code never
    shares a process with it.

    Returns:
        The JSON the worker wrote, or ``{"error": ...}`` with its output tail.
    """
    os.makedirs(WORK_DIR, exist_ok=True)
    out = os.path.join(WORK_DIR, f"{module.split('.')[-1]}_{os.getpid()}_{time.time_ns()}.json")
    env = dict(os.environ)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", module, *args, "--json", out]
    log = out[:-5] + ".log"  # the worker's output, for progress and errors
    try:
        with open(log, "w") as log_file:
            proc = subprocess.run(
                cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                text=True, timeout=timeout,
            )
    except subprocess.TimeoutExpired:
        return {"error": f"worker {' '.join(cmd[2:])} timed out after {timeout}s (log: {log})"}
    if proc.returncode != 0 or not os.path.exists(out):
        with open(log) as f:
            tail = f.read()[-2000:]
        return {"error": f"worker exited with {proc.returncode}: {tail}"}
    os.remove(log)
    with open(out) as f:
        data = json.load(f)
    os.remove(out)
    return data


def md_table(header, rows) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def timed(fn: Callable, *args, **kwargs):
    """``(result, seconds)``."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0



def part_main(doc: str, run: Callable, to_markdown: Callable, quick_help: str, argv=None):
    """The command line of one benchmark part: ``--quick``, ``--json PATH``.

    Runs ``run(quick)``, writes the raw results as JSON when asked, and prints
    ``to_markdown(results)``.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    results = run(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(to_markdown(results))
