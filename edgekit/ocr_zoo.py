"""A zoo of real pretrained models, PaddleOCR's, with evaluation data edgekit renders itself.

Toy models hide what int8 does to a real network, and real data sets need downloads. The wheel of
`rapidocr-onnxruntime` (Apache-2.0) carries PaddleOCR's own ONNX exports: a text-direction classifier
(upright or 180°), the PP-OCRv4 DBNet text detector and the PP-OCRv4 recogniser. Printed text is easy to
make with known ground truth: lines of words are drawn with the DejaVu fonts that ship inside
matplotlib (a core dependency), dark on light paper with mild noise, every choice drawn from a seeded
generator so a seed gives the same arrays on every machine. Each sample `i` has its own generator
`default_rng([seed, i])`, so a sample does not depend on how many were asked for.

The arrays are preprocessed exactly as rapidocr feeds its models (BGR images; `resize_norm_img` for the
classifier; x/255, then (x − 0.5)/0.5 for the detector), so the models run as their authors intended.
`text_detection_f1` scores a detector's maps with DBNet's own post-processing.
"""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, MissingRuntime, require

PACKAGE = "rapidocr_onnxruntime"
MODELS = {
    "ppocr-cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",  # x [N,3,48,192] → [N,2] softmax, '0' / '180'
    "ppocr-det": "ch_PP-OCRv4_det_infer.onnx",  # x [N,3,H,W] → [N,1,H,W] text probability
    "ppocr-rec": "ch_PP-OCRv4_rec_infer.onnx",  # x [N,3,48,W] → [N,T,6625] CTC
}
CLS_SHAPE = (3, 48, 192)
DB_THRESH, DB_BOX_THRESH, DB_UNCLIP_RATIO, DB_MIN_SIZE = 0.3, 0.5, 1.6, 3  # rapidocr's config.yaml
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique", "DejaVuSerif",
         "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSansMono", "DejaVuSansMono-Bold")
WORDS = tuple("""
    the of and to in for with on from by about after before under over between into through during
    model data light river stone table window paper market garden station invoice total amount number
    street city report value order price delivery account balance payment customer service office
    north south east west summer winter spring autumn morning evening quick brown fox jumps lazy dog
    water green house school music history letter budget energy network signal sensor camera engine
    motor battery storage memory figure chapter section page address phone email parcel ticket train
    January February March April May June July August September October November December
    Monday Friday London Berlin Paris Madrid Vienna Oslo Tokyo Boston Chicago Toronto Sydney
    Street Avenue Road Hotel Bank Museum Library Total Invoice Date Name Item Quantity Note
""".split())
INK_LEVEL = 64  # a pixel at least a quarter covered by a glyph counts as ink for the tight box


def model_path(name: str) -> Path:
    """The ONNX file of zoo model `name` inside the installed rapidocr wheel (no download, no copy)."""
    if name not in MODELS:
        raise BadInput(f"unknown zoo model '{name}' (known: {', '.join(MODELS)})")
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "models" / MODELS[name] if folders else None
    if path is None or not path.is_file():
        raise MissingRuntime(f"zoo model {name} needs the {PACKAGE} package: pip install 'edgekit[zoo]'")
    return path


def _cv2():
    return require("cv2", "zoo")


@cache
def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"), size)


def _words(rng: np.random.Generator, count: int) -> list[str]:
    """Words of the list, sometimes a capital, sometimes a number (a year, an amount, a code)."""
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), count)]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    if rng.random() < 0.35:
        words[rng.integers(0, count)] = str(rng.integers(1, 10 ** rng.integers(2, 6)))
    return words


def _glyphs(words: list[str], font: str, size: int) -> np.ndarray:
    """The line's coverage (uint8 0..255) cropped to its tight ink box: the glyphs' pixels, not the metrics."""
    from PIL import Image, ImageDraw

    face = _font(font, size)
    left, top, right, bottom = face.getbbox(" ".join(words))
    canvas = Image.new("L", (right - left + 2 * size, bottom - top + 2 * size), 0)
    ImageDraw.Draw(canvas).text((size - left, size - top), " ".join(words), font=face, fill=255)
    alpha = np.asarray(canvas)
    rows, cols = np.nonzero(alpha >= INK_LEVEL)
    return alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _line(rng: np.random.Generator, *, sizes: tuple[int, int], words: tuple[int, int], max_width: int = 10**6):
    """A random line's tight coverage; words are dropped from the end until it fits `max_width`."""
    font, size = FONTS[rng.integers(len(FONTS))], int(rng.integers(*sizes))
    chosen = _words(rng, int(rng.integers(words[0], words[1] + 1)))
    alpha = _glyphs(chosen, font, size)
    while alpha.shape[1] > max_width and len(chosen) > 1:
        chosen = chosen[:-1]
        alpha = _glyphs(chosen, font, size)
    return alpha


def _paint(rng: np.random.Generator, coverage: np.ndarray) -> np.ndarray:
    """Ink over paper as BGR uint8: a light, slightly tinted, unevenly lit and textured background, dark
    ink, mild sensor noise; the kind of page a camera or a scanner gives."""
    cv2 = _cv2()
    h, w = coverage.shape
    paper = rng.uniform(185, 250) + rng.uniform(-4, 4, 3)
    tilt_x, tilt_y = rng.uniform(-10, 10, 2)
    light = np.linspace(-1, 1, w)[None, :] * tilt_x + np.linspace(-1, 1, h)[:, None] * tilt_y
    grain = cv2.resize(rng.normal(0, rng.uniform(0, 6), (max(2, h // 16), max(2, w // 16))).astype(np.float32),
                       (w, h), interpolation=cv2.INTER_CUBIC)
    background = paper[None, None, :] + (light + grain)[:, :, None]
    ink = rng.uniform(0, 80) + rng.uniform(-6, 6, 3)
    alpha = (coverage.astype(np.float32) / 255.0)[:, :, None]
    image = background * (1 - alpha) + ink[None, None, :] * alpha + rng.normal(0, rng.uniform(1, 5), (h, w, 1))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def classifier_input(image: np.ndarray) -> np.ndarray:
    """rapidocr's `TextClassifier.resize_norm_img`: height 48, aspect kept (width at most 192, rounded up),
    (x/255 − 0.5)/0.5 in the image's BGR order, zeros padded on the right after normalising. [3,48,192]"""
    _, height, width = CLS_SHAPE
    h, w = image.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / float(h))))
    resized = _cv2().resize(image, (resized_w, height)).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros(CLS_SHAPE, dtype=np.float32)
    out[:, :, :resized_w] = (resized - 0.5) / 0.5
    return out


def detector_input(image: np.ndarray) -> np.ndarray:
    """rapidocr's `DetPreProcess` for an image whose sides are already multiples of 32: BGR, x/255, then
    (x − 0.5)/0.5, channels first. [3,H,W]"""
    return ((image.astype(np.float32) * (1 / 255.0) - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)


def classifier_line(index: int, *, seed: int = 0) -> np.ndarray:
    """Sample `index`'s upright text line as a BGR uint8 crop, with the margins a detector's box leaves."""
    rng = np.random.default_rng([seed, index])
    alpha = _line(rng, sizes=(20, 41), words=(2, 4))
    h = alpha.shape[0]
    top, bottom, side = (int(h * rng.uniform(0.15, 0.4)) for _ in range(3))
    return _paint(rng, np.pad(alpha, ((top, bottom), (side, int(h * rng.uniform(0.15, 0.4))))))


def classifier_data(n: int = 600, *, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Text lines for the direction classifier: label 0 upright, 1 turned by 180° (half each, in a seeded
    order), preprocessed as rapidocr does. ({"x": float32 [n,3,48,192]}, int64 [n])"""
    if n < 1:
        raise BadInput(f"classifier_data: n must be at least 1, got {n}")
    labels = np.random.default_rng(seed).permutation(np.arange(n) % 2).astype(np.int64)
    lines = (classifier_line(i, seed=seed) for i in range(n))
    x = np.stack([classifier_input(np.rot90(line, 2) if turned else line)
                  for line, turned in zip(lines, labels, strict=True)])
    return {"x": x}, labels


def classifier_factory() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`--data edgekit.ocr_zoo:classifier_factory`: `classifier_data()` with its defaults."""
    return classifier_data()


def detector_page(index: int, *, size: tuple[int, int] = (320, 320),
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Page `index`: a BGR uint8 image [H,W,3] with 1 to 5 lines of text that neither touch nor overlap,
    and their tight ink boxes, int64 [k,4] as x0, y0, x1, y1 (x1, y1 exclusive)."""
    height, width = size
    if height % 32 or width % 32 or min(size) < 64:
        raise BadInput(f"detector page size {tuple(size)}: sides must be multiples of 32 (DBNet's stride), at least 64")
    rng = np.random.default_rng([seed, index])
    coverage = np.zeros((height, width), dtype=np.uint8)
    taken = np.zeros((height, width), dtype=bool)
    boxes = []
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(20):
            alpha = _line(rng, sizes=(24, 41), words=(1, 4), max_width=width - 8)
            h, w = alpha.shape
            if h > height - 8 or w > width - 8:
                continue
            y, x = int(rng.integers(4, height - h - 3)), int(rng.integers(4, width - w - 3))
            gap_y, gap_x = max(4, int(0.4 * h)), 2 * h  # line spacing; on one row far apart, or they read as one
            if taken[max(0, y - gap_y) : y + h + gap_y, max(0, x - gap_x) : x + w + gap_x].any():
                continue
            taken[y : y + h, x : x + w] = True
            coverage[y : y + h, x : x + w] = alpha
            boxes.append((x, y, x + w, y + h))
            break
    return _paint(rng, coverage), np.array(boxes, dtype=np.int64).reshape(-1, 4)


def detector_boxes(n: int = 120, *, size: tuple[int, int] = (320, 320), seed: int = 0) -> list[np.ndarray]:
    """The ground-truth boxes of `detector_data(n, size=size, seed=seed)`, one int64 [k,4] array a page."""
    return [detector_page(i, size=size, seed=seed)[1] for i in range(n)]


def detector_data(n: int = 120, *, size: tuple[int, int] = (320, 320), seed: int = 0):
    """Pages for the text detector, preprocessed as rapidocr does, and their ground-truth masks (1 inside
    each line's tight ink box). ({"x": float32 [n,3,H,W]}, uint8 [n,H,W])"""
    if n < 1:
        raise BadInput(f"detector_data: n must be at least 1, got {n}")
    pages = [detector_page(i, size=tuple(size), seed=seed) for i in range(n)]
    masks = np.zeros((n, *size), dtype=np.uint8)
    for mask, (_, boxes) in zip(masks, pages, strict=True):
        for x0, y0, x1, y1 in boxes:
            mask[y0:y1, x0:x1] = 1
    return {"x": np.stack([detector_input(image) for image, _ in pages])}, masks


def detector_factory() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`--data edgekit.ocr_zoo:detector_factory`: `detector_data()` with its defaults."""
    return detector_data()


def _regions(binary: np.ndarray) -> np.ndarray:
    """Bounding boxes x0, y0, x1, y1 (exclusive) of the 8-connected regions of a binary map. float [k,4]"""
    _, _, stats, _ = _cv2().connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    x, y, w, h = (stats[1:, i].astype(np.float64) for i in range(4))
    return np.stack([x, y, x + w, y + h], axis=1).reshape(-1, 4)


def db_boxes(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DBNet's post-processing for axis-aligned text, as rapidocr configures it: threshold at 0.3, a 2x2
    dilation, regions whose short side is under 3 pixels or whose mean probability is under 0.5 dropped.
    Returns each region's own box and its box grown by DB's unclip distance, area × 1.6 / perimeter."""
    binary = _cv2().dilate((probability > DB_THRESH).astype(np.uint8), np.ones((2, 2), np.uint8))
    boxes = _regions(binary)
    keep = [min(x1 - x0, y1 - y0) >= DB_MIN_SIZE and probability[int(y0) : int(y1), int(x0) : int(x1)].mean()
            >= DB_BOX_THRESH for x0, y0, x1, y1 in boxes]
    boxes = boxes[np.array(keep, dtype=bool)] if len(boxes) else boxes
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    d = (w * h * DB_UNCLIP_RATIO / np.maximum(2 * (w + h), 1))[:, None]
    return boxes, boxes + np.hstack([-d, -d, d, d])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [p,4] with every box of `b` [g,4]. [p,g]"""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda box: (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _matches(iou: np.ndarray, threshold: float = 0.5) -> int:
    """Pairs matched greedily, the highest IoU first, each box at most once, IoU at least `threshold`."""
    iou, found = iou.copy(), 0
    while iou.size and iou.max() >= threshold:
        p, g = np.unravel_index(np.argmax(iou), iou.shape)
        iou[p, :], iou[:, g], found = -1, -1, found + 1
    return found


def text_detection_f1(outputs: list[np.ndarray], labels: np.ndarray | None,
                      reference: list[np.ndarray] | None) -> float:
    """F1 of the detected text lines over the whole split, higher is better (an edgekit metric).

    `outputs[0]` is the detector's probability map [N,1,H,W] (or [N,H,W]); `labels` the ground-truth
    masks [N,H,W], whose 8-connected regions are the true boxes. Predicted boxes come from DB's
    post-processing (`db_boxes`) and match a true box one-to-one, greedily, at IoU ≥ 0.5 (ICDAR's rule).
    A region is scored by the better of its unclipped box and its own box: a DB map is shrunk and needs
    the unclip, while a map that already covers whole lines (the ground truth fed back, a model trained
    on unshrunk masks) would be grown past its text by it.
    """
    if labels is None:
        raise BadInput("text_detection_f1 needs labels: ground-truth masks [N,H,W] (edgekit.ocr_zoo:detector_factory)")
    maps, masks = np.asarray(outputs[0], dtype=np.float32), np.asarray(labels)
    maps = maps[:, 0] if maps.ndim == 4 else maps
    if maps.shape != masks.shape:
        raise BadInput(f"text_detection_f1: maps {maps.shape} and masks {masks.shape} differ in shape")
    found = predicted = true = 0
    for probability, mask in zip(maps, masks, strict=True):
        own, unclipped = db_boxes(probability)
        truth = _regions(mask > 0)
        found += _matches(np.maximum(_iou(own, truth), _iou(unclipped, truth)))
        predicted, true = predicted + len(own), true + len(truth)
    return 1.0 if predicted + true == 0 else 2.0 * found / (predicted + true)


text_detection_f1.unit = "F1"
text_detection_f1.points = 100.0
