"""Continuous Sparsification (Savarese et al., NeurIPS 2020): σ(β·s) gates.

* `maths` — the gate maths (soft/hard masks, penalty, reset), pure keras.ops;
* `schedules` — β annealing schedules;
* `gating` — gate a whole model, find its gates, drive their masks;
* `callbacks` — `GateTemperature`, which anneals β during `fit`.

The wrapper layer itself is `tf_dessilbi.layers.SparseGate`.
"""
