//! `fer`: facial-expression recognition on FER-2013, end to end.
//!
//! Below everything, the inference core `fer-core` (`crates/core`, no libtorch): the face
//! pipeline (`face`, `media`), the classes, the ONNX classifier run by tract. Above it, data
//! flows one way: `config`, `data` and `crash` (the crash points of the kill tests) at the
//! bottom, `record` (run records) above them and below everything else, `nn` (networks, their
//! FLOPs, folding, export and ONNX), `train` (the loop, losses, optimizers, augmentation),
//! `eval` (trained models loaded and scored), then what uses them: `stats`, `plot`, `ablate`,
//! `report` and `pipeline` (the main job) for the competition, `calibrate` for the framing, and
//! `predict` and `serve`, which run the core's pipeline.

pub mod ablate;
pub mod bench;
pub mod calibrate;
pub mod config;
pub mod crash;
pub mod data;
pub mod models;
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

/// The face pipeline and the media it reads live in the inference core (`crates/core`), which
/// runs without libtorch.
pub use fer_core::{face, media};
