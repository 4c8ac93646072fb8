#!/usr/bin/env python3
"""Side-by-side speed: `fer bench` against ../shared/bench/torch_reference.py, alternately
(fer, PyTorch, fer, PyTorch, ...), on the same machine in the same run. Prints the median
images/s of each and the median of the per-round ratios fer/PyTorch, as a Markdown table,
and writes every JSON line to --out.

PyTorch is the same torch==2.11.0 wheel that provides fer's libtorch, with torchvision 0.26.0
for `epoch`, installed on first use into the virtual environment .deps/torch-ref. Python's
`import torch` loads libtorch_cuda and so needs the whole CUDA stack from PyPI (about 4.7 GB on
disk), which fer itself does not: fer links only libtorch_cpu.

    python3 scripts/bench_vs_torch.py --rounds 3 --models mobile vgg baseline --modes step infer epoch

`--precisions f32 bf16` also times fer's bf16 mixed-precision training (`step` and `epoch`;
inference is f32 either way) against the same PyTorch f32 lines: PyTorch's idiomatic script
trains in f32.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".deps" / "torch-ref"
REFERENCE = ROOT.parent / "shared" / "bench" / "torch_reference.py"


def python_env():
    """The reference Python: a venv with torch==2.11.0 and torchvision==0.26.0."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print("installing torch==2.11.0 and torchvision==0.26.0 into .deps/torch-ref ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "torch==2.11.0", "torchvision==0.26.0"], check=True)
    return str(python)


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["mobile", "vgg", "baseline"])
    p.add_argument("--modes", nargs="+", default=["step", "infer", "epoch"])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013"))
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_vs_torch.jsonl"))
    p.add_argument("--precisions", nargs="+", default=["f32"], choices=["f32", "bf16"])
    args = p.parse_args()

    subprocess.run(["bash", "-c", "source scripts/env.sh && cargo build --release --quiet"], check=True, cwd=ROOT)
    python = python_env()
    fer = str(ROOT / "target" / "release" / "fer")
    # Same work on both sides: batch 128 for training, 256 for inference, 2 threads.
    settings = {"step": ["--batch", "128", "--steps", "10", "--warmup", "2"],
                "infer": ["--batch", "256", "--steps", "10", "--warmup", "2"],
                "epoch": ["--batch", "128", "--batches", "30", "--warmup", "3"]}
    lines, rows = [], []
    for model in args.models:
        for mode in args.modes:
            extra = settings[mode] + ["--model", model]
            precisions = args.precisions if mode in ("step", "epoch") else ["f32"]
            torches = []
            fers = {p: [] for p in precisions}
            ratios = {p: [] for p in precisions}
            for _ in range(args.rounds):
                b = run_json([python, str(REFERENCE), mode, "--threads", "2", "--data", args.data] + extra)
                lines.append(b)
                torches.append(b["img_per_s"])
                for precision in precisions:
                    a = run_json([fer, "--threads", "2", "--data", args.data, "bench", mode, "--precision", precision] + extra)
                    lines.append(a)
                    fers[precision].append(a["img_per_s"])
                    ratios[precision].append(a["img_per_s"] / b["img_per_s"])
            for precision in precisions:
                row = (model, mode, precision, statistics.median(torches), statistics.median(fers[precision]),
                       statistics.median(ratios[precision]))
                rows.append(row)
                print(f"{model:9} {mode:6} {precision:5} PyTorch {row[3]:8.1f} img/s  fer {row[4]:8.1f} img/s  ratio {row[5]:.2f}",
                      file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(l) + "\n" for l in lines))
    print("| model | mode | fer arithmetic | PyTorch img/s (f32) | fer img/s | fer / PyTorch |")
    print("|---|---|---|---:|---:|---:|")
    for model, mode, precision, t, f, r in rows:
        print(f"| {model} | {mode} | {precision} | {t:.1f} | {f:.1f} | {r:.2f}x |")


if __name__ == "__main__":
    main()
