"""Quantization-aware fine-tuning as the closed loop's fallback, for a candidate that post-training int8
puts below the allowed accuracy drop."""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np

from edgekit.calibrate.run import symmetric_activations
from edgekit.compress.qat import QatTraining, Quantizers, qat
from edgekit.search import evaluate
from edgekit.search.build import Built, ClosedLoop, build_candidate, final_inputs
from edgekit.search.context import BUILD_RESERVE_S
from edgekit.util import write_json


def int8_validation(loop: ClosedLoop, built: Built) -> float | None:
    """The built Q/DQ model's metric on the validation split, in ONNX Runtime (None: nothing is int8)."""
    qdq = built.folder / "model.int8.onnx"
    fixed = loop.pricing.design is not None
    if fixed or not qdq.exists() or "int8" not in set(built.precisions.values()) | {built.report.precision.get("label")}:
        return None
    import onnxruntime as ort

    validation = loop.ctx.splits.validation
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    out = np.concatenate([session.run(None, validation.sample(i))[0] for i in range(len(validation))])
    return evaluate.score(out, validation, loop.original.validation_ref, loop.original.metric)


def with_qat(loop: ClosedLoop, built: Built, state) -> Built:
    """Quantization-aware fine-tuning when post-training int8 puts the candidate below the allowed drop
    on validation (and time allows one more distillation and build): built in `qat/` beside it, kept if
    its int8 metric is higher; search.json reports both."""
    ctx, request, base_accuracy = loop.ctx, loop.ctx.request, loop.original.accuracy
    ptq = int8_validation(loop, built)
    if ptq is None:
        return built
    floor = base_accuracy - request.max_accuracy_drop / 100
    built.report = dataclasses.replace(built.report, qat={"ptq_validation": ptq, "floor": floor, "tried": False})
    if ptq >= floor or time.monotonic() + request.final_finetune_s + BUILD_RESERVE_S > ctx.deadline:
        return built
    ctx.progress(f"post-training int8 is {100 * (base_accuracy - ptq):.2f} pt below the original on validation: "
                 f"quantization-aware fine-tuning ({request.final_finetune_s:.0f} s at most)")
    module = copy.deepcopy(built.module)
    quantizers = Quantizers(method=(built.report.calibration or {}).get("method") or "mse",
                            symmetric=symmetric_activations(ctx.target), weight_bits=ctx.target.quantization.weight_bits,
                            bias_correction=request.calibration.bias_correction)
    report = qat(module, ctx.teacher, final_inputs(ctx.splits), quantizers,
                 QatTraining(seconds=request.final_finetune_s, objective=loop.original.objective))
    trained = build_candidate(loop, state, built.folder / "qat", finetuned=module)
    after = int8_validation(loop, trained)
    kept = after is not None and after > ptq
    record = {"ptq_validation": ptq, "qat_validation": after, "floor": floor, "tried": True, "kept": kept,
              "folder": "qat", **report.as_dict()}
    ctx.progress(f"quantization-aware fine-tuning: validation {ptq:.4f} → {after:.4f} ({'kept' if kept else 'not kept'})")
    chosen = trained if kept else built
    chosen.report = dataclasses.replace(chosen.report, qat=record)
    write_json(chosen.folder / "report.json", chosen.report.as_dict())
    return chosen
