#!/usr/bin/env python3
"""The speedrun recipe in PyTorch, side by side with `fer` on the same CPU.

What a PyTorch user would write to train fer's speedrun config: the same network (a
`[model.convnet]`, built layer for layer as fer's `ConvNet::layers()`, so fvcore's FLOPs agree),
the same loop (shuffled batches, the schedule laid over the wall-time budget, a weight EMA after
every optimizer step, progressive resizing, PublicTest after every epoch for the weights and the
EMA, evaluation time inside the budget), with the idiomatic tools: torch.optim.AdamW,
F.cross_entropy(label_smoothing=...), F.interpolate(antialias=True), torch.autocast for bf16.
In the style of ../shared/bench/torch_reference.py: plain eager PyTorch, JSON lines out.

Modes:
  train         trains a fer TOML config on FER-2013 Training, scores PublicTest after every
                epoch (PrivateTest is never read); one JSON line per epoch, the same fields as
                fer's runs/<name>/metrics.jsonl, then a final line (best PublicTest accuracy,
                the seconds at which each threshold was first reached, flip TTA apart). Writes
                <out>/metrics.jsonl, <out>/summary.json and a copy of the config.
  step          times the config's network's training step (forward, cross-entropy, backward,
                AdamW step) on random tensors at batch 128, median over steps after warm-up,
                in f32 and bf16: one JSON line each, as torch_reference.py prints. With
                --vs-fer it alternates `fer bench step` and this (each in a fresh process) for
                --rounds rounds and prints a Markdown table of fer / PyTorch images/s.
  compare       reads fer's metrics.jsonl and this script's, prints the seconds each took to
                reach the same PublicTest accuracy (the lower of the two best accuracies, and
                --thresholds) and the ratio PyTorch / fer as a Markdown table, and writes a JSON
                record (default results/speedrun/torch/comparison.json). Standard library only.
  side-by-side  the whole comparison in one run: fer's training, then this script's, then the
                step timings, then `compare`.
  flops         the network's fvcore-style FLOPs and parameters (as `fer flops` counts them:
                78,372,352 for widths [32, 64, 128, 256], 2 blocks, stem stride 2), and
                fvcore's own count where fvcore is installed.

How to run (from the repository root). Both trainings must run ALONE on the machine, one after
the other: they are timed against the wall clock, and a 10-minute budget on a busy machine
holds fewer epochs.

    cargo build --release                       # after `source scripts/env.sh`
    ./target/release/fer train --config configs/speedrun.toml --runs runs/side-by-side --fresh
    python3 scripts/speedrun_torch.py train --config configs/speedrun.toml \\
        --out results/speedrun/torch/speedrun
    python3 scripts/speedrun_torch.py step --config configs/speedrun.toml --vs-fer \\
        --out results/speedrun/torch/step.jsonl
    python3 scripts/speedrun_torch.py compare --fer runs/side-by-side/<name> \\
        --torch results/speedrun/torch/speedrun --step results/speedrun/torch/step.jsonl

or all four at once:

    python3 scripts/speedrun_torch.py side-by-side --config configs/speedrun.toml

PyTorch is the torch==2.11.0 wheel that provides fer's libtorch (torchvision 0.26.0 brings
Pillow, which decodes the PNGs), in the virtual environment .deps/torch-ref that
scripts/bench_vs_torch.py creates on first use. Run by a Python without torch, this script
re-runs itself under that environment's Python (installing it first if need be); `compare`
needs only the standard library. Threads: libtorch's default (one per physical core, which is
also fer's default) unless --threads, which then goes to fer too.

The random streams are not fer's (fastrand and per-batch seeds in Rust): the same seed gives
the same kind of run, not the same batches, so accuracies differ by run-to-run noise.
"""
import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ModuleNotFoundError:  # `compare` runs without torch; the other modes re-exec (see main)
    torch = nn = F = None

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".deps" / "torch-ref"
DATA = ROOT.parent / "shared" / "data" / "fer2013"
FER = ROOT / "target" / "release" / "fer"
OUT = ROOT / "results" / "speedrun" / "torch"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # label order
SIDE = 48


def default_config():
    """configs/speedrun.toml, or until it exists the latest trial's."""
    final = ROOT / "configs" / "speedrun.toml"
    return final if final.exists() else ROOT / "configs" / "speedrun-trials" / "t2.toml"


def rel(path):
    """`path` relative to the repository root where it lies inside, for records."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# The reference Python (a venv with torch==2.11.0 and torchvision==0.26.0) is bench_vs_torch.py's.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_torch import python_env  # noqa: E402


def reexec_with_torch():
    """Runs this script again under the reference Python, which has torch."""
    if os.environ.get("SPEEDRUN_TORCH_REEXEC"):
        sys.exit(f"torch is not importable, even under {VENV}/bin/python")
    python = python_env()
    os.environ["SPEEDRUN_TORCH_REEXEC"] = "1"
    os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------
# The config: fer's TOML, with the keys this script implements (src/config.rs, TrainConfig).
# A key at fer's default value is accepted (runs/<name>/config.toml writes every key out); any
# other value of a key not implemented here is an error, never silently a different recipe.

CONVNET = dict(widths=[32, 64, 128, 256], blocks=1, input_pool=1, stem_stride=1, batch_norm=True,
               residual=False, attention="none", reduction=8, separable=False, downsample="max_pool",
               activation="relu", dropout=0.0)
CONVNET_DONE = {"widths", "blocks", "input_pool", "stem_stride", "batch_norm", "residual", "downsample",
                "activation", "dropout", "reduction"}  # reduction only matters with attention
TRAIN = dict(epochs=10, time_budget_minutes=0.0, batch_size=400, optimizer="adam", lr=1e-3, weight_decay=0.0,
             momentum=0.9, nesterov=False, eval_batch_size=1000, schedule={"kind": "constant"},
             label_smoothing=0.0, focal_gamma=0.0, class_weighted=False, early_stopping_patience=0,
             grad_clip=0.0, input_size=SIDE, tta="none", eval_blur=0.0, eval_blur_choices=[], precision="f32",
             teacher=None, average_from=0, ema_decay=0.0, progressive_resize=None, teacher_flip=False,
             distill_temperature=4.0, distill_weight=0.5, eval_from=0.0, whiten_stem=False)
TRAIN_DONE = {"epochs", "time_budget_minutes", "batch_size", "optimizer", "lr", "weight_decay", "momentum",
              "nesterov", "eval_batch_size", "schedule", "label_smoothing", "grad_clip", "tta", "precision",
              "ema_decay", "progressive_resize", "eval_from",
              "teacher_flip", "distill_temperature", "distill_weight"}  # inert without a teacher, as in fer
AUGMENT = dict(crop_padding=0, hflip=False, rotate_degrees=0.0, scale=0.0, shift=0.0, brightness=0.0,
               contrast=0.0, erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)
AUGMENT_DONE = {"crop_padding", "hflip"}
SCHEDULES = {"constant": {}, "one_cycle": dict(pct_start=0.3, div_factor=25.0, final_div_factor=1e4),
             "linear": dict(warmup=0.2, start_factor=0.1)}


def merged(table, defaults, done, where):
    """`table` over fer's `defaults`; an error for unknown keys and for unimplemented non-defaults."""
    out = dict(defaults)
    for key, value in table.items():
        if key not in defaults:
            raise SystemExit(f"{where}.{key}: not a fer config key")
        if key not in done and value != defaults[key]:
            raise SystemExit(f"{where}.{key} = {value!r}: not implemented in speedrun_torch.py "
                             f"(only fer's default, {defaults[key]!r})")
        out[key] = value
    return out


def load_config(path, epochs=None, budget_minutes=None):
    cfg = tomllib.loads(Path(path).read_text())
    for key in cfg:
        if key not in ("name", "seed", "model", "train", "augment"):
            raise SystemExit(f"{path}: `{key}` is not a fer config key")
    model = cfg.get("model", {})
    if set(model) != {"convnet"}:
        raise SystemExit(f"{path}: [model] must be a [model.convnet] (network = ... and layers = ... "
                         "are not implemented in speedrun_torch.py)")
    net = merged(model["convnet"], CONVNET, CONVNET_DONE, "model.convnet")
    train = merged(cfg.get("train", {}), TRAIN, TRAIN_DONE, "train")
    augment = merged(cfg.get("augment", {}), AUGMENT, AUGMENT_DONE, "augment")
    schedule = dict(train["schedule"])
    kind = schedule.pop("kind", None)
    if kind not in SCHEDULES:
        raise SystemExit(f"train.schedule.kind = {kind!r}: implemented are {', '.join(SCHEDULES)}")
    for key in schedule:
        if key not in SCHEDULES[kind]:
            raise SystemExit(f"train.schedule.{key}: not a key of the {kind} schedule")
    train["schedule"] = {"kind": kind, **SCHEDULES[kind], **schedule}
    if train["optimizer"] not in ("adam", "adamw", "sgd"):
        raise SystemExit(f"train.optimizer = {train['optimizer']!r}: adam, adamw or sgd")
    if train["precision"] not in ("f32", "bf16"):
        raise SystemExit(f"train.precision = {train['precision']!r}: f32 or bf16")
    if train["tta"] not in ("none", "flip"):
        raise SystemExit(f"train.tta = {train['tta']!r}: none or flip (ten_crop needs input_size < 48)")
    if net["downsample"] not in ("max_pool", "stride") or net["activation"] not in ACTIVATIONS:
        raise SystemExit(f"model.convnet: downsample {net['downsample']!r} or activation {net['activation']!r} unknown")
    if train["progressive_resize"] is not None:
        r = train["progressive_resize"]
        if set(r) != {"start", "until"}:
            raise SystemExit("train.progressive_resize: needs exactly { start, until }")
    if epochs is not None:
        train["epochs"] = epochs
    if budget_minutes is not None:
        train["time_budget_minutes"] = budget_minutes
    return {"name": cfg.get("name", Path(path).stem), "seed": cfg.get("seed", 0), "convnet": net,
            "train": train, "augment": augment}


# ---------------------------------------------------------------------------------------------
# The network: fer's ConvNet::layers() (src/nn/model.rs), module for module. Variable names come
# out as fer's (`0.weight`, `3.body.0.weight`, `8.shortcut.1.running_mean`, ...), and PyTorch's
# default initialisation is the one fer copies (uniform in +-1/sqrt(fan_in); batch norm weight
# 1, bias 0, eps 1e-5, momentum 0.1).

ACTIVATIONS = {"relu": lambda: nn.ReLU(), "leaky_relu": lambda: nn.LeakyReLU(0.01),
               "silu": lambda: nn.SiLU(), "gelu": lambda: nn.GELU()}


class Residual(nn.Module if nn else object):
    """body(x) + shortcut(x), as fer's Layer::Residual: the shortcut is the identity when the body
    keeps the shape, else a 1x1 convolution at the body's stride, with batch norm (and then no
    bias) when the body has batch norm (model.rs, `shortcut`)."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.body(x) + skip


def convnet(widths, blocks, stem_stride, batch_norm, residual, dropout, input_pool=1, downsample="max_pool",
            activation="relu", **_):
    act = ACTIVATIONS[activation]

    def conv(cin, cout, stride, kernel=3):
        # Convolutions followed by batch norm have no bias (ConvNet::conv: `bias: !bn`).
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=not batch_norm)]
        return layers + [nn.BatchNorm2d(cout)] if batch_norm else layers

    layers = [nn.AvgPool2d(input_pool)] if input_pool > 1 else []
    layers += conv(1, widths[0], stem_stride) + [act()]  # the stem: a plain 3x3 conv
    cin = widths[0]
    for s, w in enumerate(widths):
        for b in range(blocks):
            down = s > 0 and b == 0  # each later stage halves the map
            if down and downsample == "max_pool":
                layers.append(nn.MaxPool2d(2))
            stride = 2 if down and downsample == "stride" else 1
            body = conv(cin, w, stride) + [act()] + conv(w, w, 1)
            if residual:
                shortcut = None
                if cin != w or stride != 1:
                    shortcut = nn.Sequential(*conv(cin, w, stride, kernel=1))
                layers.append(Residual(nn.Sequential(*body), shortcut))
            else:
                layers += body
            layers.append(act())  # after the sum, as in fer
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # fer's GlobalAvgPool
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(cin, len(CLASSES)))
    return nn.Sequential(*layers)


def fvcore_flops(model, side=SIDE):
    """FLOPs of one face as fvcore counts them (and fer's src/nn/flops.rs): convolutions and
    linear layers one per multiply-add, eval-mode batch norm 2 per element, adaptive average
    pooling 1 per input element; activations, pooling, additions and dropout free."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.BatchNorm2d):
            total += 2 * output.numel()
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            total += inputs[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    was = model.training
    model.eval()
    with torch.inference_mode():
        model(torch.zeros(1, 1, side, side))
    model.train(was)
    for h in hooks:
        h.remove()
    return total


# ---------------------------------------------------------------------------------------------
# Data: the image-folder release (../shared/data/README.md), in fer's order (by CSV row).

def load_split(root, split):
    """The faces of `split` (Training or PublicTest) as uint8 [N, 1, 48, 48] and int64 labels."""
    from PIL import Image  # Pillow comes with torchvision

    part = "train" if split == "Training" else "test"
    files = []
    for label, name in enumerate(CLASSES):
        for path in (Path(root) / part / name).iterdir():
            if path.name.startswith(split + "_"):
                files.append((int(path.stem.split("_")[1]), label, path))
    if not files:
        raise SystemExit(f"{root}: no {split} faces under {part}/<class>/ (see ../shared/data/README.md)")
    files.sort()
    pixels, labels = bytearray(), []
    for _, label, path in files:
        with Image.open(path) as img:
            if img.mode != "L" or img.size != (SIDE, SIDE):
                raise SystemExit(f"{path}: {img.mode} {img.size}, expected 48x48 8-bit grayscale")
            pixels += img.tobytes()
        labels.append(label)
    x = torch.frombuffer(pixels, dtype=torch.uint8).reshape(-1, 1, SIDE, SIDE).clone()
    return x, torch.tensor(labels, dtype=torch.int64)


def normalize(x):
    """uint8 pixels to [-1, 1], as fer (data.rs `normalize`): (x / 255 - 0.5) / 0.5."""
    return (x.float() / 255 - 0.5) / 0.5


def augment(x, padding, hflip, generator):
    """fer's crop_padding and hflip (train/augment.rs) on a uint8 batch: the window moves by a
    whole number of pixels in [-padding, padding] each way, the border is filled with 0 (black,
    -1 after normalising; torchvision's RandomCrop(48, padding) on the PIL image), and half the
    faces are mirrored. One gather for the whole batch instead of a per-face loop."""
    n = x.shape[0]
    if padding > 0:
        x = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    rows = dy + torch.arange(SIDE)
    cols = dx + torch.arange(SIDE)
    if hflip:
        flip = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    return x[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# The recipe's moving parts, each as fer computes it.

def lr_at(schedule, base, progress, total):
    """The learning rate at `progress` epochs of `total` (fractional; optim.rs Schedule::lr)."""
    total = max(total, 1e-9)

    def cos_between(hi, lo, t):
        return lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    t = progress / total
    if schedule["kind"] == "one_cycle":  # PyTorch's OneCycleLR (cosine), laid over `total`
        start = base / schedule["div_factor"]
        end = start / schedule["final_div_factor"]
        p = schedule["pct_start"]
        return cos_between(base, start, 1 - t / p) if t < p else cos_between(base, end, (t - p) / (1 - p))
    if schedule["kind"] == "linear":  # the speedruns' triangle
        t, w, f = min(max(t, 0.0), 1.0), schedule["warmup"], schedule["start_factor"]
        return base * (f + (1 - f) * t / w) if t < w else base * (1 - t) / max(1 - w, 1e-9)
    return base


def side_at(resize, fraction, side=SIDE):
    """Progressive resizing (config.rs ProgressiveResize::side_at): from `start` pixels growing
    linearly to `side` over the first `until` of the run, in steps of 4 (rounded half up, as
    Rust's f64::round on these positive values)."""
    t = min(max(fraction / resize["until"], 0.0), 1.0) if resize["until"] > 0 else 1.0
    grown = resize["start"] + (side - resize["start"]) * t
    return min(max(math.floor(grown / 4 + 0.5) * 4, min(resize["start"], side)), side)


class Budget:
    """fer's clock against time_budget_minutes (train/mod.rs, Budget): the schedule's length in
    epochs is re-estimated before every batch from the pace so far, PublicTest evaluations
    included, so with a budget the schedule is a function of wall time; the steps stop where
    the budget less one more evaluation (the last epoch's) is spent."""

    def __init__(self, minutes, epochs):
        self.seconds, self.epochs = minutes * 60, epochs
        self.spent = 0.0  # seconds of the finished epochs
        self.eval_seconds = 0.0  # what the next evaluation will take, held back

    def total_epochs(self, progress, in_epoch):
        if self.seconds <= 0:
            return float(self.epochs)
        spent = self.spent + in_epoch
        for_steps = self.seconds - self.eval_seconds
        if spent >= for_steps:
            return None
        if progress > 0 and spent > 0:
            return min(progress * for_steps / spent, self.epochs)
        return float(self.epochs)

    def fraction(self, epoch, in_epoch):
        """How far into the run `epoch` ends, `in_epoch` seconds into it (fer's `fraction`)."""
        if self.seconds > 0:
            return (self.spent + in_epoch) / self.seconds
        return epoch / self.epochs

    def epoch_done(self, seconds, eval_seconds):
        self.spent += seconds
        if eval_seconds is not None:  # an epoch that skipped PublicTest keeps the last one's
            self.eval_seconds = eval_seconds


@torch.no_grad() if torch else (lambda f: f)
def ema_update(ema_tensors, tensors, decay, steps):
    """fer's weight EMA (train/ema.rs) after optimizer step number `steps`: every floating-point
    tensor of the state, batch-norm statistics included, moves towards the weights by 1 - d with
    d = min(decay, (1 + steps) / (10 + steps)); integer buffers (num_batches_tracked) are copied."""
    d = min(decay, (1 + steps) / (10 + steps))
    for average, value in zip(ema_tensors, tensors):
        if average.is_floating_point():
            average.lerp_(value, 1 - d)
        else:
            average.copy_(value)


def make_optimizer(model, t):
    """fer's optimizers follow PyTorch's formulas (optim.rs; its against_libtorch test): AdamW
    with decoupled weight decay on every parameter (batch norm and biases too), betas (0.9,
    0.999), eps 1e-8; Adam with L2 in the gradient; SGD with momentum, no dampening."""
    params = model.parameters()
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"], betas=(0.9, 0.999), eps=1e-8)
    if t["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"], betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], nesterov=t["nesterov"],
                           weight_decay=t["weight_decay"])


def autocast(precision):
    """bf16: the idiomatic mixed precision. fer's own (model.rs, `forward`) does the same
    arithmetic: convolutions and linear layers in bfloat16 with f32 weights cast per call, batch
    norm taking the bfloat16 activations with its f32 statistics, the logits back to f32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def epoch_seed(seed, epoch):
    """fer's per-epoch seed (train/mod.rs); it seeds dropout here as tch::manual_seed does there."""
    return (seed * 0x9E3779B97F4A7C15 + epoch + 1) % 2**64


@torch.inference_mode() if torch else (lambda f: f)
def evaluate(model, x, y, batch_size, channels_last=False, flip=False):
    """PublicTest accuracy and mean cross-entropy, eval mode, in f32 (fer evaluates in f32 even
    for a bf16 run), in batches of eval_batch_size. With `flip`: fer's flip TTA, the log of the
    mean softmax of the face and its mirror (eval.rs, `combine`)."""
    was = model.training
    model.eval()
    parts = []
    for i in range(0, len(y), batch_size):
        xb = normalize(x[i:i + batch_size])
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out = model(xb).float()
        if flip:
            views = torch.stack([out.log_softmax(-1), model(xb.flip(-1)).float().log_softmax(-1)])
            out = views.logsumexp(0) - math.log(2)
        parts.append(out)
    model.train(was)
    logits = torch.cat(parts)
    correct = (logits.argmax(-1) == y).sum().item()
    return correct / len(y), F.cross_entropy(logits, y).item()


# ---------------------------------------------------------------------------------------------
# train

def best_candidate(line):
    """An epoch's candidate as fer picks it: the EMA's accuracy where it beats the weights'."""
    if line.get("val_acc") is None:  # not scored (eval_from)
        return -1.0
    ema = line.get("ema_val_acc")
    return max(line["val_acc"], ema) if ema is not None else line["val_acc"]


def time_to(lines, threshold):
    """(seconds, epoch) at the end of the first epoch whose candidate reaches `threshold`, the
    seconds summed over the epochs as fer's metrics count them (PublicTest included)."""
    seconds = 0.0
    for line in lines:
        seconds += line["seconds"]
        if best_candidate(line) >= threshold - 1e-12:
            return seconds, line["epoch"]
    return None, None


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def train(args):
    cfg = load_config(args.config, args.epochs, args.budget_minutes)
    t, aug = cfg["train"], cfg["augment"]
    out_dir = Path(args.out or OUT / cfg["name"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(Path(args.config).read_text())

    x_train, y_train = load_split(args.data, "Training")
    x_val, y_val = load_split(args.data, "PublicTest")
    n, bs = len(y_train), t["batch_size"]
    batches = math.ceil(n / bs)  # the last, partial batch too, as fer's chunks

    torch.manual_seed(cfg["seed"])
    model = convnet(**cfg["convnet"])
    params = sum(p.numel() for p in model.parameters())
    flops = fvcore_flops(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = make_optimizer(model, t)
    ema = None
    if t["ema_decay"] > 0:  # starts at the fresh network's weights, as fer's Ema::new
        ema = copy.deepcopy(model).requires_grad_(False)
        # state_dict() tensors share storage with the modules: updating them updates the EMA.
        ema_tensors, tensors = list(ema.state_dict().values()), list(model.state_dict().values())
    clock = Budget(t["time_budget_minutes"], t["epochs"])
    resize = t["progressive_resize"]
    header = {"engine": f"pytorch-{torch.__version__}", "config": rel(args.config), "name": cfg["name"],
              "threads": torch.get_num_threads(), "precision": t["precision"], "channels_last": args.channels_last,
              "params": params, "fvcore_flops": flops, "cpu": cpu_name(), "machine": platform.node()}
    print(json.dumps(header), file=sys.stderr)
    metrics_file = open(out_dir / "metrics.jsonl", "w")

    history, steps, total = [], 0, None
    best, best_epoch, best_is_ema, best_state, budget_spent = -1.0, 0, False, None, False
    for epoch in range(1, t["epochs"] + 1):
        started = time.perf_counter()
        es = epoch_seed(cfg["seed"], epoch)
        torch.manual_seed(es)  # dropout
        gen = torch.Generator().manual_seed(es)  # order and augmentation
        order = torch.randperm(n, generator=gen)
        loss_sum, correct, seen, side = 0.0, 0, 0, SIDE
        for b in range(batches):
            progress = (epoch - 1) + b / batches
            total = clock.total_epochs(progress, time.perf_counter() - started)
            if total is None:
                budget_spent = True
                break
            lr = lr_at(t["schedule"], t["lr"], progress, total)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[b * bs:(b + 1) * bs]
            xb = normalize(augment(x_train[idx], aug["crop_padding"], aug["hflip"], gen))
            yb = y_train[idx]
            if resize is not None:
                side = side_at(resize, progress / total)
                if side < SIDE:  # fer: _upsample_bilinear2d_aa(align_corners=false), in f32
                    xb = F.interpolate(xb, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(t["precision"]):
                out = model(xb).float()
                # fer's loss (train/loss.rs): targets (1 - s) one-hot + s / 7, i.e. PyTorch's
                # label smoothing exactly, on f32 log-softmax.
                loss = F.cross_entropy(out, yb, label_smoothing=t["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t["grad_clip"] > 0:  # fer: scale by max_norm / (norm + 1e-6) when above it
                torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
            opt.step()
            steps += 1
            if ema is not None:
                ema_update(ema_tensors, tensors, t["ema_decay"], steps)
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(-1) == yb).sum().item()
            seen += len(yb)
        if seen == 0 and budget_spent:
            break  # the budget ran out before this epoch's first step

        # fer's eval_from (train/mod.rs): PublicTest skipped early in the run, the last epoch
        # always scored; with a budget, an epoch leaving under a tenth of itself is the last.
        in_epoch = time.perf_counter() - started
        if t["eval_from"] > 0 and clock.total_epochs(epoch, 1.1 * in_epoch) is None:
            budget_spent = True
        is_scored = budget_spent or epoch == t["epochs"] or clock.fraction(epoch, in_epoch) >= t["eval_from"]
        eval_started = time.perf_counter()
        val_acc, val_loss, ema_acc, ema_loss, eval_seconds = None, None, None, None, None
        if is_scored:
            val_acc, val_loss = evaluate(model, x_val, y_val, t["eval_batch_size"], args.channels_last)
            if ema is not None:
                ema_acc, ema_loss = evaluate(ema, x_val, y_val, t["eval_batch_size"], args.channels_last)
            eval_seconds = time.perf_counter() - eval_started
        seconds = time.perf_counter() - started  # the epoch's wall time, PublicTest included
        clock.epoch_done(seconds, eval_seconds)
        line = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": val_loss,
                "val_acc": val_acc, "lr": lr, "seconds": seconds, "eval_seconds": eval_seconds}
        if ema is not None:
            line.update(ema_val_acc=ema_acc, ema_val_loss=ema_loss)
        if seen < n:
            line["fraction"] = seen / n
        history.append(line)
        line = {**line, "cumulative_seconds": clock.spent, "side": side, "steps": steps,
                "schedule_epochs": total}
        print(json.dumps(line), flush=True)
        metrics_file.write(json.dumps(line) + "\n")
        metrics_file.flush()
        print(f"epoch {epoch}/~{total or epoch:.1f}: "
              + (f"val {100 * val_acc:.2f}%" if is_scored else "PublicTest not scored yet (eval_from)")
              + (f" EMA {100 * ema_acc:.2f}%" if ema_acc is not None else "")
              + f"  {seconds:.0f}s ({clock.spent:.0f}s)", file=sys.stderr)

        # The best epoch's weights, kept for flip TTA at the end; outside the epoch's seconds, as
        # fer saves best.safetensors after timing the epoch.
        ema_better = ema_acc is not None and ema_acc > val_acc
        candidate = ema_acc if ema_better else val_acc
        if is_scored and candidate > best:
            best, best_epoch, best_is_ema = candidate, epoch, ema_better
            best_state = {k: v.clone() for k, v in (ema if ema_better else model).state_dict().items()}
        if budget_spent:
            break

    final = {"final": True, **header, "epochs": len(history), "best_epoch": best_epoch, "best_is_ema": best_is_ema,
             "val_acc": best, "train_seconds": sum(m["seconds"] for m in history), "budget_spent": budget_spent,
             "optimizer_steps": steps}
    final["reached"] = [dict(zip(("threshold", "seconds", "epoch"), (thr, *time_to(history, thr))))
                        for thr in sorted(args.thresholds)]
    if t["tta"] == "flip" and best_state is not None:  # scored apart, outside the budget, as fer
        scored = copy.deepcopy(model)
        scored.load_state_dict(best_state)
        final["tta"] = "flip"
        final["tta_val_acc"], _ = evaluate(scored, x_val, y_val, t["eval_batch_size"], args.channels_last, flip=True)
    print(json.dumps(final), flush=True)
    metrics_file.write(json.dumps(final) + "\n")
    metrics_file.close()
    (out_dir / "summary.json").write_text(json.dumps(final, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# step

def train_step(model, opt, x, y, precision):
    """One step as torch_reference.py and `fer bench step` time it (plain cross-entropy)."""
    opt.zero_grad(set_to_none=True)
    with autocast(precision):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    opt.step()
    return loss.item()


def step_once(args, precision):
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = convnet(**cfg["convnet"])
    flops = fvcore_flops(model)
    x = torch.rand(args.batch, 1, SIDE, SIDE) * 2 - 1
    y = torch.randint(0, len(CLASSES), (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    # AdamW with the config's rate and decay, as `fer bench step` (bench.rs) sets it up.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"])
    for _ in range(args.warmup):
        train_step(model, opt, x, y, precision)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        train_step(model, opt, x, y, precision)
        times.append(time.perf_counter() - started)
    # fer's median (bench.rs) is the upper one for an even count: the same statistic on both sides.
    med = statistics.median_high(times)
    return {"engine": f"pytorch-{torch.__version__}", "mode": "step", "model": rel(args.config),
            "batch": args.batch, "threads": torch.get_num_threads(), "precision": precision,
            "channels_last": args.channels_last, "median_step_s": med, "img_per_s": args.batch / med,
            # Training does about 3x the forward pass's work; 2 flops per multiply-add (as fer).
            "train_gflop_per_s": 3 * flops * 2 * args.batch / med / 1e9}


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def threads_flag(args):
    return ["--threads", str(args.threads)] if args.threads else []


def step(args):
    if not args.vs_fer:
        for precision in args.precisions:
            print(json.dumps(step_once(args, precision)), flush=True)
        return
    # fer and PyTorch alternately, each measurement in a fresh process with the machine to itself.
    fer = Path(args.fer or FER)
    if not fer.exists():
        sys.exit(f"{fer}: build fer first (source scripts/env.sh && cargo build --release)")
    common = ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    lines = []
    for r in range(args.rounds):
        for precision in args.precisions:
            mine = [sys.executable, str(Path(__file__).resolve()), "step", "--config", str(args.config),
                    "--precisions", precision, *common, *threads_flag(args)]
            if args.channels_last:
                mine.append("--channels-last")
            theirs = [str(fer), *threads_flag(args), "bench", "step", "--model", str(args.config),
                      "--precision", precision, *common]
            for cmd in (mine, theirs):
                line = {**run_json(cmd), "round": r}
                lines.append(line)
                print(json.dumps(line), file=sys.stderr)
    out = Path(args.out or OUT / "step.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(l) + "\n" for l in lines))
    rows = step_rows(lines)
    print(step_table(rows))


def step_rows(lines):
    """Per precision: median images/s of each engine, and the median of the rounds' fer / PyTorch."""
    rows = []
    for precision in dict.fromkeys(l["precision"] for l in lines):
        torch_lines = {l.get("round"): l for l in lines if l["precision"] == precision and l["engine"].startswith("pytorch")}
        fer_lines = {l.get("round"): l for l in lines if l["precision"] == precision and l["engine"].startswith("fer")}
        if not torch_lines or not fer_lines:
            continue
        ratios = [fer_lines[r]["img_per_s"] / torch_lines[r]["img_per_s"] for r in fer_lines if r in torch_lines]
        rows.append({"precision": precision, "rounds": len(ratios),
                     "pytorch_img_per_s": statistics.median(l["img_per_s"] for l in torch_lines.values()),
                     "fer_img_per_s": statistics.median(l["img_per_s"] for l in fer_lines.values()),
                     "fer_over_pytorch": statistics.median(ratios) if ratios else None})
    return rows


def step_table(rows):
    out = ["| training step, arithmetic | PyTorch img/s | fer img/s | fer / PyTorch |", "|---|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['fer_over_pytorch']:.2f}x" if r["fer_over_pytorch"] else "-"
        out.append(f"| {r['precision']} | {r['pytorch_img_per_s']:.1f} | {r['fer_img_per_s']:.1f} | {ratio} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# compare (standard library only)

def read_lines(path, name="metrics.jsonl"):
    path = Path(path)
    if path.is_dir():
        path = path / name
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def compare(args):
    fer_all, torch_all = read_lines(args.fer), read_lines(args.torch)
    fer_lines = [l for l in fer_all if "epoch" in l]
    torch_lines = [l for l in torch_all if "epoch" in l]
    if not fer_lines or not torch_lines:
        sys.exit("compare: no epoch lines in one of the metrics files")
    fer_best = max(best_candidate(l) for l in fer_lines)
    torch_best = max(best_candidate(l) for l in torch_lines)
    common = min(fer_best, torch_best)
    thresholds = sorted({*args.thresholds, common})
    rows = []
    for thr in thresholds:
        (fs, fe), (ts, te) = time_to(fer_lines, thr), time_to(torch_lines, thr)
        rows.append({"threshold": thr, "common": thr == common, "fer_seconds": fs, "fer_epoch": fe,
                     "pytorch_seconds": ts, "pytorch_epoch": te,
                     "pytorch_over_fer": ts / fs if fs and ts else None})
    def summary(lines, best):
        return {"best_val_acc": best, "epochs": len(lines), "seconds": sum(l["seconds"] for l in lines)}

    torch_final = next((l for l in torch_all if l.get("final")), {})
    record = {"fer": {"metrics": rel(args.fer), **summary(fer_lines, fer_best)},
              "pytorch": {"metrics": rel(args.torch), **summary(torch_lines, torch_best),
                          **{k: torch_final[k] for k in ("engine", "threads", "precision", "channels_last",
                                                         "cpu", "tta_val_acc") if k in torch_final}},
              "time_to_accuracy": rows}

    def cell(s, e):
        return f"{s:.0f} s (epoch {e})" if s is not None else "not reached"

    print("| PublicTest accuracy | fer | PyTorch | PyTorch / fer |")
    print("|---|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['pytorch_over_fer']:.2f}x" if r["pytorch_over_fer"] else "-"
        label = f"{100 * r['threshold']:.2f}%" + (" (the lower best)" if r["common"] else "")
        print(f"| {label} | {cell(r['fer_seconds'], r['fer_epoch'])} | "
              f"{cell(r['pytorch_seconds'], r['pytorch_epoch'])} | {ratio} |")
    print(f"\nbest PublicTest: fer {100 * fer_best:.2f}% in {record['fer']['epochs']} epochs "
          f"({record['fer']['seconds']:.0f} s), PyTorch {100 * torch_best:.2f}% in "
          f"{record['pytorch']['epochs']} epochs ({record['pytorch']['seconds']:.0f} s)")
    if args.step:
        record["training_step"] = step_rows(read_lines(args.step))
        print("\n" + step_table(record["training_step"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# side-by-side: fer's training, then PyTorch's, then the steps, then the comparison

def side_by_side(args):
    if args.budget_minutes is not None:  # fer has no such flag: edit the config instead
        sys.exit("side-by-side: set time_budget_minutes in the config (fer train takes it from there)")
    fer = Path(args.fer or FER)
    if not fer.exists():
        sys.exit(f"{fer}: build fer first (source scripts/env.sh && cargo build --release)")
    name = load_config(args.config)["name"]
    me = [sys.executable, str(Path(__file__).resolve())]
    overrides = (["--epochs", str(args.epochs)] if args.epochs else [])
    fer_cmd = [str(fer), *threads_flag(args), "--data", str(args.data), "train", "--config", str(args.config),
               "--runs", str(args.runs), "--fresh", *overrides]
    torch_dir = Path(args.out or OUT / name)
    torch_cmd = [*me, "train", "--config", str(args.config), "--data", str(args.data), "--out", str(torch_dir),
                 *threads_flag(args), *overrides]
    if args.channels_last:
        torch_cmd.append("--channels-last")
    step_out = torch_dir.parent / "step.jsonl"
    step_cmd = [*me, "step", "--vs-fer", "--fer", str(fer), "--config", str(args.config), "--out", str(step_out),
                "--rounds", str(args.rounds), *threads_flag(args)] + (["--channels-last"] if args.channels_last else [])
    for cmd in (fer_cmd, torch_cmd, step_cmd):  # one after the other, each alone on the machine
        print("+ " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=ROOT)
    args.fer, args.torch, args.step = str(Path(args.runs) / name), str(torch_dir), str(step_out)
    args.out = str(torch_dir.parent / "comparison.json")
    compare(args)


def flops(args):
    cfg = load_config(args.config)
    model = convnet(**cfg["convnet"])
    line = {"config": rel(args.config), "fvcore_flops": fvcore_flops(model),
            "params": sum(p.numel() for p in model.parameters())}
    try:
        from fvcore.nn import FlopCountAnalysis
        model.eval()
        f = FlopCountAnalysis(model, torch.zeros(1, 1, SIDE, SIDE))
        f.unsupported_ops_warnings(False)
        line["fvcore_package"] = f.total()
    except ImportError:
        pass
    print(json.dumps(line))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["train", "step", "compare", "side-by-side", "flops"])
    p.add_argument("--config", default=str(default_config()), help="a fer TOML config")
    p.add_argument("--data", default=str(DATA), help="the image-folder release of FER-2013")
    p.add_argument("--out", help="train: a folder (default results/speedrun/torch/<name>); step --vs-fer: a "
                                 "JSONL file (default results/speedrun/torch/step.jsonl); compare: the JSON record")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (and fer's --threads); default: "
                                               "libtorch's, all cores, as fer's")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--budget-minutes", type=float, help="train: override time_budget_minutes")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last tensors, as fer lays them out for oneDNN (not the idiomatic default)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.60, 0.63, 0.65],
                   help="PublicTest accuracies (fractions) to time")
    # step
    p.add_argument("--precisions", nargs="+", choices=["f32", "bf16"], default=["f32", "bf16"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--vs-fer", action="store_true", help="step: alternate with `fer bench step`")
    p.add_argument("--fer", help="step, side-by-side: the fer binary (default target/release/fer); "
                                 "compare: fer's metrics.jsonl or its run folder")
    # compare / side-by-side
    p.add_argument("--torch", help="compare: this script's metrics.jsonl or its --out folder")
    p.add_argument("--step", help="compare: a step --vs-fer JSONL to add to the record")
    p.add_argument("--runs", default=str(ROOT / "runs" / "side-by-side"), help="side-by-side: fer's runs folder")
    args = p.parse_args()
    # Subprocesses run in the repository root: paths are made absolute first.
    for key in ("config", "data", "out", "fer", "torch", "step", "runs"):
        if getattr(args, key):
            setattr(args, key, str(Path(getattr(args, key)).resolve()))

    if args.mode == "compare":
        if not args.torch or not args.fer:
            p.error("compare needs --fer (fer's metrics.jsonl or run folder) and --torch")
        args.out = args.out or str(OUT / "comparison.json")
        return compare(args)
    if torch is None:
        reexec_with_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"train": train, "step": step, "side-by-side": side_by_side, "flops": flops}[args.mode](args)


if __name__ == "__main__":
    main()
