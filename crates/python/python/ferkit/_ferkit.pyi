"""Type stubs of the compiled layer (the public API is ``ferkit``)."""

from typing import Iterator, List, Optional, Tuple

CLASSES: List[str]
DEFAULT_MODEL: str
__version__: str

class FerError(Exception): ...

_RawFace = Tuple[Tuple[float, float, float, float], Optional[float], str, List[float]]
_RawTrackedFace = Tuple[_RawFace, int, str, List[float]]

class Pipeline:
    model: str
    card: Optional[str]
    def __init__(self, model: str, min_face: float) -> None: ...
    def predict_encoded(self, data: bytes, detect: bool) -> List[_RawFace]: ...
    def predict_file(self, path: str, detect: bool) -> List[_RawFace]: ...
    def predict_pixels(self, data: bytes, width: int, height: int, channels: int, detect: bool) -> List[_RawFace]: ...

class Video:
    width: int
    height: int
    fps: float
    seconds: float
    def __init__(self, pipeline: Pipeline, path: str, every_seconds: float, smooth_seconds: float, detect: bool) -> None: ...
    def __iter__(self) -> Iterator[Tuple[int, float, List[_RawTrackedFace]]]: ...
    def __next__(self) -> Tuple[int, float, List[_RawTrackedFace]]: ...

def shipped_models() -> List[Tuple[str, str]]: ...
