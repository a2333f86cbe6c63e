"""A tiny WD14-format tagger for the demo and the tests: a real ONNX file with the wd-v1-4
signature plus selected_tags.csv. It proves the tagging path, not tagging quality.

Input `input_1:0` float32 [N, S, S, 3] (BGR, 0-255), output `predictions_sigmoid`
[N, tags]. The "network" averages each channel and maps it linearly to the tags,
so the expected tags of a flat-colour image are known: red fires `red_theme`,
blue fires `blue_theme` (checking the BGR order), dark images fire the character.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (name, category, weights on the mean B, G, R channels, bias)
TAGS = [
    ("general", 9, (0.0, 0.0, 0.0), 1.0),
    ("sensitive", 9, (0.0, 0.0, 0.0), -1.0),
    ("red_theme", 0, (-0.05, -0.05, 0.05), -3.0),
    ("blue_theme", 0, (0.05, -0.05, -0.05), -3.0),
    ("white_background", 0, (0.02, 0.02, 0.02), -12.0),
    ("simple_background", 0, (0.0, 0.0, 0.0), 0.0),  # always 0.5: over general 0.35
    ("chara_x", 4, (-0.05, -0.05, -0.05), 8.0),  # dark images
]


def write_tiny_wd14(folder: Path, size: int = 32, input_name: str = "input_1:0", batch: int | str = "N",
                    extra_tags: list[tuple[str, int, tuple[float, float, float], float]] | None = None,
                    counts: dict[str, int] | None = None) -> Path:
    """The model and its selected_tags.csv; `count` (Danbooru posts, the rare-tag check's) is 1000 + the tag's index
    unless `counts` names the tag."""
    tags = TAGS + (extra_tags or [])
    folder.mkdir(parents=True, exist_ok=True)
    w = np.array([t[2] for t in tags], dtype=np.float32).T  # [3, K]
    b = np.array([t[3] for t in tags], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Identity", [input_name], ["x"]),
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
            helper.make_node("MatMul", ["m", "W"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["predictions_sigmoid"]),
        ],
        "tiny_wd14",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(tags)])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    lines = ["tag_id,name,category,count"] + [f"{i},{n},{c},{(counts or {}).get(n, 1000 + i)}" for i, (n, c, _, _) in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
