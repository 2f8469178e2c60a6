"""Smoke test of the benchmark suite: `python -m bench.run --quick` runs and parses.

Numbers are never asserted (timings and tiny-data accuracies are noise); the
test checks that every part produced either results or an explicit
"not available: <why>", and that the report has its sections and tables.
"""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_suite_runs_and_report_parses(tmp_path):
    report = tmp_path / "RESULTS.md"
    work = tmp_path / "work"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_DESSILBI_BENCH_WORK=str(work))
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--output", str(report)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    text = report.read_text()
    for heading in (
        "## Machine",
        "## Commands",
        "## Step time",
        "## Optimizer memory",
        "## Accuracy vs sparsity on Fashion-MNIST",
        "## Reproduction of the papers' claims",
        "### 1.", "### 2.", "### 3.", "### 4.",
    ):
        assert heading in text, heading
    for word in ("TensorFlow", "Keras", "TF-MOT", "CPU"):
        assert re.search(rf"^\| {word}", text, re.M), word
    # Every markdown table is rectangular.
    for block in re.findall(r"(?:^\|.*\|\n)+", text, re.M):
        widths = {line.count("|") for line in block.strip().splitlines()}
        assert len(widths) == 1, block
    assert (tmp_path / "accuracy_sparsity.png").stat().st_size > 0
    assert (tmp_path / "dessilbi_support_path.png").stat().st_size > 0

    with open(work / "results_quick.json") as f:
        results = json.load(f)
    for part in ("step_time", "memory", "accuracy", "gate_step_time", "cs_search", "export_size"):
        assert part in results, part
        assert "error" not in results[part], results[part]["error"]
    step = results["step_time"]
    assert {"sgd", "dessilbi_auto"} <= set(step["fmnist"])
    assert all(t["median_ms"] > 0 for t in step["fmnist"].values())
    # --quick fine-tunes W* in its last epoch, so supp Γ at epoch 2 is epoch 1's: reused, not retrained.
    for seed in results["accuracy"]["seeds"]:
        assert seed["early_tickets"]["2"].get("same_support_as") == 1, seed["early_tickets"]
    acc = results["accuracy"]["summary"]["rows"]
    seeds = results["accuracy"]["seeds"]
    for name, r in acc.items():
        if r["acc"] is None:  # only an early ticket with an empty layer is not retrained
            assert name.startswith("early ticket"), name
        else:
            assert r["acc"]["n"] == len(seeds), name
    # The summary is the per-seed runs' mean (final epoch), not a copy of one seed.
    for row, run, key in (("SGD (dense)", "sgd", "acc"), ("DessiLBI dense W (end)", "dessilbi", "acc_w"),
                          ("DessiLBI W* (end)", "dessilbi", "acc_w_star")):
        finals = [seed[run][key][-1] for seed in seeds]
        assert acc[row]["acc"]["mean"] == pytest.approx(sum(finals) / len(finals)), row
    assert acc["SGD (dense)"]["kept"]["mean"] == 1.0


def test_a_claims_note_is_its_section_of_the_notes_file(tmp_path):
    """bench/CLAIMS_NOTES.md's "## Claim N" sections survive a rerun of bench.run."""
    import sys

    sys.path.insert(0, REPO)
    from bench import claims

    notes = tmp_path / "NOTES.md"
    notes.write_text("# notes\n\n## Claim 2\n\nParity holds for W*.\n\nSecond line.\n\n"
                     "## Claim 3\nTickets win.\n## Claim 30\nnot three\n")
    assert claims.claim_note(2, str(notes)) == ["Parity holds for W*.", "", "Second line.", ""]
    assert claims.claim_note(3, str(notes)) == ["Tickets win.", ""]
    assert claims.claim_note(1, str(notes)) == []
    assert claims.claim_note(2, str(tmp_path / "missing.md")) == []


def test_a_reused_part_is_credited_to_the_command_that_ran_it(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, REPO)
    import bench
    from bench import run

    monkeypatch.setattr(bench, "WORK_DIR", str(tmp_path))
    for part in run.PARTS:  # parts that failed: the report still names where they came from
        (tmp_path / f"{part}.json").write_text(json.dumps(
            {"error": "not available: test", "command": "python -m bench.run",
             "finished": "2026-12-02 00:00 UTC"} if part != "memory" else {"error": "x"}))
    report = tmp_path / "R.md"
    run.main(["--reuse", ",".join(run.PARTS), "--output", str(report), "--figures-dir", str(tmp_path)])
    text = report.read_text()
    assert "- step_time: `python -m bench.run`, finished 2026-12-02 00:00 UTC" in text
    assert "- memory: `python -m bench.run --parts memory`" in text  # an older file: no command
    assert run._command(["accuracy"], quick=True) == "python -m bench.run --quick --parts accuracy"
    assert run._command(list(run.PARTS), quick=False) == "python -m bench.run"


def test_refresh_notes_replaces_inserts_and_drops_note_blocks(tmp_path):
    """An edited note reaches RESULTS.md without a rerun, and nothing else in it changes."""
    import sys

    sys.path.insert(0, REPO)
    from bench import claims

    notes = tmp_path / "NOTES.md"
    notes.write_text("## Claim 2\n\nOld verdict.\n")
    report = ("# R\n\n### 1. Path\n\nEvidence 1.\n\n### 2. Parity\n\n"
              + "\n".join(claims.note_block(2, str(notes))) + "\n| table |\n\n### 3. Tickets\n\nEvidence 3.\n")
    notes.write_text("## Claim 2\n\nNew verdict,\ntwo lines.\n\n## Claim 3\n\nTickets win.\n")
    new = claims.refresh_notes(report, str(notes))
    assert "Old verdict." not in new
    assert ("### 2. Parity\n\n<!-- claim 2 note: bench/CLAIMS_NOTES.md -->\nNew verdict,\ntwo lines.\n"
            "<!-- end of the claim 2 note -->\n\n| table |") in new
    assert ("### 3. Tickets\n\n<!-- claim 3 note: bench/CLAIMS_NOTES.md -->\nTickets win.\n"
            "<!-- end of the claim 3 note -->\n\nEvidence 3.") in new
    assert new.startswith("# R\n\n### 1. Path\n\nEvidence 1.\n\n### 2. Parity")
    assert claims.refresh_notes(new, str(notes)) == new  # idempotent
    notes.write_text("## Claim 3\n\nTickets win.\n")  # claim 2's note removed
    dropped = claims.refresh_notes(new, str(notes))
    assert "claim 2 note" not in dropped and "### 2. Parity\n\n| table |" in dropped
    broken = new.replace("<!-- end of the claim 2 note -->", "")
    with pytest.raises(ValueError, match="end of the claim 2 note"):
        claims.refresh_notes(broken, str(notes))


def test_refresh_separate_leaves_a_quick_report_as_it_is(tmp_path):
    """A --quick report has no separate reports and no notes: --refresh-separate refuses to add them."""
    import sys

    sys.path.insert(0, REPO)
    from bench import run

    quick = tmp_path / "QUICK.md"
    text = ("# tf_dessilbi benchmark results\n\nGenerated by `python -m bench.run --quick` on today"
            + run.QUICK_MARK + "\n\n### 2. Parity\n\n| table |\n")
    quick.write_text(text)
    with pytest.raises(ValueError, match=r"QUICK.md is a --quick report"):
        run.refresh_separate(str(quick))
    assert quick.read_text() == text
    with pytest.raises(SystemExit):
        run.main(["--refresh-separate", "--output", str(quick)])
    assert quick.read_text() == text


def test_results_holds_every_claims_note_as_it_is_now():
    """bench/RESULTS.md has each claim's note as bench/CLAIMS_NOTES.md has it now."""
    import sys

    sys.path.insert(0, REPO)
    from bench import claims

    with open(os.path.join(REPO, "bench", "RESULTS.md")) as f:
        results = f.read()
    assert claims.refresh_notes(results) == results, (
        "stale claims notes in bench/RESULTS.md: run `python -m bench.run --refresh-separate`")


def test_results_includes_every_separate_report_as_it_is_now():
    """bench/RESULTS.md ends with each listed report, refreshed (`bench.run --refresh-separate`)."""
    import sys

    sys.path.insert(0, REPO)
    from bench import run

    with open(os.path.join(REPO, "bench", "RESULTS.md")) as f:
        results = f.read()
    fix = "stale bench/RESULTS.md: run `python -m bench.run --refresh-separate`"
    for title, name in run.SEPARATE_REPORTS:
        assert os.path.exists(os.path.join(REPO, "bench", name)), name
        assert f"## {title} (from `bench/{name}`)" in results, f"{name}: {fix}"
    assert results.rstrip("\n").endswith("\n".join(run._separate_reports()).rstrip("\n")), fix


def test_round_to_bench_resnet20_widths_keep_residual_streams_whole():
    """`bench.round_to --model resnet20`: every contender keeps one width per residual stream (the
    convs one Add sums, `shrink.unit_groups`), rounds as min(N_l, ⌈k_l/r⌉·r), and builds to it."""
    import sys

    sys.path.insert(0, REPO)
    from bench import parity, round_to
    from tf_dessilbi.shrink import unit_groups

    model = parity.build("resnet20", 0)
    streams = {frozenset(n for n, _ in g.members) for g in unit_groups(model) if len(g) > 1}
    assert {"stem_conv", "s1b1_b_conv", "s1b2_b_conv", "s1b3_b_conv"} in streams
    contenders = round_to.resnet20_contenders()
    for name, widths in contenders.items():
        for stream in streams:
            assert len({widths[n] for n in stream if n in widths}) == 1, (name, sorted(stream))
    for r in (8, 16):
        assert contenders[f"round_to {r}"] == {
            n: min(model.get_layer(n).filters, -(-k // r) * r)
            for n, k in round_to.RESNET20_BASE.items()}
    assert sum(round_to.RESNET20_BASE.values()) == 392
    small = round_to._resnet20(contenders["round_to 8"])
    assert {n: small.get_layer(n).filters for n in round_to.RESNET20_BASE} == contenders["round_to 8"]
    assert small.count_params() < model.count_params()


def test_round_to_bench_rounds_as_round_units_and_renders(tmp_path):
    """`bench.round_to`: the contenders' widths are min(N_l, ⌈k_l/r⌉·r); --quick writes a report."""
    import sys

    import numpy as np

    sys.path.insert(0, REPO)
    from bench import round_to

    base, full = np.array(round_to.BASE), np.array(round_to.FULL)
    for r in (1, 3, 8, 16, 64):
        assert round_to.rounded_widths(round_to.BASE, r) == tuple(
            np.minimum(full, np.ceil(base / r) * r).astype(int))
    assert round_to.rounded_widths((0, 5, 63), 8) == (0, 8, 64)
    widths = round_to.contenders()
    assert widths["round_to 8"] == (16, 24, 24) and widths["round_to 16"] == (16, 32, 32)
    out = tmp_path / "ROUND_TO.md"
    round_to.main(["--quick", "--out", str(out), "--json", str(tmp_path / "r.json")])
    text = out.read_text()
    assert "`python -m bench.round_to --quick`" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "contender" not in line]
    assert [row.split(" | ")[1] for row in rows] == ["16/17/23", "16/24/24", "16/32/32", "16/16/16",
                                                     "16/32/64"]
    assert rows[0].count("1.00×") >= 6  # the base against itself: params, MACs, four latencies
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["shapes"]["dense 16/32/64"]["params"] == 426_122  # FMNIST-CNN-S
    for timings in results["latency"].values():
        assert set(timings) == set(widths)
        assert all(t["calls"] == 6 and t["median_ms"] > 0 for t in timings.values())


def test_every_import_of_the_package_resolves():
    """Imports inside functions run only when the function does: each ``tf_dessilbi``/``bench``
    import in the package, bench/, examples/ and tests/ must name a module and attribute that
    exist (a moved module is caught here, not when a benchmark reaches it)."""
    import ast
    import glob
    import importlib
    import sys

    sys.path.insert(0, REPO)
    missing = []
    files = sorted(sum((glob.glob(os.path.join(REPO, pattern), recursive=True)
                        for pattern in ("tf_dessilbi/**/*.py", "bench/*.py", "examples/*.py",
                                        "tests/*.py")), []))
    assert len(files) > 100
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in ("tf_dessilbi", "bench"):
                names = [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [(alias.name, None) for alias in node.names
                         if alias.name.split(".")[0] in ("tf_dessilbi", "bench")]
            else:
                continue
            for module, name in names:
                where = f"{os.path.relpath(path, REPO)}:{node.lineno}"
                try:
                    mod = importlib.import_module(module)
                except ImportError as err:
                    missing.append(f"{where} {module}: {err}")
                    continue
                if name and not hasattr(mod, name):
                    try:
                        importlib.import_module(f"{module}.{name}")
                    except ImportError:
                        missing.append(f"{where} {module}.{name}")
    assert not missing, missing
