"""The standard architectures that targets' published reference latencies were measured on, without torchvision.

A target's `reference_latencies:` (targets/*.yaml) names its model by a key of `REFERENCE_MODELS`. Each key
maps to a factory that builds the architecture with random weights (latency does not depend on them) and
returns `(model, example)`, so its layer table is computed exactly as a user's model's is: through
`edgekit.models.load_model("edgekit.reference_models:KEY")`, `graph.export_onnx` and `graph.layer_table`
(`reference_table` does the three). Each entry also carries the multiply-accumulates the architecture's
paper or model zoo publishes, which the tests compare with what edgekit counts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from edgekit import graph
from edgekit.errors import BadInput
from edgekit.models import load_model

SIZE = 224  # the published MACs are at 224x224; other sizes are asked for with an input shape


class Reference(NamedTuple):
    factory: Callable
    published_macs: float
    macs_source: str


def _torch():
    import torch  # here, so that reading REFERENCE_MODELS (the keys) loads no torch

    return torch


def _example(model):
    torch = _torch()
    torch.manual_seed(0)
    return model.eval(), torch.zeros(1, 3, SIZE, SIZE)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = "relu") -> list:
    nn = _torch().nn
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6() if act == "relu6" else nn.ReLU())
    return layers


def _classifier(channels: int, classes: int = 1000) -> list:
    nn = _torch().nn
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]


# ---- MobileNet V1 (Howard et al. 2017), width 1.0 -------------------------------------------------------------
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
             (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1():
    """MobileNet V1 1.0 (`edgekit.reference_models:mobilenet_v1`): 13 depthwise-separable blocks."""
    nn = _torch().nn
    layers, cin = _conv_bn(3, 32, 3, 2), 32
    for cout, stride in V1_BLOCKS:
        layers += _conv_bn(cin, cin, 3, stride, groups=cin) + _conv_bn(cin, cout, 1)
        cin = cout
    return _example(nn.Sequential(*layers, *_classifier(cin)))


# ---- MobileNet V2 (Sandler et al. 2018), width 1.0 ------------------------------------------------------------
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))  # expansion t, channels c, repeats n, first stride s (the paper's Table 2)


def _inverted_residual(cin: int, cout: int, stride: int, expand: int):
    nn = _torch().nn
    hidden = cin * expand
    layers = (_conv_bn(cin, hidden, 1, act="relu6") if expand != 1 else []) + \
        _conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6") + _conv_bn(hidden, cout, 1, act=None)

    class InvertedResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    return InvertedResidual()


def mobilenet_v2():
    """MobileNet V2 1.0 (`edgekit.reference_models:mobilenet_v2`): inverted residuals, 1280-channel head."""
    nn = _torch().nn
    layers, cin = _conv_bn(3, 32, 3, 2, act="relu6"), 32
    for expand, cout, repeats, stride in V2_SETTINGS:
        for i in range(repeats):
            layers.append(_inverted_residual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += _conv_bn(cin, 1280, 1, act="relu6")
    return _example(nn.Sequential(*layers, *_classifier(1280)))


# ---- ResNet (He et al. 2015) ---------------------------------------------------------------------------------
def _resnet_block(cin: int, width: int, stride: int, bottleneck: bool, stride_in_1x1: bool):
    nn = _torch().nn
    cout = width * 4 if bottleneck else width
    if bottleneck:  # v1.5 (torchvision, MLPerf) strides the 3x3; the original v1 strides the first 1x1
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        body = _conv_bn(cin, width, 1, s1) + _conv_bn(width, width, 3, s3) + _conv_bn(width, cout, 1, act=None)
    else:
        body = _conv_bn(cin, width, 3, stride) + _conv_bn(width, width, 3, act=None)
    shortcut = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else []

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*body)
            self.shortcut = nn.Sequential(*shortcut)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.shortcut(x))

    return Block(), cout


def _resnet(depths: tuple[int, ...], bottleneck: bool, stride_in_1x1: bool = False):
    nn = _torch().nn
    layers, cin = [*_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for stage, repeats in enumerate(depths):
        for i in range(repeats):
            block, cin = _resnet_block(cin, 64 * 2**stage, 2 if i == 0 and stage > 0 else 1, bottleneck, stride_in_1x1)
            layers.append(block)
    return _example(nn.Sequential(*layers, *_classifier(cin)))


def resnet18():
    """ResNet-18 (`edgekit.reference_models:resnet18`): basic blocks [2, 2, 2, 2]."""
    return _resnet((2, 2, 2, 2), bottleneck=False)


def resnet34():
    """ResNet-34 (`edgekit.reference_models:resnet34`): basic blocks [3, 4, 6, 3]."""
    return _resnet((3, 4, 6, 3), bottleneck=False)


def resnet50():
    """ResNet-50 v1.5 (`edgekit.reference_models:resnet50`): bottlenecks [3, 4, 6, 3], stride on the 3x3
    (torchvision's and MLPerf's ResNet-50)."""
    return _resnet((3, 4, 6, 3), bottleneck=True)


def resnet50_v1():
    """ResNet-50 v1 (`edgekit.reference_models:resnet50_v1`): the paper's, stride on the first 1x1
    (Keras' and Caffe's ResNet-50)."""
    return _resnet((3, 4, 6, 3), bottleneck=True, stride_in_1x1=True)


# ---- Inception v1 / GoogLeNet (Szegedy et al. 2014) -----------------------------------------------------------
INCEPTION = {  # name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), the paper's Table 1
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64), "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def _inception(cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pool: int):
    nn, torch = _torch().nn, _torch()
    branches = [_conv_bn(cin, c1, 1), _conv_bn(cin, r3, 1) + _conv_bn(r3, c3, 3),
                _conv_bn(cin, r5, 1) + _conv_bn(r5, c5, 5), [nn.MaxPool2d(3, 1, 1), *_conv_bn(cin, pool, 1)]]

    class Inception(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.branches = nn.ModuleList(nn.Sequential(*b) for b in branches)

        def forward(self, x):
            return torch.cat([b(x) for b in self.branches], 1)

    return Inception(), c1 + c3 + c5 + pool


def inception_v1():
    """Inception v1 / GoogLeNet (`edgekit.reference_models:inception_v1`): the paper's nine modules, with
    their 5x5 convolutions (torchvision's GoogLeNet uses 3x3 there), batch norm for the LRN, no auxiliary heads."""
    nn = _torch().nn
    layers = [*_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), *_conv_bn(64, 64, 1), *_conv_bn(64, 192, 3),
              nn.MaxPool2d(3, 2, 1)]
    cin = 192
    for name, widths in INCEPTION.items():
        if name in ("4a", "5a"):
            layers.append(nn.MaxPool2d(3, 2, 1))
        module, cin = _inception(cin, *widths)
        layers.append(module)
    return _example(nn.Sequential(*layers, *_classifier(cin)))


REFERENCE_MODELS: dict[str, Reference] = {
    "mobilenet_v1": Reference(mobilenet_v1, 569e6, "Howard et al. 2017, 'MobileNets', Table 8: 1.0 MobileNet-224, "
                                                   "569 million mult-adds"),
    "mobilenet_v2": Reference(mobilenet_v2, 300e6, "Sandler et al. 2018, 'MobileNetV2', Table 4: MobileNetV2 (1.0, "
                                                   "224), 300 million multiply-adds"),
    "resnet18": Reference(resnet18, 1.8e9, "He et al. 2015, 'Deep Residual Learning', Table 1: 18-layer, "
                                           "1.8x10^9 FLOPs (multiply-adds)"),
    "resnet34": Reference(resnet34, 3.6e9, "He et al. 2015, Table 1: 34-layer, 3.6x10^9 FLOPs (multiply-adds)"),
    "resnet50": Reference(resnet50, 4.1e9, "Vitis AI 2.5 Model Zoo: pt_resnet50_imagenet_224_224_8.2G, 8.2 GOPs "
                                           "= 4.1 G multiply-adds (torchvision's ResNet-50, v1.5)"),
    "resnet50_v1": Reference(resnet50_v1, 3.8e9, "He et al. 2015, Table 1: 50-layer, 3.8x10^9 FLOPs "
                                                 "(multiply-adds)"),
    "inception_v1": Reference(inception_v1, 1.58e9, "Vitis AI Model Zoo (v1.x): cf_inceptionv1_imagenet_224_224_"
                                                    "3.16G, 3.16 GOPs = 1.58 G multiply-adds (BVLC GoogLeNet; the "
                                                    "paper, Szegedy et al. 2014, rounds to 1.5 billion)"),
}


def spec(key: str) -> str:
    """The `--model` spec of a reference model: `edgekit.reference_models:KEY`."""
    if key not in REFERENCE_MODELS:
        raise BadInput(f"unknown reference model '{key}' (known: {', '.join(sorted(REFERENCE_MODELS))})")
    return f"{__name__}:{REFERENCE_MODELS[key].factory.__name__}"


def reference_table(key: str, out_dir: Path, input_shape: str | None = None) -> list[graph.Layer]:
    """The layer table of a reference model, exported as a user's model is (`input_shape` like "1x3x299x299")."""
    shapes = [input_shape.replace("x", ",")] if input_shape else None
    model = load_model(spec(key), shapes)
    onnx_path = graph.export_onnx(model, Path(out_dir) / f"{key}.onnx")
    return graph.layer_table(onnx_path)
