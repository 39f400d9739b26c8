"""An analytic resource and latency estimate of the hls4ml design, read from the converted model,
against the part's capacity (the target's backend options dsp, bram36, uram, clock_mhz).

Synthesis reports the real figures where Vitis is; this says beforehand whether the design can fit.
The rules, each a simplification of what Vitis HLS does with hls4ml's io_stream templates:
- DSPs: a layer's multipliers are n_in*n_out / reuse factor, one DSP48E2 each (hls4ml does not pack two
  int8 products into one DSP, AMD WP486; narrow products that HLS builds from LUTs would lower it).
- BRAM (counted in 18 Kb halves, each 512x36 ... 16Kx1): weights of layers with reuse > 1 (hls4ml binds
  them to ROM_nP_BRAM, reshaped to `reuse` words of n_in*n_out/reuse weights); stream FIFOs and conv line
  buffers larger than 1024 bits (Vitis HLS keeps smaller ones in shift registers: config_storage
  -auto_srl_max_bits 1024, UG1399). hls4ml uses no UltraRAM.
- Cycles: a conv reads one pixel per `reuse` cycles (its multiplier array runs once per pixel), a dense
  layer takes `reuse` cycles, other layers stream one pixel per cycle. Latency adds the layers (no
  overlap assumed: an upper bound); the interval between inferences is the slowest layer. These rules
  model io_stream, the FPGA targets' io_type; io_parallel designs are estimated as if streamed.
"""

from __future__ import annotations

import math

import numpy as np

BRAM18_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))  # depth, width
SRL_MAX_BITS = 1024


def bram18(depth: int, width_bits: int) -> int:
    """18 Kb block RAMs for a memory of `depth` words of `width_bits`, in its best aspect ratio."""
    return min(math.ceil(width_bits / w) * math.ceil(depth / d) for d, w in BRAM18_SHAPES)


def _bits(var) -> int:
    return int(var.type.precision.width)


def _layer(layer, backend) -> dict:
    out = layer.get_output_variable()
    entry = {"layer": layer.name, "class": layer.class_name, "result": str(out.type.precision),
             "dsp": 0, "bram18": 0, "multipliers": 0, "reuse": 1}
    source = layer.get_input_variable() if layer.inputs else None
    in_shape = (source or out).shape
    pixels = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
    cycles = max(pixels, int(np.prod(out.shape[:-1])) if len(out.shape) > 1 else 1)  # padding writes more than it reads
    if layer.class_name in ("Conv1D", "Conv2D", "Dense"):
        n_in, n_out = backend.get_layer_mult_size(layer)
        reuse = int(layer.get_attr("reuse_factor"))
        multipliers = math.ceil(n_in * n_out / reuse)
        weight_bits = _bits(layer.get_weights("weight"))
        entry.update(multipliers=multipliers, reuse=reuse, dsp=multipliers, weight=str(layer.get_weights("weight").type.precision),
                     accum=str(layer.get_attr("accum_t").precision), n_in=n_in, n_out=n_out, weight_bits=weight_bits,
                     rom_bram18=bram18(reuse, multipliers * weight_bits) if reuse > 1 else 0)  # weights: `reuse` words
        entry["bram18"] += entry["rom_bram18"]
        cycles = reuse if layer.class_name == "Dense" else pixels * reuse
        if layer.class_name == "Conv2D":  # (filter height - 1) line buffers per channel, in_width deep
            line_bits = int(layer.get_attr("in_width")) * _bits(layer.get_input_variable())
            if line_bits > SRL_MAX_BITS:
                entry["bram18"] += (int(layer.get_attr("filt_height")) - 1) * int(layer.get_attr("n_chan")) * \
                    bram18(int(layer.get_attr("in_width")), _bits(layer.get_input_variable()))
    pragma = getattr(out, "pragma", None)
    if isinstance(pragma, tuple) and pragma[0] == "stream":
        depth, width = int(pragma[1]), int(out.shape[-1]) * _bits(out)
        entry["fifo"] = {"depth": depth, "bits": width}
        if depth * width > SRL_MAX_BITS and depth > 2:
            entry["bram18"] += bram18(depth, width)
    entry["cycles"] = int(cycles)
    return entry


def estimate(hls_model, options: dict, part_name: str) -> dict:
    """Per layer and in total: DSP, BRAM36, cycles; latency at the target clock; fit against the part."""
    backend = hls_model.config.backend
    layers = [_layer(layer, backend) for layer in hls_model.get_layers()]
    clock_mhz = float(options.get("clock_mhz", 200))
    cycles = sum(e["cycles"] for e in layers)
    interval = max(e["cycles"] for e in layers)
    dsp, bram36 = sum(e["dsp"] for e in layers), math.ceil(sum(e["bram18"] for e in layers) / 2)
    capacity = {k: int(options[k]) for k in ("dsp", "bram36", "uram") if k in options}
    used = {"dsp": dsp, "bram36": bram36, "uram": 0}
    percent = {k: round(100 * used[k] / capacity[k], 1) for k in used if capacity.get(k)}
    fits = all(used[k] <= capacity[k] for k in capacity)
    return {
        "kind": "predicted", "source": "edgekit analytic estimate (see edgekit/backends/hls4ml_estimate.py)",
        "part": options.get("part"), "device": part_name, "clock_mhz": clock_mhz, "io_type": options.get("io_type", "io_stream"),
        "used": used, "capacity": capacity, "percent": percent, "fits": fits,
        "cycles": cycles, "interval_cycles": interval,
        "latency_ms": round(cycles / (clock_mhz * 1e3), 6),
        "throughput_fps": round(clock_mhz * 1e6 / interval, 1),
        "layers": layers,
    }


def summary(est: dict) -> list[str]:
    """The lines the CLI prints under 'build'."""
    def share(key: str, label: str) -> str:
        cap = est["capacity"].get(key)
        return f"{est['used'][key]} {label}" + (f" of {cap} ({est['percent'][key]:.0f} %)" if cap else "")

    verdict = "fits" if est["fits"] else "does NOT fit"
    return [f"estimate: {share('dsp', 'DSP')}, {share('bram36', 'BRAM36')}, {share('uram', 'URAM')}: "
            f"{verdict} {est['part'] or est['device']} (predicted)",
            f"latency ≤ {est['latency_ms'] * 1e3:.1f} µs at {est['clock_mhz']:.0f} MHz ({est['cycles']} cycles, layers not "
            f"overlapped); a new inference every {est['interval_cycles']} cycles ({est['throughput_fps']:.0f}/s) (predicted)"]
