"""Single-file checkpoints (original LDM layout) loaded with no network.

diffusers' `from_single_file` reads the weights from the file but the configs (model_index.json,
each part's config.json, the scheduler's, the tokenizers' vocabulary) from a diffusers repo on the
hub, unless `config=` names a local folder. This module builds that folder from what ships with the
package:

- `bakery/configs/sd15/` and `bakery/configs/sdxl/`: the configs of stable-diffusion-v1-5 and
  stable-diffusion-xl-base-1.0 (UNet, VAE, text encoder(s), scheduler, tokenizer settings);
- the tokenizers' `vocab.json` + `merges.txt`: CLIP's BPE, rebuilt from `bpe_simple_vocab_16e6.txt.gz`
  (OpenAI's file, shipped in the open-clip-torch package) exactly as CLIP builds its vocabulary: the
  256 byte symbols, the same with `</w>`, the 48,894 merges, then `<|startoftext|>`, `<|endoftext|>`
  (49,408 tokens, what every SD1.5/SDXL tokenizer folder holds).

The folder is written once (under the temp dir) and reused.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parents[3] / "configs"  # bakery/configs
MERGES = 48894  # CLIP's: 49408 tokens = 512 byte symbols + 48894 merges + 2 specials
TOKENIZERS = {"sd15": ("tokenizer",), "sdxl": ("tokenizer", "tokenizer_2")}


def bpe_file() -> Path:
    """CLIP's BPE merges as open-clip-torch ships them (found without importing the package)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open-clip-torch is not installed: it ships CLIP's BPE vocabulary "
                                "(pip install open-clip-torch)")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_vocab(folder: Path, bpe: Path | None = None) -> int:
    """CLIP's `vocab.json` + `merges.txt` into `folder`; returns the vocabulary size (49408)."""
    from bakery.testmodels.tiny_sd15 import _bytes_to_unicode

    lines = gzip.open(bpe or bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges),
                                       encoding="utf-8")
    return len(tokens)


def config_folder(architecture: str, dest: Path, source: Path | None = None) -> Path:
    """The diffusers config folder for `architecture` ('sd15' | 'sdxl') at `dest/<architecture>` (built once).

    `source`: a folder of configs to use instead of the shipped ones (same layout)."""
    if architecture not in TOKENIZERS:
        raise ValueError(f"architecture must be 'sd15' or 'sdxl', got {architecture!r}")
    folder = Path(dest) / architecture
    if (folder / "model_index.json").exists():
        return folder
    Path(dest).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{architecture}-", dir=dest)) / architecture  # another process may build too
    shutil.copytree(source or CONFIGS / architecture, tmp)
    for name in TOKENIZERS[architecture]:
        if not (tmp / name / "vocab.json").exists():
            write_clip_vocab(tmp / name)
        (tmp / name / "special_tokens_map.json").write_text(json.dumps({
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": json.loads((tmp / name / "tokenizer_config.json").read_text())["pad_token"]}))
    try:
        tmp.rename(folder)
    except OSError:  # built meanwhile by another process
        if not (folder / "model_index.json").exists():
            raise
    shutil.rmtree(tmp.parent, ignore_errors=True)
    return folder


def shipped_config(architecture: str) -> Path:
    """The shipped configs of `architecture` as a diffusers config folder (built once per machine and
    version of the configs: the folder is named after their hash)."""
    digest = hashlib.sha256()
    for f in sorted(CONFIGS.rglob("*.json")):
        digest.update(f.relative_to(CONFIGS).as_posix().encode() + f.read_bytes())
    return config_folder(architecture, Path(tempfile.gettempdir()) / f"bakery-configs-{digest.hexdigest()[:12]}")


def config_for(path: Path | str, architecture: str) -> Path | None:
    """The shipped config folder for a single file of `architecture`; None for an SD2.x file (OpenCLIP text
    encoder under `cond_stage_model.model.`), which only diffusers' own (hub) configs describe."""
    if Path(path).suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if any(k.startswith("cond_stage_model.model.") for k in f.keys()):
                return None
    return shipped_config(architecture)


def load_single_file(cls: Any, path: Path | str, config: Path | None, **kwargs: Any) -> Any:
    """`cls.from_single_file` with every config from the local folder `config`: nothing is fetched
    (`config` None: diffusers' own, from the hub or its cache)."""
    if config is None:
        return cls.from_single_file(str(path), **kwargs)
    return cls.from_single_file(str(path), config=str(config), local_files_only=True, **kwargs)
