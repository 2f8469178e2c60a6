"""Rounded widths: does a conv width that is a multiple of r serve faster on this machine?

`Fork(round_to=r)` (config ``fork.round_to``) raises
each kernel's supp Γ to min(N_l, ⌈k_l/r⌉·r) units when the fine-tune starts,
and `tf_dessilbi.shrink(round_to=r)` pads an export the same way; the
rationale (Torch-Pruning's ``round_to``) is that kernels run on tiles of 8
or 16 channels, so a width just over a multiple costs like the next one.
This measures it for the served model here: FMNIST-CNN-S at the protocol
recipe's widths (conv1/2/3 = 16/17/23, `tf_dessilbi/configs/fmnist_dessilbi_protocol.py`,
`docs/research/reports/PARITY_E10_TRIM.md`) against the same network rounded up to r = 8
(16/24/24) and r = 16 (16/32/32), the widths rounded down to 16/16/16
(fewer MACs, for the trend), and the dense 16/32/64.

Each contender is exported (`tf_dessilbi.export_saved_model`, and TFLite);
its ``serving_default`` and the TFLite interpreter (2 threads) are timed
at batch 1 and 128, all contenders alternated in blocks in one process
(`bench.serving.alternate_calls`): ratio of medians to the unrounded
widths, with the quartiles of the per-block ratios. Latency depends on the
shapes only, so the weights are a fresh initialization (seed 0).

``--model resnet20`` does the same for ResNet-20 (BN, residual; 28×28×1) at
the per-layer widths of its physically halved recipe (`WStarFinetune(trim=
True, dependency_groups=True)`, 392 of 784 filters, `RESNET20_BASE`), those
widths rounded up per channel space (`dependency_groups` + ``round_to``:
`group_support.round_groups`), and dense; each contender is ResNet-20 with
the first k_l filters of every conv kept (`tf_dessilbi.shrink` with a
``{layer: units}`` mask, so the filters one residual Add sums leave together).

    python -m bench.round_to [--quick] [--json out.json]   # writes docs/research/reports/ROUND_TO.md
    python -m bench.round_to --model resnet20              # writes docs/research/reports/ROUND_TO_RESNET20.md
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import bench
from bench import serving

bench.quiet_tf()

RESULTS = os.path.join(bench.REPORTS_DIR, "ROUND_TO.md")
RESULTS_RESNET20 = os.path.join(bench.REPORTS_DIR, "ROUND_TO_RESNET20.md")
BASE = (16, 17, 23)  # the protocol recipe's support (docs/research/reports/PARITY_E10_TRIM.md, seed 0)
FULL = (16, 32, 64)
# ResNet-20's physically halved support, seed 0 (docs/research/reports/PARITY_RESNET20_ROUND.md, recipe
# unitinit+lam0.45+u0.5+trim+groups): filters kept per conv; a residual stream's convs share k.
RESNET20_BASE = {
    "stem_conv": 16, "s1b1_a_conv": 16, "s1b1_b_conv": 16, "s1b2_a_conv": 16, "s1b2_b_conv": 16,
    "s1b3_a_conv": 13, "s1b3_b_conv": 16,
    "s2b1_a_conv": 21, "s2b1_b_conv": 28, "s2b1_proj_conv": 28, "s2b2_a_conv": 27,
    "s2b2_b_conv": 28, "s2b3_a_conv": 29, "s2b3_b_conv": 28,
    "s3b1_a_conv": 19, "s3b1_b_conv": 6, "s3b1_proj_conv": 6, "s3b2_a_conv": 40, "s3b2_b_conv": 6,
    "s3b3_a_conv": 11, "s3b3_b_conv": 6}


def rounded_widths(widths, round_to: int, full=FULL) -> tuple:
    """Each width raised to min(N_l, ⌈k_l/r⌉·r), as `round_units` does (0 stays 0)."""
    from tf_dessilbi.dependency.groups import round_up_units

    return tuple(round_up_units(k, n, round_to) for k, n in zip(widths, full))


def contenders() -> dict:
    """``{name: conv widths}``: the recipe's, rounded up to 8 and 16, rounded down to 16, dense."""
    return {"16/17/23 (recipe)": BASE,
            "round_to 8": rounded_widths(BASE, 8),
            "round_to 16": rounded_widths(BASE, 16),
            "down to 16/16/16": (16, 16, 16),
            "dense 16/32/64": FULL}


def resnet20_contenders() -> dict:
    """``{name: {conv: width}}``: the halved support, rounded up to 8 and 16, and dense."""
    from bench import parity
    from tf_dessilbi.dependency.groups import round_up_units

    model = parity.build("resnet20")
    full = {name: model.get_layer(name).filters for name in RESNET20_BASE}
    return {"392 filters (groups recipe)": dict(RESNET20_BASE),
            **{f"round_to {r}": {n: round_up_units(k, full[n], r) for n, k in RESNET20_BASE.items()}
               for r in (8, 16)},
            "dense": full}


def _resnet20(widths: dict):
    """ResNet-20 (28×28×1, seed 0) with the first ``widths[conv]`` filters of each conv kept."""
    import numpy as np

    import tf_dessilbi
    from bench import parity

    model = parity.build("resnet20", 0)
    if all(model.get_layer(n).filters == k for n, k in widths.items()):
        return model
    masks = {n: np.arange(model.get_layer(n).filters) < k for n, k in widths.items()}
    small = tf_dessilbi.shrink(model, masks)
    got = {n: small.get_layer(n).filters for n in widths}
    if got != widths:
        raise RuntimeError(f"shrink kept {got}, not the widths asked: {widths}")
    return small


def _settings(quick: bool) -> dict:
    return {"blocks": 2, "per_block": 3} if quick else {"blocks": 30, "per_block": 40}


def _macs(model) -> tuple:
    import tf_dessilbi

    _, report = tf_dessilbi.shrink(model, return_report=True)
    return report.params_before, report.macs_before


def run(quick: bool = False, model_name: str = "fmnist") -> dict:
    import keras
    import numpy as np

    from tf_dessilbi import models

    s = _settings(quick)
    work = tempfile.mkdtemp(prefix="round_to_")
    started = time.time()
    if model_name == "fmnist":
        todo = {name: (widths, lambda w=widths: models.fmnist_cnn_s(filters=tuple(w)))
                for name, widths in contenders().items()}
    else:
        todo = {name: (list(widths.values()), lambda w=widths: _resnet20(w))
                for name, widths in resnet20_contenders().items()}
    try:
        x128 = np.random.default_rng(0).normal(size=(128, 28, 28, 1)).astype("float32")
        served, interpreters, shapes = {}, {}, {}
        for i, (name, (widths, make)) in enumerate(todo.items()):
            keras.utils.set_random_seed(0)
            model = make()
            params, macs = _macs(model)
            shapes[name] = {"widths": list(widths), "params": params, "macs": macs}
            served[name], _ = serving.saved_model(model, work, f"c{i}")
            interpreters[name] = serving.tflite(model, work, f"c{i}")
        base = next(iter(shapes))
        latency = {}
        for batch in (1, 128):
            x = np.ascontiguousarray(x128[:batch])
            sm = serving.alternate_calls({n: (lambda f=f: f(x).numpy()) for n, f in served.items()},
                                         s["blocks"], s["per_block"])
            calls = {n: serving.interpreter(fb, x.shape) for n, fb in interpreters.items()}
            tl = serving.alternate_calls({n: (lambda c=c: c(x)) for n, c in calls.items()},
                                         s["blocks"], s["per_block"])
            for kind, timing in (("savedmodel", sm), ("tflite", tl)):
                latency[f"{kind}_b{batch}"] = {
                    n: {**timing[n], **serving.ratio(timing, n, base)} for n in timing}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"settings": s, "quick": quick, "model": model_name, "base": base, "shapes": shapes,
            "latency": latency,
            "machine": _machine(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "wall_s": time.time() - started}


def _machine() -> str:
    from bench.run import machine_info

    m = machine_info()
    avx512 = ""
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = " with AVX-512" if "avx512f" in f.read() else " without AVX-512"
    except OSError:
        pass
    return (f"{m['cpu']}{avx512}, {m['usable_cores']} usable cores, TensorFlow {m['tensorflow']}, "
            f"Keras {m['keras']}")


def _cell(row) -> str:
    return (f"{row['ratio']:.2f}× ({row['median_ms']:.3f} ms; IQR {row['p25_ms']:.3f}–{row['p75_ms']:.3f}; "
            f"block ratios {row['block_ratio_p25']:.2f}–{row['block_ratio_p75']:.2f})")


def to_markdown(results: dict) -> str:
    s = results["settings"]
    base = results["base"]
    keys = ("savedmodel_b1", "savedmodel_b128", "tflite_b1", "tflite_b128")
    resnet = results.get("model", "fmnist") == "resnet20"
    rows = []
    for name, shape in results["shapes"].items():
        b = results["shapes"][base]
        rows.append([name, (f"{sum(shape['widths'])} filters" if resnet
                            else "/".join(map(str, shape["widths"]))),
                     f"{shape['params']:,} ({shape['params'] / b['params']:.2f}×)",
                     f"{shape['macs']:,} ({shape['macs'] / b['macs']:.2f}×)"]
                    + [_cell(results["latency"][k][name]) for k in keys])
    header = ["contender", "conv widths", "params", "MACs", "SavedModel b1", "SavedModel b128",
              "TFLite b1", "TFLite b128"]
    title = ("ResNet-20 halved by dependency groups (392 of 784 filters) and rounded" if resnet
             else "FMNIST-CNN-S at 16/17/23 and rounded")
    widths = []
    if resnet:
        names = list(RESNET20_BASE)
        widths = ["", "Widths per conv (" + ", ".join(names) + "):", ""] + [
            f"* {name}: {'/'.join(map(str, shape['widths']))}"
            for name, shape in results["shapes"].items()]
    flags = (" --model resnet20" if resnet else "") + (" --quick" if results["quick"] else "")
    return "\n".join([
        f"# Rounded widths: serving latency of {title} (bench/round_to.py)",
        "",
        f"Generated by `python -m bench.round_to{flags}` (started "
        f"{results['started']}, {results['wall_s'] / 60:.1f} min wall) on {results['machine']}; "
        "TensorFlow backend, float32, fresh weights (seed 0).",
        "",
        f"Latency cells: ratio of medians to {base} (median ms of every call; IQR; quartiles of the "
        f"per-block ratios), {s['blocks']} alternating blocks × {s['per_block']} calls per contender "
        f"(odd blocks reversed), all {len(rows)} contenders in one process. Params and MACs from "
        "shapes (`ShrinkReport`).",
        "",
        bench.md_table(header, rows),
    ] + widths) + "\n"


def main(argv=None):
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 blocks × 3 calls (a smoke run)")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--model", choices=("fmnist", "resnet20"), default="fmnist",
                        help="FMNIST-CNN-S (default) or ResNet-20 at its halved support")
    parser.add_argument("--out", help="the report (default docs/research/reports/ROUND_TO.md, "
                                      "ROUND_TO_RESNET20.md with --model resnet20)")
    args = parser.parse_args(argv)
    args.out = args.out or (RESULTS_RESNET20 if args.model == "resnet20" else RESULTS)
    results = run(args.quick, args.model)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    text = to_markdown(results)
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
