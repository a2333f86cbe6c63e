"""Face / head / person / half-body detectors: ONNX YOLO files as deepghs publishes them, AnimeFace as a fallback.

The deepghs detectors (imgutils `detect_faces`, `detect_heads`, `detect_person`, `detect_halfbody`; the
`deepghs/anime_face_detection`, `anime_head_detection`, `anime_person_detection`, `anime_halfbody_detection`
repositories) are ultralytics YOLO exports: input `images` float32 [1, 3, H, W], RGB / 255, the picture
stretched to H x W (no letterbox); output `output0` either [1, 4 + classes, boxes] (centre x, centre y,
width, height in input pixels, then one score per class; NMS is ours) or, for end-to-end exports
(YOLOv10), [1, boxes, 6] (x0, y0, x1, y1, score, class). The class names are the model's `names`
metadata (`{0: 'face'}`), the input size its `imgsz` metadata or the input's own shape.

AnimeFace (python-animeface, its wheels ship the trained library) finds faces only, with a hair colour.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the picture


class DetectorError(ValueError):
    """A configured detector that cannot be used (missing, not an ONNX YOLO detector)."""


@dataclass(frozen=True)
class Detection:
    label: str  # face | head | person | halfbody (the model's own class name)
    score: float
    box: Box
    hair: tuple[int, int, int] | None = None  # AnimeFace gives the hair colour


def iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        order = [j for j in order if iou(tuple(boxes[i]), tuple(boxes[j])) <= iou_threshold]
    return keep


def decode(output: np.ndarray, labels: Sequence[str], input_size: tuple[int, int], picture_size: tuple[int, int],
           conf: float = 0.25, iou_threshold: float = 0.7) -> list[Detection]:
    """One picture's raw YOLO output ([4 + classes, boxes] or end-to-end [boxes, 6]) -> detections in its pixels.

    `input_size` and `picture_size` are (width, height): boxes are scaled from the first to the second.
    """
    if output.ndim == 2 and output.shape[-1] == 6 and output.shape[0] != 4 + len(labels):
        rows = output[output[:, 4] > conf]
        boxes, scores, classes = rows[:, :4], rows[:, 4], rows[:, 5].astype(int)
    elif output.ndim == 2 and output.shape[0] == 4 + len(labels):
        rows = output.T
        class_scores = rows[:, 4:]
        scores, classes = class_scores.max(axis=1), class_scores.argmax(axis=1)
        chosen = scores > conf
        xywh, scores, classes = rows[chosen, :4], scores[chosen], classes[chosen]
        boxes = np.stack([xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                          xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2], axis=1) if len(xywh) else xywh
    else:
        raise DetectorError(f"output shape {list(output.shape)} is neither [4 + {len(labels)} classes, boxes] "
                            "nor [boxes, 6]")
    sx, sy = picture_size[0] / input_size[0], picture_size[1] / input_size[1]
    found = []
    for i in nms(boxes, scores, iou_threshold):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        box = (min(max(x0 * sx, 0.0), picture_size[0]), min(max(y0 * sy, 0.0), picture_size[1]),
               min(max(x1 * sx, 0.0), picture_size[0]), min(max(y1 * sy, 0.0), picture_size[1]))
        if box[2] > box[0] and box[3] > box[1] and 0 <= classes[i] < len(labels):
            found.append(Detection(labels[int(classes[i])], float(scores[i]), box))
    return found


def _labels(meta: dict[str, str], key: str, path: Path) -> list[str]:
    """The class names from the `names` metadata (a Python dict literal, as ultralytics writes it)."""
    if "names" not in meta:
        raise DetectorError(f"{key} = {path}: no `names` metadata, not an ultralytics YOLO export")
    try:
        names = ast.literal_eval(meta["names"])
        return [str(names[i]) for i in range(len(names))]
    except (ValueError, SyntaxError, KeyError, TypeError):
        raise DetectorError(f"{key} = {path}: unreadable `names` metadata {meta['names']!r}") from None


class YoloDetector:
    """One deepghs-format ONNX YOLO detector; `key` is the recipe key that named it (for error messages)."""

    def __init__(self, path: Path, key: str, conf: float = 0.25, iou_threshold: float = 0.7, threads: int | None = None,
                 max_side: int | None = None):
        import onnxruntime as ort

        from bakery.craft.caption.wd14 import default_providers

        if not path.is_file():
            raise DetectorError(f"{key} = {path}: no such file (a deepghs YOLO detector .onnx)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=default_providers())
        except Exception as exc:  # onnxruntime raises its own types for a non-ONNX file
            raise DetectorError(f"{key} = {path}: not an ONNX model ({type(exc).__name__})") from None
        self.key, self.conf, self.iou_threshold = key, conf, iou_threshold
        self.labels = _labels(self.session.get_modelmeta().custom_metadata_map, key, path)
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or inp.shape[1] != 3:
            raise DetectorError(f"{key} = {path}: input {inp.name} has shape {inp.shape}, expected [1, 3, H, W]")
        self.input_name, self.input_size = inp.name, self._input_size(inp.shape, path)
        self.max_side = max_side
        if max_side and isinstance(inp.shape[2], int) and isinstance(inp.shape[3], int):
            raise DetectorError(f"{key} = {path}: its input is fixed at {inp.shape[3]}x{inp.shape[2]}, so "
                                "crops.detector_size cannot apply: unset it, or export the model with a dynamic input")

    def _input_size(self, shape: list, path: Path) -> tuple[int, int]:
        """(width, height) the picture is stretched to: `imgsz` metadata ([h, w]) or the input's fixed shape."""
        meta = self.session.get_modelmeta().custom_metadata_map
        if "imgsz" in meta:
            h, w = json.loads(meta["imgsz"])
            return int(w), int(h)
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            return shape[3], shape[2]
        return 640, 640

    def prepare(self, image: "Image.Image") -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """The model's input for a picture, with the picture's size and the input's (to scale the boxes back):
        may run in another thread."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        size = aspect_size(image.size, self.max_side) if self.max_side else self.input_size
        chw = np.ascontiguousarray(_stretch(rgb, size).transpose(2, 0, 1))
        data = chw.astype(np.float32)
        data *= 1 / 255.0
        return data[None], image.size, size

    def detect(self, image: "Image.Image") -> list[Detection]:
        return self.infer(self.prepare(image))

    def infer(self, prepared: tuple[np.ndarray, tuple[int, int], tuple[int, int]]) -> list[Detection]:
        data, size, input_size = prepared
        (output,) = self.session.run(None, {self.input_name: data})[:1]
        if output.ndim != 3 or output.shape[0] != 1:
            raise DetectorError(f"{self.key}: output shape {list(output.shape)}, expected [1, 4 + classes, boxes]")
        try:
            return decode(output[0], self.labels, input_size, size, self.conf, self.iou_threshold)
        except DetectorError as exc:
            raise DetectorError(f"{self.key}: {exc}") from None


def aspect_size(size: tuple[int, int], max_side: int, align: int = 32) -> tuple[int, int]:
    """(width, height) a dynamic-input model sees: the picture's aspect kept, its longer side at most `max_side`,
    each side rounded up to `align` (imgutils' `_image_preprocess` with allow_dynamic)."""
    w, h = size
    r = min(1.0, max_side / max(w, h))
    return int(math.ceil(w * r / align) * align), int(math.ceil(h * r / align) * align)


def _stretch(image: "Image.Image", size: tuple[int, int]) -> np.ndarray:
    """The picture stretched to `size` as uint8 HWC: OpenCV's bilinear (as ultralytics resizes; several times
    faster than Pillow's antialiased one), Pillow's bilinear where OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        from PIL import Image as PILImage

        return np.asarray(image.resize(size, PILImage.Resampling.BILINEAR))
    return cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_LINEAR)


class AnimeFaceDetector:
    """The AnimeFace library (python-animeface) as a face detector: faces with their hair colour."""

    key = "animeface"

    def __init__(self, min_likelihood: float = 0.5):
        import animeface  # noqa: F401  (fails here, not per picture, when it is not installed)

        self.min_likelihood = min_likelihood
        self.labels = ["face"]

    def prepare(self, image: "Image.Image") -> "Image.Image":
        return image.convert("RGB")

    def infer(self, prepared: "Image.Image") -> list[Detection]:
        return self.detect(prepared)

    def detect(self, image: "Image.Image") -> list[Detection]:
        import animeface

        found = []
        for f in animeface.detect(image.convert("RGB")):
            if f.likelihood < self.min_likelihood:
                continue
            b = f.face.pos
            hair = f.hair.color
            found.append(Detection("face", float(f.likelihood), (b.x, b.y, b.x + b.width, b.y + b.height),
                                   (hair.r, hair.g, hair.b)))
        return found


def animeface_available() -> bool:
    try:
        import animeface  # noqa: F401
    except ImportError:
        return False
    return True
