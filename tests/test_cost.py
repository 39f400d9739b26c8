"""The latency cost model: layer keys, execution units, the lookup table measured once per unit
configuration on the host (OpenVINO, for real) and cached per target + runtime version, the roofline
where a target cannot run here, the whole-model calibration and its recorded errors, and the memory
model. Behaviour only: no test depends on how fast this machine is."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit import anchored, cost, fusion, graph, roofline
from edgekit.latency_table import FORMAT, LatencyTable, table_path
from edgekit.microbench import unit_model
from edgekit.targets import load_target


def _residual_net(path, channels: int = 8, stride: int = 1):
    """conv3x3 → relu → conv3x3 → add(input of the block) → relu → global pool → flatten → gemm."""
    rng = np.random.default_rng(0)
    c = channels

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="stem_relu"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[stride, stride]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r0" if stride == 1 else "c2"], ["a"], name="join"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [w("w0", c, 1, 3, 3), w("b0", c), w("w1", c, c, 3, 3), w("b1", c), w("w2", c, c, 3, 3), w("b2", c),
             w("wf", 10, c), w("bf", 10)]
    g = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    import onnx

    onnx.save(model, str(path))
    return graph.layer_table(path)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh cache folder for the table (EDGEKIT_CACHE_DIR is what edgekit.util.cache_dir reads)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(folder))
    return folder


def test_layer_key_names_what_latency_depends_on(tmp_path):
    layers = {layer.name: layer for layer in _residual_net(tmp_path / "a.onnx")}
    again = {layer.name: layer for layer in _residual_net(tmp_path / "b.onnx")}
    strided = {layer.name: layer for layer in _residual_net(tmp_path / "c.onnx", stride=2)}
    key = layers["conv1"].key("fp32")
    assert key == again["conv1"].key("fp32")  # stable: shapes and attributes, never names or weight values
    for part in ("Conv", "in=1x8x16x16", "out=1x8x16x16", "c1=8x8x3x3", "kernel_shape=3,3", "strides=1,1",
                 "pads=1,1,1,1", "dilations=1,1", "group=1", "@fp32"):
        assert part in key
    assert layers["conv1"].key("int8") != key
    assert strided["conv1"].key("fp32") != key and "strides=2,2" in strided["conv1"].key("fp32")
    assert layers["conv2"].key() == layers["conv1"].key()  # same configuration, same key
    assert "c1=10x8" in layers["fc"].key() and "transB=1" in layers["fc"].key()
    json.dumps(graph.table_as_dicts(list(layers.values())))  # layers.json still serialises


def test_units_fuse_activations_and_the_residual_add(tmp_path):
    layers = _residual_net(tmp_path / "m.onnx")
    found = {u.name: [layer.name for layer in u.layers] for u in fusion.units(layers)}
    assert found == {"stem": ["stem", "stem_relu"], "conv1": ["conv1", "relu1"], "conv2": ["conv2", "join", "relu2"],
                     "pool": ["pool"], "flatten": ["flatten"], "fc": ["fc"]}
    units = fusion.units(layers)
    int8 = fusion.unit_precisions(units, {"stem": "int8", "conv1": "int8", "conv2": "int8"})
    assert int8["pool"] == "int8" and int8["fc"] == "fp32"  # a pool fed by int8 stays int8, as the Q/DQ writer does
    assert fusion.transitions(units, int8) == (2, 1 * 16 * 16 + 8)  # the model's input into stem, flatten into fc
    assert fusion.transitions(units, fusion.unit_precisions(units)) == (0, 0)


def test_int8_unit_is_written_as_edgekit_writes_int8_layers(tmp_path):
    unit = next(u for u in fusion.units(_residual_net(tmp_path / "m.onnx")) if u.name == "conv2")
    model = unit_model(unit, "int8", weight_bits=7)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 2  # the residual join's input and the output requantization
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert weights["conv2_c1_q"].dtype == np.int8 and np.abs(weights["conv2_c1_q"]).max() <= 63
    assert weights["conv2_c2_q"].dtype == np.int32  # int32 bias
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {TensorProto.UINT8}  # fed by int8 producers


def test_table_measures_each_configuration_once_then_reads_the_cache(tmp_path, cache):
    host = load_target("host")
    layers = _residual_net(tmp_path / "m.onnx")
    conv1, conv2 = (next(layer for layer in layers if layer.name == n) for n in ("conv1", "conv2"))
    table = LatencyTable(host, "openvino", runs=6)
    assert table.measured and table.path == table_path("host", "openvino", table.version)
    assert table.path.parent == cache / "latency-tables"
    first = table.layer_ms(conv1, "int8")
    assert first > 0 and table.measurements == 1
    assert table.layer_ms(conv2, "int8") == first and table.measurements == 1  # same configuration: not again
    stored = json.loads(table.path.read_text())
    entry = stored["entries"][table.key(fusion.Unit(conv1), "int8")]
    assert any("I8" in kernel for kernel in entry["kernels"])  # OpenVINO really ran it in int8
    reopened = LatencyTable(host, "openvino", runs=6)
    assert reopened.layer_ms(conv1, "int8") == first and reopened.measurements == 0  # from the cache


def test_units_are_stored_as_profiled_and_older_tables_are_measured_again(tmp_path, cache):
    """A unit's entry is its own profiled time, unscaled (a reference model's timing once scaled it, and moved
    units that agreed by up to 3x); a table written in an older format is measured again, not read."""
    host = load_target("host")
    conv1 = next(layer for layer in _residual_net(tmp_path / "m.onnx") if layer.name == "conv1")
    table = LatencyTable(host, "openvino", runs=6)
    raw, profile = [], table._profile
    def recorded(model, *args, **kwargs):  # the unit's own time as profiled
        timed = profile(model, *args, **kwargs)
        raw.append(timed[0])
        return timed
    table._profile = recorded
    ms = table.layer_ms(conv1, "fp32")
    assert len(raw) == 1 and ms == pytest.approx(raw[0], abs=1e-5)  # one profile, no reference timed beside it
    stored = json.loads(table.path.read_text())
    assert "reference" not in stored and "load" not in stored["entries"][table.key(fusion.Unit(conv1), "fp32")]
    table.path.write_text(json.dumps({**stored, "format": 3}))  # written by an edgekit that scaled its units
    again = LatencyTable(host, "openvino", runs=6)
    assert again.entries == {}
    assert again.layer_ms(conv1, "fp32") > 0 and again.measurements == 1


def test_cache_is_keyed_by_target_runtime_and_version(cache):
    host = load_target("host")
    ov_table, ort_table = LatencyTable(host, "openvino"), LatencyTable(host, "onnxruntime")
    import onnxruntime
    import openvino

    assert ov_table.path == table_path("host", "openvino", openvino.get_version())
    assert ort_table.path == table_path("host", "onnxruntime", onnxruntime.__version__)
    assert ov_table.path.name.startswith("host-openvino-2") and ov_table.path != ort_table.path
    # a table measured on another CPU or with other settings is not used
    ov_table.path.parent.mkdir(parents=True, exist_ok=True)
    ov_table.path.write_text(json.dumps({"format": FORMAT, "device": "another CPU", "runtime": "openvino",
                                         "version": ov_table.version, "threads": host.cores,
                                         "entries": {"x": {"ms": 1.0}}, "overhead": {}, "observations": []}))
    assert LatencyTable(host, "openvino").entries == {}


def test_onnxruntime_table_times_units_with_its_own_profiler(tmp_path, cache):
    layers = _residual_net(tmp_path / "m.onnx")
    table = LatencyTable(load_target("host"), "onnxruntime", runs=6)
    unit = next(u for u in fusion.units(layers) if u.name == "conv2")  # conv + residual add + relu
    assert table.measured and table.unit_ms(unit, "fp32", fed=True) > 0 and table.measurements == 1
    kernels = next(iter(table.entries.values()))["kernels"]
    assert any(k.startswith("Conv") for k in kernels) and not any("Reorder" in k for k in kernels)


@pytest.mark.parametrize("target_name", ["jetson", "intel-cpu"])
def test_a_target_not_measurable_here_gets_its_anchored_model_or_the_roofline_labelled_predicted(tmp_path, cache, target_name):
    """jetson has published anchors: its fitted model, bounded; intel-cpu has none: the bare roofline, unbounded."""
    target = load_target(target_name)
    layers = _residual_net(tmp_path / "m.onnx")
    model = cost.CostModel(target)
    assert not model.table.measured and model.table.measurements == 0
    latency = model.predict(layers, {"conv1": "int8"})
    assert latency.kind == "predicted" and latency.p50 > 0
    if anchored.fit_for(target) is not None:
        assert "anchored on" in latency.source and latency.low < latency.p50 < latency.high
        assert model.predict(layers).p50 == pytest.approx(anchored.predict(layers, target).p50)
        assert model.predict(layers).p50 != pytest.approx(roofline.predict_latency(layers, target).p50)
    else:
        assert "roofline" in latency.source and latency.high is None and model.bound_factor(layers) is None
        assert model.predict(layers).p50 == pytest.approx(roofline.predict_latency(layers, target).p50)
    assert not (cache / "latency-tables").exists()  # nothing measured, nothing written


def test_calibration_fits_whole_model_observations_and_records_every_error(tmp_path, cache):
    """Synthetic observations (measured = 2 × the roofline sum + 4 µs per unit + 0.03 ms) on a target
    without a table: the fit recovers them, and every candidate's error is kept."""
    target = load_target("rpi4")
    model = cost.CostModel(target)
    variants = [_residual_net(tmp_path / f"m{c}.onnx", channels=c) for c in (4, 8, 16, 32, 48)]
    plans = [{}, {"conv1": "int8"}, {"stem": "int8", "conv1": "int8", "conv2": "int8"}]

    def measured(layers, plan):
        f = model.features(layers, plan)
        return 2 * (f["float_ms"] + f["int8_ms"]) + 0.004 * f["units"] + 0.03

    before = [abs(model.error(layers, plan, measured(layers, plan))) for layers in variants[:2] for plan in plans]
    assert model.calibration["fitted"] is False and "anchored on" in model.predict(variants[0]).source
    for i, layers in enumerate(variants[:4]):
        for plan in plans:
            model.observe(layers, plan, measured(layers, plan), candidate=f"w{i} {sorted(plan)}")
    assert model.calibration["fitted"] and model.calibration["observations"] == 12
    after = [abs(model.error(variants[4], plan, measured(variants[4], plan), candidate="held out")) for plan in plans]
    assert max(after) < 0.1 and min(before) > 0.3
    records = model.errors()
    assert len(records) == len(before) + 12 + len(plans)
    assert records[-1]["candidate"] == "held out"
    assert records[-1]["error"] == pytest.approx(records[-1]["predicted_ms"] / records[-1]["measured_ms"] - 1, abs=1e-4)


def test_int8_and_float_units_are_calibrated_apart(tmp_path, cache):
    """Units timed alone miss by a factor that depends on their precision (an AVX-512 VNNI EPYC: int8 units
    ran inside the model at 0.49× their time alone, fp32 ones at 0.88×). Synthetic observations measured so
    (float units × 1, int8 units × 0.4) of the model in fp32 and all int8 at two widths fit both factors,
    and the model at a third width with its precisions mixed is predicted within 5 %."""
    target = load_target("rpi4")
    model = cost.CostModel(target)
    every = {"stem": "int8", "conv1": "int8", "conv2": "int8"}

    def measured(layers, plan):
        f = model.features(layers, plan)
        return f["float_ms"] + 0.4 * f["int8_ms"] + 0.004 * f["units"] + 0.03

    for channels in (16, 48):
        layers = _residual_net(tmp_path / f"m{channels}.onnx", channels=channels)
        for plan in ({}, every):
            model.observe(layers, plan, measured(layers, plan))
    coefficients = model.calibration["coefficients"]
    assert coefficients["float_ms"] == pytest.approx(1.0, rel=0.1) and coefficients["int8_ms"] == pytest.approx(0.4, rel=0.1)
    held_out, mixed = _residual_net(tmp_path / "m32.onnx", channels=32), {"conv1": "int8"}
    assert abs(model.error(held_out, mixed, measured(held_out, mixed))) < 0.05
    f_all, f_none = model.features(held_out, every), model.features(held_out, {})
    every_unit = sum(c.ms for c in model.breakdown(held_out, every))
    assert f_all["int8_ms"] > 0 and f_none["int8_ms"] == 0 and f_all["float_ms"] + f_all["int8_ms"] == pytest.approx(every_unit)


def test_a_search_scoped_to_its_model_fits_its_own_observations_on_top_of_the_others(tmp_path, cache):
    """The table holds a first model's observations (measured = 2 × the sum + 0.03 ms); a second model
    spends more between its kernels (measured = 2 × the sum + 0.3 ms). Scoped to the second, two of its observations
    bring its held-out candidate within 10 %; the fit to all, dominated by the first's twelve, misses it.
    Observations keep the scale they were measured on and are rescaled to a later search's."""
    target = load_target("rpi4")
    first = cost.CostModel(target)
    plans = [{}, {"conv1": "int8"}, {"stem": "int8", "conv1": "int8", "conv2": "int8"}]
    for c in (4, 8, 16, 32):
        layers = _residual_net(tmp_path / f"a{c}.onnx", channels=c)
        for plan in plans:
            f = first.features(layers, plan)
            first.observe(layers, plan, 2 * (f["float_ms"] + f["int8_ms"]) + 0.03, candidate=f"a{c}")
    second_layers = [_residual_net(tmp_path / f"b{c}.onnx", channels=c, stride=2) for c in (12, 24, 40)]
    scope = cost.scope_of(second_layers[-1])
    assert scope == cost.scope_of(_residual_net(tmp_path / "again.onnx", channels=40, stride=2))  # same network, same scope
    assert scope != cost.scope_of(second_layers[0])
    second = cost.CostModel(target, table=first.table, scope=scope, scale_ms=1.0)

    def measured(layers):
        f = second.features(layers, {})
        return 2 * (f["float_ms"] + f["int8_ms"]) + 0.3

    for layers in second_layers[:2]:
        second.observe(layers, {}, measured(layers), candidate="b")
    assert second.calibration["own_observations"] == 2
    held_out = second_layers[2]
    shared = cost.CostModel(target, table=first.table)
    assert abs(second.error(held_out, {}, measured(held_out))) < 0.1
    assert abs(shared.error(held_out, {}, measured(held_out))) > 0.2
    assert [o["scope"] for o in first.table.observations].count(scope) == 2
    # a later search of the same model measures on its own anchor's scale, here 1.5 times slower: the
    # earlier observations are rescaled to it
    later = cost.CostModel(target, table=first.table, scope=scope, scale_ms=1.5)
    unscaled = cost.CostModel(target, table=first.table, scope=scope)
    rescaled, missed = (abs(m.error(held_out, {}, 1.5 * measured(held_out))) for m in (later, unscaled))
    assert missed > 0.3 and rescaled < missed / 2


def test_calibration_on_a_measured_table_is_kept_with_the_table(tmp_path, cache):
    host = load_target("host")
    layers = _residual_net(tmp_path / "m.onnx")
    model = cost.CostModel(host, runs=6)
    prediction = model.predict(layers)
    assert prediction.kind == "predicted" and "lookup table" in prediction.source and "openvino" in prediction.source
    for scale in (1.0, 1.5, 2.0):
        model.observe(layers, {}, prediction.p50 * scale, candidate=f"x{scale}")
    assert "calibration on 3 whole-model measurements" in model.predict(layers).source
    reloaded = cost.CostModel(host, runs=6)
    assert reloaded.calibration["observations"] == 3 and reloaded.table.measurements == 0
    assert reloaded.predict(layers).p50 == pytest.approx(model.predict(layers).p50)


def test_fit_falls_back_to_the_prior_below_three_observations():
    prior = np.array([1.0, 1.0, 0.01, 0.0, 0.0, 0.1])
    one = [{"features": {"float_ms": 1.0, "int8_ms": 0.0, "units": 10, "transitions": 0, "transitions_m": 0.0, "one": 1.0}, "measured_ms": 5.0}]
    assert np.allclose(cost.fit_calibration(one * 2, prior), prior)
    assert np.all(cost.fit_calibration(one * 3, prior) >= 0)


def test_noisy_observations_cannot_fit_away_the_kernels_time(monkeypatch):
    """Whole-model times that do not follow the table (a loaded machine) would fit a = 0, so every pruned
    candidate would look as fast as the original; a stays at least LOWER["float_ms"]."""
    prior = np.array([1.0, 1.0, 0.01, 0.0, 0.0, 0.1])
    rows = [{"features": {"float_ms": s, "int8_ms": 0.0, "units": 10, "transitions": 0, "transitions_m": 0.0, "one": 1.0}, "measured_ms": m}
            for s, m in ((0.4, 0.5), (0.2, 0.52), (0.1, 0.49), (0.3, 0.5), (0.25, 0.51), (0.15, 0.5))]
    coefficients = cost.fit_calibration(rows, prior)
    assert coefficients[0] == pytest.approx(cost.LOWER["float_ms"]) and np.all(coefficients >= 0)
    monkeypatch.setitem(cost.LOWER, "float_ms", 0.0)
    assert cost.fit_calibration(rows, prior)[0] < 0.45  # what the bound prevents


def test_memory_model_sums_weights_and_the_activations_alive_at_once(tmp_path):
    layers = _residual_net(tmp_path / "m.onnx", channels=8)
    fp32 = cost.estimate_memory(layers)
    params = sum(layer.params for layer in layers)
    assert fp32.weights_mb == pytest.approx(params * 4 / 2**20)
    # stem output r0 (8x16x16) lives until the join, beside conv1's and conv2's outputs: three at once
    assert fp32.peak_activations_mb == pytest.approx(3 * 8 * 16 * 16 * 4 / 2**20)
    int8 = cost.estimate_memory(layers, {"stem": "int8", "conv1": "int8", "conv2": "int8"})
    convs = [layer for layer in layers if layer.op == "Conv"]
    weights_int8 = sum(np.prod(layer.constants[0].shape) + 4 * np.prod(layer.constants[1].shape) for layer in convs)
    assert int8.weights_mb == pytest.approx((weights_int8 + (10 * 8 + 10) * 4) / 2**20)
    assert int8.peak_activations_mb < fp32.peak_activations_mb
    assert fp32.fits(load_target("host")) and fp32.total_mb == fp32.weights_mb + fp32.peak_activations_mb
    assert cost.predict_memory_mb(layers, "fp32")["weights_mb"] == pytest.approx(fp32.weights_mb)
