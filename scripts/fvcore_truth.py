#!/usr/bin/env python3
"""Ground truth for fer's FLOP counter, from fvcore itself: every layer kind fer has, the
evaluation blur, the named networks and every shipped model, each built in PyTorch from fer's
own layer list and counted by fvcore's FlopCountAnalysis on one 1x1xSxS face in eval mode.
Writes tests/fixtures/fvcore_truth.json, which `cargo test` (src/nn/flops.rs) reads.

    python3 scripts/fvcore_truth.py            # needs target/release/fer (cargo build --release)

fvcore 0.1.5 and torch 2.11.0 live in the virtual environment .deps/torch-ref (installed on
first use, as scripts/bench_vs_torch.py installs it). Re-run after a shipped model changes its
architecture: the test refuses a truth file whose layer lists are not the models' own.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "fvcore_truth.json"
FVCORE = "fvcore==0.1.5.post20221221"


def reexec_in_venv():
    """Runs this script again inside .deps/torch-ref, with fvcore installed there."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_vs_torch import python_env
    python = python_env()
    have = subprocess.run([python, "-c", "import fvcore"], capture_output=True).returncode == 0
    if not have:
        print(f"installing {FVCORE} into .deps/torch-ref ...", file=sys.stderr)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", FVCORE], check=True)
    sys.exit(subprocess.run([python, __file__, *sys.argv[1:]]).returncode)


try:
    import torch
    from torch import nn
    import torch.nn.functional as F
    from fvcore.nn import FlopCountAnalysis
except ImportError:
    reexec_in_venv()


# One case per layer kind and variant (fer's Layer, as `[model] layers` writes it), on a 48x48
# face unless `side` says otherwise. Each ends in 7 class scores, as fer requires.
HEAD = [{"type": "global_avg_pool"}, {"type": "linear", "out": 7}]
CASES = {
    "conv3x3": [{"type": "conv", "out": 8}, {"type": "relu"}, *HEAD],
    "conv5x5_stride2_no_bias": [{"type": "conv", "out": 8, "kernel": 5, "stride": 2, "bias": False}, *HEAD],
    "conv_padding0": [{"type": "conv", "out": 8, "kernel": 3, "padding": 0}, *HEAD],
    "conv_grouped": [{"type": "conv", "out": 8}, {"type": "conv", "out": 16, "groups": 4}, *HEAD],
    "conv_depthwise": [{"type": "conv", "out": 8}, {"type": "conv", "out": 8, "groups": 8}, *HEAD],
    "batch_norm": [{"type": "conv", "out": 8, "bias": False}, {"type": "batch_norm"}, {"type": "relu"}, *HEAD],
    "max_pool": [{"type": "conv", "out": 8}, {"type": "max_pool"}, {"type": "max_pool", "kernel": 3, "stride": 2}, *HEAD],
    "avg_pool": [{"type": "avg_pool", "kernel": 2}, {"type": "conv", "out": 8}, {"type": "avg_pool", "kernel": 3, "stride": 1}, *HEAD],
    "flatten_linear": [{"type": "conv", "out": 4, "stride": 4}, {"type": "flatten"}, {"type": "linear", "out": 32},
                       {"type": "dropout", "p": 0.5}, {"type": "linear", "out": 7, "bias": False}],
    "activations": [{"type": "conv", "out": 8}, {"type": "leaky_relu", "slope": 0.1}, {"type": "silu"}, {"type": "gelu"}, *HEAD],
    "separable": [{"type": "conv", "out": 8}, {"type": "separable", "out": 16}, {"type": "separable", "out": 16, "kernel": 5, "stride": 2}, *HEAD],
    "residual_identity": [{"type": "conv", "out": 8},
                          {"type": "residual", "body": [{"type": "conv", "out": 8}, {"type": "relu"}, {"type": "conv", "out": 8}]}, *HEAD],
    "residual_projection": [{"type": "conv", "out": 8},
                            {"type": "residual", "body": [{"type": "conv", "out": 16, "stride": 2}, {"type": "relu"}, {"type": "conv", "out": 16}]}, *HEAD],
    "residual_projection_batch_norm": [
        {"type": "conv", "out": 8},
        {"type": "residual", "body": [{"type": "conv", "out": 16, "stride": 2, "bias": False}, {"type": "batch_norm"}, {"type": "relu"},
                                      {"type": "conv", "out": 16, "bias": False}, {"type": "batch_norm"}]}, *HEAD],
    "se": [{"type": "conv", "out": 16}, {"type": "se", "reduction": 4}, *HEAD],
    "cbam": [{"type": "conv", "out": 16}, {"type": "cbam", "reduction": 4, "kernel": 7}, *HEAD],
    "cbam_kernel3": [{"type": "conv", "out": 16}, {"type": "cbam", "reduction": 8, "kernel": 3}, *HEAD],
    "small_input": [{"type": "conv", "out": 8, "stride": 2}, {"type": "max_pool"}, *HEAD],
}
SIDES = {"small_input": 40}
BLURS = {"blur_sigma1": 1.0, "blur_sigma0.6": 0.6}  # the evaluation blur, before conv3x3's network
# Named networks, and the shipped models as they run (batch norm folded).
MODELS = ["baseline", "mobile", "vgg", "configs/speedrun.toml", "models/accurate", "models/small", "models/tiny", "models/nano"]


def pooled(n, kernel, stride, padding):
    return (n + 2 * padding - kernel) // stride + 1


class Residual(nn.Module):
    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class Se(nn.Module):
    """Squeeze-and-excitation, as the paper writes it and fer runs it."""

    def __init__(self, c, reduction):
        super().__init__()
        self.squeeze, self.excite = nn.Linear(c, c // reduction), nn.Linear(c // reduction, c)

    def forward(self, x):
        g = self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1).flatten(1)))).sigmoid()
        return x * g[:, :, None, None]


class Cbam(nn.Module):
    """CBAM (Woo et al. 2018): channel attention from average- and max-pooled features through one
    MLP, then spatial attention from a kxk convolution over the channel mean and max."""

    def __init__(self, c, reduction, kernel):
        super().__init__()
        self.squeeze, self.excite = nn.Linear(c, c // reduction), nn.Linear(c // reduction, c)
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def mlp(self, v):
        return self.excite(F.relu(self.squeeze(v)))

    def forward(self, x):
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1).flatten(1))
        mx = self.mlp(x.amax(dim=(2, 3)))
        x = x * (avg + mx).sigmoid()[:, :, None, None]
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)
        return x * self.spatial(maps).sigmoid()


class Blur(nn.Module):
    """fer's evaluation blur: replicate padding, a row pass, a column pass."""

    def __init__(self, sigma):
        super().__init__()
        r = int(-(-3 * sigma // 1))  # ceil(3 sigma)
        g = torch.tensor([float(torch.exp(torch.tensor(-d * d / (2 * sigma * sigma)))) for d in range(-r, r + 1)])
        g = g / g.sum()
        self.r, self.rows, self.cols = r, g.reshape(1, 1, 1, -1), g.reshape(1, 1, -1, 1)

    def forward(self, x):
        x = F.pad(x, [self.r] * 4, mode="replicate")
        return F.conv2d(F.conv2d(x, self.rows), self.cols)


def build(layers, shape):
    """PyTorch modules for fer's `layers` on an input of `shape` ((c, h, w) or (n,)), and the
    output shape: the rules of fer's output_shape and shortcut (src/nn/model.rs)."""
    modules = []
    for layer in layers:
        kind = layer["type"]
        if kind == "conv":
            c, h, w = shape
            k, s, g = layer.get("kernel", 3), layer.get("stride", 1), layer.get("groups", 1)
            p = layer.get("padding", k // 2)
            modules.append(nn.Conv2d(c, layer["out"], k, s, p, groups=g, bias=layer.get("bias", True)))
            shape = (layer["out"], pooled(h, k, s, p), pooled(w, k, s, p))
        elif kind in ("max_pool", "avg_pool"):
            c, h, w = shape
            k = layer.get("kernel", 2)
            s = layer.get("stride", k)
            modules.append((nn.MaxPool2d if kind == "max_pool" else nn.AvgPool2d)(k, s))
            shape = (c, pooled(h, k, s, 0), pooled(w, k, s, 0))
        elif kind == "batch_norm":
            modules.append(nn.BatchNorm2d(shape[0]))
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "leaky_relu":
            modules.append(nn.LeakyReLU(layer.get("slope", 0.01)))
        elif kind == "silu":
            modules.append(nn.SiLU())
        elif kind == "gelu":
            modules.append(nn.GELU())
        elif kind == "dropout":
            modules.append(nn.Dropout(layer["p"]))
        elif kind == "global_avg_pool":
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            shape = (shape[0],)
        elif kind == "flatten":
            modules.append(nn.Flatten())
            n = 1
            for d in shape:
                n *= d
            shape = (n,)
        elif kind == "linear":
            modules.append(nn.Linear(shape[0], layer["out"], bias=layer.get("bias", True)))
            shape = (layer["out"],)
        elif kind == "separable":
            c = shape[0]
            k, s = layer.get("kernel", 3), layer.get("stride", 1)
            body = [{"type": "conv", "out": c, "kernel": k, "stride": s, "groups": c, "bias": False}, {"type": "batch_norm"},
                    {"type": "relu"}, {"type": "conv", "out": layer["out"], "kernel": 1, "bias": False}, {"type": "batch_norm"},
                    {"type": "relu"}]
            module, shape = build(body, shape)
            modules.append(module)
        elif kind == "residual":
            body, out = build(layer["body"], shape)
            shortcut = None
            if out != shape:
                with_bn = any(l["type"] == "batch_norm" for l in layer["body"])
                conv = nn.Conv2d(shape[0], out[0], 1, shape[1] // out[1], 0, bias=not with_bn)
                shortcut = nn.Sequential(conv, nn.BatchNorm2d(out[0])) if with_bn else conv
            modules.append(Residual(body, shortcut))
            shape = out
        elif kind == "se":
            modules.append(Se(shape[0], layer.get("reduction", 8)))
        elif kind == "cbam":
            modules.append(Cbam(shape[0], layer.get("reduction", 8), layer.get("kernel", 7)))
        else:
            raise SystemExit(f"fvcore_truth.py does not know fer's layer type {kind!r}: add it to build()")
    return nn.Sequential(*modules), shape


def fvcore_count(module, side):
    module.eval()
    with torch.inference_mode():
        analysis = FlopCountAnalysis(module, torch.zeros(1, 1, side, side))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total()), {k: int(v) for k, v in sorted(analysis.by_operator().items())}


def fer_network(model):
    """fer's layer list, input side and blur for a named network, config or model folder."""
    fer = ROOT / "target" / "release" / "fer"
    if not fer.exists():
        raise SystemExit("build fer first: source scripts/env.sh && cargo build --release")
    out = subprocess.run([str(fer), "flops", model, "--json"], check=True, capture_output=True, text=True, cwd=ROOT)
    v = json.loads(out.stdout)
    return v["network"], v["input_size"], v["eval_blur"]


def main():
    torch.manual_seed(0)
    cases = {}

    def add(name, layers, side=48, blur=0.0, model=False):
        net, shape = build(layers, (1, side, side))
        assert shape == (7,), f"{name}: ends in {shape}, not 7 scores"
        module = nn.Sequential(Blur(blur), net) if blur > 0 else net
        total, by_operator = fvcore_count(module, side)
        cases[name] = {"layers": layers, "input_size": side, "eval_blur": blur, "fvcore": total, "by_operator": by_operator,
                       "model": model}
        print(f"{name:32} {total:>12,} FLOPs  {by_operator}", file=sys.stderr)

    for name, layers in CASES.items():
        add(name, layers, SIDES.get(name, 48))
    for name, sigma in BLURS.items():
        add(name, CASES["conv3x3"], 48, sigma)
    for model in MODELS:
        layers, side, blur = fer_network(model)
        add(model, layers, side, blur, model=True)
    truth = {
        "about": "FLOPs of one face counted by fvcore's FlopCountAnalysis (scripts/fvcore_truth.py); "
                 "the layers are fer's, built in PyTorch",
        "fvcore": FVCORE,
        "torch": torch.__version__,
        "cases": cases,
    }
    OUT.write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
