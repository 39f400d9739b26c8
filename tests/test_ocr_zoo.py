"""The OCR zoo: PaddleOCR's real models on printed text edgekit renders itself, with known ground truth."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import onnxruntime as ort
import pytest

from edgekit import ocr_zoo
from edgekit.errors import BadInput, MissingRuntime


def sha(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(ocr_zoo.model_path(name)), providers=["CPUExecutionProvider"])


def test_the_models_are_the_wheels_onnx_files():
    for name in ("ppocr-cls", "ppocr-det", "ppocr-rec"):
        path = ocr_zoo.model_path(name)
        assert path.is_file() and path.suffix == ".onnx" and path.parent.name == "models"
    with pytest.raises(BadInput, match="unknown zoo model 'ppocr-xyz'"):
        ocr_zoo.model_path("ppocr-xyz")


def test_without_the_package_the_error_names_the_extra_standin_find_spec(monkeypatch):
    monkeypatch.setattr(ocr_zoo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingRuntime, match=r"pip install 'edgekit\[zoo\]'"):
        ocr_zoo.model_path("ppocr-cls")


def test_classifier_data_is_seeded_shaped_and_balanced():
    inputs, labels = ocr_zoo.classifier_data(40, seed=1)
    again, labels_again = ocr_zoo.classifier_data(40, seed=1)
    assert sha(inputs["x"], labels) == sha(again["x"], labels_again)
    assert sha(*ocr_zoo.classifier_data(40, seed=2)[0].values()) != sha(inputs["x"])
    assert inputs["x"].shape == (40, 3, 48, 192) and inputs["x"].dtype == np.float32
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [20, 20]
    assert 0 < (np.diff(labels) != 0).sum() < 39  # interleaved by the rng, neither sorted nor alternating
    assert inputs["x"].min() >= -1 and inputs["x"].max() <= 1


def test_a_turned_sample_is_the_upright_line_turned():
    inputs, labels = ocr_zoo.classifier_data(12, seed=3)
    for i in np.flatnonzero(labels)[:3]:
        line = ocr_zoo.classifier_line(int(i), seed=3)
        width = min(192, math.ceil(48 * line.shape[1] / line.shape[0]))
        upright = ocr_zoo.classifier_input(line)[:, :, :width]
        np.testing.assert_array_equal(inputs["x"][i][:, :, :width], upright[:, ::-1, ::-1])
    for i in np.flatnonzero(labels == 0)[:3]:
        np.testing.assert_array_equal(inputs["x"][i], ocr_zoo.classifier_input(ocr_zoo.classifier_line(int(i), seed=3)))


def test_the_fp32_classifier_reads_the_direction():
    inputs, labels = ocr_zoo.classifier_data(120, seed=5)
    probabilities = session("ppocr-cls").run(None, inputs)[0]
    assert probabilities.shape == (120, 2)
    assert (probabilities.argmax(1) == labels).mean() >= 0.9


def test_detector_masks_are_the_tight_ink_boxes():
    inputs, masks = ocr_zoo.detector_data(6, size=(160, 256), seed=2)
    again, masks_again = ocr_zoo.detector_data(6, size=(160, 256), seed=2)
    assert sha(inputs["x"], masks) == sha(again["x"], masks_again)
    assert inputs["x"].shape == (6, 3, 160, 256) and inputs["x"].dtype == np.float32
    assert masks.shape == (6, 160, 256) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    for index, (mask, boxes) in enumerate(zip(masks, ocr_zoo.detector_boxes(6, size=(160, 256), seed=2), strict=True)):
        assert 1 <= len(boxes) <= 5 and mask.sum() == sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
        image, _ = ocr_zoo.detector_page(index, size=(160, 256), seed=2)
        grey = image.mean(axis=2)
        for x0, y0, x1, y1 in boxes:  # ink touches all four sides of its box
            paper = np.median(grey[max(0, y0 - 3) : y0, x0:x1]) if y0 >= 3 else np.median(grey[y1:, x0:x1])
            for edge in (grey[y0, x0:x1], grey[y1 - 1, x0:x1], grey[y0:y1, x0], grey[y0:y1, x1 - 1]):
                assert edge.min() < paper - 40


def test_detector_sizes_must_fit_dbnets_stride():
    with pytest.raises(BadInput, match="multiples of 32"):
        ocr_zoo.detector_data(2, size=(100, 320))


def test_the_fp32_detector_finds_the_lines():
    inputs, masks = ocr_zoo.detector_data(8, seed=7)
    det = session("ppocr-det")
    maps = np.concatenate([det.run(None, {"x": inputs["x"][i : i + 1]})[0] for i in range(8)])
    assert maps.shape == (8, 1, 320, 320)
    assert ocr_zoo.text_detection_f1([maps], masks, None) >= 0.8


def test_the_detection_metric_on_known_answers():
    _, masks = ocr_zoo.detector_data(4, size=(256, 256), seed=4)
    perfect = masks[:, None].astype(np.float32)
    assert ocr_zoo.text_detection_f1([perfect], masks, None) == 1.0
    assert ocr_zoo.text_detection_f1([np.zeros_like(perfect)], masks, None) == 0.0
    lines = sum(len(b) for b in ocr_zoo.detector_boxes(4, size=(256, 256), seed=4))
    half = perfect.copy()
    half[:2] = 0  # the first two pages missed entirely: no false positives, some lines not found
    found = sum(len(b) for b in ocr_zoo.detector_boxes(4, size=(256, 256), seed=4)[2:])
    assert ocr_zoo.text_detection_f1([half], masks, None) == pytest.approx(2 * found / (found + lines))
    shifted = np.roll(perfect, 120, axis=3)  # boxes in the wrong place: each a false positive and a miss
    assert ocr_zoo.text_detection_f1([shifted], masks, None) < 0.5
    assert (ocr_zoo.text_detection_f1.unit, ocr_zoo.text_detection_f1.points) == ("F1", 100.0)
    with pytest.raises(BadInput, match="needs labels"):
        ocr_zoo.text_detection_f1([perfect], None, None)


def test_the_factories_are_the_defaults():
    inputs, labels = ocr_zoo.classifier_factory()
    assert inputs["x"].shape == (600, 3, 48, 192) and len(labels) == 600
