//! Networks as plain sequences of layers: written in config files, built into `tch` modules,
//! and walked by the FLOP counter. Variables are named like PyTorch's `nn.Sequential`
//! (`0.weight`, `0.bias`, ...), with PyTorch's default initialisation. A `Trained` model is a
//! network with its config and weights, loaded from a run or model folder.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::config::{Config, Precision, Tta};
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
fn d7() -> i64 {
    7
}
fn d_reduction() -> i64 {
    8
}
fn leaky_slope() -> f64 {
    0.01
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
    LeakyRelu {
        #[serde(default = "leaky_slope")]
        slope: f64,
    },
    Silu,
    Gelu,
    /// MobileNet block: depthwise kxk conv, BN, ReLU, pointwise 1x1 conv, BN, ReLU.
    Separable {
        out: i64,
        #[serde(default = "d3")]
        kernel: i64,
        #[serde(default = "d1")]
        stride: i64,
    },
    /// `body(x) + shortcut(x)`: the shortcut is the identity when shapes agree, else a 1x1
    /// projection (with batch norm when the body has it).
    Residual {
        body: Vec<Layer>,
    },
    /// Squeeze-and-excitation: channel gates from the global average, through a bottleneck.
    Se {
        #[serde(default = "d_reduction")]
        reduction: i64,
    },
    /// CBAM: channel attention (average- and max-pooled, shared MLP), then spatial attention
    /// (a kxk conv over the channel mean and max).
    Cbam {
        #[serde(default = "d_reduction")]
        reduction: i64,
        #[serde(default = "d7")]
        kernel: i64,
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
            Layer::LeakyRelu { .. } => "leaky_relu".into(),
            Layer::Silu => "silu".into(),
            Layer::Gelu => "gelu".into(),
            Layer::Separable { kernel, stride, .. } => format!("separable{kernel}x{kernel}/s{stride}"),
            Layer::Residual { body } => {
                format!("residual[{}]", body.iter().map(Layer::kind).collect::<Vec<_>>().join(", "))
            }
            Layer::Se { reduction } => format!("se(r={reduction})"),
            Layer::Cbam { reduction, kernel } => format!("cbam(r={reduction}, k={kernel})"),
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
    /// A one-channel square input of `side` pixels.
    pub fn input(side: i64) -> Shape {
        Shape::Map { c: 1, h: side, w: side }
    }

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
            anyhow::ensure!(*stride > 0 && *groups > 0 && *kernel > 0 && *out > 0, "conv: stride, groups, kernel and out must be at least 1");
            anyhow::ensure!(c % groups == 0 && out % groups == 0, "conv groups {groups} must divide {c} in and {out} out channels");
            let p = padding.unwrap_or(kernel / 2);
            let shape = Map { c: *out, h: pooled(h, *kernel, *stride, p), w: pooled(w, *kernel, *stride, p) };
            anyhow::ensure!(shape.elements() > 0, "conv {kernel}x{kernel} does not fit a {h}x{w} map");
            shape
        }
        (Layer::MaxPool { kernel, stride } | Layer::AvgPool { kernel, stride }, Map { c, h, w }) => {
            let s = stride.unwrap_or(*kernel);
            anyhow::ensure!(*kernel > 0 && s > 0, "pool: kernel and stride must be at least 1");
            anyhow::ensure!(h >= *kernel && w >= *kernel, "pool {kernel}x{kernel} does not fit a {h}x{w} map");
            Map { c, h: pooled(h, *kernel, s, 0), w: pooled(w, *kernel, s, 0) }
        }
        (Layer::Separable { out, kernel, stride }, s @ Map { c, .. }) => {
            anyhow::ensure!(*stride > 0 && *kernel > 0 && *out > 0, "separable: stride, kernel and out must be at least 1");
            let dw = output_shape(&Layer::conv_nb(c, *kernel, *stride, c), s)?;
            output_shape(&Layer::conv_nb(*out, 1, 1, 1), dw)?
        }
        (Layer::Residual { body }, s @ Map { .. }) => {
            let mut shape = s;
            for layer in body {
                shape = output_shape(layer, shape)?;
            }
            let Map { h, w, .. } = shape else { anyhow::bail!("a residual body must keep a feature map") };
            let Map { h: h0, .. } = s else { unreachable!() };
            anyhow::ensure!(h > 0 && h0 % h == 0 && h == w, "residual body must shrink the map by a whole stride");
            shape
        }
        (Layer::Se { reduction } | Layer::Cbam { reduction, .. }, s @ Map { c, .. }) => {
            anyhow::ensure!(*reduction > 0, "attention reduction must be at least 1");
            anyhow::ensure!(c / reduction >= 1, "attention reduction {reduction} leaves no channels of {c}");
            s
        }
        (Layer::BatchNorm, Flat(_)) => anyhow::bail!("batch_norm needs a feature map, not a flat input"),
        (Layer::BatchNorm | Layer::Relu | Layer::Dropout { .. } | Layer::LeakyRelu { .. } | Layer::Silu | Layer::Gelu, s) => s,
        (Layer::GlobalAvgPool, Map { c, .. }) => Flat(c),
        (Layer::Flatten, s) => Flat(s.elements()),
        (Layer::Linear { out, .. }, Flat(_)) => Flat(*out),
        (Layer::Linear { .. }, s @ Map { .. }) => anyhow::bail!("linear on a {s} feature map: add a flatten or global_avg_pool first"),
        (l, s) => anyhow::bail!("{} cannot take a flat {s} input", l.kind()),
    })
}

/// Input and output shape of every layer; checks the network ends in 7 class scores.
pub fn shapes(layers: &[Layer]) -> anyhow::Result<Vec<(Shape, Shape)>> {
    shapes_at(layers, SIDE as i64)
}

/// As [`shapes`], for a `side` x `side` input.
pub fn shapes_at(layers: &[Layer], side: i64) -> anyhow::Result<Vec<(Shape, Shape)>> {
    let mut shape = Shape::input(side);
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

pub const NAMED: [&str; 4] = ["baseline", "mobile", "vgg", "resnet"];

pub fn named(name: &str) -> Option<Vec<Layer>> {
    match name {
        "baseline" => Some(baseline()),
        "mobile" => Some(mobile()),
        "vgg" => Some(vgg()),
        "resnet" => Some(ConvNet { blocks: 2, residual: true, ..ConvNet::default() }.layers()),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    None,
    Se,
    Cbam,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Downsample {
    /// A 2x2 max pool before each stage after the first.
    MaxPool,
    /// The first convolution of each later stage has stride 2.
    Stride,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    LeakyRelu,
    Silu,
    Gelu,
}

impl Activation {
    fn layer(self) -> Layer {
        match self {
            Activation::Relu => Layer::Relu,
            Activation::LeakyRelu => Layer::LeakyRelu { slope: 0.01 },
            Activation::Silu => Layer::Silu,
            Activation::Gelu => Layer::Gelu,
        }
    }
}

/// A family of stage-wise convnets whose switches are the ablation's levers: batch norm,
/// residual shortcuts, attention, depthwise-separable convolutions, dropout, widths, depth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvNet {
    /// One stage per width; each later stage halves the map.
    pub widths: Vec<i64>,
    /// Blocks per stage; a block is two 3x3 convolutions.
    pub blocks: usize,
    /// Average-pool the input by this factor first (1 = no pooling): blurred faces lose
    /// nothing at a third of the resolution, and every later layer costs a ninth.
    pub input_pool: i64,
    /// Stride of the first convolution (2 halves the 48x48 input at once).
    pub stem_stride: i64,
    pub batch_norm: bool,
    pub residual: bool,
    pub attention: Attention,
    /// SE / CBAM bottleneck reduction.
    pub reduction: i64,
    pub separable: bool,
    pub downsample: Downsample,
    pub activation: Activation,
    /// Dropout before the classifier.
    pub dropout: f64,
}

impl Default for ConvNet {
    fn default() -> Self {
        ConvNet {
            widths: vec![32, 64, 128, 256],
            blocks: 1,
            input_pool: 1,
            stem_stride: 1,
            batch_norm: true,
            residual: false,
            attention: Attention::None,
            reduction: 8,
            separable: false,
            downsample: Downsample::MaxPool,
            activation: Activation::Relu,
            dropout: 0.0,
        }
    }
}

impl ConvNet {
    fn conv(&self, cin: i64, out: i64, stride: i64) -> Vec<Layer> {
        let bn = self.batch_norm;
        let mut layers = if self.separable {
            vec![
                Layer::Conv { out: cin, kernel: 3, stride, padding: None, groups: cin, bias: !bn },
                Layer::BatchNorm,
                self.activation.layer(),
                Layer::Conv { out, kernel: 1, stride: 1, padding: None, groups: 1, bias: !bn },
                Layer::BatchNorm,
            ]
        } else {
            vec![Layer::Conv { out, kernel: 3, stride, padding: None, groups: 1, bias: !bn }, Layer::BatchNorm]
        };
        if !bn {
            layers.retain(|l| *l != Layer::BatchNorm);
        }
        layers
    }

    pub fn layers(&self) -> Vec<Layer> {
        let act = self.activation.layer();
        let first = self.widths.first().copied().unwrap_or(32);
        let mut layers = Vec::new();
        if self.input_pool > 1 {
            layers.push(Layer::AvgPool { kernel: self.input_pool, stride: None });
        }
        // A depthwise conv of one channel is pointless: the stem is a plain conv.
        layers.extend(ConvNet { separable: false, ..self.clone() }.conv(1, first, self.stem_stride));
        layers.push(act.clone());
        let mut cin = first;
        for (s, &w) in self.widths.iter().enumerate() {
            for b in 0..self.blocks {
                let down = s > 0 && b == 0;
                if down && self.downsample == Downsample::MaxPool {
                    layers.push(Layer::max_pool());
                }
                let stride = if down && self.downsample == Downsample::Stride { 2 } else { 1 };
                let mut body = self.conv(cin, w, stride);
                body.push(act.clone());
                body.extend(self.conv(w, w, 1));
                match self.attention {
                    Attention::None => {}
                    Attention::Se => body.push(Layer::Se { reduction: self.reduction }),
                    Attention::Cbam => body.push(Layer::Cbam { reduction: self.reduction, kernel: 7 }),
                }
                if self.residual {
                    layers.push(Layer::Residual { body });
                } else {
                    layers.extend(body);
                }
                layers.push(act.clone());
                cin = w;
            }
        }
        layers.push(Layer::GlobalAvgPool);
        if self.dropout > 0.0 {
            layers.push(Layer::Dropout { p: self.dropout });
        }
        layers.push(Layer::linear(NUM_CLASSES as i64));
        layers
    }
}

/// The stem a whitening replaces (`train.whiten_stem`): the network's first layer, a plain
/// convolution of the face. Its output channels, kernel, stride and padding, or why the network
/// has no such stem.
pub fn stem(layers: &[Layer]) -> anyhow::Result<(i64, i64, i64, i64)> {
    match layers.first() {
        Some(&Layer::Conv { out, kernel, stride, padding, groups: 1, .. }) => Ok((out, kernel, stride, padding.unwrap_or(kernel / 2))),
        other => anyhow::bail!(
            "whiten_stem needs a network whose first layer is a plain convolution of the face, not {other:?} (with model.convnet, set input_pool = 1)"
        ),
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
    Conv { conv: nn::Conv2D, stride: i64, padding: i64, groups: i64 },
    BatchNorm(nn::BatchNorm),
    Relu,
    LeakyRelu(f64),
    Silu,
    Gelu,
    MaxPool { kernel: i64, stride: i64 },
    AvgPool { kernel: i64, stride: i64 },
    GlobalAvgPool,
    Flatten,
    Linear(nn::Linear),
    Dropout(f64),
    Sequence(Vec<Built>),
    Residual { body: Vec<Built>, shortcut: Vec<Built> },
    Se { squeeze: nn::Linear, excite: nn::Linear },
    Cbam { squeeze: nn::Linear, excite: nn::Linear, spatial: nn::Conv2D },
}

/// A built network: the layers' modules, in order.
pub struct Net {
    layers: Vec<Built>,
    /// Mixed precision in training: convolutions and linear layers compute in bfloat16
    /// (weights kept in f32, as autocast does); evaluation stays in f32.
    pub bf16_training: bool,
    /// The same in evaluation: for teachers, whose soft targets need no more than bfloat16's
    /// precision and whose forward passes are most of a distilled epoch.
    pub bf16_inference: bool,
}

/// PyTorch's default for conv and linear: weight and bias uniform in ±1/sqrt(fan_in).
fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

fn conv(p: nn::Path, cin: i64, out: i64, kernel: i64, stride: i64, padding: i64, groups: i64, bias: bool) -> nn::Conv2D {
    let init = torch_default_init(cin / groups * kernel * kernel);
    let cfg = nn::ConvConfig { stride, padding, groups, bias, ws_init: init, bs_init: init, ..Default::default() };
    nn::conv2d(p, cin, out, kernel, cfg)
}

fn linear(p: nn::Path, cin: i64, out: i64, bias: bool) -> nn::Linear {
    let init = torch_default_init(cin);
    nn::linear(p, cin, out, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias })
}

fn batch_norm(p: nn::Path, channels: i64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() };
    nn::batch_norm2d(p, channels, cfg)
}

fn build(root: &nn::Path, layers: &[Layer], mut input: Shape) -> anyhow::Result<Vec<Built>> {
    let mut built = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let output = output_shape(layer, input)?;
        let p = root / i;
        let cin = input.channels();
        built.push(match layer {
            &Layer::Conv { out, kernel, stride, padding, groups, bias } => {
                let padding = padding.unwrap_or(kernel / 2);
                Built::Conv { conv: conv(p, cin, out, kernel, stride, padding, groups, bias), stride, padding, groups }
            }
            Layer::BatchNorm => Built::BatchNorm(batch_norm(p, cin)),
            Layer::Relu => Built::Relu,
            &Layer::LeakyRelu { slope } => Built::LeakyRelu(slope),
            Layer::Silu => Built::Silu,
            Layer::Gelu => Built::Gelu,
            &Layer::MaxPool { kernel, stride } => Built::MaxPool { kernel, stride: stride.unwrap_or(kernel) },
            &Layer::AvgPool { kernel, stride } => Built::AvgPool { kernel, stride: stride.unwrap_or(kernel) },
            Layer::GlobalAvgPool => Built::GlobalAvgPool,
            Layer::Flatten => Built::Flatten,
            &Layer::Linear { out, bias } => Built::Linear(linear(p, input.elements(), out, bias)),
            &Layer::Dropout { p } => Built::Dropout(p),
            &Layer::Separable { out, kernel, stride } => {
                Built::Sequence(build(&p, &separable(cin, out, kernel, stride), input)?)
            }
            Layer::Residual { body } => {
                let body_built = build(&(&p / "body"), body, input)?;
                let shortcut = match shortcut(body, input, output) {
                    Some(layers) => build(&(&p / "shortcut"), &layers, input)?,
                    None => Vec::new(),
                };
                Built::Residual { body: body_built, shortcut }
            }
            &Layer::Se { reduction } => {
                Built::Se { squeeze: linear(&p / "squeeze", cin, cin / reduction, true), excite: linear(&p / "excite", cin / reduction, cin, true) }
            }
            &Layer::Cbam { reduction, kernel } => Built::Cbam {
                squeeze: linear(&p / "squeeze", cin, cin / reduction, true),
                excite: linear(&p / "excite", cin / reduction, cin, true),
                spatial: conv(&p / "spatial", 2, 1, kernel, 1, kernel / 2, 1, false),
            },
        });
        input = output;
    }
    Ok(built)
}

/// The layers of a depthwise-separable block.
pub fn separable(cin: i64, out: i64, kernel: i64, stride: i64) -> Vec<Layer> {
    vec![
        Layer::conv_nb(cin, kernel, stride, cin),
        Layer::BatchNorm,
        Layer::Relu,
        Layer::conv_nb(out, 1, 1, 1),
        Layer::BatchNorm,
        Layer::Relu,
    ]
}

/// A residual block's projection shortcut, or None for the identity.
pub fn shortcut(body: &[Layer], input: Shape, output: Shape) -> Option<Vec<Layer>> {
    if input == output {
        return None;
    }
    let (Shape::Map { h: h0, .. }, Shape::Map { c, h, .. }) = (input, output) else { return None };
    let with_bn = body.iter().any(|l| matches!(l, Layer::BatchNorm));
    let mut layers = vec![Layer::Conv { out: c, kernel: 1, stride: h0 / h, padding: Some(0), groups: 1, bias: !with_bn }];
    if with_bn {
        layers.push(Layer::BatchNorm);
    }
    Some(layers)
}

impl Net {
    /// Builds `layers` for a `side` x `side` input.
    pub fn new(root: &nn::Path, layers: &[Layer], side: i64) -> anyhow::Result<Net> {
        shapes_at(layers, side)?;
        Ok(Net { layers: build(root, layers, Shape::input(side))?, bf16_training: false, bf16_inference: false })
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Net({} layers)", self.layers.len())
    }
}

/// Channel gates of squeeze-and-excitation from pooled `[N, C]` features.
fn gate(pooled: &Tensor, squeeze: &nn::Linear, excite: &nn::Linear) -> Tensor {
    // f32 whatever the features are: the gates are tiny, and their weights are f32.
    pooled.to_kind(Kind::Float).apply(squeeze).relu().apply(excite)
}

/// Under mixed precision a layer's inputs and weights go to bfloat16 for its matrix multiply;
/// the output stays bfloat16 until the network's end (batch norm takes it with its f32
/// statistics, as under autocast).
fn bf16(t: &Tensor) -> Tensor {
    t.to_kind(Kind::BFloat16)
}

/// The same tensor in channels-last memory order (NHWC strides, NCHW shape): oneDNN's
/// convolutions run faster on it (measured here: vgg training steps +25%, inference +37%),
/// and convolutions, batch norm and pooling keep it, so after the first one this is free.
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn forward(layers: &[Built], xs: &Tensor, train: bool, mixed: bool) -> Tensor {
    let mut x = xs.shallow_clone();
    for layer in layers {
        x = match layer {
            // Depthwise convolutions gain nothing from bfloat16 on CPU: they stay in f32.
            Built::Conv { conv, stride, padding, groups } if mixed && *groups == 1 => channels_last(&bf16(&x)).conv2d(
                &bf16(&conv.ws),
                conv.bs.as_ref().map(bf16).as_ref(),
                [*stride; 2],
                [*padding; 2],
                [1, 1],
                *groups,
            ),
            Built::Linear(l) if mixed => bf16(&x).linear(&bf16(&l.ws), l.bs.as_ref().map(bf16).as_ref()),
            Built::Conv { conv, .. } => channels_last(&x.to_kind(Kind::Float)).apply(conv),
            Built::BatchNorm(bn) => x.apply_t(bn, train),
            Built::Relu => x.relu(),
            Built::LeakyRelu(slope) => x.maximum(&(&x * *slope)),
            Built::Silu => x.silu(),
            Built::Gelu => x.gelu("none"),
            Built::MaxPool { kernel, stride } => x.max_pool2d([*kernel, *kernel], [*stride, *stride], [0, 0], [1, 1], false),
            Built::AvgPool { kernel, stride } => {
                x.avg_pool2d([*kernel, *kernel], [*stride, *stride], [0, 0], false, true, None::<i64>)
            }
            Built::GlobalAvgPool => x.adaptive_avg_pool2d([1, 1]).flatten(1, -1),
            Built::Flatten => x.flatten(1, -1),
            Built::Linear(l) => x.apply(l),
            Built::Dropout(p) => x.dropout(*p, train),
            Built::Sequence(body) => forward(body, &x, train, mixed),
            Built::Residual { body, shortcut } => {
                let skip = if shortcut.is_empty() { x.shallow_clone() } else { forward(shortcut, &x, train, mixed) };
                forward(body, &x, train, mixed) + skip
            }
            Built::Se { squeeze, excite } => {
                let g = gate(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1), squeeze, excite).sigmoid();
                &x * g.unsqueeze(-1).unsqueeze(-1)
            }
            Built::Cbam { squeeze, excite, spatial } => {
                let avg = gate(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1), squeeze, excite);
                let max = gate(&x.amax([2, 3], false), squeeze, excite);
                let x = &x * (avg + max).sigmoid().unsqueeze(-1).unsqueeze(-1);
                let maps = Tensor::cat(&[x.mean_dim(1, true, None::<tch::Kind>), x.amax([1], true)], 1);
                &x * maps.to_kind(Kind::Float).apply(spatial).sigmoid()
            }
        };
    }
    x
}

impl ModuleT for Net {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mixed = if train { self.bf16_training } else { self.bf16_inference };
        forward(&self.layers, xs, train, mixed).to_kind(Kind::Float)
    }
}

/// Number of trainable parameters.
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

// ---------------------------------------------------------------------------------------
// Deployment

/// Batch-norm epsilon (tch's and PyTorch's default).
const BN_EPS: f64 = 1e-5;

/// Folds every batch norm that follows a convolution into that convolution, for a deployed
/// model: in eval mode `bn(conv(x)) = conv'(x)` with the weights scaled per output channel and
/// a bias added, so the folded network computes the same function with no batch-norm FLOPs.
/// `vars` are the trained variables by name; returns the folded layers and their variables.
/// Separable blocks are written out as their plain layers; residual shortcuts fold too.
pub fn fold_batch_norm(layers: &[Layer], vars: &HashMap<String, Tensor>) -> anyhow::Result<(Vec<Layer>, Vec<(String, Tensor)>)> {
    let mut folder = Folder { vars, out: Vec::new() };
    let folded = folder.fold(layers, "", "")?;
    Ok((folded, folder.out))
}

struct Folder<'a> {
    vars: &'a HashMap<String, Tensor>,
    out: Vec<(String, Tensor)>,
}

fn var_name(prefix: &str, part: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        part.to_string()
    } else {
        format!("{prefix}.{part}")
    }
}

impl Folder<'_> {
    fn var(&self, name: &str) -> anyhow::Result<&Tensor> {
        self.vars.get(name).ok_or_else(|| anyhow::anyhow!("the weights lack {name}"))
    }

    /// Copies every variable under `old.` to `new.`.
    fn copy(&mut self, old: &str, new: &str) {
        let prefix = format!("{old}.");
        for (name, t) in self.vars {
            if let Some(rest) = name.strip_prefix(&prefix) {
                self.out.push((format!("{new}.{rest}"), t.copy()));
            }
        }
    }

    /// Writes the convolution `conv` with the batch norm `bn` folded in, as `new`.
    fn fold_conv(&mut self, conv: &str, bn: &str, new: &str) -> anyhow::Result<()> {
        let w = self.var(&format!("{conv}.weight"))?;
        let mean = self.var(&format!("{bn}.running_mean"))?;
        let scale = self.var(&format!("{bn}.weight"))? / (self.var(&format!("{bn}.running_var"))? + BN_EPS).sqrt();
        let bias = match self.vars.get(&format!("{conv}.bias")) {
            Some(b) => b - mean,
            None => -mean,
        };
        let folded_w = w * scale.reshape([-1, 1, 1, 1]);
        let folded_b = bias * &scale + self.var(&format!("{bn}.bias"))?;
        self.out.push((format!("{new}.weight"), folded_w.detach()));
        self.out.push((format!("{new}.bias"), folded_b.detach()));
        Ok(())
    }

    fn fold(&mut self, layers: &[Layer], old: &str, new: &str) -> anyhow::Result<Vec<Layer>> {
        // (layer, its variables' old name), with separable blocks written out.
        let mut items: Vec<(Layer, String)> = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let name = var_name(old, i);
            if let &Layer::Separable { out, kernel, stride } = layer {
                let cin = self.var(&format!("{name}.0.weight"))?.size()[0];
                for (k, sub) in separable(cin, out, kernel, stride).into_iter().enumerate() {
                    items.push((sub, var_name(&name, k)));
                }
            } else {
                items.push((layer.clone(), name));
            }
        }
        let mut folded = Vec::with_capacity(items.len());
        let mut k = 0;
        while k < items.len() {
            let (layer, old_name) = &items[k];
            let new_name = var_name(new, folded.len());
            let next_is_bn = matches!(items.get(k + 1), Some((Layer::BatchNorm, _)));
            match layer {
                &Layer::Conv { out, kernel, stride, padding, groups, .. } if next_is_bn => {
                    self.fold_conv(old_name, &items[k + 1].1, &new_name)?;
                    folded.push(Layer::Conv { out, kernel, stride, padding, groups, bias: true });
                    k += 1;
                }
                Layer::Residual { body } => {
                    let body = self.fold(body, &format!("{old_name}.body"), &format!("{new_name}.body"))?;
                    let (old_sc, new_sc) = (format!("{old_name}.shortcut"), format!("{new_name}.shortcut"));
                    let shortcut_bn = self.vars.contains_key(&format!("{old_sc}.1.running_mean"));
                    // The shortcut keeps a batch norm exactly when its body does (see `shortcut`).
                    if shortcut_bn && !body.contains(&Layer::BatchNorm) {
                        self.fold_conv(&format!("{old_sc}.0"), &format!("{old_sc}.1"), &format!("{new_sc}.0"))?;
                    } else {
                        self.copy(&old_sc, &new_sc);
                    }
                    folded.push(Layer::Residual { body });
                }
                _ => {
                    self.copy(old_name, &new_name);
                    folded.push(layer.clone());
                }
            }
            k += 1;
        }
        Ok(folded)
    }
}

/// A model ready to use: its config, variables and network (scored by `eval`'s methods on it).
pub struct Trained {
    pub config: Config,
    pub vs: nn::VarStore,
    pub net: Net,
}

impl Trained {
    pub fn new(config: &Config, device: Device) -> anyhow::Result<Trained> {
        let vs = nn::VarStore::new(device);
        let mut net = Net::new(&vs.root(), &config.layers()?, config.train.input_size as i64)?;
        net.bf16_training = config.train.precision == Precision::Bf16;
        Ok(Trained { config: config.clone(), vs, net })
    }

    /// Loads `config.toml` and the weights (`model.safetensors` or `best.safetensors`) of a
    /// model folder or a run folder.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<Trained> {
        let config = Config::load(&dir.join("config.toml"))?;
        let weights = weights_file(dir)?;
        let mut trained = Trained::new(&config, device)?;
        trained.vs.load(&weights).map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
        Ok(trained)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        save_atomic(path, |tmp| Ok(self.vs.save(tmp)?))
    }

    /// fvcore FLOPs of one face through this model with `tta`: one forward pass per view.
    pub fn flops_with(&self, tta: Tta) -> anyhow::Result<i64> {
        Ok(super::flops::count_config(&self.config)?.with_views(tta.views()))
    }
}

/// The weights of a model folder (`model.safetensors`) or of a run (its best, `best.safetensors`).
pub fn weights_file(dir: &Path) -> anyhow::Result<PathBuf> {
    ["model.safetensors", "best.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{}: no model.safetensors or best.safetensors", dir.display()))
}

/// A short fingerprint of the weights `dir` holds (blake3 of the file), so that a record of a
/// model's scores says which weights it scored, and goes stale visibly when they change.
pub fn weights_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let path = weights_file(dir)?;
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(blake3::hash(&bytes).to_hex()[..16].to_string())
}

/// Sets every variable of `vs` to the tensor named `prefix` + its name.
pub fn copy_named(vs: &nn::VarStore, tensors: &HashMap<String, Tensor>, prefix: &str) -> anyhow::Result<()> {
    for (name, mut var) in vs.variables() {
        let saved = tensors.get(&format!("{prefix}{name}")).ok_or_else(|| anyhow::anyhow!("no value for {name}"))?;
        tch::no_grad(|| var.copy_(saved));
    }
    Ok(())
}

/// Writes a `.safetensors` file durably (see `data::write_durably`).
pub fn save_atomic(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut failed = None;
    let written = crate::data::write_durably(path, |tmp| {
        write(tmp).map_err(|e| {
            failed = Some(e);
            std::io::Error::other("write failed")
        })
    });
    match (failed, written) {
        (Some(e), _) => Err(e),
        (None, w) => Ok(w.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
    }
}

