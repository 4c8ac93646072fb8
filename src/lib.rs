//! `fer`: facial-expression recognition on FER-2013, end to end.
//!
//! `data` reads and caches the data set, `model` builds networks from layer lists, `train`
//! runs the training loop, `eval` scores models, `flops` counts their cost as fvcore does,
//! `plot` draws figures, `stats` analyses the data set and `predict` labels faces, `export` ships a
//! trained run as a model folder with its card, `onnx` writes it as an ONNX graph checked in tract.

pub mod ablate;
pub mod augment;
pub mod bench;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod face;
pub mod flops;
pub mod loss;
pub mod media;
pub mod model;
pub mod onnx;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod report;
pub mod serve;
pub mod stats;
pub mod train;
