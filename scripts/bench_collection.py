#!/usr/bin/env python3
"""Throughput and memory of `fer predict` over collections, run alone on this machine, into
results/bench/collection.json (the README reads it):

- the 3,589 pre-cropped PublicTest PNGs, through `fer predict --files-from` (one process, JSON
  lines to a file), beside a plain Python loop that decodes them with Pillow and runs
  models/tiny/model.onnx in onnxruntime in batches of 256 (the issue's reference, 0.9 s);
- photos with faces: the Solvay photo (29 faces) and crops of it, 60 inputs, photos/s and faces/s;
- peak memory over 1,000 and 10,000 listed files (the PublicTest list repeated): flat when
  the work streams.

    FER=target/release/fer python3 scripts/bench_collection.py

onnxruntime, numpy and Pillow live in .deps/onnxruntime (made on first use).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".deps" / "onnxruntime"
FER = os.environ.get("FER", str(ROOT / "target" / "release" / "fer"))
DATA = Path(os.environ.get("FER_DATA", ROOT.parent / "shared" / "data" / "fer2013"))

try:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
except ImportError:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "onnxruntime==1.23.2", "numpy", "pillow"], check=True)
    sys.exit(subprocess.run([str(python), __file__, *sys.argv[1:]]).returncode)


def run_fer(args, cwd, stderr=False):
    """Wall seconds and peak resident memory (MB) of one `fer` process (its own rusage), and its
    standard error when asked."""
    start = time.perf_counter()
    child = subprocess.Popen([FER, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fer {' '.join(args)} failed: {err}")
    return (seconds, usage.ru_maxrss / 1024, err) if stderr else (seconds, usage.ru_maxrss / 1024)


def onnxruntime_loop(paths):
    """Wall seconds of the whole loop, of its network runs alone, and the faces labelled."""
    start = time.perf_counter()
    session = ort.InferenceSession(str(ROOT / "models" / "tiny" / "model.onnx"), providers=["CPUExecutionProvider"])
    labels, running = [], 0.0
    for i in range(0, len(paths), 256):
        batch = np.stack([np.asarray(Image.open(p).convert("L"), np.float32) for p in paths[i:i + 256]])[:, None]
        ran = time.perf_counter()
        labels.extend(session.run(["probabilities"], {"pixels": batch})[0].argmax(1))
        running += time.perf_counter() - ran
    return time.perf_counter() - start, running, len(labels)


def main():
    public = sorted(str(p) for p in (DATA / "test").glob("*/PublicTest_*.png"))
    if len(public) != 3589:
        raise SystemExit(f"{DATA}: {len(public)} PublicTest PNGs, not 3,589")
    record = {"machine": f"{os.cpu_count()} cores", "fer": FER}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "public.txt").write_text("\n".join(public) + "\n")
        seconds, _, err = run_fer(["predict", "--json", "--files-from", "public.txt", "--output", "public.jsonl"], tmp, stderr=True)
        lines = (tmp / "public.jsonl").read_text().splitlines()
        record["pre_cropped"] = {"files": len(public), "faces": len(lines), "fer_seconds": round(seconds, 3)}
        # Where fer's time goes: the process's start (libtorch's libraries loaded), and its own
        # account of decoding and classification.
        record["pre_cropped"]["fer_start_seconds"] = round(min(run_fer(["--version"], tmp)[0] for _ in range(3)), 3)
        shares = dict(re.findall(r"(decode|classification) (\d+)%", err))
        record["pre_cropped"]["fer_classification_share"] = int(shares.get("classification", 0)) / 100
        ort_seconds, ort_running, n = onnxruntime_loop(public)
        record["pre_cropped"]["onnxruntime_loop_seconds"] = round(ort_seconds, 3)
        record["pre_cropped"]["onnxruntime_run_seconds"] = round(ort_running, 3)
        record["pre_cropped"]["onnxruntime_loop_files"] = n

        solvay = Image.open(ROOT / "tests" / "fixtures" / "solvay-1927.jpg").convert("RGB")
        photos = []
        for i in range(60):
            p = tmp / f"photo{i:02}.jpg"
            (solvay if i % 3 == 0 else solvay.crop((40 * (i % 20), 100, 40 * (i % 20) + 800, 700))).save(p, quality=92)
            photos.append(str(p))
        (tmp / "photos.txt").write_text("\n".join(photos) + "\n")
        seconds, _ = run_fer(["predict", "--json", "--files-from", "photos.txt", "--output", "photos.jsonl"], tmp)
        faces = sum(1 for l in (tmp / "photos.jsonl").read_text().splitlines() if json.loads(l).get("face") is not None)
        record["photos"] = {"files": len(photos), "faces": faces, "seconds": round(seconds, 3), "photos_per_second": round(len(photos) / seconds, 2), "faces_per_second": round(faces / seconds, 1)}

        memory = {}
        for n in (1000, 10000):
            listed = (public * (n // len(public) + 1))[:n]
            (tmp / f"list{n}.txt").write_text("\n".join(listed) + "\n")
            seconds, peak_mb = run_fer(["predict", "--json", "--files-from", f"list{n}.txt", "--output", f"list{n}.jsonl"], tmp)
            memory[str(n)] = {"seconds": round(seconds, 2), "peak_mb": round(peak_mb, 1), "files_per_second": round(n / seconds, 1)}
        record["memory"] = memory
    out = ROOT / "results" / "bench" / "collection.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
