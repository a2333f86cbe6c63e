"""The face judge of an evaluation: the share of renders with a detected face, and its hair colour against
the training set's (rules.md §13: "generic face / Picasso faces"; a LoRA that learnt the character draws
her face, with her hair colour).

Uses the recipe's face detector (`[crops] face_model` / `head_model`, else AnimeFace); without one the
judge is skipped with a note naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bakery.craft.prepare import detect
from bakery.craft.prepare.framing import FACE_LABELS, hair_colour, largest

SKIPPED = ("SKIPPED: no face detector: set [crops] face_model (a deepghs ONNX YOLO face detector) or "
           "`pip install animeface` to judge faces")
Cell = tuple[int, float]  # (epoch, weight)
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class FaceSpec:
    """The detector the judge loads: an ONNX YOLO file (its recipe key names it in errors) or AnimeFace."""

    kind: str  # onnx | animeface
    path: str = ""
    key: str = ""
    confidence: float = 0.25
    iou: float = 0.7

    def load(self) -> Any:
        if self.kind == "animeface":
            return detect.AnimeFaceDetector()
        from pathlib import Path

        return detect.YoloDetector(Path(self.path), self.key, self.confidence, self.iou)


@dataclass
class FaceScores:
    note: str = SKIPPED
    detector: str = ""
    reference_hair: RGB | None = None  # the training set's median hair colour (None: no face found in it)
    share: dict[Cell, float] = field(default_factory=dict)  # share of the cell's renders with a face
    hair_distance: dict[Cell, float] = field(default_factory=dict)  # mean RGB distance to the reference, 0-441

    def rows(self) -> list[dict]:
        return ([{"epoch": e, "weight": w, "judge": "face_share", "subject": "", "score": v}
                 for (e, w), v in sorted(self.share.items())]
                + [{"epoch": e, "weight": w, "judge": "hair_distance", "subject": "", "score": v}
                   for (e, w), v in sorted(self.hair_distance.items())])


def face_and_hair(model: Any, image: np.ndarray) -> tuple[bool, RGB | None]:
    """Whether the detector finds a face (or head) in the image, and the hair colour above the largest one."""
    from PIL import Image

    found = model.detect(Image.fromarray(image))
    face = largest(found, FACE_LABELS)
    if face is None:
        return False, None
    return True, face.hair or hair_colour(image, face.box)


def reference_hair(model: Any, images: list[np.ndarray]) -> RGB | None:
    """The median hair colour over the training images where a face is found."""
    hairs = [h for _, h in (face_and_hair(model, im) for im in images) if h is not None]
    if not hairs:
        return None
    med = np.median(np.array(hairs, dtype=float), axis=0)
    return int(med[0]), int(med[1]), int(med[2])


def score(found: Mapping[tuple, tuple[bool, RGB | None]], reference: RGB | None, detector: str) -> FaceScores:
    """Per (epoch, weight): the share of its renders (keys (epoch, weight, ...)) with a face, and how far their
    hair colour lies from the training set's (Euclidean RGB distance, mean over the renders with a face)."""
    out = FaceScores(note="", detector=detector, reference_hair=reference)
    by_cell: dict[Cell, list[tuple[bool, RGB | None]]] = {}
    for key, v in found.items():
        by_cell.setdefault((int(key[0]), float(key[1])), []).append(v)
    for cell, seen in sorted(by_cell.items()):
        out.share[cell] = sum(1 for ok, _ in seen if ok) / len(seen)
        hairs = [h for ok, h in seen if ok and h is not None]
        if reference is not None and hairs:
            out.hair_distance[cell] = float(np.mean([np.linalg.norm(np.subtract(h, reference)) for h in hairs]))
    if reference is None:
        out.note = "no face found in the training images: hair colour not compared"
    return out


def flags(scores: FaceScores, margin: float = 0.25) -> list[str]:
    """An epoch whose renders at weight 1 show a face less often than the base model's, by more than `margin`."""
    out = []
    for (e, w), share in sorted(scores.share.items()):
        base = scores.share.get((e, 0.0))
        if w == 1.0 and base is not None and base - share > margin:
            out.append(f"epoch {e}: faces found in {share:.0%} of the renders at weight 1 vs {base:.0%} without the "
                       "LoRA: the face is lost (rules.md §13: Picasso faces -> over-trained)")
    return out
