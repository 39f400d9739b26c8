"""Int8 on real pretrained models nobody here wrote: edgekit beside NNCF and ONNX Runtime, one run
(../shared/BENCH.md).

The models are PaddleOCR's own ONNX exports shipped in the rapidocr wheel (`edgekit.ocr_zoo`): the
text-direction classifier `ppocr-cls` (x 1×3×48×192, top-1 on upright / turned text lines) and the PP-OCRv4
text detector `ppocr-det` (x 1×3×S×S, F1 of the detected lines with DBNet's own post-processing,
`edgekit.ocr_zoo:text_detection_f1`), on data edgekit renders with known truth. Every method starts from
the same normalised fp32 ONNX (`edgekit.models.load_model`) and the same seeded calibration / validation /
test splits (`edgekit.data.split`, 20/30/50 %, disjoint); the metric is measured on the test split only.

Rows: fp32 in OpenVINO (and in ONNX Runtime, the reference of the ONNX Runtime rows); edgekit int8, mixed
and accuracy-aware int8 (`edgekit.deploy.deploy`, its OpenVINO IR loaded here); NNCF `quantize` (defaults,
then its CNN settings: mixed preset, full bias correction); NNCF `quantize_with_accuracy_control`; ONNX
Runtime `quantize_static` (QDQ, per-tensor then per-channel) run in ONNX Runtime and the same QDQ ONNX
compiled by OpenVINO. All engines are timed interleaved in one process (fp32, A, B, … per round).

    .venv/bin/python bench/real.py [--only cls|det] [--n-cls 600] [--n-det 120] [--det-size 320]
                                   [--rounds R] [--block B] [--threads 2] [--out DIR]

Without --rounds/--block: ppocr-cls 40 rounds × 50 runs, ppocr-det 20 rounds × 10 runs per engine.
Writes bench/results/real.json and bench/results/real.md.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import numpy as np
from common import int8_isa, interleaved, percentiles, run_models, timing_args

from edgekit import graph, ocr_zoo, roofline
from edgekit.backends.base import Artifact, get_backend
from edgekit.data import Samples, from_arrays, split
from edgekit.deploy import DeployRequest, deploy
from edgekit.metrics import load_metric
from edgekit.models import load_model
from edgekit.profile import ProfileSettings
from edgekit.targets import load_target

MODELS = {"ppocr-cls": "cls", "ppocr-det": "det"}
METRIC = {"cls": "top1", "det": "edgekit.ocr_zoo:text_detection_f1"}
MAX_DROP_PT = 1.0  # accuracy-aware rows: 1 point of top-1 (cls), 0.01 F1 (det)
DEFAULT_TIMING = {"cls": (40, 50), "det": (20, 10)}  # rounds, block: ≥ 100 runs and ≥ 2 s per engine
FP32, FP32_ORT = "fp32", "fp32 (ONNX Runtime)"
DB_THRESH = ocr_zoo.DB_THRESH


def _feeds(samples: Samples) -> list[dict]:
    return [samples.sample(i) for i in range(len(samples))]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


# ---- engines ------------------------------------------------------------------------------------

def _ov_engine(xml: Path, threads: int):
    """An OpenVINO IR compiled as edgekit compiles every IR: CPU, latency hint, one stream, fixed threads, f32."""
    artifact = Artifact("openvino", xml, (xml, xml.with_suffix(".bin")), "int8",
                        {"device": "CPU", "INFERENCE_PRECISION_HINT": "f32"})
    return get_backend("openvino").load(artifact, target=load_target("host"), threads=threads)


def _ort_engine(onnx_path: Path, threads: int):
    """ONNX Runtime, CPU, all graph optimisations, intra-op threads fixed, one inter-op thread."""
    return get_backend("onnxruntime").load(Artifact("onnxruntime", onnx_path, (onnx_path,), "int8", {}),
                                           target=load_target("host"), threads=threads)


def _save_ov(model, work: Path) -> Path:
    import openvino as ov

    work.mkdir(parents=True, exist_ok=True)
    xml = work / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


# ---- the methods: each returns (engine file, runtime, notes) --------------------------------------

def fp32_ir(onnx_path: Path, work: Path) -> Path:
    import openvino as ov

    return _save_ov(ov.convert_model(str(onnx_path)), work)


def edgekit_deploy(onnx_source: Path, shape: str, samples: Samples, metric: str, work: Path, threads: int,
                   precision: str, max_drop: float | None = None) -> tuple[Path, dict]:
    """`edgekit.deploy.deploy` to the host target; the engine is its OpenVINO IR in the run directory."""
    request = DeployRequest(target="host", model=str(onnx_source), input_shapes=(shape,), precision=precision,
                            out=work, metric=metric, max_accuracy_drop=max_drop,
                            settings=ProfileSettings(min_time_s=0.2, repeats=20, threads=threads))
    report = deploy(request, samples=samples).as_dict()
    engine = work / report["artifacts"]["engine"]
    planned = report["precision"].get("planned") or {}
    notes = {"label": report["precision"].get("label"),
             "int8_layers": sum(p == "int8" for p in planned.values()), "layers": len(planned),
             "calibration": report.get("calibration"), "deploy_accuracy": report.get("accuracy"),
             "deploy_latency_ms": report.get("latency_ms"), "status": report.get("status")}
    mixed = report["precision"].get("mixed")
    if mixed:
        notes["mixed"] = {k: mixed.get(k) for k in ("chosen", "reason", "kind", "mixed_p50_ms", "fp32_p50_ms", "int8_layers")}
    aware = report["precision"].get("accuracy_aware")
    if aware:
        notes["accuracy_aware"] = aware
    return engine, notes


def _fake_quantizes(model) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def nncf_ptq(onnx_path: Path, cal: Samples, work: Path, best: bool) -> tuple[Path, dict]:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    kwargs = {"subset_size": len(cal)}  # all of the calibration split (its default, 300, is more than the split)
    if best:  # NNCF's documented accuracy options for CNNs: asymmetric activations, full bias correction
        kwargs.update(preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=False)
    quantized = nncf.quantize(model, nncf.Dataset(_feeds(cal)), **kwargs)
    return _save_ov(quantized, work), {"fake_quantize": _fake_quantizes(quantized)}


def nncf_accuracy_control(onnx_path: Path, splits, metric, work: Path) -> tuple[Path, dict]:
    """NNCF's accuracy-aware peer: validation split, the same metric (a fraction: top-1 or F1), max_drop =
    MAX_DROP_PT points as a fraction, absolute drop."""
    import nncf
    import openvino as ov

    val = splits.validation
    items = [(val.sample(i), i) for i in range(len(val))]
    labels = val.labels

    def validation_fn(compiled, data) -> tuple[float, list[float]]:
        data = list(data)
        out = np.concatenate([np.asarray(compiled(feed)[0]) for feed, _ in data])
        index = np.array([i for _, i in data])
        ours = labels[index]
        per_item = [metric([out[k : k + 1]], ours[k : k + 1], None) for k in range(len(index))]
        return metric([out], ours, None), per_item

    model = ov.Core().read_model(str(onnx_path))
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(_feeds(splits.calibration)), nncf.Dataset(items, lambda item: item[0]), validation_fn,
        max_drop=MAX_DROP_PT / metric.points, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(splits.calibration))
    return _save_ov(quantized, work), {"fake_quantize": _fake_quantizes(quantized)}


def ort_qdq(onnx_path: Path, cal: Samples, work: Path, per_channel: bool) -> tuple[Path, dict]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(_feeds(cal))

        def get_next(self):
            return next(self._feeds, None)

    work.mkdir(parents=True, exist_ok=True)
    qdq = work / "model.ort-qdq.onnx"
    quantize_static(str(onnx_path), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel)  # defaults otherwise
    return qdq, {}


# ---- metrics ----------------------------------------------------------------------------------

def _outputs(engine, test: Samples) -> np.ndarray:
    return np.concatenate([np.asarray(engine.run(test.sample(i))[0]) for i in range(len(test))])


def _agreement(kind: str, ours: np.ndarray, ref: np.ndarray) -> float:
    """cls: top-1 agreement with fp32; det: IoU of the text pixels (probability > DB's 0.3) with fp32's."""
    if kind == "cls":
        return float(np.mean(ours.argmax(1) == ref.argmax(1)))
    a, b = ours > DB_THRESH, ref > DB_THRESH
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _per_round(times: list[float], ref: list[float], rounds: int, block_size: int) -> dict:
    r = [float(np.median(times[i * block_size : (i + 1) * block_size]) / np.median(ref[i * block_size : (i + 1) * block_size]))
         for i in range(rounds)]
    return {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}


# ---- one model ---------------------------------------------------------------------------------

def _data(kind: str, n: int, size: int, specs) -> Samples:
    if kind == "cls":
        inputs, labels = ocr_zoo.classifier_data(n)
        source = f"edgekit.ocr_zoo.classifier_data({n})"
    else:
        inputs, labels = ocr_zoo.detector_data(n, size=(size, size))
        source = f"edgekit.ocr_zoo.detector_data({n}, size=({size}, {size}))"
    return from_arrays({**inputs, "labels": labels}, specs, source)


def bench_model(label: str, kind: str, args, work: Path) -> dict:
    began = time.perf_counter()
    host = load_target("host")
    size = args.det_size
    shape = "x:1,3,48,192" if kind == "cls" else f"x:1,3,{size},{size}"
    rounds, block_size = (args.rounds or DEFAULT_TIMING[kind][0]), (args.block or DEFAULT_TIMING[kind][1])
    source = ocr_zoo.model_path(label)
    loaded = load_model(str(source), [shape])
    onnx_path = loaded.onnx_path  # the normalised graph every row starts from
    samples = _data(kind, args.n_cls if kind == "cls" else args.n_det, size, loaded.inputs)
    splits = split(samples)
    metric = load_metric(METRIC[kind])
    layers = graph.layer_table(onnx_path)
    print(f"[{label}] {shape}, {len(splits.calibration)}/{len(splits.validation)}/{len(splits.test)} samples, "
          f"{rounds} rounds × {block_size}", flush=True)

    ov_rows = {  # name → how to make its OpenVINO IR (engine file, notes)
        FP32: lambda d: (fp32_ir(onnx_path, d), {}),
        "edgekit int8": lambda d: edgekit_deploy(source, shape, samples, METRIC[kind], d, args.threads, "int8"),
        "edgekit mixed": lambda d: edgekit_deploy(source, shape, samples, METRIC[kind], d, args.threads, "mixed"),
        f"edgekit accuracy-aware int8 (max drop {MAX_DROP_PT:g} pt)":
            lambda d: edgekit_deploy(source, shape, samples, METRIC[kind], d, args.threads, "int8", MAX_DROP_PT),
        "NNCF quantize (defaults)": lambda d: nncf_ptq(onnx_path, splits.calibration, d, best=False),
        "NNCF quantize (mixed preset, full bias correction)": lambda d: nncf_ptq(onnx_path, splits.calibration, d, best=True),
        f"NNCF quantize_with_accuracy_control (max drop {MAX_DROP_PT / metric.points:g} absolute)":
            lambda d: nncf_accuracy_control(onnx_path, splits, metric, d),
    }
    engines, rows = {}, {}
    for i, (name, make) in enumerate(ov_rows.items()):
        print(f"[{label}] {name} …", flush=True)
        start = time.perf_counter()
        try:
            xml, notes = make(work / f"m{i}")
            seconds = time.perf_counter() - start
            engines[name] = _ov_engine(xml, args.threads)
            rows[name] = {"runtime": "OpenVINO", "quantize_s": None if name == FP32 else seconds, "notes": notes}
        except Exception as err:  # a peer that fails is a row that says why, not a missing row
            traceback.print_exc()
            rows[name] = {"runtime": "OpenVINO", "failed": _one_line(err), "quantize_s": time.perf_counter() - start}
    engines[FP32_ORT] = _ort_engine(onnx_path, args.threads)
    rows[FP32_ORT] = {"runtime": "ONNX Runtime", "quantize_s": None, "notes": {}}
    for per_channel in (False, True):
        tag = f"ONNX Runtime quantize_static (QDQ, {'per-channel' if per_channel else 'per-tensor'})"
        d = work / f"ort-{'pc' if per_channel else 'pt'}"
        print(f"[{label}] {tag} …", flush=True)
        start = time.perf_counter()
        try:
            qdq, notes = ort_qdq(onnx_path, splits.calibration, d, per_channel)
        except Exception as err:
            traceback.print_exc()
            for where in ("in ONNX Runtime", "compiled by OpenVINO"):
                rows[f"{tag}, {where}"] = {"runtime": where, "failed": _one_line(err), "quantize_s": time.perf_counter() - start}
            continue
        seconds = time.perf_counter() - start
        name = f"{tag}, in ONNX Runtime"
        try:
            engines[name] = _ort_engine(qdq, args.threads)
            rows[name] = {"runtime": "ONNX Runtime", "quantize_s": seconds, "notes": notes}
        except Exception as err:
            rows[name] = {"runtime": "ONNX Runtime", "failed": _one_line(err), "quantize_s": seconds}
        name = f"{tag}, compiled by OpenVINO"
        try:
            engines[name] = _ov_engine(fp32_ir(qdq, d / "ov"), args.threads)
            rows[name] = {"runtime": "OpenVINO", "quantize_s": seconds, "notes": notes}
        except Exception as err:
            rows[name] = {"runtime": "OpenVINO", "failed": "OpenVINO cannot compile it: " + _one_line(err), "quantize_s": seconds}

    print(f"[{label}] metric on the test split …", flush=True)
    test = splits.test
    outputs = {name: _outputs(engine, test) for name, engine in engines.items()}
    reference = outputs[FP32]
    fp32_value = metric([reference], test.labels, None)
    print(f"[{label}] interleaved timing of {len(engines)} engines …", flush=True)
    times, _ = interleaved(engines, test.sample(0), rounds, block_size)
    floor = {p: roofline.predict_latency(layers, host, p).p50 for p in ("fp32", "int8")}
    for name, row in rows.items():
        if name not in engines:
            continue
        value = metric([outputs[name]], test.labels, None)
        row.update({"metric": value, "drop_pt": metric.drop(fp32_value, value), "agreement": _agreement(kind, outputs[name], reference),
                    "latency_ms": percentiles(times[name])})
        same_runtime_fp32 = FP32_ORT if row["runtime"] == "ONNX Runtime" else FP32
        if name not in (FP32, FP32_ORT):
            row["ratio_to_fp32_same_runtime"] = _per_round(times[name], times[same_runtime_fp32], rounds, block_size)
            row["ratio_fp32_is"] = same_runtime_fp32
        if name != FP32:
            row["ratio_to_openvino_fp32"] = _per_round(times[name], times[FP32], rounds, block_size)
        row["p50_over_floor"] = row["latency_ms"]["p50"] / floor["fp32" if name in (FP32, FP32_ORT) else "int8"]
    order = [FP32, FP32_ORT] + [n for n in rows if n not in (FP32, FP32_ORT)]
    return {"model": label, "source_onnx": "/".join(Path(source).parts[-3:]), "normalised_onnx": Path(onnx_path).name, "input": shape,
            "normalization": loaded.normalization, "macs": graph.totals(layers)["macs"], "metric": metric.describe(),
            "data": samples.source, "splits": {k: len(getattr(splits, k)) for k in ("calibration", "validation", "test")},
            "rounds": rounds, "block": block_size, "roofline_floor_ms": floor, "rows": {n: rows[n] for n in order},
            "wall_s": time.perf_counter() - began}


# ---- the report --------------------------------------------------------------------------------

def _ratio(r: dict | None) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})" if r else "–"


def _note(name: str, row: dict, defaults: int | None = None) -> str:
    notes = row.get("notes") or {}
    parts = []
    if "int8_layers" in notes:
        parts.append(f"{notes['int8_layers']}/{notes['layers']} layers int8")
    if "mixed" in notes:
        parts.append(f"shipped {notes['mixed'].get('chosen')}: {notes['mixed'].get('reason')}")
    if "accuracy_aware" in notes:
        aware = notes["accuracy_aware"]
        steps = len(aware.get("path", []))
        parts.append(f"{steps} step{'s' if steps != 1 else ''} measured; {aware.get('reason')}")
    if "fake_quantize" in notes:
        parts.append(f"{notes['fake_quantize']} FakeQuantize"
                     + (f" ({'same as' if notes['fake_quantize'] == defaults else 'vs'} {defaults} in NNCF defaults)"
                        if "accuracy_control" in name and defaults is not None else ""))
    if row.get("runtime") == "ONNX Runtime" and name != FP32_ORT:
        parts.append("ratio vs fp32 in ONNX Runtime")
    return "; ".join(parts).replace("|", "/")


def to_markdown(report: dict) -> str:
    m = report["machine"]
    v = m["versions"]
    lines = [f"# Int8 on real pretrained models (PaddleOCR via rapidocr): edgekit vs NNCF vs ONNX Runtime, {m['date']}", "",
             f"Machine: {m['cpu']}, ISA {', '.join(m['isa'])} "
             f"({int8_isa(m)}), {m['cores']} cores, "
             f"threads {report['threads']} for every engine (OpenVINO CPU: latency hint, 1 stream; ONNX Runtime: intra-op {report['threads']}, "
             f"inter-op 1); measured peaks {', '.join(f'{p} {g:.0f}' for p, g in m['peak_gops'].items())} GOPS. OpenVINO {v.get('openvino')}, NNCF {v.get('nncf')}, "
             f"ONNX Runtime {v.get('onnxruntime')}, edgekit {v.get('edgekit')}. Shared 2-core machine: absolute times drift; the "
             "per-round ratios are the comparison.", "",
             "Every row starts from the same normalised fp32 ONNX (`edgekit.models.load_model` on PaddleOCR's own export) and the same "
             "seeded, disjoint calibration / validation / test splits (`edgekit.data.split`, 20/30/50 %); the metric is on the test split "
             "only. Latency: batch 1, every engine timed interleaved in one process (fp32, A, B, … per round) after ≥ 10 warm-up runs; "
             "ratio = engine p50 / fp32 p50 per round (below 1: faster than fp32), against fp32 in the engine's own runtime, and against "
             "OpenVINO fp32. p50 / floor: measured p50 over the roofline floor from the model's MACs and bytes (fp32 floor for fp32 "
             "rows, int8 floor for the others). Quantize time: the method's wall time; for edgekit it is the whole `deploy` call "
             "(export, calibration with its method search, sensitivity and the accuracy-aware walk where asked, build, and its own "
             "profiling), for ONNX Runtime the `quantize_static` call (the OpenVINO row only converts that file).", ""]
    for r in report["results"]:
        rows = r["rows"]
        unit = "top-1" if r["model"].endswith("cls") else "F1"
        agree = "top-1 agreement" if unit == "top-1" else "text-pixel IoU with fp32 (p > 0.3)"
        runs = r["rounds"] * r["block"]
        nncf_fq = (rows.get("NNCF quantize (defaults)", {}).get("notes") or {}).get("fake_quantize")
        lines += [f"## {r['model']}: input {r['input'].split(':', 1)[1]}, {r['macs'] / 1e6:.0f} M MACs; metric {unit} "
                  f"({r['metric']['name']}); {r['splits']['calibration']} calibration / {r['splits']['validation']} validation / "
                  f"{r['splits']['test']} test samples; {r['rounds']} rounds × {r['block']} = {runs} timed runs per engine"
                  + (" (below BENCH.md's 100: a smoke run)" if runs < 100 else ""), "",
                  f"Data: `{r['data']}`. Whole model's bench wall time {r['wall_s'] / 60:.1f} min. Roofline floor: fp32 {r['roofline_floor_ms']['fp32']:.3f} ms, int8 {r['roofline_floor_ms']['int8']:.3f} ms.", "",
                  f"| method | runtime | test {unit} | drop (pt) | {agree} | p50 / p90 / p99 (ms) | ratio to fp32, same runtime: median (min–max) "
                  "| ratio to OpenVINO fp32 | p50 / floor | quantize (s) | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            q = f"{row['quantize_s']:.1f}" if row.get("quantize_s") is not None else "–"
            if "failed" in row:
                lines.append(f"| {name} | {row['runtime']} | failed | – | – | – | – | – | – | {q} | {row['failed'].replace('|', '/')} |")
                continue
            lat = row["latency_ms"]
            same = "1 (reference)" if name in (FP32, FP32_ORT) else _ratio(row.get("ratio_to_fp32_same_runtime"))
            lines.append(f"| {name} | {row['runtime']} | {100 * row['metric']:.2f} % | {row['drop_pt']:+.2f} | {100 * row['agreement']:.2f} % | "
                         f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} | {same} | "
                         f"{'1 (reference)' if name == FP32 else _ratio(row.get('ratio_to_openvino_fp32'))} | "
                         f"{row['p50_over_floor']:.1f}× | {q} | {_note(name, row, nncf_fq)} |")
        lines.append("")
        below = [n for n, row in rows.items() if row.get("p50_over_floor", 1) < 1]
        if below:
            lines.append(f"- p50 / floor below 1× ({', '.join(below)}): the roofline floor, from the host profile's peak and "
                         "bandwidth, is above the measured time here, so it is no bound for this model on this machine.")
        differ = [n for n in rows if n.endswith("compiled by OpenVINO") and "metric" in rows[n]
                  and "metric" in rows.get(n.replace("compiled by OpenVINO", "in ONNX Runtime"), {})
                  and abs(rows[n]["metric"] - rows[n.replace("compiled by OpenVINO", "in ONNX Runtime")]["metric"]) > 1e-9]
        for n in differ:
            other = rows[n.replace("compiled by OpenVINO", "in ONNX Runtime")]
            lines.append(f"- {n}: the same QDQ file scores {100 * rows[n]['metric']:.2f} % in OpenVINO and "
                         f"{100 * other['metric']:.2f} % in ONNX Runtime.")
        if differ:
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_args(parser)
    parser.set_defaults(rounds=None, block=None)  # per model unless given (DEFAULT_TIMING)
    parser.add_argument("--n-cls", type=int, default=600, help="text lines for ppocr-cls (half of them the test split)")
    parser.add_argument("--n-det", type=int, default=120, help="pages for ppocr-det (half of them the test split)")
    parser.add_argument("--det-size", type=int, default=320, help="detector input side, a multiple of 32")
    args = parser.parse_args()
    start = time.perf_counter()
    run_models("real", MODELS, bench_model, to_markdown, args)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
