#!/usr/bin/env python3
"""Runs shipped ONNX files in onnxruntime, the reference ONNX runtime, so that `model.onnx` is
checked by a runtime other than fer's own (tract). Reads N raw 48x48 grayscale faces (N*2304
bytes), runs each model on them, and prints one JSON object: {model path: {"logits": [...],
"probabilities": [...]}} (row-major, N x 7 each). tests/deploy.rs compares them with libtorch.

    python3 scripts/onnxruntime_check.py faces.u8 models/tiny/model.onnx models/nano/model.onnx

onnxruntime and numpy live in the virtual environment .deps/onnxruntime, made on first use
(about 20 MB from PyPI).
"""
import json
import sys
from pathlib import Path

from script_env import rerun_in_venv

PACKAGES = ["onnxruntime==1.23.2", "numpy"]

try:
    import numpy as np
    import onnxruntime as ort
except ImportError:
    rerun_in_venv(__file__, "onnxruntime", PACKAGES)


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    raw = Path(sys.argv[1]).read_bytes()
    if len(raw) % (48 * 48):
        raise SystemExit(f"{sys.argv[1]}: {len(raw)} bytes are not whole 48x48 faces")
    faces = np.frombuffer(raw, dtype=np.uint8).astype(np.float32).reshape(-1, 1, 48, 48)
    out = {}
    for path in sys.argv[2:]:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        logits, probabilities = session.run(names, {session.get_inputs()[0].name: faces})
        out[path] = {"outputs": names, "logits": logits.ravel().tolist(), "probabilities": probabilities.ravel().tolist()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
