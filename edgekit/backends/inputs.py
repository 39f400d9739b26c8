"""What an engine file takes as input, read from the file itself (`edgekit profile` and the agent
get an engine without its source model)."""

from __future__ import annotations

from pathlib import Path

from edgekit.models import InputSpec


def engine_inputs(artifact: Path, engine) -> tuple[InputSpec, ...]:
    """Input names, shapes and dtypes read from the engine file itself."""
    specs = getattr(engine, "input_specs", None)  # engines that read their own inputs (LiteRT)
    if specs is not None:
        return tuple(InputSpec(*spec) for spec in specs)
    if artifact.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(artifact))
        return tuple(InputSpec(p.get_any_name(), tuple(p.get_shape()), p.get_element_type().to_dtype().name)
                     for p in model.inputs)
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    kinds = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float16)": "float16"}
    return tuple(InputSpec(i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape), kinds.get(i.type, "float32"))
                 for i in session.get_inputs())
