"""Post-training int8: edgekit vs NNCF vs ONNX Runtime's quantize_static, side by side in one run
(../shared/BENCH.md), every int8 model run in OpenVINO on this machine.

Two small models trained on real data (scikit-learn's digits at 32x32, `edgekit.zoo`): a ResNet-like
and a MobileNetV2-like with depthwise convolutions. Per model and method: test accuracy (the test split,
never seen by calibration), top-1 agreement with fp32, calibration time, and latency timed interleaved
with plain fp32 OpenVINO (per-round int8/fp32 ratio: median, min, max), p50 against the roofline floor.

    .venv/bin/python bench/ptq.py [--rounds 40] [--block 50] [--threads 2]

Writes bench/results/ptq.json and bench/results/ptq.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import int8_isa, interleaved, percentiles, run_models, timing_args

from edgekit import graph, roofline
from edgekit.backends.base import Artifact, get_backend
from edgekit.calibrate.run import CalibrationOptions, calibrate
from edgekit.data import Samples, load_data, split
from edgekit.models import load_model
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target

MODELS = {"resnet-like": "edgekit.zoo:resnet", "mobilenetv2-like (depthwise)": "edgekit.zoo:mobilenet"}
DATA = "edgekit.zoo:data"


def _feeds(samples: Samples) -> list[dict]:
    return [samples.sample(i) for i in range(len(samples))]


def edgekit_int8(onnx_path: Path, cal: Samples, work: Path, options: CalibrationOptions) -> Path:
    host = load_target("host")
    result = calibrate(onnx_path, cal, host, PrecisionPlan("int8"), work, options)
    artifact = get_backend("openvino").build(onnx_path=result.qdq_path, plan=PrecisionPlan("int8", result.planned),
                                             target=host, out_dir=work)
    return artifact.path


def nncf_int8(onnx_path: Path, cal: Samples, work: Path, best: bool) -> Path:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    dataset = nncf.Dataset(_feeds(cal))
    kwargs = {"subset_size": len(cal)}
    if best:  # NNCF's documented accuracy options for CNNs: asymmetric activations, full bias correction
        kwargs.update(preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=False)
    quantized = nncf.quantize(model, dataset, **kwargs)
    out = work / "model.xml"
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def ort_int8(onnx_path: Path, cal: Samples, work: Path) -> Path:
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(_feeds(cal))

        def get_next(self):
            return next(self._feeds, None)

    qdq = work / "model.ort-qdq.onnx"
    quantize_static(str(onnx_path), str(qdq), Reader(), quant_format=QuantFormat.QDQ)  # its defaults otherwise
    out = work / "model.xml"
    ov.save_model(ov.convert_model(str(qdq)), str(out), compress_to_fp16=False)
    return out


def _load(xml: Path, threads: int):
    host = load_target("host")
    artifact = Artifact("openvino", xml, (xml, xml.with_suffix(".bin")), "int8",
                        {"device": "CPU", "INFERENCE_PRECISION_HINT": "f32"})
    return get_backend("openvino").load(artifact, target=host, threads=threads)


def _top1(engine, test: Samples) -> np.ndarray:
    return np.array([int(np.argmax(engine.run(test.sample(i))[0])) for i in range(len(test))])


def bench_model(label: str, spec: str, args, work: Path) -> dict:
    host = load_target("host")
    model = load_model(spec)
    splits = split(load_data(DATA, model.inputs))
    onnx_path = graph.export_onnx(model, work / "model.onnx")
    layers = graph.layer_table(onnx_path)
    fp32_dir = work / "fp32"
    fp32_dir.mkdir()
    fp32_xml = get_backend("openvino").build(onnx_path=onnx_path, plan=PrecisionPlan(), target=host, out_dir=fp32_dir).path
    methods = {
        "edgekit (defaults)": lambda d: edgekit_int8(onnx_path, splits.calibration, d, CalibrationOptions()),
        "edgekit (equalization off)": lambda d: edgekit_int8(onnx_path, splits.calibration, d, CalibrationOptions(equalization="off")),
        "edgekit (equalization on)": lambda d: edgekit_int8(onnx_path, splits.calibration, d, CalibrationOptions(equalization="on")),
        "edgekit (bias correction off)": lambda d: edgekit_int8(onnx_path, splits.calibration, d, CalibrationOptions(bias_correction=False)),
        "edgekit (entropy only, as TensorRT)": lambda d: edgekit_int8(onnx_path, splits.calibration, d,
                                                                      CalibrationOptions(method="entropy", equalization="off")),
        "NNCF (defaults)": lambda d: nncf_int8(onnx_path, splits.calibration, d, best=False),
        "NNCF (mixed preset, full bias correction)": lambda d: nncf_int8(onnx_path, splits.calibration, d, best=True),
        "ONNX Runtime quantize_static (QDQ, defaults)": lambda d: ort_int8(onnx_path, splits.calibration, d),
    }
    engines = {"fp32": _load(fp32_xml, args.threads)}
    calib_s = {}
    for i, (name, make) in enumerate(methods.items()):
        d = work / f"m{i}"
        d.mkdir()
        start = time.perf_counter()
        xml = make(d)
        calib_s[name] = time.perf_counter() - start
        engines[name] = _load(xml, args.threads)
    test = splits.test
    labels = np.asarray(test.labels)
    reference = _top1(engines["fp32"], test)
    feed = test.sample(0)
    times, ratios = interleaved(engines, feed, args.rounds, args.block)
    floor = {p: roofline.predict_latency(layers, host, p).p50 for p in ("fp32", "int8")}
    rows = {}
    for name, engine in engines.items():
        top1 = reference if name == "fp32" else _top1(engine, test)
        row = {"accuracy": float(np.mean(top1 == labels)), "agreement": float(np.mean(top1 == reference)),
               "latency_ms": percentiles(times[name]), "calibration_s": calib_s.get(name)}
        row["accuracy_drop_pt"] = 100 * (rows["fp32"]["accuracy"] - row["accuracy"]) if name != "fp32" else 0.0
        if name in ratios:
            r = ratios[name]
            row["ratio_int8_over_fp32"] = {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}
        row["p50_over_floor"] = row["latency_ms"]["p50"] / floor["fp32" if name == "fp32" else "int8"]
        rows[name] = row
    return {"model": label, "spec": spec, "macs": graph.totals(layers)["macs"], "test_samples": len(test),
            "calibration_samples": len(splits.calibration), "roofline_floor_ms": floor, "rows": rows}


def to_markdown(report: dict) -> str:
    m = report["machine"]
    v = m["versions"]
    lines = [f"# Post-training int8 in OpenVINO: edgekit vs NNCF vs ONNX Runtime, {m['date']}", "",
             f"Machine: {m['cpu']}, ISA {', '.join(m['isa'])} ({int8_isa(m)}), {m['cores']} cores, threads {report['threads']}; "
             f"measured peaks {m['peak_gops']} GOPS. OpenVINO {v.get('openvino')}, NNCF {v.get('nncf')}, ONNX Runtime {v.get('onnxruntime')}. "
             f"Latency: {report['rounds']} interleaved rounds × {report['block']} inferences per engine, batch 1, all measured; "
             "ratio = int8 p50 / fp32 p50 per round (below 1: int8 is faster). Accuracy on the test split (never seen by calibration).", ""]
    for r in report["results"]:
        lines += [f"## {r['model']} ({r['macs'] / 1e6:.1f} M MACs; {r['calibration_samples']} calibration, {r['test_samples']} test samples)", "",
                  "| method | test acc. | drop (pt) | agreement | p50 / p90 / p99 (ms) | int8/fp32 per round: median (min–max) | p50 / floor | calibration (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in r["rows"].items():
            lat = row["latency_ms"]
            ratio = row.get("ratio_int8_over_fp32")
            lines.append(f"| {name} | {100 * row['accuracy']:.2f} % | {row['accuracy_drop_pt']:+.2f} | {100 * row['agreement']:.2f} % | "
                         f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} | "
                         + (f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "1 (reference)")
                         + f" | {row['p50_over_floor']:.1f}× | " + (f"{row['calibration_s']:.1f}" if row["calibration_s"] is not None else "–") + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_args(parser)
    run_models("ptq", MODELS, bench_model, to_markdown, parser.parse_args())


if __name__ == "__main__":
    main()
