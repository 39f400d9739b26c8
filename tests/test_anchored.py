"""The anchored latency model (issue 15, edgekit.anchored): the fit recovers known parameters, leave-one-out is
computed as defined, the bound contains the prediction and widens with the error, a target without anchors gets
the roofline labelled so, and the committed fits (targets/fitted/) are the fits of the targets as they are now."""

from __future__ import annotations

import math

import pytest

from edgekit import anchored
from edgekit.graph import Layer
from edgekit.latency import Latency
from edgekit.roofline import predict_latency
from edgekit.targets import list_targets, load_target


def _rows(rooflines, layers=None):
    layers = layers or [10] * len(rooflines)
    return [{"roofline_ms": r, "compute_ms": 0.6 * r / (1 + i), "memory_ms": r * (0.2 + 0.1 * i), "compute_layers": n}
            for i, (r, n) in enumerate(zip(rooflines, layers, strict=True))]


OVERHEAD = ("overhead_ms", "slowdown")


def _layers() -> list[Layer]:
    """A small conv net's layer table, written out (no export needed for a prediction)."""
    conv = Layer("conv", "Conv", ((1, 3, 32, 32),), (1, 16, 32, 32), 16 * 27 * 1024, 448, 4 * (3072 + 16384 + 448))
    fc = Layer("fc", "Gemm", ((1, 16),), (1, 10), 160, 170, 4 * (16 + 10 + 170))
    return [conv, fc]


def test_the_fit_recovers_known_parameters():
    rows = _rows([0.5, 2.0, 7.0, 30.0], [12, 40, 25, 90])
    ms = [4.0 * r["compute_ms"] + 1.5 * r["memory_ms"] for r in rows]
    assert anchored.solve(rows, ms) == pytest.approx({"compute_slowdown": 4.0, "memory_slowdown": 1.5})
    ms = [0.8 + 1.7 * r["roofline_ms"] for r in rows]
    assert anchored.solve(rows, ms, OVERHEAD) == pytest.approx({"overhead_ms": 0.8, "slowdown": 1.7})
    ms = [0.3 + 2.5 * r["roofline_ms"] + 0.01 * r["compute_layers"] for r in rows]
    assert anchored.solve(rows, ms, ("overhead_ms", "slowdown", "per_layer_ms")) == pytest.approx(
        {"overhead_ms": 0.3, "slowdown": 2.5, "per_layer_ms": 0.01})


def test_a_term_that_fits_negative_is_dropped():
    rows = _rows([1.0, 2.0, 4.0])
    params = anchored.solve(rows, [1.0, 3.0, 7.0], OVERHEAD)  # the line through them crosses zero at -1 ms
    assert params["overhead_ms"] == 0 and params["slowdown"] > 0


def test_leave_one_out_on_a_tiny_example():
    # two anchors fix a line exactly: left out (1, 3) -> line (2, 5), (4, 10) predicts 2.5; left out (2, 5) ->
    # line (1, 3), (4, 10) predicts 16/3; left out (4, 10) -> line (1, 3), (2, 5) predicts 9
    errors = anchored.leave_one_out(_rows([1.0, 2.0, 4.0]), [3.0, 5.0, 10.0], OVERHEAD)
    assert errors == pytest.approx([2.5 / 3 - 1, 16 / 15 - 1, 9 / 10 - 1])
    assert anchored.interval_factor(errors) == pytest.approx(6 / 5)  # the worst, -1/6, is a factor 1.2


def _fit(loo: list[float]) -> anchored.Fit:
    return anchored.Fit("t", "", OVERHEAD, {"overhead_ms": 0.5, "slowdown": 2.0}, (), (), tuple(loo),
                        None, anchored.interval_factor(loo), "test")


def test_the_interval_contains_the_prediction_and_widens_with_the_error():
    feats = {"roofline_ms": 3.0, "compute_layers": 20}
    widths = []
    for loo in ([0.01, -0.02], [0.2, -0.1], [0.5, -0.6]):
        latency = anchored.predict_from_features(feats, _fit(loo))
        assert latency.kind == "predicted" and latency.p50 == pytest.approx(6.5)
        assert latency.low < latency.p50 < latency.high
        widths.append(latency.high / latency.low)
    assert widths == sorted(widths) and widths[0] == pytest.approx(anchored.MIN_FACTOR ** 2)
    assert widths[-1] == pytest.approx((1 / 0.4) ** 2)  # -60% is a factor 2.5 either way
    assert anchored.interval_factor([]) == anchored.UNTESTED_FACTOR


def test_the_bound_doubles_per_decade_outside_the_anchors_in_size_and_in_mix():
    """Anchors spanning 1-10 ms of roofline at memory/compute 1-4: a model inside gets the fit's factor; one a
    decade smaller, twice it; one a decade smaller and 10x more memory-bound than the most memory-bound anchor,
    four times it."""
    anchors = tuple({"features": {"roofline_ms": r, "compute_ms": c, "memory_ms": m}}
                    for r, c, m in ((1.0, 1.0, 1.0), (10.0, 5.0, 10.0), (4.0, 1.0, 4.0)))
    fit = anchored.Fit("t", "", ("slowdown",), {"slowdown": 2.0}, anchors, (), (0.1, -0.1), 0.1, 1.25, "test")
    inside = {"roofline_ms": 5.0, "compute_ms": 2.5, "memory_ms": 5.0}
    smaller = {"roofline_ms": 0.1, "compute_ms": 0.05, "memory_ms": 0.1}
    memory_bound = {"roofline_ms": 0.1, "compute_ms": 0.0025, "memory_ms": 0.1}
    assert anchored.outside(fit, inside) == 0 and anchored.factor_for(fit, inside) == pytest.approx(1.25)
    assert anchored.outside(fit, smaller) == pytest.approx(1) and anchored.factor_for(fit, smaller) == pytest.approx(2.5)
    assert anchored.outside(fit, memory_bound) == pytest.approx(2)
    latency = anchored.predict_from_features(memory_bound, fit)
    assert latency.high / latency.p50 == pytest.approx(5.0) and "2.0 decades outside the anchors" in latency.source


def test_a_target_without_anchors_falls_back_to_the_roofline_unbounded():
    npu = load_target("intel-npu")
    assert not npu.reference_latencies and not npu.reference_latencies_from and anchored.fit_for(npu) is None
    latency = anchored.predict(_layers(), npu, "int8")
    assert latency.p50 == pytest.approx(predict_latency(_layers(), npu, "int8").p50)
    assert "roofline of intel-npu (int8) only" in latency.source and "no error bound" in latency.source
    assert latency.low is None and latency.high is None
    assert "low" not in latency.as_dict() and "high" not in latency.as_dict()


def test_a_target_without_anchors_may_borrow_a_kindred_fit_with_twice_its_bound():
    """rpi5 has no published anchors; its file names rpi4 (same runtimes, the previous Cortex-A): rpi4's
    efficiencies on rpi5's own roofline, the bound doubled and said to be stated, not measured."""
    rpi4, rpi5 = anchored.fit_for(load_target("rpi4")), anchored.fit_for(load_target("rpi5"))
    assert rpi5.params == rpi4.params and rpi5.interval_factor == pytest.approx(rpi4.interval_factor * anchored.UNTESTED_FACTOR)
    assert rpi5.interval.startswith("borrowed from rpi4") and "no published anchors on rpi5" in rpi5.notes[-1]
    on4, on5 = (anchored.predict(_layers(), load_target(name), "fp32") for name in ("rpi4", "rpi5"))
    assert on5.p50 < on4.p50 and on5.high / on5.p50 > on4.high / on4.p50  # a faster board, a wider bound
    assert "borrowed from rpi4" in on5.source


def test_latency_as_dict_keeps_its_keys_and_adds_the_bound_only_when_set():
    assert set(Latency.predicted(1.0, "x").as_dict()) == {"kind", "source", "p50", "samples"}
    bounded = Latency.predicted(1.0, "x", 0.5, 2.0)
    assert bounded.as_dict()["low"] == 0.5 and bounded.as_dict()["high"] == 2.0
    assert bounded.label() == "1.000 ms (predicted, 0.500-2.000)"


def test_anchors_that_are_not_one_inference_are_skipped_and_fps_at_batch_1_converted():
    used, skipped = anchored.select(load_target("jetson-agx-orin"))
    assert len(used) == 1 and used[0][1] == pytest.approx(0.640258)
    assert {s["why"].split(":")[0] for s in skipped} == {"batch 8", "a throughput with batching unstated (an Offline scenario)"}
    used, skipped = anchored.select(load_target("zcu104"))
    assert not skipped and used[0][1] == pytest.approx(1000 / 344.85) and "1000 / fps" in used[0][2]
    used, skipped = anchored.select(load_target("jetson-nano"))  # 3 TensorRT anchors: OpenCV's are another runtime
    assert [r.model for r, _, _ in used] == ["resnet18", "resnet34", "resnet50"]
    assert all("OpenCV" in s["why"] for s in skipped) and len(skipped) == 2


def test_a_shipped_fit_predicts_with_its_bound_without_exporting_anything():
    coral = load_target("coral-edgetpu")
    latency = anchored.predict(_layers(), coral, "int8")
    assert latency.source.startswith("anchored on 4 published latencies of coral-edgetpu (int8)")
    assert 0 < latency.low < latency.p50 < latency.high


def test_the_committed_fits_are_the_fits_of_the_targets_as_they_are_now():
    for target in list_targets():
        path = anchored.fitted_dir() / f"{target.name}.json"
        used, _ = anchored.select(target)
        assert path.is_file() == bool(used), f"{target.name}: rerun bench/fit_anchors.py"
        if not used:
            continue
        fit = anchored.load(path)
        assert fit.fingerprint == anchored.fingerprint(target), f"{target.name} changed: rerun bench/fit_anchors.py"
        rows, ms = [a["features"] for a in fit.anchors], [a["ms"] for a in fit.anchors]
        assert ms == pytest.approx([m for _, m, _ in used])
        assert anchored.solve(rows, ms, fit.terms) == pytest.approx(fit.params)
        loo = anchored.leave_one_out(rows, ms, fit.terms) if len(rows) > 1 else []
        assert list(fit.loo_errors) == pytest.approx(loo)
        assert fit.interval_factor == pytest.approx(anchored.interval_factor(loo))


@pytest.fixture(scope="module")
def nano_fit() -> anchored.Fit:
    """jetson-nano fitted afresh: its three TensorRT anchors' reference models exported here (the slow part)."""
    return anchored.fit_target(load_target("jetson-nano"))


def test_a_real_target_fit_is_finite_and_matches_the_committed_file(nano_fit):
    assert nano_fit.terms == anchored.DEFAULT_TERMS and len(nano_fit.anchors) == 3
    assert all(math.isfinite(v) and v >= 0 for v in nano_fit.params.values()) and sum(nano_fit.params.values()) > 0
    assert len(nano_fit.loo_errors) == 3 and all(math.isfinite(e) for e in nano_fit.loo_errors)
    assert nano_fit.median_abs_loo == pytest.approx(sorted(abs(e) for e in nano_fit.loo_errors)[1])
    committed = anchored.load(anchored.fitted_dir() / "jetson-nano.json")
    assert committed.params == pytest.approx(nano_fit.params)
    assert list(committed.loo_errors) == pytest.approx(list(nano_fit.loo_errors))
    for stored, fresh in zip(committed.anchors, nano_fit.anchors, strict=True):
        assert stored["features"] == pytest.approx(fresh["features"]), stored["model"]
