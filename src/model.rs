//! Networks as plain sequences of layers: written in config files, built into `tch` modules,
//! and walked by the FLOP counter. Variables are named like PyTorch's `nn.Sequential`
//! (`0.weight`, `0.bias`, ...), with PyTorch's default initialisation.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::data::{NUM_CLASSES, SIDE};

fn d1() -> i64 {
    1
}
fn d2() -> i64 {
    2
}
fn d3() -> i64 {
    3
}
fn yes() -> bool {
    true
}

/// One layer of a network. Input widths are inferred, so a config only names output widths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    /// 2-D convolution; padding defaults to kernel / 2 ("same" at stride 1).
    Conv {
        out: i64,
        #[serde(default = "d3")]
        kernel: i64,
        #[serde(default = "d1")]
        stride: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding: Option<i64>,
        #[serde(default = "d1")]
        groups: i64,
        #[serde(default = "yes")]
        bias: bool,
    },
    BatchNorm,
    Relu,
    MaxPool {
        #[serde(default = "d2")]
        kernel: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<i64>,
    },
    AvgPool {
        #[serde(default = "d2")]
        kernel: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<i64>,
    },
    /// Adaptive average pool to 1x1, then flattened: `[N, C, H, W]` to `[N, C]`.
    GlobalAvgPool,
    Flatten,
    Linear {
        out: i64,
        #[serde(default = "yes")]
        bias: bool,
    },
    Dropout {
        p: f64,
    },
}

impl Layer {
    pub fn conv(out: i64) -> Layer {
        Layer::Conv { out, kernel: 3, stride: 1, padding: None, groups: 1, bias: true }
    }

    /// A convolution without bias (it is followed by batch norm).
    pub fn conv_nb(out: i64, kernel: i64, stride: i64, groups: i64) -> Layer {
        Layer::Conv { out, kernel, stride, padding: None, groups, bias: false }
    }

    pub fn max_pool() -> Layer {
        Layer::MaxPool { kernel: 2, stride: None }
    }

    pub fn linear(out: i64) -> Layer {
        Layer::Linear { out, bias: true }
    }

    /// A short name for tables: `conv3x3/s2 g16`, `linear`, ...
    pub fn kind(&self) -> String {
        match self {
            Layer::Conv { kernel, stride, groups, .. } => {
                let mut s = format!("conv{kernel}x{kernel}");
                if *stride != 1 {
                    s += &format!("/s{stride}");
                }
                if *groups != 1 {
                    s += &format!(" g{groups}");
                }
                s
            }
            Layer::BatchNorm => "batch_norm".into(),
            Layer::Relu => "relu".into(),
            Layer::MaxPool { kernel, .. } => format!("max_pool{kernel}"),
            Layer::AvgPool { kernel, .. } => format!("avg_pool{kernel}"),
            Layer::GlobalAvgPool => "global_avg_pool".into(),
            Layer::Flatten => "flatten".into(),
            Layer::Linear { .. } => "linear".into(),
            Layer::Dropout { p } => format!("dropout({p})"),
        }
    }
}

/// A tensor's shape per image: a feature map or a flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Map { c: i64, h: i64, w: i64 },
    Flat(i64),
}

impl Shape {
    pub const INPUT: Shape = Shape::Map { c: 1, h: SIDE as i64, w: SIDE as i64 };

    pub fn elements(self) -> i64 {
        match self {
            Shape::Map { c, h, w } => c * h * w,
            Shape::Flat(n) => n,
        }
    }

    pub fn channels(self) -> i64 {
        match self {
            Shape::Map { c, .. } => c,
            Shape::Flat(n) => n,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "{c}x{h}x{w}"),
            Shape::Flat(n) => write!(f, "{n}"),
        }
    }
}

fn pooled(len: i64, kernel: i64, stride: i64, padding: i64) -> i64 {
    (len + 2 * padding - kernel) / stride + 1
}

/// The output shape of `layer` on an input of shape `input`, or why it does not fit.
pub fn output_shape(layer: &Layer, input: Shape) -> anyhow::Result<Shape> {
    use Shape::*;
    Ok(match (layer, input) {
        (Layer::Conv { out, kernel, stride, padding, groups, .. }, Map { c, h, w }) => {
            anyhow::ensure!(c % groups == 0 && out % groups == 0, "conv groups {groups} must divide {c} in and {out} out channels");
            let p = padding.unwrap_or(kernel / 2);
            let shape = Map { c: *out, h: pooled(h, *kernel, *stride, p), w: pooled(w, *kernel, *stride, p) };
            anyhow::ensure!(shape.elements() > 0, "conv {kernel}x{kernel} does not fit a {h}x{w} map");
            shape
        }
        (Layer::MaxPool { kernel, stride } | Layer::AvgPool { kernel, stride }, Map { c, h, w }) => {
            let s = stride.unwrap_or(*kernel);
            anyhow::ensure!(h >= *kernel && w >= *kernel, "pool {kernel}x{kernel} does not fit a {h}x{w} map");
            Map { c, h: pooled(h, *kernel, s, 0), w: pooled(w, *kernel, s, 0) }
        }
        (Layer::BatchNorm | Layer::Relu | Layer::Dropout { .. }, s) => s,
        (Layer::GlobalAvgPool, Map { c, .. }) => Flat(c),
        (Layer::Flatten, s) => Flat(s.elements()),
        (Layer::Linear { out, .. }, Flat(_)) => Flat(*out),
        (Layer::Linear { .. }, s @ Map { .. }) => anyhow::bail!("linear on a {s} feature map: add a flatten or global_avg_pool first"),
        (l, s) => anyhow::bail!("{} cannot take a flat {s} input", l.kind()),
    })
}

/// Input and output shape of every layer; checks the network ends in 7 class scores.
pub fn shapes(layers: &[Layer]) -> anyhow::Result<Vec<(Shape, Shape)>> {
    let mut shape = Shape::INPUT;
    let mut out = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let next = output_shape(layer, shape).map_err(|e| anyhow::anyhow!("layer {i} ({}): {e}", layer.kind()))?;
        out.push((shape, next));
        shape = next;
    }
    anyhow::ensure!(
        shape == Shape::Flat(NUM_CLASSES as i64),
        "the network must end in {NUM_CLASSES} class scores, it ends in {shape}"
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The named networks (identical to ../shared/bench/torch_reference.py)

pub const NAMED: [&str; 3] = ["baseline", "mobile", "vgg"];

pub fn named(name: &str) -> Option<Vec<Layer>> {
    match name {
        "baseline" => Some(baseline()),
        "mobile" => Some(mobile()),
        "vgg" => Some(vgg()),
        _ => None,
    }
}

/// The competition's baseline: 7 conv + ReLU (pool after conv 3, 5, 7), 6 linear layers.
pub fn baseline() -> Vec<Layer> {
    let mut layers = Vec::new();
    for (i, out) in [8, 32, 64, 128, 128, 256, 256].into_iter().enumerate() {
        layers.extend([Layer::conv(out), Layer::Relu]);
        if matches!(i, 2 | 4 | 6) {
            layers.push(Layer::max_pool());
        }
    }
    layers.push(Layer::Flatten);
    let widths = [2304, 1152, 576, 288, 144, NUM_CLASSES as i64];
    for (i, out) in widths.into_iter().enumerate() {
        layers.push(Layer::linear(out));
        if i + 1 < widths.len() {
            layers.push(Layer::Relu);
        }
    }
    layers
}

fn conv_bn_relu(out: i64, kernel: i64, stride: i64, groups: i64) -> [Layer; 3] {
    [Layer::conv_nb(out, kernel, stride, groups), Layer::BatchNorm, Layer::Relu]
}

/// Depthwise-separable: conv 1->16, three stages of two blocks (16->32->64->128), GAP, linear.
pub fn mobile() -> Vec<Layer> {
    let mut layers = conv_bn_relu(16, 3, 1, 1).to_vec();
    for (cin, cout) in [(16, 32), (32, 64), (64, 128)] {
        for (c_in, stride) in [(cin, 2), (cout, 1)] {
            layers.extend(conv_bn_relu(c_in, 3, stride, c_in));
            layers.extend(conv_bn_relu(cout, 1, 1, 1));
        }
    }
    layers.extend([Layer::GlobalAvgPool, Layer::linear(NUM_CLASSES as i64)]);
    layers
}

/// VGG-style: [conv-BN-ReLU] x2 + max pool at widths 32..256, dropout, two linear layers.
pub fn vgg() -> Vec<Layer> {
    let mut layers = Vec::new();
    for c in [32, 64, 128, 256] {
        layers.extend(conv_bn_relu(c, 3, 1, 1));
        layers.extend(conv_bn_relu(c, 3, 1, 1));
        layers.push(Layer::max_pool());
    }
    layers.extend([
        Layer::Flatten,
        Layer::Dropout { p: 0.5 },
        Layer::linear(256),
        Layer::Relu,
        Layer::linear(NUM_CLASSES as i64),
    ]);
    layers
}

// ---------------------------------------------------------------------------------------
// Building

enum Built {
    Conv(nn::Conv2D),
    BatchNorm(nn::BatchNorm),
    Relu,
    MaxPool { kernel: i64, stride: i64 },
    AvgPool { kernel: i64, stride: i64 },
    GlobalAvgPool,
    Flatten,
    Linear(nn::Linear),
    Dropout(f64),
}

/// A built network: the layers' modules, in order.
pub struct Net {
    layers: Vec<Built>,
}

/// PyTorch's default for conv and linear: weight and bias uniform in ±1/sqrt(fan_in).
fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

impl Net {
    pub fn new(root: &nn::Path, layers: &[Layer]) -> anyhow::Result<Net> {
        let shapes = shapes(layers)?;
        let mut built = Vec::with_capacity(layers.len());
        for (i, (layer, (input, _))) in layers.iter().zip(&shapes).enumerate() {
            let p = root / i;
            built.push(match *layer {
                Layer::Conv { out, kernel, stride, padding, groups, bias } => {
                    let cin = input.channels();
                    let init = torch_default_init(cin / groups * kernel * kernel);
                    let cfg = nn::ConvConfig {
                        stride,
                        padding: padding.unwrap_or(kernel / 2),
                        groups,
                        bias,
                        ws_init: init,
                        bs_init: init,
                        ..Default::default()
                    };
                    Built::Conv(nn::conv2d(p, cin, out, kernel, cfg))
                }
                Layer::BatchNorm => {
                    let cfg = nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() };
                    Built::BatchNorm(nn::batch_norm2d(p, input.channels(), cfg))
                }
                Layer::Relu => Built::Relu,
                Layer::MaxPool { kernel, stride } => Built::MaxPool { kernel, stride: stride.unwrap_or(kernel) },
                Layer::AvgPool { kernel, stride } => Built::AvgPool { kernel, stride: stride.unwrap_or(kernel) },
                Layer::GlobalAvgPool => Built::GlobalAvgPool,
                Layer::Flatten => Built::Flatten,
                Layer::Linear { out, bias } => {
                    let fan_in = input.elements();
                    let init = torch_default_init(fan_in);
                    let cfg = nn::LinearConfig { ws_init: init, bs_init: Some(init), bias };
                    Built::Linear(nn::linear(p, fan_in, out, cfg))
                }
                Layer::Dropout { p } => Built::Dropout(p),
            });
        }
        Ok(Net { layers: built })
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Net({} layers)", self.layers.len())
    }
}

impl ModuleT for Net {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for layer in &self.layers {
            x = match layer {
                Built::Conv(c) => x.apply(c),
                Built::BatchNorm(bn) => x.apply_t(bn, train),
                Built::Relu => x.relu(),
                Built::MaxPool { kernel, stride } => x.max_pool2d([*kernel, *kernel], [*stride, *stride], [0, 0], [1, 1], false),
                Built::AvgPool { kernel, stride } => {
                    x.avg_pool2d([*kernel, *kernel], [*stride, *stride], [0, 0], false, true, None::<i64>)
                }
                Built::GlobalAvgPool => x.adaptive_avg_pool2d([1, 1]).flatten(1, -1),
                Built::Flatten => x.flatten(1, -1),
                Built::Linear(l) => x.apply(l),
                Built::Dropout(p) => x.dropout(*p, train),
            };
        }
        x
    }
}

/// Number of trainable parameters.
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}
