//! FLOPs of one 1x48x48 forward pass (eval mode), counted exactly as fvcore counts them
//! (one multiply-add = one flop), and a second total that also counts what fvcore leaves out.

use serde::Serialize;

use crate::nn::model::{Layer, Shape};

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
    /// The part of `fvcore_total` that runs once per face, before test-time views are cut
    /// from it (the evaluation blur); the rest runs once per view.
    pub per_face: i64,
}

impl FlopReport {
    pub fn gflops(&self) -> f64 {
        self.fvcore_total as f64 / 1e9
    }

    /// fvcore's count for one face scored over `views` test-time views: the network once per
    /// view, the blur in front of it once.
    pub fn with_views(&self, views: usize) -> i64 {
        self.per_face + views as i64 * (self.fvcore_total - self.per_face)
    }
}

/// fvcore's count for one layer: (fvcore, all_ops, params).
fn layer_flops(layer: &Layer, input: Shape, output: Shape) -> (i64, i64, i64) {
    let out = output.elements();
    let c = input.channels();
    match *layer {
        // fvcore: output elements x in-channels/groups x kh x kw; the bias is ignored.
        Layer::Conv { kernel, groups, bias, .. } => {
            let per_out = c / groups * kernel * kernel;
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
        Layer::Relu | Layer::LeakyRelu { .. } | Layer::Silu | Layer::Gelu => (0, out, 0),
        Layer::MaxPool { kernel, .. } | Layer::AvgPool { kernel, .. } => (0, out * kernel * kernel, 0),
        Layer::Flatten | Layer::Dropout { .. } => (0, 0, 0),
        Layer::Separable { out: cout, kernel, stride } => sequence(&super::model::separable(c, cout, kernel, stride), input),
        Layer::Residual { ref body } => {
            let mut total = sequence(body, input);
            if let Some(proj) = super::model::shortcut(body, input, output) {
                let p = sequence(&proj, input);
                total = (total.0 + p.0, total.1 + p.1, total.2 + p.2);
            }
            // The addition is free for fvcore.
            (total.0, total.1 + out, total.2)
        }
        // Squeeze (adaptive average pool, counted) and two linear layers; sigmoid and the
        // channel product are not counted by fvcore.
        Layer::Se { reduction } => {
            let r = c / reduction;
            let mlp = 2 * c * r;
            (input.elements() + mlp, input.elements() + mlp + r + c + r + c + out, mlp + r + c)
        }
        // Channel attention: average pool (counted), max pool (not), the shared MLP twice;
        // spatial attention: channel mean and max (not counted), a kxk conv 2 -> 1.
        Layer::Cbam { reduction, kernel } => {
            let r = c / reduction;
            let mlp = 2 * c * r;
            let hw = out / c;
            let spatial = hw * 2 * kernel * kernel;
            let fv = input.elements() + 2 * mlp + spatial;
            let extra = input.elements() /* max pool */ + 2 * (r + c) + 2 * out /* gates */ + 2 * out /* channel mean, max */;
            (fv, fv + extra, mlp + r + c + 2 * kernel * kernel)
        }
    }
}

/// Sum over a sequence of layers applied in turn.
fn sequence(layers: &[Layer], mut input: Shape) -> (i64, i64, i64) {
    let mut total = (0, 0, 0);
    for layer in layers {
        let output = super::model::output_shape(layer, input).expect("shapes were checked");
        let f = layer_flops(layer, input, output);
        total = (total.0 + f.0, total.1 + f.1, total.2 + f.2);
        input = output;
    }
    total
}

/// fvcore FLOPs and parameters per kind of leaf layer (`conv`, `linear`, `batch_norm`, ...),
/// looking inside residual blocks and their shortcuts: where a network's cost lies.
pub fn by_kind(layers: &[Layer], side: i64) -> anyhow::Result<std::collections::BTreeMap<String, (i64, i64)>> {
    fn walk(layers: &[Layer], mut input: Shape, tally: &mut std::collections::BTreeMap<String, (i64, i64)>) -> anyhow::Result<()> {
        for layer in layers {
            let output = super::model::output_shape(layer, input)?;
            match layer {
                Layer::Residual { body } => {
                    walk(body, input, tally)?;
                    if let Some(proj) = super::model::shortcut(body, input, output) {
                        walk(&proj, input, tally)?;
                    }
                }
                Layer::Separable { out, kernel, stride } => walk(&super::model::separable(input.channels(), *out, *kernel, *stride), input, tally)?,
                _ => {
                    let (fvcore, _, params) = layer_flops(layer, input, output);
                    let kind = layer.kind();
                    let kind = if kind.starts_with("conv") { "conv".to_string() } else { kind.split(['(', ' ']).next().unwrap_or(&kind).to_string() };
                    let entry = tally.entry(kind).or_default();
                    *entry = (entry.0 + fvcore, entry.1 + params);
                }
            }
            input = output;
        }
        Ok(())
    }
    let mut tally = std::collections::BTreeMap::new();
    walk(layers, Shape::input(side), &mut tally)?;
    Ok(tally)
}

pub fn count(layers: &[Layer]) -> anyhow::Result<FlopReport> {
    count_at(layers, crate::data::SIDE as i64)
}

/// As [`count`], for a `side` x `side` input.
pub fn count_at(layers: &[Layer], side: i64) -> anyhow::Result<FlopReport> {
    let shapes = super::model::shapes_at(layers, side)?;
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
        per_face: 0,
    })
}

/// The competition's efficiency: accuracy in percent per GFLOP of one forward pass.
pub fn efficiency(accuracy_percent: f64, fvcore_flops: i64) -> f64 {
    accuracy_percent / (fvcore_flops as f64 / 1e9)
}

/// The whole forward pass a config evaluates: its network, plus the evaluation blur, which
/// runs as two 1-D convolutions over the 48x48 face (counted as fvcore counts convolutions).
pub fn count_config(config: &crate::config::Config) -> anyhow::Result<FlopReport> {
    let mut report = count_at(&config.layers()?, config.train.input_size as i64)?;
    if config.train.eval_blur > 0.0 {
        let k = super::blur::gaussian_kernel(config.train.eval_blur).len() as i64;
        let side = crate::data::SIDE as i64;
        let flops = super::blur::fvcore_flops(config.train.eval_blur, side);
        report.per_face = flops;
        report.layers.insert(0, LayerFlops {
            index: 0,
            kind: format!("gaussian_blur(sigma={}, {k} taps, separable)", config.train.eval_blur),
            input: format!("1x{side}x{side}"),
            output: format!("1x{side}x{side}"),
            fvcore: flops,
            all_ops: flops,
            params: 0,
        });
        report.fvcore_total += flops;
        report.all_ops_total += flops;
    }
    Ok(report)
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
    let report = count_config(&config)?;
    let summary: Option<crate::record::Summary> = dir
        .and_then(|d| std::fs::read(d.join("summary.json")).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    if json {
        let mut v = serde_json::to_value(&report)?;
        // What was counted, so that another counter (scripts/fvcore_truth.py) can count it too.
        v["network"] = serde_json::to_value(config.layers()?)?;
        v["input_size"] = config.train.input_size.into();
        v["eval_blur"] = config.train.eval_blur.into();
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
    use crate::nn::model::named;

    /// tests/fixtures/fvcore_truth.json: fvcore's own counts (scripts/fvcore_truth.py) of every
    /// layer kind, the blur, the named networks and the shipped models, each built in PyTorch
    /// from fer's layer list.
    #[test]
    fn every_layer_kind_and_shipped_model_counts_as_fvcore_itself_counts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("tests/fixtures/fvcore_truth.json");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/fvcore_truth.py", path.display()));
        let truth: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let cases = truth["cases"].as_object().unwrap();
        let kinds = ["conv", "batch_norm", "relu", "max_pool", "avg_pool", "global_avg_pool", "flatten", "linear", "dropout",
                     "leaky_relu", "silu", "gelu", "separable", "residual", "se", "cbam"];
        let text = String::from_utf8_lossy(&bytes);
        for kind in kinds {
            assert!(text.contains(&format!("\"type\": \"{kind}\"")), "no fvcore case has a {kind} layer");
        }
        for (name, case) in cases {
            let layers: Vec<Layer> = serde_json::from_value(case["layers"].clone()).unwrap();
            let mut config = crate::config::Config::for_network("baseline");
            config.model = crate::config::ModelConfig { network: None, convnet: None, layers: Some(layers.clone()) };
            config.train.input_size = case["input_size"].as_u64().unwrap() as usize;
            config.train.eval_blur = case["eval_blur"].as_f64().unwrap();
            let fvcore = case["fvcore"].as_i64().unwrap();
            assert_eq!(count_config(&config).unwrap().fvcore_total, fvcore, "{name}: fvcore counts {fvcore}");
            if case["model"].as_bool() == Some(true) {
                // The truth must be of the network as it ships today.
                let (now, _) = resolve(root.join(name).to_str().filter(|_| name.contains('/')).unwrap_or(name)).unwrap();
                assert_eq!(now.layers().unwrap(), layers, "{name} changed: re-run scripts/fvcore_truth.py");
                assert_eq!(now.train.eval_blur, config.train.eval_blur, "{name}");
            }
        }
    }

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

    fn net(layers: Vec<Layer>) -> Vec<Layer> {
        let mut all = vec![Layer::conv(16)];
        all.extend(layers);
        all.extend([Layer::GlobalAvgPool, Layer::linear(7)]);
        all
    }

    #[test]
    fn residual_block_counts_its_body_and_projection() {
        use crate::nn::model::Shape;
        let body = vec![Layer::conv_nb(32, 3, 2, 1), Layer::BatchNorm, Layer::Relu, Layer::conv_nb(32, 3, 1, 1), Layer::BatchNorm];
        let layers = net(vec![Layer::Residual { body }]);
        let shapes = crate::nn::model::shapes(&layers).unwrap();
        assert_eq!(shapes[1].1, Shape::Map { c: 32, h: 24, w: 24 });
        let r = count(&layers).unwrap();
        // conv 16->32 s2 at 24x24, BN, conv 32->32, BN, projection 1x1 16->32 s2 + BN.
        let hw = 24 * 24;
        let expect = 32 * hw * 16 * 9 + 2 * 32 * hw + 32 * hw * 32 * 9 + 2 * 32 * hw + 32 * hw * 16 + 2 * 32 * hw;
        assert_eq!(r.layers[1].fvcore, expect);
        // Identity shortcut when the shape is kept: no projection.
        let same = net(vec![Layer::Residual { body: vec![Layer::conv(16)] }]);
        assert_eq!(count(&same).unwrap().layers[1].fvcore, 48 * 48 * 16 * 16 * 9);
    }

    #[test]
    fn se_and_cbam_follow_fvcores_rules() {
        let r = count(&net(vec![Layer::Se { reduction: 4 }])).unwrap();
        // Adaptive average pool over 16x48x48, then linear 16->4 and 4->16.
        assert_eq!(r.layers[1].fvcore, 16 * 48 * 48 + 16 * 4 + 4 * 16);
        assert_eq!(r.layers[1].params, 16 * 4 + 4 + 4 * 16 + 16);
        let r = count(&net(vec![Layer::Cbam { reduction: 4, kernel: 7 }])).unwrap();
        assert_eq!(r.layers[1].fvcore, 16 * 48 * 48 + 2 * (16 * 4 + 4 * 16) + 48 * 48 * 2 * 49);
    }

    #[test]
    fn evaluation_blur_is_counted_once_per_face_as_two_one_dimensional_convolutions() {
        let mut c = crate::config::Config::for_network("mobile");
        c.train.eval_blur = 1.0; // radius 3: 7 taps; the row pass runs over 54 padded rows
        let blur = (54 * 48 + 48 * 48) * 7;
        let r = count_config(&c).unwrap();
        assert_eq!(r.fvcore_total, 3_726_464 + blur);
        assert_eq!(r.with_views(2), 2 * 3_726_464 + blur);
        c.train.eval_blur = 0.0;
        assert_eq!(count_config(&c).unwrap().with_views(10), 10 * 3_726_464);
    }

    #[test]
    fn efficiency_of_the_baseline() {
        assert!((efficiency(54.6, 327_505_392) - 166.715).abs() < 0.01);
    }
}
