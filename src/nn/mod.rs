//! Networks and what is done to them once trained: `model` builds them from layer lists, `blur`
//! is the evaluation blur in front of them, `flops`
//! counts their cost as fvcore does, `export` folds batch norm and ships a run as a model folder
//! with its card, `onnx` writes the folded network as an ONNX graph checked in tract, `score`
//! scores them over a split (loss, accuracy, per class, with test-time views), for training's
//! PublicTest epochs and for `fer eval` alike.

pub mod blur;
pub mod export;
pub mod flops;
pub mod model;
pub mod mtcnn;
pub mod onnx;
pub mod score;
