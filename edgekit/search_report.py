"""report.html for `edgekit search`: what was chosen, the accuracy/latency trade-off the search saw, and
what each layer became, for people (search.json stays the machine-readable record)."""

from __future__ import annotations

import html
from pathlib import Path

from edgekit.report import CSS, html_rows, png_base64
from edgekit.util import atomic_write_text

KIND_STYLE = {"predicted": ("o", "#3b7dd8"), "measured": ("s", "#e66c00")}  # marker, colour per latency kind
PRECISION_COLOURS = {"int8": "#2ca02c", "fp16": "#9467bd", "bf16": "#8c564b", "fp32": "#e66c00"}
DASH = "—"


def write_search_report(run_dir: Path, result: dict, peers: list[dict] | None = None) -> Path:
    """Write run_dir/report.html next to search.json; return its path."""
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, render_search_html(result, peers))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ms(value) -> str:
    return DASH if value is None else f"{value:.4f} ms"


def _pct(value) -> str:
    return DASH if value is None else f"{100 * value:.2f} %"


def _pt(value) -> str:
    return DASH if value is None else f"{value:+.2f} pt"


def _ratio(text: str) -> float:
    kept, _, total = str(text).partition("/")
    return int(kept) / int(total)


def _pareto_chart(result: dict, peers: list[dict]) -> str | None:
    """Validation accuracy against latency: every trial, the front as a step line, the chosen candidate
    (both its predicted and its measured latency), the budget and the peers, each latency kind marked."""
    trials = [t for t in result.get("trials_all") or [] if t.get("latency_ms") is not None]
    front = sorted((p for p in result.get("pareto") or [] if p.get("latency_ms") is not None), key=lambda p: p["latency_ms"])
    rounds = result.get("rounds") or []
    last = rounds[-1] if rounds else {}
    if not (trials or front or peers or last.get("predicted_ms") or last.get("judged_ms")):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if trials:
        ax.scatter([t["latency_ms"] for t in trials], [100 * t["accuracy"] for t in trials], s=12, color="#c8c8c8",
                   label="all trials", zorder=1)
    if front:
        ax.step([p["latency_ms"] for p in front], [100 * p["accuracy"] for p in front], where="post", color="#888888",
                lw=1, label="Pareto front", zorder=2)
    for kind, (marker, colour) in KIND_STYLE.items():
        points = [p for p in front if p.get("latency_kind") == kind]
        if points:
            ax.scatter([p["latency_ms"] for p in points], [100 * p["accuracy"] for p in points], marker=marker,
                       color=colour, s=30, label=f"front point, {kind} latency", zorder=3)
    accuracy = last.get("accuracy_validation")
    chosen = {"predicted": last.get("predicted_ms"), "measured": last.get("judged_ms")}  # judged: measured beside the original
    if accuracy is not None:
        if all(chosen.values()):
            ax.plot(list(chosen.values()), [100 * accuracy] * 2, ls=":", color="#555555", lw=1, zorder=3)
        for kind, latency in chosen.items():
            if latency is not None:
                ax.scatter([latency], [100 * accuracy], marker="*", s=260, color=KIND_STYLE[kind][1], edgecolor="black",
                           label=f"chosen, {kind} latency", zorder=5)
    for kind, (_, colour) in KIND_STYLE.items():
        mine = [p for p in peers if p.get("kind") == kind and p.get("latency_ms") is not None]
        for i, peer in enumerate(mine):
            ax.scatter([peer["latency_ms"]], [100 * peer["accuracy"]], marker="D", s=45, color=colour, edgecolor="black",
                       label=f"peer, {kind} latency" if i == 0 else None, zorder=4)
            ax.annotate(peer["name"], (peer["latency_ms"], 100 * peer["accuracy"]), xytext=(5, 4),
                        textcoords="offset points", fontsize=8)
    budget = (result.get("budget") or {}).get("latency_ms")
    if budget is not None:
        ax.axvline(budget, ls="--", color="#d62728", lw=1, label=f"latency budget {budget:g} ms")
    ax.set_xlabel("latency (ms) — predicted by the cost model or measured on the target, see legend")
    ax.set_ylabel("validation accuracy (%)")
    low, high = ax.get_ylim()
    ax.set_ylim(low, min(high, 100.5))
    ax.set_title(f"search on {result.get('target')} ({result.get('backend')}): {result.get('trials', DASH)} trials",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return png_base64(fig)


def _layer_chart(chosen: dict) -> str | None:
    """The chosen candidate per layer: channels kept per prunable group, precision per layer; the height
    grows with the layer count so ~60 layers stay readable."""
    keep, precision = chosen.get("keep") or {}, chosen.get("precision") or {}
    if not (keep or precision):
        return None
    plt = _pyplot()
    from matplotlib.patches import Patch

    panels = [name for name, items in (("keep", keep), ("precision", precision)) if items]
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 0.22 * max(len(keep), len(precision)) + 1.6), squeeze=False)
    axes = dict(zip(panels, axes[0], strict=True))
    if keep:
        ax, names = axes["keep"], list(keep)[::-1]
        ratios = [_ratio(keep[n]) for n in names]
        ax.barh([n[:40] for n in names], ratios, color="#3b7dd8")
        for y, (name, ratio) in enumerate(zip(names, ratios, strict=True)):
            ax.text(min(ratio, 1) + 0.01, y, keep[name], va="center", fontsize=7)
        ax.set_xlim(0, 1.2)
        ax.set_xlabel("channels kept / original", fontsize=8)
        ax.set_title("pruning: channels kept per group", fontsize=9)
    if precision:
        ax, names = axes["precision"], list(precision)[::-1]
        kinds = sorted(set(precision.values()))
        tab = plt.get_cmap("tab10")
        colours = {k: PRECISION_COLOURS.get(k, tab(i)) for i, k in enumerate(kinds)}
        ax.barh([n[:40] for n in names], [1] * len(names), color=[colours[precision[n]] for n in names])
        ax.set_xticks([])
        ax.set_title("precision per layer", fontsize=9)
        ax.legend(handles=[Patch(color=colours[k], label=k) for k in kinds], fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.01), ncol=len(kinds), frameon=False)
    for ax in axes.values():
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.01)
    return png_base64(fig)


def _table(header: list[str], rows: list[list[object]]) -> str:
    if not rows:
        return f"<p>{DASH}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(DASH if v is None else str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _error(value) -> str | None:
    return None if value is None else f"{100 * value:+.1f} %"


def _summary(result: dict) -> list[tuple[str, object]]:
    budget, lat = result.get("budget") or {}, result.get("latency_ms") or {}
    acc, cost = result.get("accuracy") or {}, result.get("cost_model") or {}
    chosen = result.get("chosen") or {}
    pruned = [f"{g} {k}" for g, k in (chosen.get("keep") or {}).items() if _ratio(k) < 1]
    precisions = list((chosen.get("precision") or {}).values())
    report = lat.get("report") or {}
    measured = _ms(lat.get("measured_p50"))
    if lat.get("measured_p50") is not None and report.get("p90") is not None:
        measured += f" p50 (p90 {report['p90']:.4f} · p99 {report.get('p99', 0):.4f} ms · {report.get('samples', 0)} runs)"
    judged = _ms(lat.get("judged_ms"))
    side = lat.get("side_by_side")
    if side and lat.get("original_ms"):
        judged += (f": {side['ratio']:.3f}× the original timed beside it, × its {lat['original_ms']:.4f} ms at the start "
                   f"(raw p50 {side['raw_p50_ms']:.4f} ms)")
    val, val0 = acc.get("validation"), acc.get("validation_original")
    met = budget.get("met")
    mae = cost.get("mean_abs_error")
    return [
        ("target", result.get("target")), ("backend", result.get("backend")), ("model", result.get("model")),
        ("strategy", result.get("strategy")),
        ("latency budget", _ms(budget.get("latency_ms"))),
        ("memory budget", DASH if budget.get("memory_mb") is None else f"{budget['memory_mb']:g} MB"),
        ("max accuracy drop", DASH if budget.get("max_accuracy_drop_pt") is None else f"{budget['max_accuracy_drop_pt']:g} pt"),
        ("budget met", DASH if met is None else f"{'yes' if met else 'no'} (judged on {budget.get('judged_on', DASH)} latency)"),
        ("latency (predicted)", _ms(lat.get("predicted"))),
        ("latency (judged on the device)", judged),
        ("latency (measured)", measured),
        ("validation accuracy", f"{_pct(val)} (original {_pct(val0)}, drop "
                                f"{_pt(None if None in (val, val0) else 100 * (val0 - val))})"),
        ("test accuracy", f"{_pct(acc.get('test'))} (original {_pct(acc.get('test_original'))}, drop {_pt(acc.get('test_drop_pt'))})"),
        ("channels kept (pruned groups)", ", ".join(pruned) or ("none pruned" if chosen.get("keep") else DASH)),
        ("blocks dropped, layers factorized", ", ".join(
            [f"{m['block']} dropped" for m in chosen.get("moves") or [] if m["kind"] == "drop"]
            + [f"{m['layer']} rank {m['rank']}" for m in chosen.get("moves") or [] if m["kind"] == "rank"]) or DASH),
        ("precision (layers)", " · ".join(f"{precisions.count(k)} {k}" for k in sorted(set(precisions))) or DASH),
        ("search time", DASH if result.get("seconds") is None else f"{result['seconds']:g} s"),
        ("trials", result.get("trials", DASH)),
        ("cost model", cost.get("source") or DASH),
        ("cost model mean |error|", DASH if mae is None else
         f"{100 * mae:.1f} % (|predicted / measured − 1| over {len(cost.get('errors') or [])} measured candidates)"),
    ]


def render_search_html(result: dict, peers: list[dict] | None = None) -> str:
    """The page for one search result (search.json's dict). peers: other engines to compare with, each
    {"name", "latency_ms", "accuracy" (a fraction, like the result's), "kind": "measured" | "predicted"}."""
    peers = peers or []
    pareto = _pareto_chart(result, peers)
    layers = _layer_chart(result.get("chosen") or {})
    rounds = [[i, _ms(r.get("walk_budget_ms")), r.get("stopped"), _ms(r.get("predicted_ms")), _ms(r.get("judged_ms")),
               _pct(r.get("accuracy_validation")), _error(r.get("cost_model_error"))]
              for i, r in enumerate(result.get("rounds") or [], 1)]
    errors = [[e.get("candidate"), _ms(e.get("predicted_ms")), _ms(e.get("measured_ms")), _error(e.get("error"))]
              for e in (result.get("cost_model") or {}).get("errors") or []]
    compared = [[p.get("name"), f"{_ms(p.get('latency_ms'))} ({p.get('kind', DASH)})", _pct(p.get("accuracy"))] for p in peers]
    title = f"edgekit search: {result.get('model')} → {result.get('target')}"

    def img(png: str | None, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{png}">' if png else f"<p>{DASH}</p>"

    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{html_rows(_summary(result))}</table>
<h2>Pareto front</h2>
{img(pareto, "validation accuracy against latency")}
{_table(["compared with", "latency", "accuracy"], compared) if peers else ""}
<h2>Chosen candidate per layer</h2>
{img(layers, "channels kept and precision per layer")}
<h2>Closed-loop rounds</h2>
{_table(["round", "walk budget (predicted)", "stopped", "latency (predicted)", "latency (judged on the device)",
         "validation accuracy", "cost model error"], rounds)}
<h2>Cost model errors</h2>
{_table(["candidate", "latency (predicted)", "latency (measured)", "error (predicted / measured − 1)"], errors)}
</body></html>
"""
