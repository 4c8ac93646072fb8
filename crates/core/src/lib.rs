//! `fer-core`: the face pipeline of `fer` without a deep-learning framework. Photos and video
//! frames are decoded (`media`), faces found by MTCNN (`face::detect`), framed the way FER-2013
//! framed its faces (`face::frame`), classified into FER-2013's seven expressions by an ONNX
//! model (`classify`), and followed across a video's frames (`face::track`). Every network runs
//! in tract, a pure-Rust ONNX runtime: using a model needs neither libtorch nor Python.
//!
//! The `fer` command line (training, evaluation, `fer predict`, `fer serve`) and the Python
//! package are thin layers over this crate; it knows nothing of either.

pub mod classes;
pub mod classify;
pub mod face;
pub mod media;
pub mod models;

pub use classify::Classifier;
pub use face::{Analysis, FaceResult, Pipeline};
