"""What stages hand each other: lists of images by content hash, plus skips and counts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, order=True)
class ImageRef:
    name: str  # source-relative name without extension, e.g. "chara/img001" or "anim0001"
    hash: str  # sha256 of the stored file
    mask: str = ""  # sha256 of its greyscale loss mask (white = train), set by the masks stage when QA passed


@dataclass(frozen=True)
class Skip:
    subject: str  # path, URL or image hash
    reason: str


@dataclass
class StageResult:
    images: list[ImageRef]
    skips: list[Skip] = field(default_factory=list)
    n_in: int = 0
    n_processed: int = 0  # worked on in this run (the rest reused from the catalog)
    # What a late stage hands on besides images: TrainSet (prune), BakeOutput (bake),
    # the report path (evaluate). None for the per-image stages.
    payload: object = None
    # Output name -> the input picture it came from, where they differ (frames, renamed
    # collisions, ingest's files): the conservation check follows it (bakery/account.py).
    origins: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # about pictures that go on (not skips)

    @property
    def n_out(self) -> int:
        return len(self.images)


@dataclass(frozen=True, order=True)
class TrainImage:
    """One image of the training set, as kohya sees it: `img/<repeats>_<folder>/<name>.png` + `.txt`."""

    folder: str  # concept group without repeats: "CharaA", "CharaA_outfit1", "misc"
    name: str
    image_hash: str  # the final prepared image
    caption: str  # final caption, trigger first ("trigger, tag, tag"); may hold the keep-tokens separator "|||"
    repeats: int
    mask_hash: str = ""  # "" = no masked loss for this image
    is_reg: bool = False  # a regularisation image (prior loss), `reg/<repeats>_<folder>/`

    @property
    def kohya_dir(self) -> str:
        return f"{self.repeats}_{self.folder}"

    @property
    def subject(self) -> str:
        """Its name in a stage's picture account: `folder/name`, `reg/folder/name` for a regularisation image."""
        return ("reg/" if self.is_reg else "") + f"{self.folder}/{self.name}"


def picture_subjects(inputs: object) -> list[str] | None:
    """How a stage's input pictures are named in its skips and origins; None: its input holds no pictures.

    A list of ImageRefs is named by `ImageRef.name`; other inputs say it with a `subjects()` method.
    """
    if isinstance(inputs, list) and all(isinstance(r, ImageRef) for r in inputs):
        return [r.name for r in inputs]
    subjects = getattr(inputs, "subjects", None)
    return subjects() if callable(subjects) else None


@dataclass
class TrainSet:
    """What the prune stage hands the bake stage."""

    images: list[TrainImage]
    triggers: list[str]  # every trigger word, for metadata and evaluation prompts
    # A style LoRA captioned with no tags (rules.md §10 mode 1): train the UNet only.
    unet_only: bool = False
    # Captions hold the keep-tokens separator "|||" after their triggers.
    keep_tokens_separator: bool = False
    warnings: list[str] = field(default_factory=list)  # caption/repeat checks from the guide
    # The validation loss's pictures (bakery/craft/caption/holdout.py): held out of `images` (never trained on),
    # or, when `validation_held_out` is False, training pictures also in `images`. [] = no validation loss.
    validation: list[TrainImage] = field(default_factory=list)
    validation_held_out: bool = True
    # Folder -> the tags at the head of its captions that never move (prefix tags + its triggers): our bake keeps
    # them in place whatever train.keep_tokens says, as export-kohya's keep_tokens per folder (rules.md §10).
    heads: dict[str, int] = field(default_factory=dict)
    # Added to the evaluation renders' negative prompt: the composition report's (mostly monochrome: rules.md §3).
    eval_negatives: list[str] = field(default_factory=list)

    def held_out(self) -> list[TrainImage]:
        """The pictures of the set that are not trained on: the held-out validation pictures."""
        return list(self.validation) if self.validation_held_out else []

    def subjects(self) -> list[str]:
        return [t.subject for t in self.images + self.held_out()]


@dataclass
class BakeOutput:
    """What the bake stage hands the evaluate stage."""

    name: str  # output name: files are `<name>-<epoch:06d>.safetensors` (kohya's naming)
    base_model: str  # what it was trained on: a diffusers folder, a single .safetensors file or a hub id
    architecture: str  # "sd15" | "sdxl"
    files: dict[int, str]  # epoch -> kohya/A1111-format LoRA file (what users publish)
    bake_key: str  # this bake's id in the catalog's `bake_log` (loss per step)
    triggers: list[str]
    clip_skip: int = 2
    base_files: dict[str, str] = field(default_factory=dict)  # what loaded with the base (bases/family.py BaseFiles)


def digest(items: object) -> str:
    """A stable sha256 of JSON-able data (dataclasses included)."""

    def default(o: object) -> object:
        return asdict(o)  # type: ignore[call-overload]

    payload = json.dumps(items, sort_keys=True, default=default, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
