"""ferkit from its built wheel, in a fresh virtual environment without torch (scripts/python.sh)."""

import importlib.util
import io
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferkit

ROOT = Path(__file__).resolve().parents[3]
SOLVAY = ROOT / "tests" / "fixtures" / "solvay-1927.jpg"


def test_it_runs_without_a_deep_learning_framework():
    for framework in ("torch", "tensorflow", "onnxruntime"):
        assert importlib.util.find_spec(framework) is None, f"{framework} is installed beside ferkit"
    # The installed package, not the source tree.
    assert "site-packages" in ferkit.__file__


def test_the_solvay_photo_gives_its_29_faces():
    faces = ferkit.predict(SOLVAY)
    assert len(faces) == 29
    width, height = Image.open(SOLVAY).size
    for f in faces:
        assert isinstance(f, ferkit.Face) and isinstance(f.box, ferkit.Box)
        assert 0 <= f.box.x and f.box.x + f.box.w <= width + 1 and f.box.y + f.box.h < 860
        assert f.score is not None and f.score > 0.7
        assert list(f.probabilities) == ferkit.CLASSES
        assert abs(sum(f.probabilities.values()) - 1) < 1e-4
        assert f.label == max(f.probabilities, key=f.probabilities.get)


def boxes(faces):
    return [tuple(round(v, 3) for v in f.box) for f in faces]


def test_a_path_bytes_a_pil_image_and_an_array_give_the_same_faces():
    by_path = ferkit.predict(str(SOLVAY))
    assert boxes(ferkit.predict(SOLVAY.read_bytes())) == boxes(by_path)
    # Pillow decodes the JPEG itself, to pixels a little different from fer's decoder: the same
    # faces, within a pixel.
    image = Image.open(SOLVAY)
    rgb = np.asarray(image.convert("RGB"))
    by_pil = ferkit.predict(image)
    assert len(by_pil) == len(by_path)
    for a in by_pil:
        nearest = min(by_path, key=lambda b: abs(a.box.x - b.box.x) + abs(a.box.y - b.box.y))
        assert max(abs(u - v) for u, v in zip(a.box, nearest.box)) < 1, (a.box, nearest.box)
    for other in (rgb, np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])):
        got = ferkit.predict(other)
        assert boxes(got) == boxes(by_pil), other.shape
        assert [f.label for f in got] == [f.label for f in by_pil]


def test_a_face_already_cut_out_is_one_face_without_a_score():
    face = np.asarray(Image.open(SOLVAY).convert("L").crop((640, 190, 720, 270)).resize((48, 48)))
    (only,) = ferkit.predict(face, detect=False)
    assert only.score is None and only.box == ferkit.Box(0, 0, 48, 48)
    # A 48x48 gray image is taken as a pre-cropped face even with detection on.
    (again,) = ferkit.predict(face)
    assert again.score is None and again.box == only.box and again.label == only.label


def test_bad_inputs_raise_fer_errors_with_the_command_lines_messages(tmp_path):
    with pytest.raises(ferkit.FerError, match="cannot read"):
        ferkit.predict(tmp_path / "missing.jpg")
    with pytest.raises(ferkit.FerError, match="not an image"):
        ferkit.predict(b"hello, world")
    with pytest.raises(ferkit.FerError, match="empty file"):
        ferkit.predict(b"")
    with pytest.raises(ferkit.FerError, match="uint8"):
        ferkit.predict(np.zeros((64, 64), np.float32))
    with pytest.raises(ferkit.FerError, match="H x W"):
        ferkit.predict(np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(ferkit.FerError, match="no model nosuch: name a shipped model"):
        ferkit.Pipeline(model="nosuch")
    with pytest.raises(ferkit.FerError, match="not a readable ONNX model"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx")
        ferkit.Pipeline(model=bad)
    # A decompression bomb is refused from its header.
    bmp = io.BytesIO()
    Image.new("RGB", (1, 1)).save(bmp, "BMP")
    bomb = bytearray(bmp.getvalue())
    bomb[18:26] = (50_000).to_bytes(4, "little") * 2
    with pytest.raises(ferkit.FerError, match="over the limit"):
        ferkit.predict(bytes(bomb))


def test_shipped_models_have_cards_and_load():
    cards = ferkit.models()
    assert {"nano", "tiny", "accurate"} <= set(cards)
    assert ferkit.DEFAULT_MODEL == "tiny"
    for name in ("nano", "accurate"):
        pipeline = ferkit.Pipeline(model=name)
        assert pipeline.model == name and pipeline.card["name"] == name
        assert len(pipeline.predict(SOLVAY)) == 29
    # A model given by its ONNX file (here the shipped tiny one, from the repository).
    by_file = ferkit.Pipeline(model=ROOT / "models" / "tiny" / "model.onnx")
    assert [f.label for f in by_file.predict(SOLVAY)] == [f.label for f in ferkit.predict(SOLVAY)]


def test_one_pipeline_serves_several_threads():
    pipeline = ferkit.Pipeline()
    expected = boxes(pipeline.predict(SOLVAY))
    results = []
    threads = [threading.Thread(target=lambda: results.append(boxes(pipeline.predict(SOLVAY)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


@pytest.mark.skipif(shutil.which("ffmpeg") is None and os.environ.get("FER_FORBID_SKIPS") != "1", reason="videos need ffmpeg")
def test_a_video_gives_frames_whose_faces_have_tracks(tmp_path):
    clip = tmp_path / "clip.mp4"
    # Two seconds of a still crop of the photo (four people), 10 frames a second.
    crop = tmp_path / "crop.png"
    Image.open(SOLVAY).crop((560, 120, 1000, 420)).save(crop)
    subprocess.run(["ffmpeg", "-v", "error", "-loop", "1", "-i", str(crop), "-t", "2", "-r", "10", "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", str(clip)], check=True)
    frames = list(ferkit.predict_video(clip, every_seconds=0.5))
    assert len(frames) == 4 and [f.time for f in frames] == [0.0, 0.5, 1.0, 1.5]
    first = frames[0].faces
    assert len(first) >= 3
    for frame in frames:
        # A still picture: every frame has the same faces, on the same tracks.
        assert sorted(f.track for f in frame.faces) == sorted(f.track for f in first)
        for f in frame.faces:
            assert isinstance(f, ferkit.TrackedFace) and f.smoothed_label in ferkit.CLASSES
    with pytest.raises(ferkit.FerError, match="no such file"):
        list(ferkit.predict_video(tmp_path / "missing.mp4"))
