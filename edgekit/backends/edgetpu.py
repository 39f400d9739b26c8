"""Coral Edge TPU: the full-integer .tflite (int8 everywhere, int8 I/O) from the tflite backend, checked
against the Edge TPU's documented limits, then compiled by edgetpu_compiler where it is installed.

Why predict coverage: the compiler is x86-Linux only and often absent, yet which ops reach the TPU
decides the latency. The compiler makes one TPU segment: the longest supported prefix of the graph;
from the first op it cannot map, everything runs on the host CPU. edgetpu_coverage.json says, op by op,
which side each lands on and why (the target YAML's `tflite_ops` table: Coral's supported-operations
list; its `ops:` limits: int8 only, static shapes, tensor size). Where the compiler is on PATH its own
log replaces the prediction. The accuracy check runs the same int8 model on LiteRT's CPU kernels.
"""

from __future__ import annotations

import platform
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgekit.backends import tflite_graph as tg
from edgekit.backends.base import Artifact, Availability, BackendDefaults, BuildContext
from edgekit.backends.tflite import TFLiteBackend, TFLiteEngine, build_tflite
from edgekit.errors import BadInput, Failure
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target
from edgekit.util import write_json

COVERAGE = "edgetpu_coverage.json"
NO_FUSED_ACTIVATION = ("MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION")
XY_ONLY = ("MEAN", "PAD")  # reduce / pad along x and y only (NHWC axes 1, 2)
COMPILER_TIMEOUT_S = 600


def _fused_activation(op) -> int:
    options = op.builtinOptions
    return int(getattr(options, "fusedActivationFunction", 0) or 0)


def _op_limits(fb, op, kind: str, target: Target, table: dict) -> tuple[str, str]:
    """(why the op falls back to the CPU or '', a warning or '') from the documented limits."""
    graph = fb.subgraphs[0]
    types = tg.type_names()
    if kind not in table:
        return f"{kind} is not in the Edge TPU's supported-operations table", ""
    warning = ""
    for index in [*op.inputs, *op.outputs]:
        if index < 0:
            continue
        tensor = graph.tensors[index]
        data = tg.constant(fb, index)
        kind_of = types[tensor.type]
        if data is None and kind_of not in ("int8", "uint8"):
            return f"works on {kind_of} tensors; the Edge TPU runs 8-bit tensors only", ""
        if data is None and target.ops.static_shapes and tensor.shapeSignature is not None and -1 in list(tensor.shapeSignature):
            return f"tensor {tensor.name.decode()} has a dynamic shape; the Edge TPU needs static shapes", ""
        shape = list(tensor.shape)
        if data is None and len(shape) > 3 and any(d > 1 for d in shape[:-3]):
            return f"tensor shape {shape}: only the 3 innermost dimensions may exceed 1", ""
        if data is not None and target.ops.max_tensor_mb and data.nbytes > target.ops.max_tensor_mb * 2**20:
            warning = (f"parameters of {data.nbytes / 2**20:.1f} MB exceed the {target.ops.max_tensor_mb:g} MB on-chip "
                       "cache: streamed over USB on every inference")
    if kind in NO_FUSED_ACTIVATION and _fused_activation(op):
        return f"{kind} with a fused activation (the Edge TPU takes none on {kind})", warning
    if kind in XY_ONLY and len(op.inputs) > 1:
        axes = tg.constant(fb, op.inputs[1])
        rank = len(graph.tensors[op.inputs[0]].shape)
        if axes is not None and kind == "MEAN" and rank == 4 and not set(int(a) % 4 for a in axes.ravel()) <= {1, 2}:
            return "MEAN reduces along x and y only", warning
        if axes is not None and kind == "PAD" and rank == 4 and np.any(axes.reshape(-1, 2)[[0, 3]]):
            return "PAD pads along x and y only", warning
    if kind == "FULLY_CONNECTED" and sum(d > 1 for d in graph.tensors[op.outputs[0]].shape) > 1:
        return "FULLY_CONNECTED with a 2-D output (the Edge TPU's output is one-dimensional)", warning
    return "", warning


def coverage(model: bytes, target: Target) -> dict:
    """Op by op: the Edge TPU or the CPU, and why; the compiler maps only the longest supported prefix."""
    table = target.backend.options.get("tflite_ops")
    if not isinstance(table, dict) or not table:
        raise BadInput(f"target {target.name}: backend option 'tflite_ops' (the Edge TPU's supported-operations "
                       "table, TFLite op → known limitation) is missing")
    fb = tg.read(model)
    graph = fb.subgraphs[0]
    ops, first_cpu = [], None
    for index, op in enumerate(graph.operators):
        kind = tg.op_name(fb, op)
        why, warning = _op_limits(fb, op, kind, target, table)
        if why and first_cpu is None:
            first_cpu = (index, kind, why)
        if not why and first_cpu is not None:
            why = f"after op {first_cpu[0]} ({first_cpu[1]}), which the Edge TPU cannot run: the compiler maps one prefix"
        entry = {"index": index, "op": kind, "tensor": graph.tensors[op.outputs[0]].name.decode() if op.outputs else "",
                 "runs_on": "cpu" if why else "edgetpu", "why": why or "supported",
                 "limitation": table.get(kind) or ""}
        if warning:
            entry["warning"] = warning
        ops.append(entry)
    mapped = sum(o["runs_on"] == "edgetpu" for o in ops)
    return {"predicted_from": "documented limits (target tflite_ops table and ops: limits)", "ops": ops,
            "mapped": mapped, "total": len(ops), "first_cpu_op": None if first_cpu is None else
            {"index": first_cpu[0], "op": first_cpu[1], "why": first_cpu[2]}}


def _onnx_outside(onnx_path: Path, target: Target) -> dict[str, int]:
    """ONNX op types of the model that the target's `ops.supported` list does not name (an early view,
    in the model's own terms, of what the TFLite-level coverage finds)."""
    import onnx

    if target.ops.supported is None:
        return {}
    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        if node.op_type not in target.ops.supported and node.op_type != "Constant":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def parse_compiler_log(text: str) -> dict:
    """edgetpu_compiler -s output: version, segments, memory, and the per-operator status table."""
    def field(pattern: str) -> str | None:
        found = re.search(pattern, text)
        return found.group(1).strip() if found else None

    rows = [{"op": op, "count": int(count), "status": status.strip()}
            for op, count, status in re.findall(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*)$", text, re.MULTILINE)]
    mapped = sum(r["count"] for r in rows if r["status"] == "Mapped to Edge TPU")
    return {"version": field(r"Edge TPU Compiler version (\S+)"), "subgraphs": field(r"Number of Edge TPU subgraphs: (\d+)"),
            "operations": field(r"Total number of operations: (\d+)"),
            "on_chip_memory": field(r"On-chip memory used for caching model parameters: (\S+)"),
            "off_chip_memory": field(r"Off-chip memory used for streaming uncached model parameters: (\S+)"),
            "mapped": mapped, "not_mapped": sum(r["count"] for r in rows) - mapped, "rows": rows}


def _compile(compiler: str, model: Path, out_dir: Path) -> tuple[Path, dict]:
    command = [compiler, "-s", "-o", str(out_dir), str(model)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILER_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise Failure(f"edgetpu_compiler did not finish within {COMPILER_TIMEOUT_S} s") from err
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[-1]
        raise Failure(f"edgetpu_compiler failed on {model.name}: {last}")
    (out_dir / f"{model.stem}_edgetpu.log.txt").write_text(done.stdout)
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    if not compiled.is_file():
        raise Failure(f"edgetpu_compiler reported success but wrote no {compiled.name}")
    return compiled, parse_compiler_log(done.stdout)


def _summary(cov: dict, compiled: dict | None, pending: str | None) -> list[str]:
    first = cov["first_cpu_op"]
    line = f"Edge TPU coverage (documented limits): {cov['mapped']} of {cov['total']} ops on the TPU"
    line += f"; from op {first['index']} ({first['op']}: {first['why']}) on the CPU" if first else ", none on the CPU"
    lines = [line]
    if cov.get("onnx_ops_outside_target_list"):
        lines.append(f"ONNX ops outside the target's list: {', '.join(sorted(cov['onnx_ops_outside_target_list']))}")
    if compiled:
        lines.append(f"edgetpu_compiler {compiled['version']}: {compiled['mapped']} ops mapped, {compiled['not_mapped']} not "
                     f"(on-chip memory {compiled['on_chip_memory']})")
    if pending:
        lines.append(f"edgetpu_compiler is not here: compile on a machine that has it ({COVERAGE} predicts the result)")
    return lines


class EdgeTPUBackend(BackendDefaults):
    name = "edgetpu"
    suffixes = (".tflite",)

    def available(self, target: Target) -> Availability:
        lite = TFLiteBackend().available(target)
        if not lite.build:
            return lite
        compiler = target.backend.options.get("compiler", "edgetpu_compiler")
        how = (f"LiteRT {lite.versions.get('ai-edge-litert', '?')} CPU kernels on this {platform.machine()} host, the same int8 "
               f"model; not the Edge TPU of the {target.device.split('(')[0].strip()}")
        reason = ("the Edge TPU runs its compiled model through libedgetpu on its host, reached through the edgekit agent"
                  + ("" if shutil.which(compiler) else f"; {compiler} is not on PATH (the build stops before it)"))
        return Availability(True, False, reason, lite.versions, check=True, check_how=how)

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
              context: BuildContext | None = None) -> Artifact:
        floats = sorted({plan.default, *plan.layers.values()} - {"int8"})
        if floats:
            raise BadInput(f"the Edge TPU runs int8 only; the plan keeps layers in {', '.join(floats)}")
        lite = build_tflite(self.name, onnx_path=onnx_path, plan=plan, target=target, out_dir=out_dir,
                            context=context, int8_io=True)
        out_dir = Path(out_dir)
        cov = coverage(lite.path.read_bytes(), target)
        cov["onnx_ops_outside_target_list"] = _onnx_outside((context.float_onnx if context else None) or onnx_path, target)
        write_json(out_dir / COVERAGE, cov)
        files = [lite.path, out_dir / COVERAGE]
        compiler = target.backend.options.get("compiler", "edgetpu_compiler")
        found = shutil.which(compiler)
        compiled_info, pending, path = None, None, lite.path
        if found:
            path, compiled_info = _compile(found, lite.path, out_dir)
            files += [path, out_dir / f"{lite.path.stem}_edgetpu.log.txt"]
        else:
            pending = shlex.join([Path(compiler).name, "-s", "-o", str(out_dir), str(lite.path)])
        notes = {k: v for k, v in lite.notes.items() if k != "summary"}
        notes.update({"coverage": {k: cov[k] for k in ("mapped", "total", "first_cpu_op")}, "coverage_file": COVERAGE,
                      "compiler": compiled_info,
                      "summary": [*lite.notes["summary"][:2], *_summary(cov, compiled_info, pending)]})
        return Artifact(self.name, path, tuple(files), plan.label, {"cpu_model": lite.path.name}, pending, notes)

    def artifact_from_file(self, path: Path) -> Artifact:
        return TFLiteBackend().artifact_from_file(path)

    def load(self, artifact: Artifact, *, target: Target, threads: int) -> TFLiteEngine:
        """The int8 model on LiteRT's CPU kernels: the Edge TPU's compiled model needs the TPU."""
        cpu = artifact.options.get("cpu_model")
        return TFLiteEngine(artifact.path.with_name(cpu) if cpu else artifact.path, threads)


BACKEND = EdgeTPUBackend()
