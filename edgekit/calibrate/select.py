"""Choosing among calibration variants by what matters: how far the int8 model's outputs move from
fp32's, on the calibration split (never the validation or test split).

Each variant (a range method, equalization on or off) is written as a Q/DQ model and run in ONNX
Runtime with graph optimizations off, so QuantizeLinear/DequantizeLinear run as written: the exact
int8 arithmetic every runtime is asked to reproduce, independent of this machine's kernels. Which
range method suits a model is not knowable in advance (min-max keeps ReLU6 peaks, MSE trims long tails):
measuring the candidates costs a few seconds on an embedded-sized model and removes the guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.data import Samples
from edgekit.errors import Failure, require, runtime_message
from edgekit.metrics import stack_outputs

MAX_SAMPLES = 128  # enough to rank a handful of variants; keeps selection fast on larger models


def _session(model_or_path):
    ort = require("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    source = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise Failure(f"ONNX Runtime could not run {getattr(model_or_path, 'name', 'the model')}: {runtime_message(err)}") from err


def feeds_of(samples: Samples) -> list[dict[str, np.ndarray]]:
    return [samples.sample(i) for i in range(min(len(samples), MAX_SAMPLES))]


def outputs(model_or_path, feeds: list[dict]) -> list[np.ndarray]:
    """The first output of the model on each feed, as float64."""
    session = _session(model_or_path)
    return [np.asarray(session.run(None, feed)[0], np.float64) for feed in feeds]


def all_outputs(model_or_path, feeds: list[dict]) -> list[np.ndarray]:
    """Every output of the model over the feeds, one array per output stacked over them ([N, ...])."""
    session = _session(model_or_path)
    return stack_outputs([[np.asarray(o) for o in session.run(None, feed)] for feed in feeds])


def relative_error(reference, got) -> float:
    """Sum of squared differences over the sum of squared reference values (arrays of one size)."""
    reference, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    return float(((got - reference) ** 2).sum() / max(float((reference ** 2).sum()), 1e-30))


def output_error(reference: list[np.ndarray], model_or_path, feeds: list[dict]) -> float:
    """Normalised mean squared error of the model's first output against `reference`
    (sum of squared differences over the sum of squared reference values)."""
    got = outputs(model_or_path, feeds)
    return relative_error(np.concatenate([np.ravel(r) for r in reference]), np.concatenate([np.ravel(g) for g in got]))
