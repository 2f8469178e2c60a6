"""Runs every benchmark and rewrites bench/RESULTS.md.

    python -m bench.run            # full suite (≈ 40 min on 2 CPU cores)
    python -m bench.run --quick    # smoke run (a few minutes), for CI

Parts: step time, optimizer memory, accuracy vs sparsity (Keras 3 and, in a
separate process, TF-MOT on tf_keras), plus the benchmarks other parts of the
package ship (``bench/gate_step_time.py``, ``bench/cs_search.py``,
``bench/export_size.py``); the claims section is built by `bench.claims`. A
part that cannot run is reported as "not available: <why>" instead of a
number.

Every part's raw results go to ``bench/_work/<part>[_quick].json``;
``--reuse`` rebuilds the report from those files without re-running.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
import traceback

import bench
from bench import accuracy as accuracy_lib
from bench import claims

bench.quiet_tf()

OWN_PARTS = ("step_time", "memory", "accuracy")
# Benchmarks written by the other parts of the package: module → title.
OTHER_PARTS = {
    "gate_step_time": "Gated layers: step time (bench/gate_step_time.py)",
    "cs_search": "Continuous Sparsification ticket search (bench/cs_search.py)",
    "export_size": "SavedModel: size and inference latency (bench/export_size.py)",
}
PARTS = OWN_PARTS + tuple(OTHER_PARTS)


# -- machine ---------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_avg_at_start": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "tf_keras": _version("tf_keras"),
        "tensorflow-model-optimization": _version("tensorflow-model-optimization"),
        "tf_dessilbi": _version("tf_dessilbi") if _version("tf_dessilbi") != "not installed"
        else __import__("tf_dessilbi").__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- running the parts -------------------------------------------------------------------
def _cache_file(part: str, quick: bool) -> str:
    return os.path.join(bench.WORK_DIR, f"{part}{'_quick' if quick else ''}.json")


def run_part(part: str, quick: bool) -> dict:
    """Runs one part; never raises (a failure becomes ``{"error": ...}``)."""
    t0 = time.time()
    module, why = bench.optional_import(f"bench.{part}")
    if module is None:
        return {"error": f"not available: bench/{part}.py cannot be imported ({why})"}
    if not hasattr(module, "run"):
        return {"error": f"not available: bench/{part}.py has no run(quick) function"}
    try:
        results = module.run(quick=quick)
    except Exception as e:  # noqa: BLE001
        return {"error": f"failed: {type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:]}
    if not isinstance(results, dict):
        results = {"value": results}
    results.setdefault("wall_s", time.time() - t0)
    return results


def part_markdown(part: str, results: dict) -> str:
    if "error" in results:
        return f"{results['error']}"
    module, why = bench.optional_import(f"bench.{part}")
    if module is not None and hasattr(module, "to_markdown"):
        try:
            return module.to_markdown(results)
        except Exception as e:  # noqa: BLE001
            return f"(bench/{part}.py's to_markdown failed: {type(e).__name__}: {e})"
    return "```json\n" + json.dumps(results, indent=1, default=str)[:4000] + "\n```"


# -- report -------------------------------------------------------------------------------
def _earlier_step_runs() -> list:
    """Ratios of earlier full step-time runs kept as bench/_work/step_time_run*.json."""
    import glob

    rows = []
    for path in sorted(glob.glob(os.path.join(bench.WORK_DIR, "step_time_run*.json"))):
        with open(path) as f:
            r = json.load(f)
        if "fmnist_ratios" not in r:
            continue
        ratios = r["fmnist_ratios"]
        tfm = r.get("tfmot", {}).get("ratio")
        rn = r.get("resnet20", {}).get("ratios", {})
        rows.append((os.path.basename(path), r.get("finished", ""),
                     *(f"{ratios[k]:.3f}×" if k in ratios else "n/a"
                       for k in ("dessilbi_auto", "dessilbi_filter", "dessilbi_elementwise",
                                 "gated_sgd")),
                     f"{tfm:.3f}×" if tfm else "n/a",
                     f"{rn['dessilbi_auto']:.3f}×" if "dessilbi_auto" in rn else "n/a"))
    if not rows:
        return []
    return ["Earlier full runs of the same benchmark on this machine (wall-time median "
            "ratios), to show the run-to-run spread under the shared load:", "",
            bench.md_table(("run", "finished", "DessiLBI auto", "DessiLBI groups",
                            "DessiLBI elementwise", "gated", "TF-MOT", "ResNet-20 DessiLBI"),
                           rows), ""]


QUICK_MARK = " — **quick mode (smoke run): numbers are not meaningful**."  # in a --quick report's header


def write_report(results: dict, quick: bool, output: str, command: str, wall: dict,
                 figures: str = bench.FIGURES_DIR) -> None:
    m = results["machine"]
    lines = [
        "# tf_dessilbi benchmark results",
        "",
        f"Generated by `{command}` on {m['date']}" + (QUICK_MARK if quick else "."),
        "",
        "## Machine",
        "",
        bench.md_table(("item", "value"), [
            ("CPU", m["cpu"]), ("cores (os.cpu_count / usable)",
                                f"{m['cores']} / {m['usable_cores']}"),
            ("load average at start", m["load_avg_at_start"]),
            ("Python", m["python"]), ("platform", m["platform"]),
            ("TensorFlow", m["tensorflow"]), ("Keras", m["keras"]), ("tf_keras", m["tf_keras"]),
            ("TF-MOT", m["tensorflow-model-optimization"]), ("tf_dessilbi", m["tf_dessilbi"]),
        ]),
        "",
        "The machine is shared (2 cores, other jobs running): absolute times are noisy; "
        "ratios are measured side by side in one process, alternating the contenders.",
        "",
        "## Commands",
        "",
        "```",
        "python -m bench.run            # everything below (rewrites this file)",
        "python -m bench.run --quick    # smoke run (CI: tests/test_bench.py)",
        "python -m bench.step_time      # one part alone (also: bench.memory, bench.accuracy)",
        "```",
        "",
        "Wall time per part: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items()) + ".",
        "",
    ]
    reused = results.get("reused", [])
    if reused:
        lines += [
            "Parts read back from earlier runs of the same code on this machine (`--reuse`, "
            "raw data in `bench/_work/<part>.json`; the machine section describes the run "
            "that assembled this file):",
            "",
        ]
        for part in reused:
            ran = results[part].get("command")  # the bench.run that made it (older files: unknown)
            how = results[part].get(
                "provenance", f"`{ran}`" if ran else f"`python -m bench.run --parts {part}"
                + (" --quick`" if quick else "`"))
            when = results[part].get("finished", "")
            lines.append(f"- {part}: {how}" + (f", finished {when}" if when else ""))
        lines.append("")
    titles = {
        "step_time": "Step time",
        "memory": "Optimizer memory",
        "accuracy": "Accuracy vs sparsity on Fashion-MNIST",
        **OTHER_PARTS,
    }
    for part in PARTS:
        if part not in results:
            continue
        lines += [f"## {titles[part]}", "", part_markdown(part, results[part]), ""]
        if part == "step_time" and not quick:
            lines += _earlier_step_runs()
        if part == "accuracy" and "error" not in results[part]:
            rel = os.path.relpath(figures, os.path.dirname(os.path.abspath(_full_report_path(output))))
            lines += [f"![accuracy vs weights kept]({rel}/accuracy_sparsity.png)", "",
                      f"![DessiLBI support along training]({rel}/dessilbi_support_path.png)", ""]
    lines.append(claims.reproduction(results, quick))
    full = _full_report_path(output)
    with open(full, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    condensed = condense("\n".join(lines), os.path.relpath(full, os.path.dirname(os.path.abspath(output))))
    if not quick:
        condensed += "\n\n" + "\n".join(_headlines())
    with open(output, "w") as f:
        f.write(condensed.rstrip() + "\n")


def _full_report_path(output: str) -> str:
    """Where the whole run's report goes: the research record for bench/RESULTS.md, else beside ``output``."""
    default = os.path.join(bench.REPO_ROOT, "bench", "RESULTS.md")
    if os.path.abspath(output) == default:
        return os.path.join(bench.REPORTS_DIR, "BENCH_RUN.md")
    root, ext = os.path.splitext(output)
    return f"{root}_full{ext or '.md'}"


def _slug(title: str) -> str:
    """MkDocs' anchor of a heading (lower case, punctuation dropped, spaces to hyphens)."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title.lower()).strip())


def condense(full: str, link: str) -> str:
    """RESULTS.md's view of the full run report: each part's first table, each claim's verdict.

    Machine and Commands stay whole; every other ``##`` part keeps its text up
    to the end of its first table (figures and later tables stay in the full
    report); the claims section keeps each claim's heading and verdict line.
    Each shortened part links to its place in the full report at ``link``.
    """
    sections, current = [], []
    for line in full.splitlines():
        if line.startswith("## ") and current:
            sections.append(current)
            current = []
        current.append(line)
    sections.append(current)
    out = sections[0] + [f"The whole run's report, with every table and figure: [{link}]({link}).", ""]
    for section in sections[1:]:
        title = section[0][3:]
        if title in ("Machine", "Commands"):
            out += section
            continue
        if title.startswith("Reproduction"):
            kept, heading = [section[0], ""], None
            for line in section[1:]:
                if line.startswith("### "):
                    heading = line
                elif "Verdict:" in line:
                    kept += ([heading, ""] if heading else []) + [line, ""]
                    heading = None
            out += kept + [f"Evidence behind each verdict: [{link}#{_slug(title)}]({link}#{_slug(title)}).", ""]
            continue
        span = _table_span(section)
        if span is None:
            out += section
            continue
        out += section[:span[1]] + ["", f"More: [{link}#{_slug(title)}]({link}#{_slug(title)}).", ""]
    return "\n".join(out)


# Benchmarks run by their own commands (long, resumable, in the background); each
# writes its full report into the research record (docs/research/reports/). RESULTS.md
# holds the first table of each, with the command that writes it: (title, report, command).
HEADLINES = (
    ("Physical removal: parameters, MACs, file size and serving latency of the shrunk models",
     "SHRINK.md", "python -m bench.shrink"),
    ("Every sparsity method and TF-MOT under one protocol (E = 3)",
     "SPARSE_COMPARE.md", "python -m bench.sparse_compare --epochs 3 --timing-rounds 8"),
    ("DessiLBI against SGD at E = 10 on FMNIST-CNN-S: dense W of the path, W* of its fork",
     "PARITY_E10_FORK.md", "python -m bench.parity --epochs 10 --seeds 0 1 2 3 4 --no-tickets "
     "--structures filter --recipes init+mu40+lam0.25+u0.5+trim init+mu40+lam0.25"),
    ("DessiLBI against SGD at E = 10 on ResNet-20: half of the filters out of supp Γ, or "
     "physically removed", "PARITY_RESNET20_E10.md",
     "python -m bench.parity --model resnet20 --epochs 10 --seeds 0 1 2 --no-tickets "
     "--structures filter --recipes unitinit+lam0.45+u0.5+trim+groups unitinit+lam0.45+u0.5+trim"),
    ("Compressing a trained ResNet-20 to 0.5× and 0.3× of its MACs, against Torch-Pruning 1.6",
     "COMPRESS.md", "python -m bench.compress --latency"),
    ("A keras.applications network end to end: MobileNetV2 compressed to 0.5× MACs, shrunk, LiteRT",
     "COMPRESS_APPS.md", "python -m bench.compress_apps --epochs 3 --fine-tune-epochs 1 --macs 0.5"),
    ("Deployable files: LiteRT, ONNX, float16 and int8 of FMNIST-CNN-S against TF-MOT's",
     "DEPLOY.md", "python -m bench.deploy --models fmnist --epochs fmnist=2"),
)


def _table_span(lines: list):
    """``(start, end)`` of the first markdown table in ``lines``, or None when there is none."""
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return start, end


def first_table(text: str) -> list:
    """The lines of the first markdown table in ``text`` (``[]`` when it has none)."""
    lines = text.splitlines()
    span = _table_span(lines)
    return lines[span[0]:span[1]] if span else []


_SPREAD = re.compile(r" \([^()|]*IQR[^()|]*\)")


def _headlines() -> list:
    lines = ["## Headline results of the longer benchmarks", "",
             "Each table is the first of its full report in the research record "
             "(`docs/research/reports/`), which lists every run behind it.", ""]
    for title, name, command in HEADLINES:
        path = os.path.join(bench.REPORTS_DIR, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            # Latency cells keep their ratio; their spreads stay in the full report.
            table = [_SPREAD.sub("", line) for line in first_table(f.read())]
        lines += [f"### {title}", "", f"`{command}` — full report: "
                  f"[docs/research/reports/{name}](../docs/research/reports/{name})", "",
                  *table, ""]
    return lines


def _command(parts, quick: bool) -> str:
    """The ``bench.run`` command line that runs ``parts``."""
    command = "python -m bench.run" + (" --quick" if quick else "")
    if set(parts) != set(PARTS):
        command += f" --parts {','.join(parts)}"
    return command


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (minutes)")
    parser.add_argument("--output", default=os.path.join(bench.REPO_ROOT, "bench", "RESULTS.md"),
                        help="the report to write. Defaults to bench/RESULTS.md")
    parser.add_argument("--figures-dir", default=None,
                        help="where the .png go. Defaults to docs/figures")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--reuse", default="",
                        help="comma-separated parts to read from bench/_work/<part>.json "
                             "instead of running them")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {PARTS}")
    reuse = {p for p in args.reuse.split(",") if p}
    os.makedirs(bench.WORK_DIR, exist_ok=True)
    figures = args.figures_dir or bench.FIGURES_DIR
    results = {"machine": machine_info()}
    wall = {}
    for part in parts:
        cache = _cache_file(part, args.quick)
        t0 = time.time()
        if part in reuse and os.path.exists(cache):
            with open(cache) as f:
                results[part] = json.load(f)
            results.setdefault("reused", []).append(part)
            if part == "accuracy" and "seeds" in results[part]:
                # Tables from the raw per-seed data with the current code.
                results[part]["summary"] = accuracy_lib.summarize(results[part]["seeds"])
            wall[part] = results[part].get("wall_s", 0.0)
        else:
            print(f"[bench] running {part} ...", flush=True)
            results[part] = run_part(part, args.quick)
            wall[part] = time.time() - t0
            results[part]["wall_s"] = wall[part]
            results[part]["command"] = _command(parts, args.quick)
            results[part]["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            with open(cache, "w") as f:
                json.dump(results[part], f, indent=1, default=str)
        print(f"[bench] {part}: {'error: ' + results[part]['error'][:200] if 'error' in results[part] else 'ok'}"
              f" ({wall[part]:.0f} s)", flush=True)
    if "accuracy" in results and "error" not in results["accuracy"]:
        accuracy_lib.plot(results["accuracy"],
                            os.path.join(figures, "accuracy_sparsity.png"),
                            os.path.join(figures, "dessilbi_support_path.png"))
    command = _command(parts, args.quick)
    write_report(results, args.quick, args.output, command, wall, figures)
    with open(os.path.join(bench.WORK_DIR, f"results{'_quick' if args.quick else ''}.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"[bench] wrote {args.output}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
