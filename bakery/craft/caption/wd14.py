"""WD14 tagger (SmilingWolf wd-v1-4 / wd-v3 family) through onnxruntime (rules.md §9).

A model is a folder (or a Hugging Face repo) holding `model.onnx` and
`selected_tags.csv` (`tag_id,name,category,count`; category 9 = rating,
0 = general, 4 = character). Preprocessing follows SmilingWolf's reference
code: composite alpha on white, pad to a square on white, resize (bicubic) to
the model's input size, RGB -> BGR, float32 in 0-255, NHWC.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
CATEGORY_NAMES = {0: "general", 4: "character", 9: "rating"}


class TaggerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Prediction:
    tag: str
    category: str  # general | character | rating
    confidence: float


def resolve_model(model: str) -> Path:
    """A local folder with model.onnx + selected_tags.csv, or a hub repo id downloaded through huggingface_hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [f for f in (MODEL_FILE, TAGS_FILE) if not (path / f).is_file()]
        if missing:
            raise TaggerError(f"tagger folder {path} lacks {', '.join(missing)}: autotag.model needs a folder "
                              f"holding {MODEL_FILE} and {TAGS_FILE} (a SmilingWolf wd-v1-4/wd-v3 download)")
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise TaggerError(f"autotag.model '{model}' is neither a folder with {MODEL_FILE} + {TAGS_FILE} "
                          "nor a hub repo id like 'SmilingWolf/wd-v1-4-vit-tagger-v2'")
    try:
        from huggingface_hub import hf_hub_download

        onnx_path = hf_hub_download(model, MODEL_FILE)
        hf_hub_download(model, TAGS_FILE)
    except Exception as exc:  # offline, unknown repo, no permission
        raise TaggerError(f"cannot download tagger '{model}' from the Hugging Face hub ({type(exc).__name__}: {exc}); "
                          f"download it yourself and set autotag.model to the folder holding {MODEL_FILE} "
                          f"and {TAGS_FILE}") from None
    return Path(onnx_path).parent


def model_fingerprint(folder: Path) -> str:
    """Identity of a model's files (size + mtime: hashing 400 MB each run costs seconds)."""
    h = hashlib.sha256()
    for name in (MODEL_FILE, TAGS_FILE):
        st = (folder / name).stat()
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def read_tags_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "name" not in rows[0] or "category" not in rows[0]:
        raise TaggerError(f"{path}: expected a selected_tags.csv with columns tag_id,name,category,count")
    return [(r["name"], CATEGORY_NAMES.get(int(r["category"]), "general")) for r in rows]


def read_tag_counts(path: Path) -> dict[str, int]:
    """tag -> its Danbooru post count as the tagger's selected_tags.csv gives it (`count`); {} without the column.

    The rare-tag check's source for folder and Grabber pictures, which have no booru count (rules.md §9)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for r in rows:
        try:
            out[r["name"].strip().lower()] = int(r["count"])
        except (KeyError, TypeError, ValueError):  # no count column, or a blank cell: no count for that tag
            continue
    return out


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


class WD14Tagger:
    def __init__(self, folder: Path, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.folder = folder
        self.tags = read_tags_csv(folder / TAGS_FILE)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), opts, providers=list(providers or default_providers()))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise TaggerError(f"{folder / MODEL_FILE}: expected a 4-D image input, got shape {shape}")
        self.channels_first = shape[1] == 3 and shape[3] != 3
        size = shape[2] if self.channels_first else shape[1]
        if not isinstance(size, int):
            raise TaggerError(f"{folder / MODEL_FILE}: input size is not fixed ({shape})")
        self.size = size
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.tags):
            raise TaggerError(f"{folder}: model has {n_out} outputs but {TAGS_FILE} lists {len(self.tags)} tags")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def predict(self, images: Sequence[Image.Image], batch_size: int = 8) -> np.ndarray:
        """Probabilities, one row per image."""
        step = self.fixed_batch or max(1, batch_size)
        out = []
        for i in range(0, len(images), step):
            batch = np.stack([preprocess(im, self.size) for im in images[i : i + step]])
            n = len(batch)
            if self.fixed_batch and n < self.fixed_batch:  # pad a fixed-batch model's last batch
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.fixed_batch - n, axis=0)])
            if self.channels_first:
                batch = batch.transpose(0, 3, 1, 2)
            probs = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch)})[0]
            out.append(np.asarray(probs, dtype=np.float32)[:n])
        return np.concatenate(out) if out else np.zeros((0, len(self.tags)), np.float32)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """SmilingWolf's preprocessing: white background and padding, bicubic resize, BGR float32 0-255 (HWC)."""
    im = image
    if im.mode != "RGBA":
        im = im.convert("RGBA")
    canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
    canvas.alpha_composite(im)
    rgb = canvas.convert("RGB")
    side = max(rgb.size)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    arr = np.asarray(padded, dtype=np.float32)
    return arr[:, :, ::-1]  # RGB -> BGR


@dataclass(frozen=True)
class Thresholds:
    general: float = 0.35
    character: float = 0.85
    keep_rating: bool = False


def select(probs: np.ndarray, tags: Sequence[tuple[str, str]], th: Thresholds) -> list[Prediction]:
    """Tags over their category's threshold, most confident first; the top rating tag when kept."""
    out: list[Prediction] = []
    ratings = [(i, p) for i, ((_, cat), p) in enumerate(zip(tags, probs)) if cat == "rating"]
    for (name, cat), p in zip(tags, probs):
        if cat == "general" and p >= th.general or cat == "character" and p >= th.character:
            out.append(Prediction(name, cat, float(p)))
    out.sort(key=lambda pr: (-pr.confidence, pr.tag))
    if th.keep_rating and ratings:
        i, p = max(ratings, key=lambda x: x[1])
        out.append(Prediction(tags[i][0], "rating", float(p)))
    return out


def merge(*predictions: Sequence[Prediction]) -> list[Prediction]:
    """Two taggers' outputs as one: the union, each tag at its highest confidence (rules.md §9)."""
    best: dict[str, Prediction] = {}
    for preds in predictions:
        for p in preds:
            if p.tag not in best or p.confidence > best[p.tag].confidence:
                best[p.tag] = p
    return sorted(best.values(), key=lambda pr: (pr.category == "rating", -pr.confidence, pr.tag))
