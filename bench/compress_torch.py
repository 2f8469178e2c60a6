"""The Torch-Pruning peer of `bench.compress`: the same trained ResNet-20, ported to PyTorch.

`TorchResNet20` mirrors `tf_dessilbi.models.resnet20(input_shape=(28, 28, 1))`
layer for layer (Conv-BN-ReLU, 1×1 Conv-BN projection shortcuts, BN ε 1e-3
as Keras'); TensorFlow's "same" padding at stride 2 pads only the bottom and
right, so those convolutions get an explicit ``ZeroPad2d((0, 1, 0, 1))``.
`port` copies the trained Keras weights in; `check_port` measures the
largest logit difference on real images.

`run_tp` prunes with Torch-Pruning 1.6's `MetaPruner` (group L1 =
`GroupMagnitudeImportance(p=1)`, or `GroupTaylorImportance` on one gradient
of a few batches), stepping its pruning ratio in small increments until the
model's MACs, counted like `ShrinkReport` (kernel size × output positions of
every Conv2d / Linear), are at most the target, then fine-tunes it with its
own loop on the protocol's batches and schedule.
"""

from __future__ import annotations

import time

import numpy as np

import bench

_log = bench.logger("compress-torch")


def _torch():
    import torch
    import torch.nn as nn

    return torch, nn


def build_module():
    torch, nn = _torch()

    def conv_bn(cin, cout, k, stride, relu=True):
        layers = []
        if stride == 2 and k == 3:
            layers.append(nn.ZeroPad2d((0, 1, 0, 1)))
            layers.append(nn.Conv2d(cin, cout, k, stride, padding=0, bias=False))
        else:
            layers.append(nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False))
        layers.append(nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))
        if relu:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = conv_bn(cin, cout, 3, stride)
            self.b = conv_bn(cout, cout, 3, 1, relu=False)
            self.proj = conv_bn(cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else None
            self.out = nn.ReLU()

        def forward(self, x):
            shortcut = x if self.proj is None else self.proj(x)
            return self.out(self.b(self.a(x)) + shortcut)

    class TorchResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, 16, 3, 1)
            blocks, cin = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for block in range(3):
                    stride = 2 if stage > 0 and block == 0 else 1
                    blocks.append(Block(cin, width, stride))
                    cin = width
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.fc(x.mean(dim=(2, 3)))

    return TorchResNet20()


def _keras_names():
    names = [("stem", "stem")]
    for stage in range(3):
        for block in range(3):
            prefix = f"s{stage + 1}b{block + 1}"
            names += [(f"blocks.{3 * stage + block}.a", f"{prefix}_a"),
                      (f"blocks.{3 * stage + block}.b", f"{prefix}_b")]
            if stage > 0 and block == 0:
                names.append((f"blocks.{3 * stage + block}.proj", f"{prefix}_proj"))
    return names


def port(keras_model):
    """A `TorchResNet20` holding ``keras_model``'s weights (eval mode)."""
    torch, nn = _torch()
    module = build_module()
    mods = dict(module.named_modules())
    with torch.no_grad():
        for tname, kname in _keras_names():
            seq = mods[tname]
            conv = [m for m in seq if isinstance(m, nn.Conv2d)][0]
            bn = [m for m in seq if isinstance(m, nn.BatchNorm2d)][0]
            kernel = keras_model.get_layer(f"{kname}_conv").get_weights()[0]
            conv.weight.copy_(torch.from_numpy(np.transpose(kernel, (3, 2, 0, 1)).copy()))
            gamma, beta, mean, var = keras_model.get_layer(f"{kname}_bn").get_weights()
            for p, value in ((bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean),
                             (bn.running_var, var)):
                p.copy_(torch.from_numpy(np.asarray(value)))
        kernel, bias = keras_model.get_layer("logits").get_weights()
        module.fc.weight.copy_(torch.from_numpy(kernel.T.copy()))
        module.fc.bias.copy_(torch.from_numpy(bias))
    return module.eval()


def to_nchw(x):
    torch, _ = _torch()
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def check_port(keras_model, module, x) -> float:
    """max |logits_keras − logits_torch| on ``x`` (NHWC)."""
    torch, _ = _torch()
    ref = keras_model.predict(x, verbose=0)
    with torch.no_grad():
        out = module.eval()(to_nchw(x)).numpy()
    return float(np.abs(ref - out).max())


def macs(module) -> int:
    """Σ kernel size × output positions over Conv2d / Linear: `ShrinkReport`'s MACs."""
    torch, nn = _torch()
    total = [0]

    def hook(m, inputs, output):
        positions = int(np.prod(output.shape[2:])) if output.dim() > 2 else 1
        total[0] += int(m.weight.numel()) * positions

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module.eval()(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return total[0]


def params(module) -> int:
    """Parameters + BN running statistics (Keras' ``count_params`` counts them)."""
    _, nn = _torch()
    count = sum(p.numel() for p in module.parameters())
    count += sum(m.running_mean.numel() + m.running_var.numel() for m in module.modules()
                 if isinstance(m, nn.BatchNorm2d))
    return int(count)


def evaluate(module, x, y) -> float:
    torch, _ = _torch()
    module.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 512):
            correct += int((module(to_nchw(x[i:i + 512])).argmax(1).numpy() == y[i:i + 512]).sum())
    return correct / len(x)


def prune_to(module, importance: str, target_macs: float, data, round_to=1, steps=200,
             global_pruning=True):
    """Torch-Pruning steps until ``macs(module) <= target_macs``; returns the ratio it stopped at."""
    torch, nn = _torch()
    import torch_pruning as tp

    imp = (tp.importance.GroupMagnitudeImportance(p=1) if importance == "l1"
           else tp.importance.GroupTaylorImportance())
    example = torch.zeros(1, 1, 28, 28)
    pruner = tp.pruner.MetaPruner(module, example, importance=imp, pruning_ratio=0.95,
                                  iterative_steps=steps, ignored_layers=[module.fc],
                                  round_to=None if round_to <= 1 else round_to,
                                  global_pruning=global_pruning)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        if macs(module) <= target_macs:
            return step
        if importance == "taylor":
            module.eval()
            module.zero_grad()
            for i in range(4):  # 4 of the protocol's scoring batches
                xb = data.x_train[i * 128:(i + 1) * 128]
                yb = torch.from_numpy(data.y_train[i * 128:(i + 1) * 128].astype("int64"))
                loss_fn(module(to_nchw(xb)), yb).backward()
        pruner.step()
    return steps


def fine_tune(module, data, epochs: int, peak_lr: float, seed: int) -> list:
    """SGD Nesterov 0.9, cosine from ``peak_lr`` to 0 per step, the protocol's batch order."""
    torch, nn = _torch()
    from bench import protocol

    if epochs == 0:
        return []
    torch.manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=peak_lr, momentum=protocol.MOMENTUM, nesterov=True)
    steps = data.steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(epochs):
        module.train()
        order = protocol.epoch_order(seed, epoch, len(data.x_train))
        total = 0.0
        for s in range(data.steps_per_epoch):
            idx = order[s * protocol.BATCH_SIZE:(s + 1) * protocol.BATCH_SIZE]
            xb, yb = to_nchw(data.x_train[idx]), torch.from_numpy(data.y_train[idx].astype("int64"))
            opt.zero_grad()
            loss = loss_fn(module(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss)
        losses.append(total / data.steps_per_epoch)
    return losses


def run_tp(keras_model, data, importance, macs_fraction, epochs, peak_lr, seed, round_to=1) -> dict:
    """One Torch-Pruning contender: port, prune to the MACs target, fine-tune, evaluate."""
    torch, _ = _torch()
    torch.set_num_threads(2)
    module = port(keras_model)
    diff = check_port(keras_model, module, data.x_test[:256])
    dense_macs, dense_params = macs(module), params(module)
    dense_acc = evaluate(module, data.x_test, data.y_test)
    t0 = time.perf_counter()
    stopped = prune_to(module, importance, macs_fraction * dense_macs, data, round_to)
    pruned_acc = evaluate(module, data.x_test, data.y_test)
    losses = fine_tune(module, data, epochs, peak_lr, seed)
    acc = evaluate(module, data.x_test, data.y_test)
    result = {
        "method": f"tp_{importance}", "accuracy": acc, "accuracy_before_fine_tune": pruned_acc,
        "dense_accuracy_torch": dense_acc, "port_max_abs_logit_diff": diff,
        "macs_ratio": macs(module) / dense_macs, "params_ratio": params(module) / dense_params,
        "macs": macs(module), "params": params(module), "tp_steps": stopped,
        "train_loss": losses, "wall_s": time.perf_counter() - t0,
        "widths": [int(m.out_channels) for m in module.modules()
                   if m.__class__.__name__ == "Conv2d"],
    }
    _log(f"tp {importance} {macs_fraction}: {acc:.4f} (pruned {pruned_acc:.4f}), MACs "
         f"{result['macs_ratio']:.3f}x, port diff {diff:.2e}")
    return result
