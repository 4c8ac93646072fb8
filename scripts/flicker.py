#!/usr/bin/env python3
"""Flicker of video labels on a real clip, raw against smoothed, into results/video/flicker.json
(the README reads it). The clip is not committed: it is `examples/short_hamilton_clip.mp4` of
github.com/ageitgey/face_recognition (9 s, 640x360, 29.97 fps, sha256 below); every frame is
looked at, with the default smoothing.

    FER=target/release/fer python3 scripts/flicker.py path/to/short_hamilton_clip.mp4
"""
import hashlib, json, os, re, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FER = os.environ.get("FER", str(ROOT / "target" / "release" / "fer"))
SHA256 = "0b5ff4c55a4cd69f79956f312681730881fe1e2a9e6146e75c31636dffcc7e28"

clip = Path(sys.argv[1])
digest = hashlib.sha256(clip.read_bytes()).hexdigest()
if digest != SHA256:
    sys.exit(f"{clip}: sha256 {digest}, not the clip this record is of ({SHA256})")
with tempfile.TemporaryDirectory() as tmp:
    run = subprocess.run([FER, "predict", str(clip.resolve()), "--every", "1", "--json"], capture_output=True, text=True, cwd=tmp, check=True)
lines = [json.loads(l) for l in run.stdout.splitlines()]
found = re.search(r"labels change ([\d.]+) times a second along a track, ([\d.]+) smoothed \(half-life ([\d.]+) s\)", run.stderr)
sampled = re.search(r"(\d+) frames sampled over ([\d.]+) s, (\d+) tracks", run.stderr)
faces = [l for l in lines if l.get("face") is not None]
record = {
    "clip": {"source": "github.com/ageitgey/face_recognition", "path": "examples/short_hamilton_clip.mp4", "sha256": SHA256},
    "frames": int(sampled.group(1)), "seconds": float(sampled.group(2)), "tracks": int(sampled.group(3)), "faces": len(faces),
    "changes_per_second_raw": float(found.group(1)), "changes_per_second_smoothed": float(found.group(2)),
    "half_life_seconds": float(found.group(3)),
    "model": "tiny (the default)",
}
out = ROOT / "results" / "video" / "flicker.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
