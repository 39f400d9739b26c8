"""hls4ml: the PyTorch module → an HLS project for an AMD FPGA (Vitis HLS), in per-layer fixed point.

The engine file, `model.hls4ml`, is a small JSON manifest beside the project folder `hls4ml/`. This
machine compiles the project's C simulation with g++ (hls4ml's `compile()`): the same C++ and ap_fixed
arithmetic Vitis HLS synthesizes, so its outputs are those of the FPGA design, bit for bit; deploy checks
accuracy with it. Synthesis runs where Vitis is (`vitis-run`); elsewhere it is the pending command.
hls4ml converts the PyTorch module, not the ONNX file: the Q/DQ ONNX of an int8 plan is not used, but
edgekit's calibration split sets every layer's fixed-point format (see hls4ml_config).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgekit.backends import hls4ml_project as project_files
from edgekit.backends.base import Artifact, Availability, BackendDefaults, BuildContext, Executed, LayerTime
from edgekit.backends.hls4ml_config import multiply_nodes, width_of
from edgekit.backends.hls4ml_graph import observe, prepare
from edgekit.backends.hls4ml_project import PROJECT, PROJECT_NAME, first_line, hls4ml_module, quiet
from edgekit.calibrate.qdq import quantizable_layers
from edgekit.errors import BadInput, Failure
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target
from edgekit.util import write_json

SYNTHESIS = "vitis-run"  # Vitis 2024.2+ unified command, what hls4ml 1.3's Vitis backend runs
BUILD_OPTIONS = {"reset": 0, "csim": 0, "synth": 1, "cosim": 0, "validation": 0, "export": 1, "vsynth": 0, "fifo_opt": 0}
_LIVE: dict[str, object] = {}  # manifest path → compiled hls4ml model, so deploy's check does not compile twice


def _channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if x.ndim > 2 else x


class HlsEngine:
    """Runs the compiled C simulation one feed at a time, in PyTorch's layout (NCHW in, NCHW out)."""

    def __init__(self, model, manifest: dict):
        self._model = model
        self._manifest = manifest

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        xs = [np.ascontiguousarray(_channels_last(np.asarray(feed[i["name"]], np.float32))) for i in self._manifest["inputs"]]
        with quiet():
            y = self._model.predict(xs[0] if len(xs) == 1 else xs)
        ys = [y] if len(self._manifest["outputs"]) == 1 else y
        outs = []
        for flat, shape in zip(ys, self._manifest["outputs"], strict=True):
            last = (*shape[1:], shape[0]) if len(shape) > 1 else tuple(shape)  # hls4ml returns channels last
            outs.append(np.moveaxis(np.asarray(flat, np.float32).reshape(1, *last), -1, 1) if len(shape) > 1
                        else np.asarray(flat, np.float32).reshape(1, *shape))
        return outs

    def layer_times(self, feed: dict[str, np.ndarray], runs: int) -> list[LayerTime]:
        return []  # a C simulation has no per-layer timer; per-layer cycles are predicted in the estimate

    def executed(self, feed: dict[str, np.ndarray], layers: list[str]) -> dict[str, Executed]:
        """The planned (quantizable: Conv/Gemm/MatMul) ONNX layers matched in order to hls4ml's Conv/Dense
        layers, read from the manifest (the same module, exported twice); {} where the counts differ."""
        multiply = self._manifest["multiply_layers"]
        if len(layers) != len(multiply):
            return {}
        return {name: Executed(f"int{m.get('width', self._manifest['width'])}", m["layer"], f"{m['weight']} weights, reuse {m['reuse']}")
                for name, m in zip(layers, multiply, strict=True)}


def planned_widths(plan: PrecisionPlan, onnx_path: Path, multiply: list[str], options: dict) -> dict[str, int]:
    """Each multiplying layer's width (torch.fx name → bits) from a plan that names the ONNX export's
    Conv/Gemm/MatMul layers: the same module exported twice, matched in graph order. {} where the plan
    has no per-layer entries or the backend option `width` sets one for all."""
    if not plan.layers or options.get("width"):
        return {}
    import onnx

    planned = list(quantizable_layers(onnx.load(str(onnx_path), load_external_data=False)))
    if len(planned) != len(multiply):
        raise BadInput(f"the plan names {len(planned)} ONNX layers with weights but hls4ml's graph has {len(multiply)} "
                       "(Conv/Linear): per-layer widths cannot be matched; give one precision for the whole model")
    return {fx: width_of(plan.precision_of(name), options) for name, fx in zip(planned, multiply, strict=True)}


class Hls4mlBackend(BackendDefaults):
    name = "hls4ml"
    suffixes = (".hls4ml",)

    def available(self, target: Target) -> Availability:
        try:
            hls4ml = hls4ml_module()
        except Exception as err:
            return Availability(False, False, str(err))
        versions = {"hls4ml": hls4ml.__version__}
        if shutil.which("g++") is None:
            return Availability(False, False, "hls4ml's C simulation needs g++ on PATH (apt install g++)", versions)
        versions["g++"] = subprocess.run(["g++", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
        where = "" if shutil.which(SYNTHESIS) else f"; synthesis needs Vitis HLS ({SYNTHESIS}), not on PATH here"
        return Availability(True, False, f"{target.name} is an FPGA reached through the edgekit agent{where}", versions,
                            check=True, check_how=f"hls4ml {hls4ml.__version__} C simulation (g++) on this host, "
                                                  "bit-accurate to the synthesized design")

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
              context: BuildContext | None = None) -> Artifact:
        hls4ml = hls4ml_module()
        model = context.model if context else None
        if model is None or model.kind != "torch":
            raise BadInput("hls4ml builds from the PyTorch module (its converter reads nn.Modules through torch.fx); "
                           "this model is ONNX only: give the PyTorch model (package.module:factory or .pt2)")
        if context.calibration is None or len(context.calibration) == 0:
            raise BadInput("hls4ml's fixed-point formats are set from calibration data: pass --data")
        options = target.backend.options
        width = width_of(plan.default, options)
        out_dir = Path(out_dir)
        project = out_dir / PROJECT
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
        log = project / "edgekit_convert.log"
        prepared = prepare(model.module, model.inputs, model.example)
        observe(prepared, context.calibration.inputs)
        widths = planned_widths(plan, context.float_onnx or onnx_path, multiply_nodes(prepared), options)
        hls_model, choices, est = project_files.convert(hls4ml, prepared, width, target, project, log, widths)
        try:
            with quiet(log):
                hls_model.compile()
        except Exception as err:
            raise Failure(f"hls4ml's C simulation did not compile with g++: {first_line(err)} (log: {log})") from err
        project_files.portable_config(project)
        write_json(out_dir / "hls4ml_estimate.json", est)
        manifest = {
            "project": PROJECT, "project_name": PROJECT_NAME, "hls4ml": hls4ml.__version__, "width": width,
            "inputs": [{"name": n, "shape": list(s)} for n, s in zip(prepared.input_names, prepared.input_shapes, strict=True)],
            "outputs": [list(s) for s in prepared.output_shapes],
            "multiply_layers": [{"layer": c.name, "weight": c.weight, "accum": c.accum, "reuse": c.reuse,
                                 "width": widths.get(c.name, width)} for c in choices if c.n_in],
        }
        path = out_dir / "model.hls4ml"
        write_json(path, manifest)
        _LIVE[str(path.resolve())] = hls_model
        pending, synthesis = self._synthesize(hls_model, project, log)
        notes = project_files.notes(hls4ml.__version__, width, choices, prepared, est, len(context.calibration))
        if synthesis:
            notes["synthesis"] = synthesis
        files = (path, project, out_dir / "hls4ml_estimate.json")
        used = {widths.get(c.name, width) for c in choices if c.n_in}
        label = f"int{used.pop()}" if len(used) == 1 else "mixed"
        return Artifact(self.name, path, files, label, {"part": options.get("part")}, pending, notes)

    def _synthesize(self, hls_model, project: Path, log: Path) -> tuple[str | None, dict | None]:
        """HLS synthesis and IP export where Vitis is; else the command that does it, left pending."""
        (project / "build_opt.tcl").write_text(
            "array set opt {\n" + "".join(f"    {k:<10} {v}\n" for k, v in BUILD_OPTIONS.items()) + "}\n")
        command = f"cd {project.name} && {SYNTHESIS} --mode hls --tcl build_prj.tcl"  # from the run directory, as the others"
        if shutil.which(SYNTHESIS) is None:
            return command, None
        try:
            with quiet(log):
                report = hls_model.build(**{k: bool(v) for k, v in BUILD_OPTIONS.items() if k != "fifo_opt"}, log_to_stdout=False)
        except Exception as err:
            raise Failure(f"Vitis HLS synthesis failed: {first_line(err)} (logs in {project})") from err
        return None, json.loads(json.dumps(report, default=str))

    def artifact_from_file(self, path: Path) -> Artifact:
        try:
            manifest = json.loads(Path(path).read_text())
            project = Path(path).parent / manifest["project"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BadInput(f"{path}: not an edgekit hls4ml manifest ({type(err).__name__})") from err
        if not (project / "hls4ml_config.yml").is_file():
            raise BadInput(f"{path}: its hls4ml project {project} is missing (hls4ml_config.yml not found)")
        return Artifact(self.name, Path(path), (Path(path), project), f"int{manifest.get('width', 8)}", {})

    def load(self, artifact: Artifact, *, target: Target, threads: int) -> HlsEngine:
        hls4ml = hls4ml_module()
        path = Path(artifact.path)
        manifest = json.loads(path.read_text())
        model = _LIVE.get(str(path.resolve()))
        if model is None:  # another process built it: compile the project's C simulation again
            try:
                with quiet():
                    model = hls4ml.converters.link_existing_project(str(path.parent / manifest["project"]))
                    model.compile()
            except Exception as err:
                raise Failure(f"hls4ml could not compile the C simulation of {path.parent / manifest['project']}: "
                              f"{first_line(err)}") from err
            _LIVE[str(path.resolve())] = model
        return HlsEngine(model, manifest)


BACKEND = Hls4mlBackend()
