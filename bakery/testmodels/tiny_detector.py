"""A tiny detector in the deepghs ONNX YOLO format whose boxes the caller sets by drawing.

Input `images` float32 [1, 3, S, S] (RGB / 255), output `output0` [1, 4 + 1, 3] (centre x, centre
y, width, height in input pixels, then the class score), `names` and `imgsz` metadata: what
imgutils' yolo helpers read. The graph finds the box around the pixels of one marker colour (pure
red for a face, say): box 0 is that box (score 0.9 when the colour is present, else 0), box 1 the
same box moved by one pixel with a lower score (non-maximum suppression must drop it), box 2 a
fixed box under any sensible confidence threshold. Tests draw the marker where the detection is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


def _const(helper, name: str, value: np.ndarray):
    from onnx import numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name))


def build_marker_detector(path: Path, label: str = "face", colour: tuple[int, int, int] = RED, size: int = 256,
                          score: float = 0.9, end_to_end: bool = False, dynamic: bool = False,
                          more: tuple[tuple[int, int, int], ...] = ()) -> Path:
    """Write the detector to `path` (an .onnx file) and return it. `end_to_end`: the [1, boxes, 6] output;
    `dynamic`: an input of any height and width (`size` is then only its `imgsz` metadata); `more`: further
    marker colours, each its own box (a picture of several heads: one marker colour per head)."""
    import onnx
    from onnx import TensorProto, helper

    if more and end_to_end:
        raise ValueError("more marker colours: the [4 + classes, boxes] output only")
    nodes = [_const(helper, "tol", np.array(0.2)), _const(helper, "half", np.array(0.5)),
             _const(helper, "score", np.array(score)),
             *(_dynamic_grid(helper) if dynamic else _fixed_grid(helper, size))]
    for i, c in enumerate((colour, *more)):
        nodes += _marker_box(helper, c, f"m{i}_" if i else "")
    if end_to_end:
        nodes += _end_to_end(helper)
    else:
        nodes += _yolo_rows(helper, [f"m{i}_" if i else "" for i in range(1 + len(more))])
    out_shape = [1, 3, 6] if end_to_end else [1, 5, 3 + 2 * len(more)]
    graph = helper.make_graph(
        nodes, "marker_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       [1, 3, "height", "width"] if dynamic else [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (("names", repr({0: label})), ("imgsz", f"[{size}, {size}]"), ("task", "detect")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _marker_box(helper, colour: tuple[int, int, int], p: str) -> list:
    """The box around one marker colour's pixels: {p}x0, {p}y0, {p}x1, {p}y1 and its score {p}s0."""
    from onnx import TensorProto

    c = np.array(colour, dtype=np.float32).reshape(1, 3, 1, 1) / 255.0
    nodes = [
        _const(helper, f"{p}colour", c),
        helper.make_node("Sub", ["images", f"{p}colour"], [f"{p}diff"]),
        helper.make_node("Abs", [f"{p}diff"], [f"{p}adiff"]),
        helper.make_node("ReduceMax", [f"{p}adiff"], [f"{p}far"], axes=[1], keepdims=0),
        helper.make_node("Less", [f"{p}far", "tol"], [f"{p}hit"]),
        helper.make_node("Cast", [f"{p}hit"], [f"{p}m"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", [f"{p}m"], [f"{p}found"], keepdims=0),
    ]
    for axis, grid_name in (("x", "xs"), ("y", "ys")):
        a = f"{p}{axis}"
        nodes += [
            helper.make_node("Mul", [f"{p}m", grid_name], [f"{a}_on"]),
            helper.make_node("ReduceMax", [f"{a}_on"], [f"{a}1c"], keepdims=0),
            helper.make_node("Sub", [f"{axis}size", grid_name], [f"{a}_rev"]),
            helper.make_node("Mul", [f"{p}m", f"{a}_rev"], [f"{a}_rev_on"]),
            helper.make_node("ReduceMax", [f"{a}_rev_on"], [f"{a}0r"], keepdims=0),
            helper.make_node("Sub", [f"{axis}size", f"{a}0r"], [f"{a}0c"]),
            helper.make_node("Sub", [f"{a}0c", "half"], [f"{a}0"]),
            helper.make_node("Add", [f"{a}1c", "half"], [f"{a}1"]),
        ]
    return nodes + [helper.make_node("Mul", [f"{p}found", "score"], [f"{p}s0"])]


def _fixed_grid(helper, size: int) -> list:
    """xs, ys: each pixel's centre, [1, S, S]; xsize, ysize: S."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(grid, grid)
    return [_const(helper, "xs", xs[None]), _const(helper, "ys", ys[None]),
            _const(helper, "xsize", np.array(float(size))), _const(helper, "ysize", np.array(float(size)))]


def _dynamic_grid(helper) -> list:
    """The same from the input's own shape: xs [1, 1, W], ys [1, H, 1] (broadcast), xsize W, ysize H."""
    from onnx import TensorProto

    nodes = [helper.make_node("Shape", ["images"], ["shape"]), _const(helper, "one", np.array(1.0)),
             _const_int(helper, "at_x", [0, 1]), _const_int(helper, "at_y", [0, 2])]
    for axis, dim, at in (("x", 3, "at_x"), ("y", 2, "at_y")):
        nodes += [
            _const_int(helper, f"{axis}dim", [dim]),
            helper.make_node("Gather", ["shape", f"{axis}dim"], [f"{axis}n1"]),
            helper.make_node("Squeeze", [f"{axis}n1"], [f"{axis}n"]),
            helper.make_node("Cast", [f"{axis}n"], [f"{axis}size"], to=TensorProto.FLOAT),
            helper.make_node("Add", [f"{axis}size", "half"], [f"{axis}end"]),
            helper.make_node("Range", ["half", f"{axis}end", "one"], [f"{axis}line"]),
            helper.make_node("Unsqueeze", [f"{axis}line", at], [f"{axis}s"]),
        ]
    return nodes


def _yolo_rows(helper, prefixes: list[str]) -> list:
    """[1, 5, 1 + 2 * markers]: rows cx, cy, w, h, score; columns per marker its box and its shifted copy, then a
    faint fixed box."""
    nodes = [_const_int(helper, "ax0", [0]), _const_int(helper, "ax1", [1]), _const(helper, "two", np.array(2.0)),
             _const(helper, "faint", np.array([[10.0], [10.0], [8.0], [8.0], [0.05]]))]
    columns = []
    for p in prefixes:
        nodes += [
            helper.make_node("Add", [f"{p}x0", f"{p}x1"], [f"{p}xsum"]),
            helper.make_node("Div", [f"{p}xsum", "two"], [f"{p}cx"]),
            helper.make_node("Add", [f"{p}y0", f"{p}y1"], [f"{p}ysum"]),
            helper.make_node("Div", [f"{p}ysum", "two"], [f"{p}cy"]),
            helper.make_node("Sub", [f"{p}x1", f"{p}x0"], [f"{p}w"]),
            helper.make_node("Sub", [f"{p}y1", f"{p}y0"], [f"{p}h"]),
            helper.make_node("Add", [f"{p}cx", "half"], [f"{p}cx2"]),
            helper.make_node("Add", [f"{p}cy", "half"], [f"{p}cy2"]),
            helper.make_node("Mul", [f"{p}s0", "half"], [f"{p}s1"]),
        ]
        for name, parts in ((f"{p}col0", ["cx", "cy", "w", "h", "s0"]), (f"{p}col1", ["cx2", "cy2", "w", "h", "s1"])):
            for i, part in enumerate(parts):
                nodes.append(helper.make_node("Unsqueeze", [f"{p}{part}", "ax0"], [f"{name}_{i}"]))
            nodes.append(helper.make_node("Concat", [f"{name}_{i}" for i in range(5)], [f"{name}_flat"], axis=0))
            nodes.append(helper.make_node("Unsqueeze", [f"{name}_flat", "ax1"], [name]))
            columns.append(name)
    nodes += [helper.make_node("Concat", [*columns, "faint"], ["table"], axis=1),
              helper.make_node("Unsqueeze", ["table", "ax0"], ["output0"])]
    return nodes


def _end_to_end(helper) -> list:
    """[1, 3, 6]: rows x0, y0, x1, y1, score, class (YOLOv10-style end-to-end export)."""
    nodes = [_const_int(helper, "ax0", [0]), _const(helper, "cls", np.array(0.0)),
             helper.make_node("Mul", ["s0", "half"], ["s1"]),
             _const(helper, "faint", np.array([[5.0, 5.0, 15.0, 15.0, 0.05, 0.0]]))]
    for name, parts in (("row0", ["x0", "y0", "x1", "y1", "s0", "cls"]), ("row1", ["x0", "y0", "x1", "y1", "s1", "cls"])):
        for i, p in enumerate(parts):
            nodes.append(helper.make_node("Unsqueeze", [p, "ax0"], [f"{name}_{i}"]))
        nodes.append(helper.make_node("Concat", [f"{name}_{i}" for i in range(6)], [f"{name}_flat"], axis=0))
        nodes.append(helper.make_node("Unsqueeze", [f"{name}_flat", "ax0"], [name]))
    nodes += [helper.make_node("Concat", ["row0", "row1", "faint"], ["table"], axis=0),
              helper.make_node("Unsqueeze", ["table", "ax0"], ["output0"])]
    return nodes


def _const_int(helper, name: str, value: list[int]):
    from onnx import numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype=np.int64), name))
