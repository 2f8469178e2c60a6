"""The benchmark harness: `python -m bench.run` assembles RESULTS.md from its parts and the
headline tables of the longer benchmarks' reports; the round_to contenders' widths.

Numbers and report layouts are never asserted: the reports are for people."""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert "R_full.md" in text and (tmp_path / "R_full.md").exists()  # the whole run, linked
    assert run._command(["accuracy"], quick=True) == "python -m bench.run --quick --parts accuracy"
    assert run._command(list(run.PARTS), quick=False) == "python -m bench.run"


def test_a_full_report_carries_each_headline_table_and_a_quick_one_none(tmp_path, monkeypatch):
    """The headline tables come from the reports in the research record, as they are now."""
    sys.path.insert(0, REPO)
    import bench
    from bench import run

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "A.md").write_text("# A\n\nintro\n\n| x | b1 |\n|---|---|\n| m | 0.5× (1 / 2 ms; IQR 1–2) |"
                                  "\n\nmore\n\n| second | table |\n")
    monkeypatch.setattr(bench, "REPORTS_DIR", str(reports))
    monkeypatch.setattr(bench, "WORK_DIR", str(tmp_path))
    monkeypatch.setattr(run, "HEADLINES", (("Part A", "A.md", "python -m bench.a"),
                                           ("Part B (no report yet)", "B.md", "python -m bench.b")))
    for part in run.PARTS:
        for name in (part, f"{part}_quick"):
            (tmp_path / f"{name}.json").write_text(json.dumps({"error": "not available: test"}))
    report = tmp_path / "R.md"
    run.main(["--reuse", ",".join(run.PARTS), "--output", str(report), "--figures-dir", str(tmp_path)])
    text = report.read_text()
    assert "| m | 0.5× |" in text and "| second |" not in text and "`python -m bench.a`" in text
    assert "Part B" not in text
    run.main(["--quick", "--reuse", ",".join(run.PARTS), "--output", str(report)])
    assert "Part A" not in report.read_text()


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


def test_round_to_bench_rounds_as_round_units():
    """`bench.round_to`: the contenders' widths are min(N_l, ⌈k_l/r⌉·r)."""
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
