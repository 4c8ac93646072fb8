//! The shipped classifiers (`models/NAME/`: `model.onnx` and its `card.json`), compiled in, so
//! that a program using this crate needs no file beside it. `tiny` (the default) and `nano`
//! always; `small` and `accurate` (11 MB each) with the features of those names. [`open`] takes
//! what a user names: one of those, an ONNX file, or a model folder.

use std::path::Path;

/// The model used when none is named: the best on PrivateTest under 5 MFLOPs.
pub const DEFAULT: &str = "tiny";

/// One shipped model: its name, its ONNX file and its card (JSON: accuracy, FLOPs, recipe).
#[derive(Clone, Copy, Debug)]
pub struct Shipped {
    pub name: &'static str,
    pub onnx: &'static [u8],
    pub card: &'static str,
}

macro_rules! shipped {
    ($name:literal) => {
        Shipped {
            name: $name,
            onnx: include_bytes!(concat!("../../../models/", $name, "/model.onnx")),
            card: include_str!(concat!("../../../models/", $name, "/card.json")),
        }
    };
}

/// Every model compiled in, smallest first.
pub fn all() -> Vec<Shipped> {
    #[allow(unused_mut)]
    let mut models = vec![shipped!("nano"), shipped!("tiny")];
    #[cfg(feature = "small")]
    models.push(shipped!("small"));
    #[cfg(feature = "accurate")]
    models.push(shipped!("accurate"));
    models
}

/// The shipped model called `name`.
pub fn find(name: &str) -> Option<Shipped> {
    all().into_iter().find(|m| m.name == name)
}

/// The names of the models compiled in, for messages.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|m| m.name).collect()
}

/// A model as a user named it, ready to load.
#[derive(Clone, Debug)]
pub struct Opened {
    pub name: String,
    pub onnx: Vec<u8>,
    /// Its card (`card.json`) where it has one.
    pub card: Option<String>,
}

impl Opened {
    pub fn classifier(&self) -> Result<crate::Classifier, String> {
        crate::Classifier::from_onnx(&self.onnx).map_err(|e| format!("model {}: {e}", self.name))
    }
}

/// The model `given` names: a shipped model's name (where no such file exists), an ONNX file,
/// or a model folder (`fer export --onnx` leaves `model.onnx` and `card.json` in it).
pub fn open(given: &Path) -> Result<Opened, String> {
    let name = given.file_stem().map_or_else(|| given.display().to_string(), |n| n.to_string_lossy().into_owned());
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()));
    if given.is_file() {
        return Ok(Opened { name, onnx: read(given)?, card: None });
    }
    if given.is_dir() {
        let onnx = given.join("model.onnx");
        if !onnx.is_file() {
            return Err(format!("{}: no model.onnx in this folder (a trained run gains one with `fer export RUN --onnx`)", given.display()));
        }
        return Ok(Opened { name, onnx: read(&onnx)?, card: std::fs::read_to_string(given.join("card.json")).ok() });
    }
    match given.to_str().and_then(find) {
        Some(m) => Ok(Opened { name: m.name.into(), onnx: m.onnx.to_vec(), card: Some(m.card.into()) }),
        None => Err(format!(
            "no model {}: name a shipped model ({}), an ONNX file or a model folder",
            given.display(),
            names().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shipped_model_loads_and_its_card_names_it() {
        for m in super::all() {
            let card: serde_json::Value = serde_json::from_str(m.card).unwrap();
            assert_eq!(card["name"], m.name);
            let classifier = crate::Classifier::from_onnx(m.onnx).unwrap();
            assert_eq!(classifier.meta("name"), Some(m.name));
        }
        assert!(super::find(super::DEFAULT).is_some());
    }
}
