//! FLOPs of one 1x48x48 forward pass (eval mode), counted exactly as fvcore counts them
//! (one multiply-add = one flop), and a second total that also counts what fvcore leaves out.

use serde::Serialize;

use crate::model::{shapes, Layer, Shape};

#[derive(Clone, Debug, Serialize)]
pub struct LayerFlops {
    pub index: usize,
    pub kind: String,
    pub input: String,
    pub output: String,
    /// fvcore's count.
    pub fvcore: i64,
    /// Also bias adds, activations and pooling comparisons, which fvcore ignores.
    pub all_ops: i64,
    pub params: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlopReport {
    pub layers: Vec<LayerFlops>,
    pub fvcore_total: i64,
    pub all_ops_total: i64,
    pub params: i64,
}

impl FlopReport {
    pub fn gflops(&self) -> f64 {
        self.fvcore_total as f64 / 1e9
    }
}

/// fvcore's count for one layer: (fvcore, all_ops, params).
fn layer_flops(layer: &Layer, input: Shape, output: Shape) -> (i64, i64, i64) {
    let out = output.elements();
    match *layer {
        // fvcore: output elements x in-channels/groups x kh x kw; the bias is ignored.
        Layer::Conv { kernel, groups, bias, .. } => {
            let per_out = input.channels() / groups * kernel * kernel;
            let flops = out * per_out;
            let params = output.channels() * per_out + if bias { output.channels() } else { 0 };
            (flops, flops + if bias { out } else { 0 }, params)
        }
        Layer::Linear { bias, .. } => {
            let flops = input.elements() * out;
            (flops, flops + if bias { out } else { 0 }, flops + if bias { out } else { 0 })
        }
        // Eval-mode batch norm is an affine map per element: fvcore counts 2 per element.
        Layer::BatchNorm => (2 * out, 2 * out, 2 * output.channels()),
        // fvcore counts adaptive average pooling as one flop per input element.
        Layer::GlobalAvgPool => (input.elements(), input.elements(), 0),
        Layer::Relu => (0, out, 0),
        Layer::MaxPool { kernel, .. } | Layer::AvgPool { kernel, .. } => (0, out * kernel * kernel, 0),
        Layer::Flatten | Layer::Dropout { .. } => (0, 0, 0),
    }
}

pub fn count(layers: &[Layer]) -> anyhow::Result<FlopReport> {
    let shapes = shapes(layers)?;
    let mut rows = Vec::with_capacity(layers.len());
    for (index, (layer, (input, output))) in layers.iter().zip(shapes).enumerate() {
        let (fvcore, all_ops, params) = layer_flops(layer, input, output);
        rows.push(LayerFlops {
            index,
            kind: layer.kind(),
            input: input.to_string(),
            output: output.to_string(),
            fvcore,
            all_ops,
            params,
        });
    }
    Ok(FlopReport {
        fvcore_total: rows.iter().map(|r| r.fvcore).sum(),
        all_ops_total: rows.iter().map(|r| r.all_ops).sum(),
        params: rows.iter().map(|r| r.params).sum(),
        layers: rows,
    })
}

/// The competition's efficiency: accuracy in percent per GFLOP of one forward pass.
pub fn efficiency(accuracy_percent: f64, fvcore_flops: i64) -> f64 {
    accuracy_percent / (fvcore_flops as f64 / 1e9)
}

/// Resolves a network name, a config file, or a run / model folder to its config.
pub fn resolve(model: &str) -> anyhow::Result<(crate::config::Config, Option<std::path::PathBuf>)> {
    let path = std::path::Path::new(model);
    if path.is_dir() {
        return Ok((crate::config::Config::load(&path.join("config.toml"))?, Some(path.to_path_buf())));
    }
    if path.is_file() {
        return Ok((crate::config::Config::load(path)?, None));
    }
    let config = crate::config::Config::for_network(model);
    config.layers()?;
    Ok((config, None))
}

/// `fer flops`: the per-layer table (or JSON), totals, and a finished run's efficiency.
pub fn print(model: &str, json: bool) -> anyhow::Result<()> {
    let (config, dir) = resolve(model)?;
    let report = count(&config.layers()?)?;
    let summary: Option<crate::train::Summary> = dir
        .and_then(|d| std::fs::read(d.join("summary.json")).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(s) = &summary {
            v["test_acc"] = s.test_acc.into();
            v["efficiency"] = efficiency(100.0 * s.test_acc, report.fvcore_total).into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(["#", "layer", "input", "output", "fvcore FLOPs", "all ops", "params"]);
    for r in &report.layers {
        table.add_row([
            r.index.to_string(),
            r.kind.clone(),
            r.input.clone(),
            r.output.clone(),
            r.fvcore.to_string(),
            r.all_ops.to_string(),
            r.params.to_string(),
        ]);
    }
    println!("{table}");
    println!(
        "{}: {} FLOPs as fvcore counts them ({:.4} GFLOPs); {} counting every op; {} parameters",
        config.name,
        report.fvcore_total,
        report.gflops(),
        report.all_ops_total,
        report.params
    );
    if let Some(s) = summary {
        println!(
            "efficiency = {:.2}% PrivateTest / {:.4} GFLOPs = {:.1} %/GFLOP",
            100.0 * s.test_acc,
            report.gflops(),
            efficiency(100.0 * s.test_acc, report.fvcore_total)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::named;

    #[test]
    fn named_networks_match_fvcore_exactly() {
        let expect = [("baseline", 327_505_392), ("mobile", 3_726_464), ("vgg", 118_593_280)];
        for (name, flops) in expect {
            assert_eq!(count(&named(name).unwrap()).unwrap().fvcore_total, flops, "{name}");
        }
    }

    #[test]
    fn baseline_has_the_notebooks_parameter_count() {
        assert_eq!(count(&named("baseline").unwrap()).unwrap().params, 25_891_863);
    }

    #[test]
    fn all_ops_count_more_than_fvcore() {
        let r = count(&named("baseline").unwrap()).unwrap();
        assert!(r.all_ops_total > r.fvcore_total);
        // ReLU after the first conv: 8 x 48 x 48 elements, zero for fvcore.
        assert_eq!((r.layers[1].fvcore, r.layers[1].all_ops), (0, 8 * 48 * 48));
    }

    #[test]
    fn efficiency_of_the_baseline() {
        assert!((efficiency(54.6, 327_505_392) - 166.715).abs() < 0.01);
    }
}
