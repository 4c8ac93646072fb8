"""ferkit: facial-expression recognition in photos and videos.

Faces are found (MTCNN), framed the way FER-2013 framed its faces, and labelled with one of
FER-2013's seven expressions by a small network; everything runs in Rust (the ``fer`` project's
inference core, with tract for the networks), with no deep-learning framework.

    >>> import ferkit
    >>> for face in ferkit.predict("photo.jpg"):
    ...     print(face.box, face.label, face.probabilities["happy"])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

from . import _ferkit
from ._ferkit import CLASSES, DEFAULT_MODEL, FerError, __version__

__all__ = [
    "CLASSES",
    "DEFAULT_MODEL",
    "Box",
    "Face",
    "FerError",
    "Frame",
    "Pipeline",
    "TrackedFace",
    "models",
    "predict",
    "predict_video",
    "__version__",
]

#: What ``predict`` takes: a path, encoded bytes, a PIL image or a numpy array
#: (``H x W`` gray, ``H x W x 3`` RGB or ``H x W x 4`` RGBA, 8-bit).
ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]


class Box(NamedTuple):
    """A face's box in the image's pixels: top-left corner, width and height."""

    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Face:
    """One face: where it is, how sure the detector is, and its expression."""

    box: Box
    #: The detector's confidence; None when detection was off (the whole image is the face).
    score: Optional[float]
    label: str
    #: Each of the seven classes' probability, in FER-2013's order.
    probabilities: Dict[str, float]


@dataclass(frozen=True)
class TrackedFace(Face):
    """A face in a video frame, linked to the faces of other frames by its track."""

    track: int
    #: The track's label and probabilities after smoothing over time.
    smoothed_label: str
    smoothed: Dict[str, float]


@dataclass(frozen=True)
class Frame:
    """One sampled frame of a video."""

    #: The frame's number in the video, and its time in seconds.
    number: int
    time: float
    faces: List[TrackedFace]


def _face(raw: Tuple[Any, ...]) -> Face:
    box, score, label, probabilities = raw
    return Face(Box(*box), score, label, dict(zip(CLASSES, probabilities)))


def _tracked(raw: Tuple[Any, ...]) -> TrackedFace:
    face, track, smoothed_label, smoothed = raw
    f = _face(face)
    return TrackedFace(f.box, f.score, f.label, f.probabilities, track, smoothed_label, dict(zip(CLASSES, smoothed)))


class Pipeline:
    """The face pipeline over one model, loaded once and reused (safe to share among threads).

    ``model`` is a shipped model's name (``"tiny"``, the default; ``"nano"``; ``"accurate"``),
    the path of an ONNX file, or a model folder holding ``model.onnx``. ``min_face`` is the
    smallest face searched, in pixels.
    """

    def __init__(self, model: Union[str, "os.PathLike[str]"] = DEFAULT_MODEL, min_face: float = 40.0) -> None:
        self._inner = _ferkit.Pipeline(os.fspath(model), float(min_face))

    @property
    def model(self) -> str:
        """The model's name."""
        return self._inner.model

    @property
    def card(self) -> Optional[Dict[str, Any]]:
        """The model's card (its accuracy, FLOPs and recipe), where it has one."""
        return json.loads(self._inner.card) if self._inner.card else None

    def __repr__(self) -> str:
        return f"ferkit.Pipeline(model={self.model!r})"

    def predict(self, image: ImageLike, *, detect: bool = True) -> List[Face]:
        """Every face in ``image``, best first. With ``detect=False`` the whole image is one
        face (a face already cut out, as FER-2013's are)."""
        if isinstance(image, (str, os.PathLike)):
            raw = self._inner.predict_file(os.fspath(image), detect)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            raw = self._inner.predict_encoded(bytes(image), detect)
        else:
            data, width, height, channels = _pixels(image)
            raw = self._inner.predict_pixels(data, width, height, channels, detect)
        return [_face(r) for r in raw]

    def predict_video(self, path: Union[str, "os.PathLike[str]"], every_seconds: float = 0.5, *, smooth_seconds: float = 0.5, detect: bool = True) -> Iterator[Frame]:
        """The video's frames, one every ``every_seconds``, as they are decoded (by ffmpeg,
        which must be installed). Faces are linked into tracks across frames, and each track's
        probabilities smoothed with a half-life of ``smooth_seconds``."""
        video = _ferkit.Video(self._inner, os.fspath(path), float(every_seconds), float(smooth_seconds), detect)
        for number, time, faces in video:
            yield Frame(number, time, [_tracked(f) for f in faces])


def _pixels(image: Any) -> Tuple[bytes, int, int, int]:
    """A PIL image or a numpy array as 8-bit pixels: (bytes, width, height, channels)."""
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image
        image = image.convert("RGBA" if "A" in image.getbands() else "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB")
    import numpy as np

    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise FerError(f"images are 8-bit (numpy uint8), not {array.dtype}: scale and convert them first, e.g. (x * 255).astype(np.uint8)")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise FerError(f"an image is H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA), not shape {array.shape}")
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    return np.ascontiguousarray(array).tobytes(), width, height, channels


_pipelines: Dict[Tuple[str, float], Pipeline] = {}


def _pipeline(model: Union[str, "os.PathLike[str]"], min_face: float) -> Pipeline:
    key = (os.fspath(model), float(min_face))
    if key not in _pipelines:
        _pipelines[key] = Pipeline(*key)
    return _pipelines[key]


def predict(image: ImageLike, *, model: Union[str, "os.PathLike[str]"] = DEFAULT_MODEL, min_face: float = 40.0, detect: bool = True) -> List[Face]:
    """Every face in ``image`` (a path, encoded bytes, a PIL image or a numpy array), found,
    framed and labelled. The pipeline for each ``model`` is loaded once and kept."""
    return _pipeline(model, min_face).predict(image, detect=detect)


def predict_video(path: Union[str, "os.PathLike[str]"], every_seconds: float = 0.5, *, model: Union[str, "os.PathLike[str]"] = DEFAULT_MODEL, min_face: float = 40.0, smooth_seconds: float = 0.5) -> Iterator[Frame]:
    """A video's sampled frames with their faces, linked into tracks (see Pipeline.predict_video)."""
    return _pipeline(model, min_face).predict_video(path, every_seconds, smooth_seconds=smooth_seconds)


def models() -> Dict[str, Dict[str, Any]]:
    """The shipped models compiled into this package, by name: each one's card."""
    return {name: json.loads(card) for name, card in _ferkit.shipped_models()}
