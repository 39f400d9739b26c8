"""report.json (machine-readable, the record of a run) and report.html (the same, for people, with plots)."""

from __future__ import annotations

import base64
import html
import io
import platform
import sys
from importlib import metadata
from pathlib import Path

from edgekit.backends.base import runtime_packages
from edgekit.util import atomic_write_text, write_json

# what a run depends on: edgekit, the model and graph libraries, and every runtime of the backends table
PACKAGES = ("edgekit", "torch", "onnx", "nncf", "numpy", *runtime_packages())
CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f3f3f3}"""


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_reports(run_dir: Path, report: dict) -> None:
    write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.html", render_html(report))


def _layer_chart(layers: list[dict], title: str) -> str:
    """Per-layer time as horizontal bars (slowest first), as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = sorted(layers, key=lambda layer: layer["time_ms"], reverse=True)[:30]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(top) + 1.2))
    labels = [f"{layer['name'][:40]} [{layer['exec_type']}]" for layer in top][::-1]
    ax.barh(labels, [layer["time_ms"] * 1e3 for layer in top][::-1], color="#3b7dd8")
    ax.set_xlabel("time per inference (µs), median over profiled runs (runtime profiler on)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    return png_base64(fig)


def _accuracy_aware_chart(aware: dict) -> str:
    """The accuracy-aware walk as a curve: each step's metric drop against its latency ratio to float,
    the drop allowed and the point shipped marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = aware["path"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p["ratio"] for p in path], [p["drop"] for p in path], "o-", color="#3b7dd8")
    for p in path:
        ax.annotate(f"{p['int8_layers']} int8", (p["ratio"], p["drop"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(aware["max_drop_points"], color="#c0392b", linestyle="--", label=f"drop allowed ({aware['max_drop_points']} points)")
    ax.axvline(1.0, color="grey", linestyle=":", label="float's latency")
    shipped = next((p for p in path if p["step"] == aware.get("shipped")), None)
    if shipped:
        ax.plot([shipped["ratio"]], [shipped["drop"]], "*", color="#27ae60", markersize=14, label="shipped")
    ax.set_xlabel("p50 / float p50, measured side by side (below 1: faster)")
    ax.set_ylabel(f"{aware['metric']['name']} drop (points, validation)")
    ax.set_title("accuracy-aware int8: each step measured", fontsize=10)
    ax.legend(fontsize=7)
    return png_base64(fig)


def png_base64(fig) -> str:
    """A matplotlib figure as base64 PNG, closed after, so reports are one self-contained file."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def html_rows(pairs: list[tuple[str, object]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def render_html(report: dict) -> str:
    lat = report.get("latency_ms") or {}
    pred = report.get("predicted_latency_ms") or {}
    acc = report.get("accuracy") or {}
    summary = [
        ("target", f"{report['target']['name']} — {report['target']['device']}"),
        ("backend", report.get("backend")),
        ("status", report.get("status")),
        ("precision", report.get("precision", {}).get("label")),
        *([("precision (mixed)", f"shipped {report['precision']['mixed']['chosen']}: {report['precision']['mixed']['reason']}")]
          if "mixed" in report.get("precision", {}) else []),
        ("precision mismatches", ", ".join(f"{k}: planned {v['planned']}, runs {v['executed']}"
                                           for k, v in (report.get("precision", {}).get("mismatches") or {}).items()) or "none"),
    ]
    if lat:
        summary += [
            (f"latency ({lat['kind']})", f"p50 {lat['p50']:.4f} ms · p90 {lat.get('p90', 0):.4f} · p99 {lat.get('p99', 0):.4f} "
                                          f"· {lat.get('samples', 0)} runs · {lat['source']}"),
            ("throughput", f"{report.get('throughput_fps', 0):.0f} inferences/s (batch 1)"),
        ]
    if pred:
        summary.append(("latency (predicted)", f"{pred['p50']:.4f} ms · {pred['source']}"))
    if acc:
        summary += [(f"accuracy: {k}", v) for k, v in acc.items() if v is not None]
    summary += [(f"artifact: {k}", v) for k, v in report.get("artifacts", {}).items()]
    layers = report.get("layers") or []
    chart = ""
    if layers:
        png = _layer_chart(layers, f"per-layer time, {report['backend']} on {report['target']['name']} (measured)")
        chart = f'<h2>Per-layer time</h2><img alt="per-layer time" src="data:image/png;base64,{png}">'
    table = "".join(
        f"<tr><td>{html.escape(layer['name'])}</td><td>{html.escape(layer['op'])}</td>"
        f"<td>{html.escape(layer['exec_type'])}</td><td>{layer['time_ms'] * 1e3:.1f}</td></tr>"
        for layer in layers
    )
    aware = report.get("precision", {}).get("accuracy_aware")
    if aware and aware.get("path"):
        png = _accuracy_aware_chart(aware)
        chart = (f'<h2>Accuracy-aware int8</h2><p>{html.escape(aware["reason"])}</p>'
                 f'<img alt="accuracy-aware path" src="data:image/png;base64,{png}">') + chart
    versions_rows = html_rows(list(report.get("versions", {}).items()))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgekit report: {html.escape(report['target']['name'])}</title>
<style>{CSS}</style></head><body>
<h1>edgekit deploy: {html.escape(report['model']['name'])} → {html.escape(report['target']['name'])}</h1>
<table>{html_rows(summary)}</table>
{chart}
{'<h2>Layers</h2><table><tr><th>layer</th><th>op</th><th>kernel</th><th>µs</th></tr>' + table + '</table>' if table else ''}
<h2>Versions</h2><table>{versions_rows}</table>
</body></html>
"""
