"""Build a YOLOv8n face detector with random weights, in deepghs' ONNX format, to time a real detector's cost.

    pip install ultralytics           # not a dependency of the bakery: only this script needs it
    .venv/bin/python benchmarks/yolov8n_face.py /tmp/yolov8n-face.onnx
    .venv/bin/python benchmarks/crops.py --model /tmp/yolov8n-face.onnx
    .venv/bin/python benchmarks/yolov8n_face.py --dynamic /tmp/yolov8n-face-dyn.onnx   # any input size
    .venv/bin/python benchmarks/crops.py --model /tmp/yolov8n-face-dyn.onnx --detector-size 416

The architecture is ultralytics' own YOLOv8n (one class, 640 px input, `images` -> `output0` of shape
(1, 5, 8400), class names in the metadata), as deepghs exports its face detectors, so inference costs what a
real one costs. Its class head is zeroed to a score of about 0: random scores would send thousands of boxes to
NMS, which no trained model does. It detects nothing, so no crops are cut: the figure is the model's cost.
Nothing is downloaded (YOLO_OFFLINE; the model is built from ultralytics' YAML).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path


def build(out: Path, dynamic: bool = False) -> Path:
    os.environ["YOLO_OFFLINE"] = "1"
    import torch
    import ultralytics
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        yaml = Path(tmp) / "yolov8n-face.yaml"  # the "n" in the name picks the scale
        yaml.write_text((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text()
                        .replace("nc: 80", "nc: 1"))
        model = YOLO(str(yaml))
        with torch.no_grad():
            for branch in model.model.model[-1].cv3:
                branch[-1].weight.zero_()
                branch[-1].bias.fill_(-20.0)
        model.model.names = {0: "face"}
        exported = model.export(format="onnx", imgsz=640, simplify=False, opset=17, dynamic=dynamic)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(exported, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="where to write the .onnx file")
    ap.add_argument("--dynamic", action="store_true", help="any input height and width (and batch)")
    args = ap.parse_args()
    print(f"written: {build(args.out, args.dynamic)}")


if __name__ == "__main__":
    main()
