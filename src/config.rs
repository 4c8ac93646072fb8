//! One config object per experiment, read from a TOML file (see `configs/`).

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::model::{named, Layer, NAMED};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The run's name: its folder is `runs/<name>/`.
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

/// A named network (`baseline`, `mobile`, `vgg`) or an explicit list of layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Layer>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub nesterov: bool,
    /// Batch size for validation and test passes (no gradients, so it can be large).
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    /// The notebook's recipe: Adam lr 1e-3, batch 400, 10 epochs.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 400,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.9,
            nesterov: false,
            eval_batch_size: 1000,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.layers()?;
        anyhow::ensure!(config.train.batch_size > 0 && config.train.eval_batch_size > 0, "batch sizes must be positive");
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config always serialises")
    }

    /// A config that trains the named network with the default recipe.
    pub fn for_network(network: &str) -> Config {
        Config {
            name: network.to_string(),
            seed: 0,
            model: ModelConfig { network: Some(network.to_string()), layers: None },
            train: TrainConfig::default(),
        }
    }

    /// The network's layers, checked to fit together.
    pub fn layers(&self) -> anyhow::Result<Vec<Layer>> {
        let layers = match (&self.model.network, &self.model.layers) {
            (Some(name), None) => named(name)
                .ok_or_else(|| anyhow::anyhow!("unknown network `{name}` (known: {})", NAMED.join(", ")))?,
            (None, Some(layers)) => layers.clone(),
            _ => anyhow::bail!("[model] needs exactly one of `network` or `layers`"),
        };
        crate::model::shapes(&layers)?;
        Ok(layers)
    }
}
