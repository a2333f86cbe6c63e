"""Tiny models in deepghs's exact file formats (bakery/craft/deepghs.py), for the demo and the tests: real ONNX
files with the real inputs, outputs and metadata files, whose answers are known by construction. They prove
the judging paths, not judging quality.

- CCIP: `model_feat.onnx` maps a picture to its mean colour (after CLIP mean/std) repeated 256 times (768-d), so
  two features' cosine is their mean colours' cosine; `model_metrics.onnx` gives (1 - cosine) / 2; `metrics.json`
  holds the real model's threshold (0.1785). Same-colour pictures are "the same character" (difference 0);
  red vs blue pictures differ by ~0.68.
- Classifiers (`model.onnx` + `meta.json`): a softmax over a linear map of four numbers: the mean R, G, B (after
  mean 0.5 / std 0.5, so -1..1) and the colourfulness (mean over pixels of the variance across channels: 0 for a
  grey picture, ~0.9 for pure red). Each preset below says what fires.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CCIP_THRESHOLD = 0.17847511429108218  # ccip-caformer-24-randaug-pruned's metrics.json


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _axes(name: str, axes: Sequence[int]):
    return numpy_helper.from_array(np.array(list(axes), dtype=np.int64), name)


def write_ccip(folder: Path, threshold: float = CCIP_THRESHOLD) -> Path:
    """`folder` as deepghs/ccip_onnx/<model>/: model_feat.onnx, model_metrics.onnx, metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    w = np.tile(np.eye(3, dtype=np.float32), (1, 256))  # [3, 768]: W W^T = 256 I keeps cosines
    _save(helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "hw"], ["m"], keepdims=0),
         helper.make_node("MatMul", ["m", "W"], ["output"])],
        "tiny_ccip_feat",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 384, 384])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 768])],
        [numpy_helper.from_array(w, "W"), _axes("hw", [2, 3])]), folder / "model_feat.onnx")
    _save(helper.make_graph(
        [helper.make_node("ReduceL2", ["input", "one"], ["len"], keepdims=1),
         helper.make_node("Div", ["input", "len"], ["u"]),
         helper.make_node("Transpose", ["u"], ["ut"], perm=[1, 0]),
         helper.make_node("MatMul", ["u", "ut"], ["cos"]),
         helper.make_node("Sub", ["c1", "cos"], ["d"]),
         helper.make_node("Mul", ["d", "half"], ["output"])],
        "tiny_ccip_metrics",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 768])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", "N"])],
        [_axes("one", [1]), numpy_helper.from_array(np.array(1.0, np.float32), "c1"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half")]), folder / "model_metrics.onnx")
    (folder / "metrics.json").write_text(json.dumps({"threshold": threshold}), encoding="utf-8")
    return folder


def write_classifier(folder: Path, labels: Sequence[str], weights: Sequence[Sequence[float]],
                     bias: Sequence[float], size: int = 64) -> Path:
    """`folder` as a deepghs classifier: model.onnx (input [N, 3, size, size], output softmax scores) and meta.json.
    `weights`: one row per label over (mean R, mean G, mean B, colourfulness)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = np.array(weights, dtype=np.float32).T  # [4, K]
    _save(helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "hw"], ["m"], keepdims=0),
         helper.make_node("ReduceMean", ["input", "c"], ["grey"], keepdims=1),
         helper.make_node("Sub", ["input", "grey"], ["dev"]),
         helper.make_node("Mul", ["dev", "dev"], ["sq"]),
         helper.make_node("ReduceMean", ["sq", "chw"], ["v"], keepdims=0),
         helper.make_node("Unsqueeze", ["v", "c"], ["v1"]),
         helper.make_node("Concat", ["m", "v1"], ["f"], axis=1),
         helper.make_node("MatMul", ["f", "W"], ["z0"]),
         helper.make_node("Add", ["z0", "b"], ["z"]),
         helper.make_node("Softmax", ["z"], ["output"], axis=1)],
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(labels)])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(bias, np.float32), "b"),
         _axes("hw", [2, 3]), _axes("c", [1]), _axes("chw", [1, 2, 3])]), folder / "model.onnx")
    (folder / "meta.json").write_text(json.dumps({"labels": list(labels)}), encoding="utf-8")
    return folder


def write_monochrome(folder: Path) -> Path:
    """deepghs/monochrome_detect: `monochrome` fires on grey pictures (colourfulness near 0)."""
    return write_classifier(folder, ["monochrome", "normal"], [(0, 0, 0, -40), (0, 0, 0, 0)], [2, 0])


def write_completeness(folder: Path) -> Path:
    """deepghs/anime_completeness: `rough` on near-white grey pictures (a sketch), `monochrome` on darker grey ones,
    `polished` on colour."""
    return write_classifier(folder, ["polished", "rough", "monochrome"],
                            [(0, 0, 0, 0), (3, 3, 3, -40), (0, 0, 0, -40)], [0, -4, 2])


def write_anime_kind(folder: Path) -> Path:
    """deepghs/anime_classification: `3d` on green pictures, `comic` on grey ones, `illustration` otherwise."""
    return write_classifier(folder, ["3d", "bangumi", "comic", "illustration", "not_painting"],
                            [(-3, 6, -3, 0), (0, 0, 0, 0), (0, 0, 0, -40), (0, 0, 0, 0), (0, 0, 0, 0)],
                            [-2, -5, 2, 1, -5])


def write_aesthetic(folder: Path) -> Path:
    """deepghs/anime_aesthetic: bright pictures score high, dark ones `worst`; samples.npz maps score s to
    percentile s / 6."""
    write_classifier(folder, ["worst", "low", "normal", "good", "great", "best", "masterpiece"],
                     [((i - 3) * 2.0,) * 3 + (0,) for i in range(7)], [0.0] * 7)
    np.savez(folder / "samples.npz", np.stack([np.linspace(0, 6, 7), np.linspace(0, 1, 7)]))
    return folder


def write_corruption(folder: Path) -> Path:
    """deepghs/ai_image_corrupted: `corrupted` fires on magenta pictures (R and B high, G low)."""
    return write_classifier(folder, ["normal", "corrupted"], [(0, 0, 0, 0), (4, -6, 4, 0)], [0, -8])


def write_all(folder: Path) -> dict[str, Path]:
    """Every model, each in its own folder under `folder`: key -> folder."""
    return {"ccip": write_ccip(folder / "ccip"), "corrupt": write_corruption(folder / "corrupt"),
            "monochrome": write_monochrome(folder / "monochrome"),
            "completeness": write_completeness(folder / "completeness"),
            "kind": write_anime_kind(folder / "kind"), "aesthetic": write_aesthetic(folder / "aesthetic")}
