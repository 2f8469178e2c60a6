"""bench.deploy: the report and its goals from a results dict (no training, no timing)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import deploy  # noqa: E402


def _timing(ms):
    return {"median_ms": ms, "p25_ms": ms, "p75_ms": ms, "calls": 3, "block_median_ms": [ms] * 3}


def _results():
    def cell(size, acc):
        return {"bytes": size, "accuracy": acc, "quantize": None}

    rows = [{"row": row, "model": kind, "params": 100, "litert": cell(size, acc), "onnx": cell(size, acc)}
            for (row, kind, _, _), size, acc in zip(
                deploy.ROWS, (1000, 1000, 400, 200, 40), (0.90, 0.89, 0.89, 0.89, 0.886))]
    rows[3].pop("onnx")
    rows.append({"row": deploy.PEER, "model": "tfmot", "params": 100, "weights_kept": 0.1,
                 "litert": cell(250, 0.85)})
    latency = {f"b{b}": {f"{r['row']}|{fmt}": _timing(2.0 if "TF-MOT" in r["row"] else 1.0)
                         for r in rows for fmt in ("litert", "onnx") if fmt in r} for b in deploy.BATCHES}
    return {"command": "python -m bench.deploy", "machine": "test",
            "networks": [{"model": "fmnist", "rows": rows, "latency": latency, "epochs": 2, "seed": 0,
                          "dense_accuracy_keras": 0.9, "w_star_accuracy_keras": 0.89,
                          "filters": [56, 112]}]}


def test_goals_and_report():
    results = _results()
    goals = deploy.goals(results["networks"][0])
    assert goals["size_ratio"] == pytest.approx(0.04)
    assert goals["accuracy_drop_pt"] == pytest.approx(0.4)
    assert goals["vs_peer_b1"]["ratio"] == pytest.approx(0.5)
    report = deploy.to_markdown(results)
    assert "| shrunk int8 | 100 | 40 | 0.040 | 88.60 | 40 | 88.60 |" in report
    assert "| shrunk float16 | 100 | 200 | 0.200 | 89.00 | — | — |" in report
    assert "TF-MOT 90 % → strip → int8 (10 % weights kept)" in report
    assert report.count("not met") == 0 and "python -m bench.deploy" in report


def test_epochs_per_network():
    assert deploy._parse_epochs(["fmnist=2"]) == {"fmnist": 2, "resnet20": deploy.RECIPES["resnet20"][2]}
    with pytest.raises(SystemExit, match="NAME=E"):
        deploy._parse_epochs(["vgg=3"])
