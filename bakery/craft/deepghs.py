"""deepghs's ONNX judges, read from local folders as dghs-imgutils 0.19.0 reads them from the Hugging Face hub.

- CCIP ("same character?", `deepghs/ccip_onnx/<model>/`): `model_feat.onnx` (input `input` [N, 3, 384, 384]:
  RGB resized bilinear to 384x384, /255, CLIP mean/std; output `output` [N, 768]), `model_metrics.onnx` (input
  `input` [N, 768] features, output `output` [N, N] pairwise differences), `metrics.json` (`threshold`: a difference
  at or below it is the same character; 0.1785 for ccip-caformer-24-randaug-pruned). imgutils
  `metrics/ccip.py`: ccip_batch_extract_features, ccip_batch_differences, ccip_default_threshold, ccip_merge.
- Classifiers (`imgutils/generic/classify.py` ClassifyModel; `deepghs/monochrome_detect`, `deepghs/anime_completeness`
  (polished / rough / monochrome), `deepghs/anime_classification` (3d / bangumi / comic / illustration /
  not_painting), `deepghs/anime_aesthetic`, and sdeval's corruption model `deepghs/ai_image_corrupted`
  (`corrupted` / ...): a folder `<model>/` with `model.onnx` (input `input` [N, 3, H, W]: RGB with alpha put on
  white, resized bilinear to the model's H x W (384 x 384 when the model does not fix them), /255, mean 0.5 std 0.5;
  output `output` [N, labels]: the scores) and `meta.json` (`labels`, in the output's order). A model shipping
  `preprocess.json` (its own transform stages) is refused with a clear error: those stages are not read here.
- The aesthetic score (`imgutils/metrics/dbaesthetic.py`): sum of score x index over the labels worst, low, normal,
  good, great, best, masterpiece; its percentile from the folder's `samples.npz` (row 0 scores, row 1 percentiles,
  linear in between, clipped at the ends) when the folder has it.

Why dghs-imgutils is not used: 0.19.0 requires numpy < 2 (the bakery runs numpy 2, which torch, diffusers and
transformers here are built against) and pulls opencv-contrib-python, pandas, scikit-learn, gradio-free but large
extras; it also downloads every model by name from the hub, while the bakery reads the folders the recipe names
(no network). The few lines above are all it does for these models, so they are written here, to its formats.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CCIP_FILES = ("model_feat.onnx", "model_metrics.onnx", "metrics.json")
CLASSIFIER_FILES = ("model.onnx", "meta.json")
AESTHETIC_LABELS = ("worst", "low", "normal", "good", "great", "best", "masterpiece")
Picture = Image.Image | np.ndarray


class ModelError(RuntimeError):
    """A model folder that is not in the deepghs format; the message names the recipe key."""


def missing_files(folder: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


def check_folder(folder: str | Path, key: str, names: Sequence[str], what: str) -> Path:
    folder = Path(folder)
    gone = missing_files(folder, names)
    if gone:
        raise ModelError(f"{key} = {str(folder)!r} is not a {what} folder: {', '.join(gone)} missing")
    return folder


def rgb(picture: Picture) -> Image.Image:
    """RGB, alpha composited on white (imgutils load_image(force_background='white'))."""
    im = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, dtype=np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        back = Image.new("RGBA", im.size, (255, 255, 255, 255))
        back.alpha_composite(im)
        im = back
    return im.convert("RGB")


def encode(picture: Picture, size: tuple[int, int], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[3, H, W] float32: resized bilinear to `size` (width, height), 0-1, normalised per channel."""
    data = np.asarray(rgb(picture).resize(size, Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((data - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)).astype(np.float32)


def session(path: Path):
    """An onnxruntime session on the providers the tagger uses (CUDA when onnxruntime-gpu has it, else CPU)."""
    import onnxruntime as ort

    from bakery.craft.caption.wd14 import default_providers

    return ort.InferenceSession(str(path), providers=default_providers())


def fingerprint(folder: Path, names: Sequence[str]) -> str:
    """The model's identity: a digest of its files (features are cached under it)."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0" + (folder / n).read_bytes())
    return h.hexdigest()[:16]


def picture_key(picture: Picture) -> str:
    """A picture's content hash (its pixels and size): the feature cache's key."""
    a = np.ascontiguousarray(np.asarray(rgb(picture), dtype=np.uint8))
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


class CCIP:
    """A CCIP model folder: features, pairwise differences, the threshold (or the recipe's)."""

    def __init__(self, folder: str | Path, key: str, threshold: float | None = None, cache: Path | None = None):
        self.folder = check_folder(folder, key, CCIP_FILES, "CCIP (model_feat.onnx, model_metrics.onnx, metrics.json)")
        self.key = key
        self.threshold = float(threshold if threshold is not None else
                               json.loads((self.folder / "metrics.json").read_text(encoding="utf-8"))["threshold"])
        self.id = fingerprint(self.folder, CCIP_FILES)
        self.cache = (cache / self.id) if cache is not None else None
        self._feat = session(self.folder / "model_feat.onnx")
        self._metrics = session(self.folder / "model_metrics.onnx")
        self.computed = 0  # features run through the model (not from the cache)

    def features(self, pictures: Sequence[Picture], batch: int = 16) -> np.ndarray:
        """[N, 768]: one feature per picture, read from the cache by content hash when there."""
        keys = [picture_key(p) for p in pictures] if self.cache is not None else [""] * len(pictures)
        out: dict[int, np.ndarray] = {}
        todo = [i for i, k in enumerate(keys) if not (k and self._cached(k, out, i))]
        for s in range(0, len(todo), batch):
            idx = todo[s:s + batch]
            data = np.stack([encode(pictures[i], (384, 384), CLIP_MEAN, CLIP_STD) for i in idx])
            feats, = self._feat.run(["output"], {"input": data})
            self.computed += len(idx)
            for i, f in zip(idx, feats):
                out[i] = np.asarray(f, dtype=np.float32)
                if keys[i]:
                    self._store(keys[i], out[i])
        return np.stack([out[i] for i in range(len(pictures))]) if pictures else np.zeros((0, 768), np.float32)

    def _cached(self, key: str, out: dict[int, np.ndarray], i: int) -> bool:
        path = self.cache / f"{key}.npy"
        if path.is_file():
            out[i] = np.load(path)
            return True
        return False

    def _store(self, key: str, feat: np.ndarray) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = self.cache / f"{key}.tmp.npy"
        np.save(tmp, feat)
        tmp.replace(self.cache / f"{key}.npy")

    def differences(self, feats: np.ndarray) -> np.ndarray:
        """[N, N] CCIP differences (smaller: more alike)."""
        if len(feats) == 0:
            return np.zeros((0, 0), np.float32)
        out, = self._metrics.run(["output"], {"input": np.asarray(feats, dtype=np.float32)})
        return np.asarray(out)

    def cross(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """[len(a), len(b)] differences between two sets (one metrics run over both)."""
        return self.differences(np.concatenate([a, b]))[:len(a), len(a):]


def merge(feats: np.ndarray) -> np.ndarray:
    """One feature standing for a set (imgutils ccip_merge): the mean direction at the mean length."""
    lengths = np.linalg.norm(feats, axis=-1)
    mean = (feats / lengths.reshape(-1, 1)).mean(axis=0)
    return (mean / np.linalg.norm(mean) * lengths.mean()).astype(np.float32)


class Classifier:
    """A deepghs classifier folder (model.onnx + meta.json): label -> score per picture."""

    def __init__(self, folder: str | Path, key: str):
        self.folder = check_folder(folder, key, CLASSIFIER_FILES, "deepghs classifier (model.onnx, meta.json)")
        if (self.folder / "preprocess.json").is_file():
            raise ModelError(f"{key} = {str(folder)!r} ships preprocess.json: its own transform stages are not read "
                             "here (imgutils' create_pillow_transforms); use a model without one")
        self.key = key
        meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        self.labels = [str(x) for x in meta["labels"]]
        self._model = session(self.folder / "model.onnx")
        _, _, h, w = self._model.get_inputs()[0].shape
        self.size = (w, h) if isinstance(h, int) and isinstance(w, int) else (384, 384)

    def scores(self, pictures: Sequence[Picture]) -> list[dict[str, float]]:
        half = np.array([0.5], dtype=np.float32)
        out = []
        for p in pictures:  # one at a time, as imgutils runs them
            row, = self._model.run(["output"], {"input": encode(p, self.size, half, half)[None]})
            out.append({lab: float(v) for lab, v in zip(self.labels, row[0])})
        return out


def aesthetic_score(scores: dict[str, float]) -> float:
    """imgutils dbaesthetic: the expected label index (0 worst .. 6 masterpiece)."""
    return float(sum(scores.get(lab, 0.0) * i for i, lab in enumerate(AESTHETIC_LABELS)))


def aesthetic_percentile(folder: Path) -> Callable[[float], float] | None:
    """Score -> percentile from the folder's samples.npz (None without one)."""
    path = Path(folder) / "samples.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        stacked = data["arr_0"]
    x, y = np.asarray(stacked[0], dtype=float), np.asarray(stacked[1], dtype=float)
    return lambda score: float(np.interp(score, x, y))
