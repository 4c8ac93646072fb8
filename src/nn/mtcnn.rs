//! MTCNN's three networks in libtorch, for the inference core's face detector
//! (`fer_core::face::detect`). The core runs them in tract, which on this CPU takes 3 to 4
//! times as long (`fer bench faces`, README); `fer` links libtorch for training anyway, so its
//! commands detect faces with these. Everything around the networks (the pyramid, the crops,
//! suppression, landmarks) is the core's, one copy for both.

use std::collections::HashMap;
use tch::{Kind, Tensor};

use fer_core::face::detect::{Crops, DetectorOptions, FaceDetector, Networks};

static WEIGHTS: &[u8] = include_bytes!("../../models/detector/mtcnn.safetensors");

/// Crops per run: libtorch spreads one run over its own threads.
const BATCH: usize = 512;

/// The weights, loaded once.
pub struct TorchNetworks {
    w: HashMap<String, Tensor>,
}

// The weight tensors are written once, at load, and only read after: libtorch's operators read
// shared inputs from any number of threads (the pipeline is shared by `fer serve`'s workers).
unsafe impl Sync for TorchNetworks {}

/// The core's face detector with its networks in libtorch.
pub fn detector(options: DetectorOptions) -> anyhow::Result<FaceDetector> {
    FaceDetector::with_networks(Box::new(TorchNetworks::new()?), options)
}

/// The crops as a tensor in channels-last memory order, where libtorch's convolutions run about
/// twice as fast on these small networks (measured: 70 ms against 30 ms on the close-up of
/// `fer bench faces`).
fn tensor(x: Crops) -> Tensor {
    let t = Tensor::from_slice(&x.data).reshape([x.n as i64, 3, x.h as i64, x.w as i64]);
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn flat(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap_or_default()
}

fn rows<const K: usize>(t: &Tensor) -> Vec<[f32; K]> {
    flat(t).chunks(K).map(|c| c.try_into().expect("whole rows")).collect()
}

impl TorchNetworks {
    pub fn new() -> anyhow::Result<TorchNetworks> {
        let file = safetensors::SafeTensors::deserialize(WEIGHTS).map_err(|e| anyhow::anyhow!("face detector weights: {e:?}"))?;
        let mut w = HashMap::new();
        for (name, view) in file.tensors() {
            w.insert(name, Tensor::try_from(view)?);
        }
        Ok(TorchNetworks { w })
    }

    fn conv(&self, x: &Tensor, name: &str) -> Tensor {
        let (w, b) = (&self.w[&format!("{name}.weight")], &self.w[&format!("{name}.bias")]);
        x.conv2d(w, Some(b), [1, 1], [0, 0], [1, 1], 1)
    }

    fn linear(&self, x: &Tensor, name: &str) -> Tensor {
        x.linear(&self.w[&format!("{name}.weight")], Some(&self.w[&format!("{name}.bias")]))
    }

    fn prelu(&self, x: &Tensor, name: &str) -> Tensor {
        x.prelu(&self.w[&format!("{name}.weight")])
    }

    /// Flattened width-major: the weights were trained in Caffe on that order.
    fn flatten(x: &Tensor) -> Tensor {
        x.permute([0, 3, 2, 1]).contiguous().flatten(1, -1)
    }
}

impl Networks for TorchNetworks {
    fn pnet(&self, x: Crops) -> (Vec<f32>, Vec<f32>, usize, usize) {
        tch::no_grad(|| {
            let x = tensor(x);
            let x = self.prelu(&self.conv(&x, "pnet.conv1"), "pnet.prelu1").max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
            let x = self.prelu(&self.conv(&x, "pnet.conv2"), "pnet.prelu2");
            let x = self.prelu(&self.conv(&x, "pnet.conv3"), "pnet.prelu3");
            let prob = self.conv(&x, "pnet.conv4_1").softmax(1, Kind::Float).select(1, 1);
            let (ph, pw) = (prob.size()[1] as usize, prob.size()[2] as usize);
            (flat(&prob), flat(&self.conv(&x, "pnet.conv4_2")), ph, pw)
        })
    }

    fn rnet(&self, x: Crops) -> (Vec<[f32; 4]>, Vec<f32>) {
        tch::no_grad(|| {
            let x = tensor(x);
            let x = self.prelu(&self.conv(&x, "rnet.conv1"), "rnet.prelu1").max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
            let x = self.prelu(&self.conv(&x, "rnet.conv2"), "rnet.prelu2").max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
            let x = self.prelu(&self.conv(&x, "rnet.conv3"), "rnet.prelu3");
            let x = self.prelu(&self.linear(&Self::flatten(&x), "rnet.dense4"), "rnet.prelu4");
            (rows::<4>(&self.linear(&x, "rnet.dense5_2")), flat(&self.linear(&x, "rnet.dense5_1").softmax(1, Kind::Float).select(1, 1)))
        })
    }

    fn onet(&self, x: Crops) -> (Vec<[f32; 4]>, Vec<[f32; 10]>, Vec<f32>) {
        tch::no_grad(|| {
            let x = tensor(x);
            let x = self.prelu(&self.conv(&x, "onet.conv1"), "onet.prelu1").max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
            let x = self.prelu(&self.conv(&x, "onet.conv2"), "onet.prelu2").max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
            let x = self.prelu(&self.conv(&x, "onet.conv3"), "onet.prelu3").max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
            let x = self.prelu(&self.conv(&x, "onet.conv4"), "onet.prelu4");
            let x = self.prelu(&self.linear(&Self::flatten(&x), "onet.dense5"), "onet.prelu5");
            let prob = self.linear(&x, "onet.dense6_1").softmax(1, Kind::Float).select(1, 1);
            (rows::<4>(&self.linear(&x, "onet.dense6_2")), rows::<10>(&self.linear(&x, "onet.dense6_3")), flat(&prob))
        })
    }

    fn batching(&self) -> (usize, bool) {
        (BATCH, false)
    }
}
