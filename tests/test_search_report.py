"""report.html for a search, from a dict shaped like search.json (no model is built)."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser

from edgekit.search_report import render_search_html, write_search_report

PNG = b"\x89PNG\r\n\x1a\n"
CANDIDATE = {"keep": {"4.conv1": 24}, "precision": {"node_Conv_1": "int8", "node_linear": "fp32"}, "default_precision": "fp32"}


def _evaluation(key: str, latency: float, kind: str, accuracy: float) -> dict:
    return {"key": key, "candidate": CANDIDATE, "latency_ms": latency, "latency_kind": kind, "accuracy": accuracy,
            "attrs": {"step": 1}, "number": 1}


RESULT = {
    "format": 2, "target": "host", "backend": "openvino", "model": "edgekit.zoo:resnet", "strategy": "greedy",
    "budget": {"latency_ms": 0.35, "memory_mb": None, "max_accuracy_drop_pt": 1.0, "met": False, "judged_on": "measured"},
    "latency_ms": {"predicted": 0.3131, "judged_ms": 0.821, "measured_p50": 0.8346,
                   "report": {"kind": "measured", "source": "measured on host", "p50": 0.8346, "p90": 4.04, "p99": 5.8,
                              "samples": 594}},
    "accuracy": {"validation": 0.9835, "validation_original": 0.9918, "within_max_drop": True, "test": 0.9876,
                 "test_original": 0.9851, "test_drop_pt": -0.248},
    "chosen": {"keep": {"0": "32/32", "4.conv1": "24/32", "5.conv2": "64/128"},
               "precision": {"node_Conv_1": "int8", "node_Conv_2": "int8", "node_linear": "fp32"},
               "candidate": CANDIDATE, "run_dir": "srch/resnet2/round-2"},
    "rounds": [
        {"walk_budget_ms": 0.35, "stopped": "met", "candidate": CANDIDATE, "predicted_ms": 0.3131, "judged_ms": 1.2167,
         "accuracy_validation": 0.9835, "cost_model_error": -0.7427},
        {"walk_budget_ms": 0.1007, "stopped": "exhausted", "candidate": CANDIDATE, "predicted_ms": 0.3131,
         "judged_ms": 0.821, "accuracy_validation": 0.9835, "cost_model_error": -0.6186},
    ],
    "cost_model": {"source": "lookup table + calibration on 5 whole-model measurements", "calibration": {"fitted": True},
                   "errors": [{"candidate": "original-fp32", "predicted_ms": 1.4793, "measured_ms": 11.48242, "error": -0.87117},
                              {"candidate": "9cb4bbb30ce7", "predicted_ms": 1.00605, "measured_ms": 0.30034, "error": 2.34967}],
                   "mean_abs_error": 1.61042},
    "trials": 7,
    "pareto": [_evaluation("a", 0.4287, "predicted", 0.9383), _evaluation("b", 0.3863, "predicted", 0.4568),
               _evaluation("c", 0.52, "measured", 0.99)],
    "seconds": 455.8, "run_dir": "srch/resnet2",
}


def _predicted_only() -> dict:
    """A target searched on the predicted cost model only: nothing measured, and no front."""
    result = copy.deepcopy(RESULT)
    result["budget"].update(met=True, judged_on="predicted")
    result["latency_ms"].update(judged_ms=None, measured_p50=None, report={"kind": "predicted", "p50": 0.3131, "source": "cost model"})
    for r in result["rounds"]:
        r.update(judged_ms=None, cost_model_error=None)
    result["cost_model"].update(errors=[], mean_abs_error=None)
    result["pareto"] = []
    return result


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)]


def _parses(page: str) -> None:
    """Every tag the page opens is closed, in order (void tags aside), so browsers see the layout we wrote."""
    stack: list[str] = []

    class Check(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img", "br"):
                stack.append(tag)

        def handle_endtag(self, tag):
            assert stack and stack.pop() == tag, f"</{tag}> closes nothing open"

    Check().feed(page)
    assert stack == []


def test_report_is_written_with_both_charts_and_labelled_latencies(tmp_path):
    path = write_search_report(tmp_path, RESULT)
    assert path == tmp_path / "report.html"
    page = path.read_text()
    _parses(page)
    images = _images(page)
    assert len(images) == 2 and all(png.startswith(PNG) for png in images)
    assert "latency (predicted)</th><td>0.3131 ms" in page
    assert "latency (measured)</th><td>0.8346 ms p50" in page  # the candidate's own p50
    assert "latency (judged on the device)</th><td>0.8210 ms" in page  # beside the original
    assert "no (judged on measured latency)" in page
    assert "98.35 % (original 99.18 %, drop +0.83 pt)" in page
    assert "24/32" in page and "64/128" in page
    assert "<th>latency (predicted)</th><th>latency (measured)</th>" in page  # rounds and cost-model tables
    assert "<td>9cb4bbb30ce7</td><td>1.0061 ms</td><td>0.3003 ms</td><td>+235.0 %</td>" in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_predicted_only_search_and_empty_front_render_dashes():
    page = render_search_html(_predicted_only())
    _parses(page)
    assert "latency (measured)</th><td>—" in page and "latency (judged on the device)</th><td>—" in page
    assert "yes (judged on predicted latency)" in page
    assert "<td>0.3131 ms</td><td>—</td>" in page  # each round: predicted, then no measurement
    assert "cost model mean |error|</th><td>—" in page
    assert len(_images(page)) == 2  # the chosen point alone still makes a chart


def test_nothing_to_plot_renders_dashes_instead_of_charts():
    result = _predicted_only()
    result.update(rounds=[], chosen={"keep": {}, "precision": None})
    page = render_search_html(result)
    _parses(page)
    assert _images(page) == [] and page.count("<p>—</p>") >= 3


def test_peers_are_named_and_escaped():
    peers = [{"name": "NNCF int8 <defaults>", "latency_ms": 0.5, "accuracy": 0.985, "kind": "measured"},
             {"name": "uniform pruning", "latency_ms": 0.4, "accuracy": 0.95, "kind": "predicted"}]
    with_peers = render_search_html(RESULT, peers)
    for name in ("NNCF int8 &lt;defaults&gt;", "uniform pruning"):
        assert name in with_peers and name not in render_search_html(RESULT)
    assert "<defaults>" not in with_peers
