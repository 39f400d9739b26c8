"""Quantization-aware fine-tuning, for when post-training int8 costs more accuracy than the budget allows.

The student trains with the quantizers edgekit's own Q/DQ export will put around it (edgekit.calibrate):
each Conv/Linear reads its input through a per-tensor fake quantizer whose range comes from the same
calibration method on the student's own activations (uint8 with a zero point, or symmetric int8 where
the target wants it), and uses its weight through a per-output-channel symmetric fake quantizer of the
target's weight bits (±127, or ±63 on x86 without VNNI), recomputed from the weight at every step as the
export computes it from the final weight. Where the export corrects biases (CalibrationOptions'
bias_correction, on by default) the layer's output is shifted by the same (W_q − W)·E[x] during training:
the trained bias already answers for the rounding, and a correction the training never saw moved a
QAT'd MLP's int8 accuracy by 1.3 points. Gradients pass the rounding straight through (torch's fake
quantize ops). It is a distillation from the original model (edgekit.compress.distill), bounded in time.

What comes out is a float model whose weights sit well on the int8 grid; it is exported and calibrated
like any model, so the shipped file is the same Q/DQ ONNX a post-training run writes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from edgekit.calibrate.observers import TensorStats, _first_pass, _prepare_histograms, _second_pass
from edgekit.calibrate.scales import QParams, activation_range, qparams, weight_qmax
from edgekit.compress.distill import (
    CONV_LR,
    TRANSFORMER_LR,
    DistillReport,
    DistillSettings,
    distill,
    is_transformer,
)
from edgekit.errors import BadInput

BATCH = 64
# The export calibrates the trained weights afresh, so the ranges trained against should be the ones it
# will find: they are re-observed between stages (the outlier test: 3 stages recover more than 1).
STAGES = 3
# Weights must move far enough to move activations between grid steps: on the outlier test (digits MLP,
# two channels 64× larger) 1e-3 recovered 10 % of the int8 loss, 3e-3 (distillation's rate for such nets)
# all of it. Transformers train at LR_FACTOR × distillation's 1e-4.
LR_FACTOR = 3.0


@dataclass(frozen=True)
class QatReport:
    layers: int  # Conv/Linear layers trained with fake quantization
    method: str  # the activation range method
    weight_bits: int
    distill: DistillReport

    def as_dict(self) -> dict:
        return {"layers": self.layers, "method": self.method, "weight_bits": self.weight_bits,
                "distill": self.distill.as_dict()}


@dataclass(frozen=True)
class Quantizers:
    """The fake quantizers trained through: what edgekit's Q/DQ export will put around each layer."""

    method: str = "mse"  # the activation range method (edgekit.calibrate.scales)
    symmetric: bool = False  # symmetric int8 activations where the target wants them, else uint8 with a zero point
    weight_bits: int = 8  # the target's weight grid: 7 or 8
    bias_correction: bool = True  # as the export's CalibrationOptions.bias_correction
    layers: tuple[str, ...] | None = None  # module names; None: every Conv/Linear


@dataclass(frozen=True)
class QatTraining:
    """The distillation through the quantizers, split over STAGES: `seconds` and `epochs` in all, stage i
    seeded `seed + i`; `lr` distillation's default unless given (LR_FACTOR × it for a transformer)."""

    seconds: float = 60.0
    epochs: int = 100
    lr: float | None = None
    seed: int = 0
    objective: str = "auto"  # as edgekit.compress.distill's


def _layers(module, names) -> dict[str, object]:
    import torch.nn as nn

    found = {n: m for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}
    if names is not None:
        unknown = [n for n in names if n not in found]
        if unknown:
            raise BadInput(f"qat: {', '.join(unknown)} are not Conv/Linear layers of the model")
        found = {n: found[n] for n in names}
    return found


def activation_qparams(module, inputs: dict[str, np.ndarray], layers: dict[str, object], *, method: str,
                       symmetric: bool) -> dict[str, QParams]:
    """Each layer's input quantizer, from the calibration method over the module's own activations (two
    passes, as edgekit.calibrate.observers: extremes, then histograms)."""
    return {name: q for name, (q, _) in observe_inputs(module, inputs, layers, method=method, symmetric=symmetric).items()}


def observe_inputs(module, inputs: dict[str, np.ndarray], layers: dict[str, object], *, method: str,
                   symmetric: bool) -> dict[str, tuple[QParams, np.ndarray | None]]:
    """Per layer: its input quantizer and its input's per-channel mean (what the export's bias correction reads)."""
    import torch

    stats = {name: TensorStats(name) for name in layers}
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()]
    n = len(tensors[0])

    def run(observe) -> None:
        handles = [layer.register_forward_pre_hook(lambda _m, args, name=name: observe(stats[name], args[0]))
                   for name, layer in layers.items()]
        try:
            with torch.no_grad():
                for start in range(0, n, BATCH):
                    module(*[t[start:start + BATCH] for t in tensors])
        finally:
            for handle in handles:
                handle.remove()

    module.eval()
    run(lambda s, x: _first_pass(s, x.detach().numpy()))
    for s in stats.values():
        _prepare_histograms(s)
    run(lambda s, x: _second_pass(s, x.detach().numpy()))
    return {name: (qparams(*activation_range(s, method, symmetric=symmetric), symmetric=symmetric, method=method),
                   s.channel_mean) for name, s in stats.items()}


def _bias_shift(layer, mean):
    """(W_q − W)·E[x] per output channel, as edgekit.calibrate.qdq takes it out of the bias (no gradient:
    the rounding error's derivative is zero under the straight-through estimator)."""
    import torch

    error = (layer.weight - layer.parametrizations.weight.original).detach()
    mean = torch.as_tensor(mean, dtype=error.dtype)
    if isinstance(layer, torch.nn.Linear):
        return error @ mean if mean.numel() == error.shape[1] else None
    cout, cin_g = error.shape[:2]
    if mean.numel() != cin_g * layer.groups:
        return None
    per_in = error.reshape(cout, cin_g, -1).sum(dim=2)
    group_of = torch.arange(cout) // (cout // layer.groups)
    return (per_in * mean.reshape(layer.groups, cin_g)[group_of]).sum(dim=1)


def _corrected(mean):
    """A forward hook: the layer's output less its bias shift, as the exported model's corrected bias gives it."""
    def hook(layer, _args, out):
        shift = _bias_shift(layer, mean)
        if shift is None:
            return out
        linear = layer.weight.dim() == 2  # a Linear's channels are its output's last axis, a Conv's axis 1
        return out - (shift if linear else shift.view(1, -1, *[1] * (out.dim() - 2)))
    return hook


@contextlib.contextmanager
def fake_quantized(layers: dict[str, object], activations: dict[str, QParams], weight_bits: int,
                   means: dict[str, np.ndarray | None] | None = None):
    """Within the block, every layer reads its input and weight through fake quantizers; with `means`
    (its input's per-channel mean, or None), its output is shifted as the export's bias correction shifts it."""
    import torch
    from torch.nn.utils import parametrize

    qmax = weight_qmax(weight_bits)

    class WeightQuantizer(torch.nn.Module):
        def forward(self, weight):
            amax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))).clamp_min(1e-8)
            zero = torch.zeros(weight.shape[0], dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(weight, amax / qmax, zero, 0, -qmax, qmax)

    def input_quantizer(q: QParams):
        low, high = (-127, 127) if q.dtype == "int8" else (0, 255)
        return lambda _m, args: (torch.fake_quantize_per_tensor_affine(args[0], q.scale, q.zero_point, low, high),
                                 *args[1:])

    handles = []
    try:
        for name, layer in layers.items():
            parametrize.register_parametrization(layer, "weight", WeightQuantizer())
            handles.append(layer.register_forward_pre_hook(input_quantizer(activations[name])))
            # the export corrects a Conv's bias (adding one if need be) and a Linear's own bias
            corrected = layer.bias is not None or not isinstance(layer, torch.nn.Linear)
            if means is not None and means.get(name) is not None and corrected:
                handles.append(layer.register_forward_hook(_corrected(means[name])))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers.values():
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


def qat(student, teacher, inputs: dict[str, np.ndarray], quantizers: Quantizers = Quantizers(),
        training: QatTraining = QatTraining()) -> QatReport:
    """Fine-tune `student` in place through fake quantization, distilled from `teacher` on `inputs`;
    `quantizers.layers` (module names) limits it to the layers the plan makes int8 (default: every Conv/Linear)."""
    if quantizers.weight_bits not in (7, 8):
        raise BadInput(f"qat: weight_bits must be 7 or 8, not {quantizers.weight_bits}")
    found = _layers(student, quantizers.layers)
    if not found:
        raise BadInput("qat: the model has no Conv/Linear layer to quantize")
    lr = (LR_FACTOR * TRANSFORMER_LR if is_transformer(student) else CONV_LR) if training.lr is None else training.lr
    for stage in range(STAGES):  # the ranges follow the weights: re-observed before each stage
        observed = observe_inputs(student, inputs, found, method=quantizers.method, symmetric=quantizers.symmetric)
        activations = {name: q for name, (q, _) in observed.items()}
        means = {name: mean for name, (_, mean) in observed.items()} if quantizers.bias_correction else None
        with fake_quantized(found, activations, quantizers.weight_bits, means):
            report = distill(student, teacher, inputs, DistillSettings(
                seconds=training.seconds / STAGES, epochs=max(1, training.epochs // STAGES), lr=lr,
                seed=training.seed + stage, objective=training.objective))
    return QatReport(len(found), quantizers.method, quantizers.weight_bits, report)
