"""The weakly typed build of TensorRT before 10.1 (JetPack 4 and 5: TensorRT 8.x), kept apart from the
strongly typed one so that the build TensorRT 10.1+ runs touches none of the API TensorRT 11 removed.

Why it still exists: TensorRT 8.x has no strongly typed networks, so an explicit Q/DQ model is built
there with the precision flags (int8 for the Q/DQ layers, fp16 for the rest) and, for a mixed plan,
each float layer pinned to its precision. Nothing here is reached for TensorRT ≥ 10.1."""

from __future__ import annotations


def network_flags(trt) -> int:
    """TensorRT 8.x parses ONNX into an explicit-batch network only when asked to."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    return 0 if flag is None else 1 << int(flag)


def weak_typing(trt, spec, network, config) -> None:
    """The precision flags and per-layer precisions the plan needs on TensorRT < 10.1."""
    flags = trt.BuilderFlag
    for name, on in (("INT8", spec.int8), ("FP16", spec.fp16), ("OBEY_PRECISION_CONSTRAINTS", bool(spec.layers))):
        if on:
            config.set_flag(getattr(flags, name))
    types = {"fp32": trt.float32, "fp16": trt.float16}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in spec.layers:
            layer.precision = types[spec.layers[layer.name]]
        if layer.name in spec.outputs:
            for j in range(layer.num_outputs):
                layer.set_output_type(j, types[spec.outputs[layer.name]])


def workspace(trt, config, size: int) -> None:
    """TensorRT 8.4 brought memory pools; 8.2 has max_workspace_size."""
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)
    else:
        config.max_workspace_size = size
