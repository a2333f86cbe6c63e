"""sd-scripts' dataset-config check, as train_network.py runs it, to test `bakery export-kohya` against.

A transcription of `ConfigSanitizer` (the user-config half) and of the subset-class choice in
`BlueprintGenerator.generate`, from kohya-ss/sd-scripts `library/config_util.py` at commit
264167fa1636c79f106c63c3cdb67b6bee80aceb (sd3-branch code; v0.10.0 as far as we know). train_network.py
builds `ConfigSanitizer(True, True, args.masked_loss, True)` and reads the file with `toml.load`
(`config_util.load_user_config`). Keys sd-scripts added to these dicts later (e.g. resize_interpolation)
are keys we never write, so they cannot change a verdict here; at commit 48d368fa (main, February 2026)
these dicts differ only by resize_interpolation. The validation keys (`validation_split`, `validation_seed`) are
in both. Below: train_network.py's command-line arguments (tests/sd_scripts_args.json; anima_train_network.py's:
tests/sd_scripts_anima_args.json), which a --config_file's keys must be, and split_train_val's arithmetic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any as AnyType

import toml
import voluptuous
from voluptuous import Any, ExactSequence, Required, Schema


def _twodim(klass: type, value: Sequence) -> tuple:
    Schema(ExactSequence([klass, klass]))(value)
    return tuple(value)


def _scalar_or_twodim(klass: type, value: AnyType) -> tuple:
    Schema(Any(klass, ExactSequence([klass, klass])))(value)
    try:
        Schema(klass)(value)
        return (value, value)
    except voluptuous.Invalid:  # sd-scripts: a bare except
        return _twodim(klass, value)


SUBSET_ASCENDABLE_SCHEMA = {
    "color_aug": bool,
    "face_crop_aug_range": functools.partial(_twodim, float),
    "flip_aug": bool,
    "num_repeats": int,
    "random_crop": bool,
    "shuffle_caption": bool,
    "keep_tokens": int,
    "keep_tokens_separator": str,
    "secondary_separator": str,
    "caption_separator": str,
    "enable_wildcard": bool,
    "token_warmup_min": int,
    "token_warmup_step": Any(float, int),
    "caption_prefix": str,
    "caption_suffix": str,
    "custom_attributes": dict,
}
DO_SUBSET_ASCENDABLE_SCHEMA = {  # DO: dropout
    "caption_dropout_every_n_epochs": int,
    "caption_dropout_rate": Any(float, int),
    "caption_tag_dropout_rate": Any(float, int),
}
DB_SUBSET_ASCENDABLE_SCHEMA = {"caption_extension": str, "class_tokens": str, "cache_info": bool}  # DreamBooth
DB_SUBSET_DISTINCT_SCHEMA = {Required("image_dir"): str, "is_reg": bool, "alpha_mask": bool}
FT_SUBSET_DISTINCT_SCHEMA = {Required("metadata_file"): str, "image_dir": str, "alpha_mask": bool}  # fine tuning
CN_SUBSET_ASCENDABLE_SCHEMA = {"caption_extension": str, "cache_info": bool}  # ControlNet
CN_SUBSET_DISTINCT_SCHEMA = {Required("image_dir"): str, Required("conditioning_data_dir"): str}
DATASET_ASCENDABLE_SCHEMA = {
    "batch_size": int,
    "bucket_no_upscale": bool,
    "bucket_reso_steps": int,
    "enable_bucket": bool,
    "max_bucket_reso": int,
    "min_bucket_reso": int,
    "validation_seed": int,
    "validation_split": float,
    "resolution": functools.partial(_scalar_or_twodim, int),
    "network_multiplier": float,
}


def _merge(*dicts: dict) -> dict:
    """Later dicts win, as ConfigSanitizer.__merge_dict."""
    merged: dict = {}
    for d in dicts:
        merged.update(d)
    return merged


def user_config_validator(support_dreambooth: bool, support_finetuning: bool, support_controlnet: bool,
                          support_dropout: bool) -> Schema:
    """ConfigSanitizer(...).user_config_validator."""
    do = DO_SUBSET_ASCENDABLE_SCHEMA if support_dropout else {}
    db_subset = _merge(SUBSET_ASCENDABLE_SCHEMA, DB_SUBSET_DISTINCT_SCHEMA, DB_SUBSET_ASCENDABLE_SCHEMA, do)
    ft_subset = _merge(SUBSET_ASCENDABLE_SCHEMA, FT_SUBSET_DISTINCT_SCHEMA, do)
    cn_subset = _merge(SUBSET_ASCENDABLE_SCHEMA, CN_SUBSET_DISTINCT_SCHEMA, CN_SUBSET_ASCENDABLE_SCHEMA, do)
    db_dataset = _merge(DATASET_ASCENDABLE_SCHEMA, SUBSET_ASCENDABLE_SCHEMA, DB_SUBSET_ASCENDABLE_SCHEMA, do,
                        {"subsets": [db_subset]})
    ft_dataset = _merge(DATASET_ASCENDABLE_SCHEMA, SUBSET_ASCENDABLE_SCHEMA, do, {"subsets": [ft_subset]})
    cn_dataset = _merge(DATASET_ASCENDABLE_SCHEMA, SUBSET_ASCENDABLE_SCHEMA, CN_SUBSET_ASCENDABLE_SCHEMA, do,
                        {"subsets": [cn_subset]})

    dataset_schema: AnyType
    if support_dreambooth and support_finetuning:
        def dataset_schema(dataset_config: dict) -> dict:  # validate_flex_dataset
            subsets = dataset_config.get("subsets", [])
            if support_controlnet and all("conditioning_data_dir" in s for s in subsets):
                return Schema(cn_dataset)(dataset_config)
            if all("metadata_file" in s for s in subsets):
                return Schema(ft_dataset)(dataset_config)
            if all("metadata_file" not in s for s in subsets):
                return Schema(db_dataset)(dataset_config)
            raise voluptuous.Invalid("DreamBooth subset and fine tuning subset cannot be mixed in the same dataset.")
    elif support_dreambooth:
        dataset_schema = cn_dataset if support_controlnet else db_dataset
    elif support_finetuning:
        dataset_schema = ft_dataset
    else:
        dataset_schema = cn_dataset

    general = _merge(DATASET_ASCENDABLE_SCHEMA, SUBSET_ASCENDABLE_SCHEMA,
                     DB_SUBSET_ASCENDABLE_SCHEMA if support_dreambooth else {},
                     CN_SUBSET_ASCENDABLE_SCHEMA if support_controlnet else {}, do)
    return Schema({"general": general, "datasets": [dataset_schema]})


def subset_kind(dataset_config: dict) -> str:
    """The Subset class BlueprintGenerator.generate builds for a dataset's subsets."""
    subsets = dataset_config.get("subsets", [])
    if all("conditioning_data_dir" in s for s in subsets):
        return "controlnet"  # ControlNetSubset: no is_reg, no alpha_mask
    if all("metadata_file" not in s for s in subsets):
        return "dreambooth"  # DreamBoothSubset: is_reg, alpha_mask
    return "finetuning"


def check_train_network(dataset_config: Path, masked_loss: bool) -> dict:
    """The file as train_network.py's sanitizer returns it; raises voluptuous.MultipleInvalid when refused."""
    return user_config_validator(True, True, masked_loss, True)(toml.load(dataset_config))


# -- train_network.py's arguments (--config_file) ---------------------------------------------------
ARGS_FILE = Path(__file__).with_name("sd_scripts_args.json")  # its "source" and "how" say where it comes from
# anima_train_network.py's parser (train_network.py's, the DiT arguments and Anima's own): its own file.
ANIMA_ARGS_FILE = Path(__file__).with_name("sd_scripts_anima_args.json")
# train_network.py takes a bare number as well as the list its parser gives (its "backward compatibility" branch).
SCALAR_OR_LIST = {"text_encoder_lr"}


def train_arguments(script: str = "train_network.py") -> dict[str, dict]:
    """Every argument of sdxl_train_network.py / train_network.py (or anima_train_network.py): name -> type,
    action, nargs, choices."""
    import json

    path = ANIMA_ARGS_FILE if script == "anima_train_network.py" else ARGS_FILE
    return json.loads(path.read_text(encoding="utf-8"))["arguments"]


def _value_fits(spec: dict, value: AnyType) -> bool:
    kind = spec.get("type", "str")
    if spec.get("action") == "store_true":
        return isinstance(value, bool)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    one = {"int": isinstance(value, int) and not isinstance(value, bool), "float": number, "int_or_float": number,
           "str": isinstance(value, str), "Path": isinstance(value, str)}.get(kind, False)
    return one and ("choices" not in spec or value in spec["choices"])


def argument_problems(flat: dict[str, AnyType], script: str = "train_network.py") -> list[str]:
    """What sd-scripts would not take from a flattened --config_file: unknown names, values of the wrong kind.

    sd-scripts itself checks neither (train_util.read_config_from_file sets the TOML's values on the namespace)."""
    spec, problems = train_arguments(script), []
    for name, value in flat.items():
        if name not in spec:
            problems.append(f"{name}: not an argument of {script}")
            continue
        s = spec[name]
        if s.get("nargs") in ("*", "+") and not (name in SCALAR_OR_LIST and _value_fits(s, value)):
            if not (isinstance(value, list) and all(_value_fits(s, v) for v in value)):
                problems.append(f"{name}: {value!r} is not a list of {s.get('type', 'str')}")
        elif s.get("nargs") not in ("*", "+") and not _value_fits(s, value):
            problems.append(f"{name}: {value!r} does not fit {s}")
    return problems


def validation_counts(n: int, validation_split: float) -> tuple[int, int]:
    """(trained, validated) pictures of a subset of n: train_util.split_train_val's arithmetic."""
    return math.ceil(n * (1 - validation_split)), round(n * validation_split)
