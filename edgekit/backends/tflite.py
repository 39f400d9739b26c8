"""LiteRT (TensorFlow Lite) for the Raspberry Pi: the PyTorch module converted by litert-torch, run by
ai-edge-litert's interpreter with XNNPACK.

fp32 is the converted model; fp16 stores fp16 weights (TFLite's float16 quantization: XNNPACK
computes in fp32 unless the app forces fp16 inference); int8 is a full-integer model quantized with
edgekit's calibration (see tflite_int8). The .tflite runs unchanged on the Pi's LiteRT; here the same
file runs on this machine's LiteRT, which checks its arithmetic but never stands in for the Pi's latency.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from edgekit.backends import tflite_graph as tg
from edgekit.backends import tflite_int8
from edgekit.backends.base import Artifact, Availability, BackendDefaults, BuildContext, Executed, LayerTime
from edgekit.calibrate.qdq import quantizable_layers
from edgekit.errors import BadInput, Failure, require, runtime_message
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target

PACKAGES = {"ai-edge-litert": "ai_edge_litert", "litert-torch": "litert_torch", "ai-edge-quantizer": "ai_edge_quantizer"}
NO_PROFILER = ("LiteRT's Python interpreter has no per-op profiler (the C++ benchmark_model's --enable_op_profiling "
               "has): no per-layer times")


def versions() -> dict[str, str]:
    found = {}
    for dist in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


@contextlib.contextmanager
def quiet():
    """litert-torch, the MLIR converter and the interpreter print progress and logs from C++ straight
    to the process's stdout/stderr; keep the terminal for edgekit's own output. Interpreters that keep
    every tensor (matching, calibration) do so on purpose: their debugging warning is dropped too."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _litert():
    return require("ai_edge_litert.interpreter", "tflite")


class TFLiteEngine:
    """One .tflite in LiteRT's interpreter (XNNPACK). Inputs and outputs go by the model's signature
    names; an int8-I/O model is fed float data quantized with its input's scale, and its outputs are
    dequantized, as an app on the device does."""

    def __init__(self, path: Path, threads: int):
        litert = _litert()
        self.path = Path(path)
        try:
            with quiet():
                self._interpreter = litert.Interpreter(model_path=str(path), num_threads=max(1, threads))
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BadInput(f"LiteRT cannot load {self.path.name}: {runtime_message(err)}") from err
        signatures = self._interpreter.get_signature_list()
        if signatures:
            key = next(iter(signatures))
            runner = self._interpreter.get_signature_runner(key)
            ins, outs = runner.get_input_details(), runner.get_output_details()
            self._inputs = [(n, ins[n]) for n in signatures[key]["inputs"]]
            self._outputs = [outs[n] for n in signatures[key]["outputs"]]
        else:
            self._inputs = [(d["name"], d) for d in self._interpreter.get_input_details()]
            self._outputs = list(self._interpreter.get_output_details())

    @property
    def input_specs(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of each input as a caller feeds it (float for int8-I/O models)."""
        return [(name, tuple(int(x) for x in d["shape"]), "float32" if d["dtype"] == np.int8 else np.dtype(d["dtype"]).name)
                for name, d in self._inputs]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = list(feed.values())
        for position, (name, d) in enumerate(self._inputs):
            x = np.asarray(feed[name] if name in feed else values[position])
            if d["dtype"] == np.int8 and x.dtype != np.int8:
                scale, zero = d["quantization"]
                x = np.clip(np.round(x / scale) + zero, -128, 127)
            self._interpreter.set_tensor(d["index"], np.ascontiguousarray(x, d["dtype"]))
        self._interpreter.invoke()
        out = []
        for d in self._outputs:
            y = self._interpreter.get_tensor(d["index"])
            if d["dtype"] == np.int8:
                scale, zero = d["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            out.append(np.array(y))
        return out

    def layer_times(self, feed: dict[str, np.ndarray], runs: int) -> list[LayerTime]:
        return []  # see NO_PROFILER

    def executed(self, feed: dict[str, np.ndarray], layers: list[str]) -> dict[str, Executed]:
        found = executed_layers(self.path.read_bytes(), layers)
        if self._whole_graph_delegated():
            found = {k: Executed(e.precision, e.runtime_layer, f"{e.exec_type}, XNNPACK") for k, e in found.items()}
        return found

    def _whole_graph_delegated(self) -> bool:
        """One XNNPACK node that reads the graph's inputs and writes its outputs: every op runs in it."""
        nodes = [op for op in self._interpreter._get_ops_details() if op["op_name"] == "DELEGATE"]
        inputs = {d["index"] for d in self._interpreter.get_input_details()}
        outputs = {d["index"] for d in self._interpreter.get_output_details()}
        return len(nodes) == 1 and inputs <= set(nodes[0]["inputs"]) and outputs == set(nodes[0]["outputs"])


def executed_layers(model: bytes, layers: list[str]) -> dict[str, Executed]:
    """The precision each layer runs in, read from the .tflite: an op named after the layer (the build
    names them) computes in int8 when its input is int8; float ops whose weights are stored fp16 are
    dequantized to fp32 by XNNPACK at load."""
    fb = tg.read(model)
    graph = fb.subgraphs[0]
    types = tg.type_names()
    made_by = {o: op for op in graph.operators for o in op.outputs}
    wanted = set(layers)
    found: dict[str, Executed] = {}
    for position, op in enumerate(graph.operators):
        name = graph.tensors[op.outputs[0]].name.decode() if op.outputs else ""
        if name not in wanted:
            continue
        kind = tg.op_name(fb, op)
        act = types[graph.tensors[op.inputs[0]].type]
        weight = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        stored = types[weight.type] if weight is not None else ""
        producer = made_by.get(op.inputs[1]) if weight is not None else None
        if producer is not None and tg.op_name(fb, producer) == "DEQUANTIZE":
            stored = types[graph.tensors[producer.inputs[0]].type]
        if act == "int8":
            found[name] = Executed("int8", f"{kind}:{position}", f"{kind} int8")
        elif stored == "float16":
            found[name] = Executed("fp32", f"{kind}:{position}", f"{kind} fp16 weights, fp32 arithmetic")
        else:
            found[name] = Executed("fp32", f"{kind}:{position}", f"{kind} fp32")
    return found


def _convert(context: BuildContext | None) -> bytes:
    model = context.model if context else None
    if model is None:
        raise BadInput("LiteRT builds from the PyTorch model itself, and none was given")
    if model.kind != "torch":
        raise BadInput(f"LiteRT builds from the PyTorch model (litert-torch converts the module), and {model.spec} is "
                       "ONNX: pass the PyTorch model (a package.module:factory, or an ExportedProgram .pt2)")
    torch = require("torch", "tflite")
    with quiet():  # importing it loads torchao, which logs its optional CUDA kernels
        litert_torch = require("litert_torch", "tflite")
    litert_torch.config.show_progress = False
    if isinstance(model.module, torch.jit.ScriptModule):
        raise BadInput(f"LiteRT cannot convert TorchScript ({model.spec}): torch.export, which litert-torch uses, does not "
                       "take ScriptModules; pass the factory (package.module:build) or an ExportedProgram .pt2 (torch.export.save)")
    args = tuple(torch.from_numpy(np.ascontiguousarray(model.example[s.name])) for s in model.inputs)
    try:
        with quiet(), torch.no_grad():
            return bytes(litert_torch.convert(model.module, args).model_content())
    except Exception as err:  # torch.export / MLIR lowering fail with many types; the message says which op
        raise BadInput(f"litert-torch cannot convert {model.spec}: {type(err).__name__}: {runtime_message(err)}") from err


def _feeds(context: BuildContext) -> list[dict]:
    if context.calibration is not None and len(context.calibration):
        return [context.calibration.sample(i) for i in range(len(context.calibration))]
    return [context.model.example]


def _fp16(model: bytes, plan: PrecisionPlan, layers: list[str], matching: tg.Matching) -> tuple[bytes, dict]:
    """fp16 weights (TFLite's float16 quantization) where the plan says fp16, fp32 weights elsewhere."""
    aeq = require("ai_edge_quantizer.quantizer", "tflite")
    quantizer = aeq.Quantizer(bytearray(model))
    names, casting, keep = aeq.qtyping.TFLOperationName, aeq.AlgorithmName.FLOAT_CASTING, aeq.AlgorithmName.NO_QUANTIZE
    if plan.default == "fp16":
        quantizer.add_weight_only_config(".*", names.ALL_SUPPORTED, 16, algorithm_key=casting)
    not_honoured = {}
    for layer in layers:
        precision = plan.precision_of(layer)
        if precision == plan.default:
            continue
        if layer not in matching.layers:
            not_honoured[layer] = f"planned {precision}, but no LiteRT op could be matched to it: {plan.default}"
        elif precision == "fp16":
            quantizer.add_weight_only_config(f"^{re.escape(layer)};$", names.ALL_SUPPORTED, 16, algorithm_key=casting)
        else:
            quantizer.update_quantization_recipe(f"^{re.escape(layer)};$", names.ALL_SUPPORTED, None, algorithm_key=keep)
    with quiet():
        result = quantizer.quantize(enable_progress_report=False)
    return bytes(result.quantized_model), {
        "fp16_weights": "fp16 weights, dequantized to fp32 by XNNPACK at load; fp16 arithmetic only where the app "
                        "sets XNNPACK's FORCE_FP16 (Armv8.2 cores such as the Pi 5's)",
        "plan_not_honoured": not_honoured}


def build_tflite(name: str, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
                 context: BuildContext | None, int8_io: bool) -> Artifact:
    """The .tflite for `plan`; shared by the tflite and edgetpu backends."""
    import onnx

    if "int8" in {plan.default, *plan.layers.values()} and (context is None or context.calibration is None):
        raise BadInput("int8 needs calibration data: pass --data (a few hundred samples of real inputs)")
    float_model = _convert(context)
    fb = tg.read(float_model)
    tg.rename_signature_inputs(fb, [s.name for s in context.model.inputs])
    float_model = tg.write(fb)
    float_onnx = context.float_onnx or onnx_path
    feeds = _feeds(context)
    try:
        with quiet():
            matching = tg.match(float_model, fb, float_onnx, feeds, tg.cast_feeds(float_model, feeds))
    except Exception as err:
        raise Failure(f"cannot run the converted model to match it to {float_onnx.name}: {runtime_message(err)}") from err
    tg.rename_layers(fb, matching)
    float_model = tg.write(fb)
    layers = list(quantizable_layers(onnx.load(str(float_onnx), load_external_data=False)))
    notes: dict = {"converter": "litert-torch (from the PyTorch module)", "per_layer_times": NO_PROFILER,
                   "matched_layers": f"{len(matching.layers)} of {len(layers)} ONNX layers matched to LiteRT ops by value"}
    if plan.quantized:
        with quiet():
            model, report = tflite_int8.quantize(
                float_model, fb, matching, plan=_full_plan(plan, layers), source=onnx_path if onnx_path != float_onnx else None,
                scales=context.scales, calibration=tg.cast_feeds(float_model, feeds), source_name=context.calibration.source)
            if not int8_io:
                model = tflite_int8.float_io(model)
        notes["int8"] = report.as_dict()
        notes["io"] = "int8 inputs and outputs" if int8_io else "float inputs and outputs (QUANTIZE / DEQUANTIZE at the edges)"
        file = "model_int8.tflite"
    elif "fp16" in {plan.default, *plan.layers.values()}:
        model, extra = _fp16(float_model, plan, layers, matching)
        notes.update(extra)
        file = "model_fp16.tflite"
    else:
        model, file = float_model, "model_fp32.tflite"
    path = Path(out_dir) / file
    path.write_bytes(model)
    executed = executed_layers(model, layers)
    notes["executed"] = {layer: e.precision for layer, e in executed.items()}
    for layer, e in executed.items():  # what the quantizer could not make int8 (an op it does not take)
        if plan.precision_of(layer) == "int8" and e.precision != "int8" and "int8" in notes:
            notes["int8"]["plan_not_honoured"][layer] = f"planned int8; ai-edge-quantizer left its {e.runtime_layer} in float"
    notes["summary"] = _summary(file, notes, executed, layers, target)
    return Artifact(name, path, (path,), plan.label, {"int8_io": int8_io}, None, notes)


def _full_plan(plan: PrecisionPlan, layers: list[str]) -> PrecisionPlan:
    return PrecisionPlan(default=plan.default, layers={layer: plan.precision_of(layer) for layer in layers})


def _summary(file: str, notes: dict, executed: dict[str, Executed], layers: list[str], target: Target) -> list[str]:
    lines = [f"{file}: {sum(e.precision == 'int8' for e in executed.values())} of "
             f"{len(layers)} layers int8, {notes['matched_layers']}"]
    int8 = notes.get("int8")
    if int8:
        r = int8["activation_ranges"]
        lines.append(f"int8 ranges: {r['edgekit']} from edgekit's scales.json, {r['quantizer']} from ai-edge-quantizer "
                     f"({int8['calibration']['samples']} calibration samples); {notes['io']}")
        if int8["plan_not_honoured"]:
            lines.append(f"plan not honoured for {len(int8['plan_not_honoured'])} layer(s): see report.json build.int8")
    if "fp16_weights" in notes:
        lines.append(notes["fp16_weights"])
    if not target.local:
        lines.append(f"latency here is not the {target.device.split('(')[0].strip()}'s: predicted only")
    lines.append(NO_PROFILER)
    return lines


class TFLiteBackend(BackendDefaults):
    name = "tflite"
    suffixes = (".tflite",)

    def available(self, target: Target) -> Availability:
        found = versions()
        missing = [dist for dist, module in PACKAGES.items() if importlib.util.find_spec(module) is None]
        if missing:
            return Availability(False, False, f"{', '.join(missing)} not installed: pip install 'edgekit[tflite]'", found)
        device = target.device.split("(")[0].strip()
        how = f"LiteRT {found.get('ai-edge-litert', '?')} on this {platform.machine()} host (XNNPACK), not the {device}"
        reason = "" if target.local else f"{device} is reached through the edgekit agent, not from this machine"
        return Availability(True, target.local, reason, found, check=True, check_how=how)

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
              context: BuildContext | None = None) -> Artifact:
        int8_io = bool(target.backend.options.get("int8_io", False))
        return build_tflite(self.name, onnx_path=onnx_path, plan=plan, target=target, out_dir=out_dir,
                            context=context, int8_io=int8_io)

    def artifact_from_file(self, path: Path) -> Artifact:
        data = Path(path).read_bytes()
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise BadInput(f"LiteRT cannot load {Path(path).name}: not a TFLite flatbuffer (no 'TFL3' identifier)")
        return Artifact(self.name, Path(path), (Path(path),), "unknown", {})

    def load(self, artifact: Artifact, *, target: Target, threads: int) -> TFLiteEngine:
        return TFLiteEngine(artifact.path, threads)


BACKEND = TFLiteBackend()
