//! ONNX export: a model as a self-contained graph that any ONNX runtime runs (onnxruntime in
//! Python, C++, C#, Java, the browser, phones), and a check of the file with an independent
//! runtime (tract, pure Rust) against libtorch.
//!
//! The graph takes what a user has, `pixels`: float32 `[N, 1, 48, 48]` grayscale in 0..255, and
//! does the model's own preprocessing inside (scaling to [-1, 1], the evaluation blur, the centre
//! crop). It gives `logits` and `probabilities`, `[N, 7]`, classes in FER-2013's order. The batch
//! size is free. The messages are the ONNX protobuf types tract-onnx carries, encoded by prost.

use prost::Message;
use std::collections::HashMap;
use tch::Tensor;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;

use crate::data::{CLASSES, NUM_CLASSES, SIDE};
use crate::nn::model::{output_shape, separable, shortcut, Layer, Shape};
use crate::nn::model::Trained;

/// Operator set 17: the newest before the reductions took their axes as inputs, and run by
/// every maintained runtime.
pub const OPSET: i64 = 17;
/// ONNX IR version 8, the one that goes with opset 17.
const IR_VERSION: i64 = 8;
pub const INPUT: &str = "pixels";
pub const LOGITS: &str = "logits";
pub const PROBABILITIES: &str = "probabilities";
/// The symbolic batch dimension.
const BATCH: &str = "N";

/// The ONNX file of `model`, with `metadata` (key, value) stored in the model's properties
/// beside the class names and the input convention.
pub fn to_onnx(model: &Trained, metadata: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
    let vars = model.vs.variables();
    let mut g = Graph { vars: &vars, nodes: Vec::new(), initializers: Vec::new(), names: 0 };
    let t = &model.config.train;

    // (x / 255 - 0.5) / 0.5, as data::normalize does it, step for step.
    let scale = g.scalar("pixel_scale", 255.0);
    let half = g.scalar("half", 0.5);
    let x = g.node("Div", &[INPUT, &scale], vec![]);
    let x = g.node("Sub", &[&x, &half], vec![]);
    let mut x = g.node("Div", &[&x, &half], vec![]);
    if t.eval_blur > 0.0 {
        x = g.blur(&x, t.eval_blur);
    }
    let side = t.input_size as i64;
    if side < SIDE as i64 {
        let m = (SIDE as i64 - side) / 2;
        let starts = g.ints("crop_starts", &[m, m]);
        let ends = g.ints("crop_ends", &[m + side, m + side]);
        let axes = g.ints("crop_axes", &[2, 3]);
        x = g.node("Slice", &[&x, &starts, &ends, &axes], vec![]);
    }
    let logits = g.layers(&model.config.layers()?, "", &x, Shape::input(side))?;
    g.nodes.push(node("Identity", &[&logits], LOGITS, vec![]));
    g.nodes.push(node("Softmax", &[LOGITS], PROBABILITIES, vec![int("axis", 1)]));

    let mut props = vec![
        ("classes".to_string(), CLASSES.join(",")),
        ("input".to_string(), format!("{INPUT}: float32 [N, 1, {SIDE}, {SIDE}], grayscale pixels in 0..255; scaling to [-1, 1] is inside the graph")),
        ("outputs".to_string(), format!("{LOGITS}, {PROBABILITIES}: float32 [N, {NUM_CLASSES}], classes in the order of `classes`")),
    ];
    props.extend(metadata.iter().cloned());
    let graph = pb::GraphProto {
        name: model.config.name.clone(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info(INPUT, &[1, SIDE as i64, SIDE as i64])],
        output: vec![value_info(LOGITS, &[NUM_CLASSES as i64]), value_info(PROBABILITIES, &[NUM_CLASSES as i64])],
        ..Default::default()
    };
    Ok(model_file(graph, "Facial-expression classifier for 48x48 grayscale faces (FER-2013's 7 classes), exported by fer.", props))
}

/// The bytes of an ONNX file holding `graph`, at this module's opset, with `metadata`.
fn model_file(graph: pb::GraphProto, doc: &str, metadata: Vec<(String, String)>) -> Vec<u8> {
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "fer".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(graph),
        metadata_props: metadata.into_iter().map(|(key, value)| pb::StringStringEntryProto { key, value }).collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A float32 tensor `[N, ...per_face]` with a symbolic batch dimension.
fn value_info(name: &str, per_face: &[i64]) -> pb::ValueInfoProto {
    let mut dims = vec![Dim::Named(BATCH)];
    dims.extend(per_face.iter().map(|&d| Dim::Fixed(d)));
    tensor_info(name, &dims)
}

/// One dimension of a tensor's declared shape.
#[derive(Clone, Copy)]
enum Dim {
    Fixed(i64),
    /// A symbol, fixed at run time (the batch, an image's height).
    Named(&'static str),
}

/// A float32 tensor of shape `dims`.
fn tensor_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    float_info(name, Some(dims))
}

/// A float32 tensor, of shape `dims` where given.
fn float_info(name: &str, dims: Option<&[Dim]>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let shape = dims.map(|dims| {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match *d {
                    Dim::Fixed(n) => Value::DimValue(n),
                    Dim::Named(s) => Value::DimParam(s.into()),
                }),
                ..Default::default()
            })
            .collect();
        pb::TensorShapeProto { dim }
    });
    let tensor = pb::type_proto::Tensor { elem_type: DataType::Float as i32, shape };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

fn ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: ints.to_vec(), ..Default::default() }
}

fn float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}

/// The graph as it is written: nodes in order, weights as initializers named like the model's
/// variables (`3.body.0.weight`).
struct Graph<'a> {
    vars: &'a HashMap<String, Tensor>,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    names: usize,
}

impl Graph<'_> {
    /// Appends a node with a fresh output name and returns that name.
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<pb::AttributeProto>) -> String {
        self.names += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.names);
        self.nodes.push(node(op, inputs, &out, attributes));
        out
    }

    fn float_initializer(&mut self, name: &str, t: &Tensor) -> anyhow::Result<String> {
        let values = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).contiguous().view(-1))?;
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: t.size(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        Ok(name.into())
    }

    fn scalar(&mut self, name: &str, value: f32) -> String {
        self.float_initializer(name, &Tensor::from(value)).expect("a scalar converts")
    }

    fn ints(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    /// Variable `part` of the layer named `prefix` as an initializer (`reshape`d when given).
    fn part(&mut self, prefix: &str, part: &str, reshape: Option<&[i64]>) -> anyhow::Result<String> {
        let name = format!("{prefix}.{part}");
        let t = self.vars.get(&name).ok_or_else(|| anyhow::anyhow!("the weights lack {name}"))?;
        let t = match reshape {
            Some(shape) => t.reshape(shape),
            None => t.shallow_clone(),
        };
        self.float_initializer(&name, &t)
    }

    /// A node whose inputs are `x`, the layer's weight and its bias where it has one.
    fn weighted(&mut self, op: &str, x: &str, prefix: &str, attributes: Vec<pb::AttributeProto>) -> anyhow::Result<String> {
        let mut inputs = vec![x.to_string(), self.part(prefix, "weight", None)?];
        if self.has(prefix, "bias") {
            inputs.push(self.part(prefix, "bias", None)?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node(op, &inputs, attributes))
    }

    fn has(&self, prefix: &str, part: &str) -> bool {
        self.vars.contains_key(&format!("{prefix}.{part}"))
    }

    /// nn::blur::blur: edges replicated, a row pass, then a column pass.
    fn blur(&mut self, x: &str, sigma: f64) -> String {
        let kernel = super::blur::gaussian_kernel(sigma);
        let k = kernel.len() as i64;
        let r = k / 2;
        let g = Tensor::from_slice(&kernel);
        let rows = self.float_initializer("blur_rows", &g.reshape([1, 1, 1, k])).expect("the kernel converts");
        let cols = self.float_initializer("blur_cols", &g.reshape([1, 1, k, 1])).expect("the kernel converts");
        let pads = self.ints("blur_pads", &[0, 0, r, r, 0, 0, r, r]);
        let padded = self.node("Pad", &[x, &pads], vec![pb::AttributeProto {
            name: "mode".into(),
            r#type: AttributeType::String as i32,
            s: b"edge".to_vec(),
            ..Default::default()
        }]);
        let x = self.node("Conv", &[&padded, &rows], vec![ints("kernel_shape", &[1, k])]);
        self.node("Conv", &[&x, &cols], vec![ints("kernel_shape", &[k, 1])])
    }

    fn conv(&mut self, x: &str, prefix: &str, kernel: i64, stride: i64, padding: i64, groups: i64) -> anyhow::Result<String> {
        self.weighted("Conv", x, prefix, vec![
            ints("kernel_shape", &[kernel, kernel]),
            ints("strides", &[stride, stride]),
            ints("pads", &[padding; 4]),
            int("group", groups),
        ])
    }

    /// A linear layer on `[N, C, 1, 1]` maps, as a 1x1 convolution (so attention gates need no
    /// reshapes).
    fn linear_1x1(&mut self, x: &str, prefix: &str) -> anyhow::Result<String> {
        let size = self.vars.get(&format!("{prefix}.weight")).ok_or_else(|| anyhow::anyhow!("the weights lack {prefix}.weight"))?.size();
        let w = self.part(prefix, "weight", Some(&[size[0], size[1], 1, 1]))?;
        let b = self.part(prefix, "bias", None)?;
        Ok(self.node("Conv", &[x, &w, &b], vec![ints("kernel_shape", &[1, 1])]))
    }

    /// model::gate: squeeze, ReLU, excite, on pooled `[N, C, 1, 1]` features.
    fn gate(&mut self, pooled: &str, prefix: &str) -> anyhow::Result<String> {
        let s = self.linear_1x1(pooled, &format!("{prefix}.squeeze"))?;
        let s = self.node("Relu", &[&s], vec![]);
        self.linear_1x1(&s, &format!("{prefix}.excite"))
    }

    /// The layers of a network, as model::build names their variables, from the value `x` of
    /// shape `shape`; returns the output's name.
    fn layers(&mut self, layers: &[Layer], prefix: &str, x: &str, mut shape: Shape) -> anyhow::Result<String> {
        let mut x = x.to_string();
        for (i, layer) in layers.iter().enumerate() {
            let name = if prefix.is_empty() { i.to_string() } else { format!("{prefix}.{i}") };
            let out_shape = output_shape(layer, shape)?;
            x = match layer {
                &Layer::Conv { kernel, stride, padding, groups, .. } => {
                    self.conv(&x, &name, kernel, stride, padding.unwrap_or(kernel / 2), groups)?
                }
                Layer::BatchNorm => {
                    let inputs = ["weight", "bias", "running_mean", "running_var"]
                        .map(|p| self.part(&name, p, None))
                        .into_iter()
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let mut all = vec![x.as_str()];
                    all.extend(inputs.iter().map(String::as_str));
                    self.node("BatchNormalization", &all, vec![float("epsilon", 1e-5)])
                }
                Layer::Relu => self.node("Relu", &[&x], vec![]),
                // model.rs computes max(x, slope x): LeakyRelu for slopes up to 1.
                &Layer::LeakyRelu { slope } if (0.0..=1.0).contains(&slope) => {
                    self.node("LeakyRelu", &[&x], vec![float("alpha", slope as f32)])
                }
                &Layer::LeakyRelu { slope } => {
                    let s = self.scalar(&format!("{name}.slope"), slope as f32);
                    let scaled = self.node("Mul", &[&x, &s], vec![]);
                    self.node("Max", &[&x, &scaled], vec![])
                }
                Layer::Silu => {
                    let s = self.node("Sigmoid", &[&x], vec![]);
                    self.node("Mul", &[&x, &s], vec![])
                }
                // Exact GELU, x / 2 (1 + erf(x / sqrt 2)), from opset-17 operators.
                Layer::Gelu => {
                    let r = self.scalar(&format!("{name}.sqrt_half"), std::f32::consts::FRAC_1_SQRT_2);
                    let one = self.scalar(&format!("{name}.one"), 1.0);
                    let half = self.scalar(&format!("{name}.half"), 0.5);
                    let e = self.node("Mul", &[&x, &r], vec![]);
                    let e = self.node("Erf", &[&e], vec![]);
                    let e = self.node("Add", &[&e, &one], vec![]);
                    let h = self.node("Mul", &[&x, &half], vec![]);
                    self.node("Mul", &[&h, &e], vec![])
                }
                &Layer::MaxPool { kernel, stride } => self.node("MaxPool", &[&x], vec![
                    ints("kernel_shape", &[kernel, kernel]),
                    ints("strides", &[stride.unwrap_or(kernel); 2]),
                ]),
                &Layer::AvgPool { kernel, stride } => self.node("AveragePool", &[&x], vec![
                    ints("kernel_shape", &[kernel, kernel]),
                    ints("strides", &[stride.unwrap_or(kernel); 2]),
                ]),
                Layer::GlobalAvgPool => {
                    let p = self.node("GlobalAveragePool", &[&x], vec![]);
                    self.node("Flatten", &[&p], vec![int("axis", 1)])
                }
                Layer::Flatten => self.node("Flatten", &[&x], vec![int("axis", 1)]),
                Layer::Linear { .. } => self.weighted("Gemm", &x, &name, vec![int("transB", 1)])?,
                Layer::Dropout { .. } => x,
                &Layer::Separable { out, kernel, stride } => {
                    self.layers(&separable(shape.channels(), out, kernel, stride), &name, &x, shape)?
                }
                Layer::Residual { body } => {
                    let main = self.layers(body, &format!("{name}.body"), &x, shape)?;
                    let skip = match shortcut(body, shape, out_shape) {
                        Some(proj) => self.layers(&proj, &format!("{name}.shortcut"), &x, shape)?,
                        None => x,
                    };
                    self.node("Add", &[&main, &skip], vec![])
                }
                Layer::Se { .. } => {
                    let pooled = self.node("GlobalAveragePool", &[&x], vec![]);
                    let g = self.gate(&pooled, &name)?;
                    let g = self.node("Sigmoid", &[&g], vec![]);
                    self.node("Mul", &[&x, &g], vec![])
                }
                &Layer::Cbam { kernel, .. } => {
                    let avg = self.node("GlobalAveragePool", &[&x], vec![]);
                    let avg = self.gate(&avg, &name)?;
                    let max = self.node("GlobalMaxPool", &[&x], vec![]);
                    let max = self.gate(&max, &name)?;
                    let g = self.node("Add", &[&avg, &max], vec![]);
                    let g = self.node("Sigmoid", &[&g], vec![]);
                    let x = self.node("Mul", &[&x, &g], vec![]);
                    let mean = self.node("ReduceMean", &[&x], vec![ints("axes", &[1]), int("keepdims", 1)]);
                    let max = self.node("ReduceMax", &[&x], vec![ints("axes", &[1]), int("keepdims", 1)]);
                    let maps = self.node("Concat", &[&mean, &max], vec![int("axis", 1)]);
                    let s = self.conv(&maps, &format!("{name}.spatial"), kernel, 1, kernel / 2, 1)?;
                    let s = self.node("Sigmoid", &[&s], vec![]);
                    self.node("Mul", &[&x, &s], vec![])
                }
            };
            shape = out_shape;
        }
        Ok(x)
    }
}

/// Five lines of Python that label a face with the ONNX file at `path` through onnxruntime.
pub fn python_example(path: &str) -> String {
    format!(
        r#"import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession("{path}")
face = np.asarray(Image.open("face.png").convert("L").resize((48, 48)), np.float32)[None, None]
print(session.get_modelmeta().custom_metadata_map["classes"].split(",")[session.run(["probabilities"], {{"pixels": face}})[0].argmax()])
"#
    )
}

// ---------------------------------------------------------------------------------------
// The face detector's networks

/// One step of an MTCNN network, as facenet-pytorch names its weights.
#[derive(Clone, Copy)]
enum Step {
    Conv(&'static str),
    Prelu(&'static str),
    /// Max pooling (kernel, stride) with the output size rounded up, as Caffe pooled.
    Pool(i64, i64),
    /// Flattened width-major: the weights were trained in Caffe on that order.
    Flatten,
    Dense(&'static str),
}

/// MTCNN's three networks (`fer_core::face::detect`) as ONNX files, from facenet-pytorch's
/// weights (`models/detector/mtcnn.safetensors`): (file name, bytes). Inputs `image`, RGB
/// scaled as (v - 127.5) / 128: P-Net `[1, 3, H, W]` (fully convolutional, any size), R-Net
/// `[N, 3, 24, 24]`, O-Net `[N, 3, 48, 48]`. Outputs `probability` (`[.., 2, ..]`, softmax over
/// not-face / face), `regression` (box corrections) and, from O-Net, `landmarks`.
pub fn detector_onnx(weights: &[u8]) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    use Step::*;
    let file = safetensors::SafeTensors::deserialize(weights).map_err(|e| anyhow::anyhow!("face detector weights: {e:?}"))?;
    let mut vars = HashMap::new();
    for (name, view) in file.tensors() {
        vars.insert(name, Tensor::try_from(view)?);
    }
    let pnet = [Conv("conv1"), Prelu("prelu1"), Pool(2, 2), Conv("conv2"), Prelu("prelu2"), Conv("conv3"), Prelu("prelu3")];
    let rnet = [Conv("conv1"), Prelu("prelu1"), Pool(3, 2), Conv("conv2"), Prelu("prelu2"), Pool(3, 2), Conv("conv3"), Prelu("prelu3"), Flatten, Dense("dense4"), Prelu("prelu4")];
    let onet = [
        Conv("conv1"), Prelu("prelu1"), Pool(3, 2), Conv("conv2"), Prelu("prelu2"), Pool(3, 2), Conv("conv3"), Prelu("prelu3"), Pool(2, 2),
        Conv("conv4"), Prelu("prelu4"), Flatten, Dense("dense5"), Prelu("prelu5"),
    ];
    let (n, h, w) = (Dim::Named(BATCH), Dim::Named("H"), Dim::Named("W"));
    let fixed = |v: i64| Dim::Fixed(v);
    Ok(vec![
        ("pnet.onnx", mtcnn_net(&vars, "pnet", &pnet, &[fixed(1), fixed(3), h, w], &[("probability", Conv("conv4_1")), ("regression", Conv("conv4_2"))])?),
        ("rnet.onnx", mtcnn_net(&vars, "rnet", &rnet, &[n, fixed(3), fixed(24), fixed(24)], &[("probability", Dense("dense5_1")), ("regression", Dense("dense5_2"))])?),
        (
            "onet.onnx",
            mtcnn_net(&vars, "onet", &onet, &[n, fixed(3), fixed(48), fixed(48)], &[
                ("probability", Dense("dense6_1")),
                ("regression", Dense("dense6_2")),
                ("landmarks", Dense("dense6_3")),
            ])?,
        ),
    ])
}

/// One MTCNN network: the trunk's steps, then each head (a convolution or dense layer; the
/// `probability` head ends in a softmax over its two classes).
fn mtcnn_net(vars: &HashMap<String, Tensor>, net: &str, trunk: &[Step], input: &[Dim], heads: &[(&'static str, Step)]) -> anyhow::Result<Vec<u8>> {
    let mut g = Graph { vars, nodes: Vec::new(), initializers: Vec::new(), names: 0 };
    let mut x = "image".to_string();
    let mut spatial = true;
    for step in trunk {
        x = g.mtcnn_step(&x, net, *step, &mut spatial)?;
    }
    for &(output, head) in heads {
        let y = g.mtcnn_step(&x, net, head, &mut spatial.clone())?;
        if output == "probability" {
            g.nodes.push(node("Softmax", &[&y], output, vec![int("axis", 1)]));
        } else {
            g.nodes.push(node("Identity", &[&y], output, vec![]));
        }
    }
    let graph = pb::GraphProto {
        name: format!("mtcnn-{net}"),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![tensor_info("image", input)],
        // Float outputs of the sizes the trunk gives (P-Net's maps follow the image's size).
        output: heads.iter().map(|(name, _)| float_info(name, None)).collect(),
        ..Default::default()
    };
    Ok(model_file(graph, &format!("MTCNN {net} (Zhang et al. 2016), facenet-pytorch's weights (MIT), exported by `fer detect export`."), Vec::new()))
}

impl Graph<'_> {
    /// One MTCNN step from `x`; `spatial` says whether `x` is still a feature map.
    fn mtcnn_step(&mut self, x: &str, net: &str, step: Step, spatial: &mut bool) -> anyhow::Result<String> {
        Ok(match step {
            Step::Conv(name) => self.weighted("Conv", x, &format!("{net}.{name}"), vec![])?,
            Step::Prelu(name) => {
                let prefix = format!("{net}.{name}");
                let c = self.vars.get(&format!("{prefix}.weight")).ok_or_else(|| anyhow::anyhow!("the weights lack {prefix}.weight"))?.size()[0];
                // One slope per channel, broadcast over the map or the batch.
                let shape: Vec<i64> = if *spatial { vec![c, 1, 1] } else { vec![c] };
                let slope = self.part(&prefix, "weight", Some(&shape))?;
                self.node("PRelu", &[x, &slope], vec![])
            }
            Step::Pool(kernel, stride) => self.node("MaxPool", &[x], vec![ints("kernel_shape", &[kernel, kernel]), ints("strides", &[stride, stride]), int("ceil_mode", 1)]),
            Step::Flatten => {
                *spatial = false;
                let t = self.node("Transpose", &[x], vec![ints("perm", &[0, 3, 2, 1])]);
                self.node("Flatten", &[&t], vec![int("axis", 1)])
            }
            Step::Dense(name) => self.weighted("Gemm", x, &format!("{net}.{name}"), vec![int("transB", 1)])?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Checking an ONNX file in tract (the inference core's runtime) against libtorch

/// How closely tract's run of the ONNX file follows libtorch's run of the model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Agreement {
    pub faces: usize,
    /// Largest absolute difference of any class probability.
    pub max_probability_diff: f64,
    /// Faces where both give the same label.
    pub same_label: usize,
}

/// Runs `onnx` in tract and `model` in libtorch on `faces` and compares their probabilities;
/// returns tract's logits (`[N, 7]`) beside the agreement.
pub fn check(onnx: &[u8], model: &Trained, faces: &crate::data::Faces) -> anyhow::Result<(Agreement, Tensor)> {
    let tract = fer_core::Classifier::from_onnx(onnx)?;
    let (mut logits, mut probabilities) = (Vec::new(), Vec::new());
    // Batches bound tract's memory on large splits.
    for chunk in faces.pixels.chunks(256 * SIDE * SIDE) {
        let (l, p) = tract.run(chunk)?;
        logits.extend(l);
        probabilities.extend(p);
    }
    let rows = |v: &[f32]| Tensor::from_slice(v).view([-1, NUM_CLASSES as i64]);
    let (tract_logits, tract_probabilities) = (rows(&logits), rows(&probabilities));
    let torch_logits = model.logits(faces);
    anyhow::ensure!(tract_logits.size() == torch_logits.size(), "tract gave {:?} logits, libtorch {:?}", tract_logits.size(), torch_logits.size());
    let agreement = Agreement {
        faces: faces.len(),
        max_probability_diff: (tract_probabilities - torch_logits.softmax(-1, tch::Kind::Float)).abs().max().double_value(&[]),
        same_label: tract_logits.argmax(-1, false).eq_tensor(&torch_logits.argmax(-1, false)).sum(tch::Kind::Int64).int64_value(&[]) as usize,
    };
    Ok((agreement, tract_logits))
}
