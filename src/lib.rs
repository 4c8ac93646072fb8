//! `fer`: facial-expression recognition on FER-2013, end to end.
//!
//! Data flows one way: `config`, `data` and `crash` (the crash points of the kill tests) at the bottom, `record` (run records) above them and
//! below everything else, `nn` (networks, their FLOPs, folding, export and ONNX), `train` (the
//! loop, losses, optimizers, augmentation), `eval` (trained models loaded and scored), then what
//! uses them: `stats`, `plot`, `ablate`, `report` and `pipeline` (the main job) for the competition, and the face pipeline
//! (`face`, `media`) behind `predict` and `serve`.

pub mod ablate;
pub mod bench;
pub mod config;
pub mod crash;
pub mod data;
pub mod eval;
pub mod face;
pub mod media;
pub mod nn;
pub mod pipeline;
pub mod plot;
pub mod predict;
pub mod progress;
pub mod record;
pub mod report;
pub mod serve;
pub mod stats;
pub mod train;
