mod common;

use common::synthetic;
use fer::config::AugmentConfig;
use fer::train::augment::make_batch;
use fer::config::{Config, Teacher, Tta};
use fer::data::{Split, NUM_CLASSES, PIXELS, SIDE};
use fer::nn::model::{Attention, ConvNet, Layer};
use fer::nn::model::Trained;
use fer::train::{train, TrainOptions};

fn faces() -> fer::data::Faces {
    synthetic([16, 0, 0], 31).split(Split::Training)
}

fn all_augmentations() -> AugmentConfig {
    AugmentConfig {
        crop_padding: 4,
        hflip: true,
        rotate_degrees: 15.0,
        scale: 0.1,
        shift: 0.1,
        brightness: 0.3,
        contrast: 0.3,
        erasing: 0.5,
        mixup_alpha: 0.0,
        cutmix_alpha: 0.0,
    }
}

#[test]
fn augmentation_keeps_shape_labels_and_range_and_is_seeded() {
    let f = faces();
    let idx: Vec<i64> = (0..16).collect();
    for side in [48, 40] {
        let b = make_batch(&f, &idx, side, &all_augmentations(), 9, true);
        assert_eq!(b.images.len(), 16 * side * side);
        assert_eq!(b.labels, f.labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
        assert!(b.images.iter().all(|v| (-1.0..=1.0).contains(v)));
        let again = make_batch(&f, &idx, side, &all_augmentations(), 9, true);
        assert_eq!(b.images, again.images, "same seed, same batch");
        let other = make_batch(&f, &idx, side, &all_augmentations(), 10, true);
        assert_ne!(b.images, other.images);
    }
}

fn scaled(img: &[u8]) -> Vec<f32> {
    img.iter().map(|&p| (p as f32 / 255.0 - 0.5) / 0.5).collect()
}

#[test]
fn no_augmentation_is_the_notebooks_scaling_and_flip_mirrors() {
    let f = faces();
    let plain = make_batch(&f, &[3], 48, &AugmentConfig::default(), 1, true);
    assert_eq!(plain.images, scaled(f.image(3)));
    let flip = AugmentConfig { hflip: true, ..Default::default() };
    let mirrored: Vec<f32> = (0..PIXELS).map(|i| plain.images[(i / SIDE) * SIDE + SIDE - 1 - i % SIDE]).collect();
    let (mut saw_flip, mut saw_same) = (false, false);
    for seed in 0..20 {
        let b = make_batch(&f, &[3], 48, &flip, seed, true);
        saw_flip |= b.images == mirrored;
        saw_same |= b.images == plain.images;
        assert!(b.images == mirrored || b.images == plain.images);
    }
    assert!(saw_flip && saw_same);
    // Padded random crop: a shifted copy with zero (black, -1) fill.
    let crop = AugmentConfig { crop_padding: 4, ..Default::default() };
    let b = make_batch(&f, &[3], 48, &crop, 5, true);
    let found = (-4i64..=4).any(|dy| {
        (-4i64..=4).any(|dx| {
            (0..SIDE as i64).all(|y| {
                (0..SIDE as i64).all(|x| {
                    let (sx, sy) = (x + dx, y + dy);
                    let want = if (0..48).contains(&sx) && (0..48).contains(&sy) { plain.images[(sy * 48 + sx) as usize] } else { -1.0 };
                    b.images[(y * 48 + x) as usize] == want
                })
            })
        })
    });
    assert!(found, "a padded crop is a shift of the face");
}

/// Each geometric and photometric lever alone changes the face in its own way: a range check
/// alone would pass a rotation that did nothing.
#[test]
fn each_augmentation_does_what_it_says() {
    // A dark face with a bright horizontal bar through its middle (rows 22-25).
    let mut bar = [30u8; PIXELS];
    for y in 22..26 {
        for x in 0..SIDE {
            bar[y * SIDE + x] = 220;
        }
    }
    let f = fer::data::Faces { pixels: bar.to_vec(), labels: vec![0], twin_in_training: vec![] };
    let plain = make_batch(&f, &[0], 48, &AugmentConfig::default(), 0, true).images;
    let alone = |cfg: AugmentConfig, seed: u64| make_batch(&f, &[0], 48, &cfg, seed, true).images;
    // The bar's mean row over a band of columns: where it sits on the left and on the right.
    let bar_row = |img: &[f32], cols: std::ops::Range<usize>| {
        let (mut sum, mut weight) = (0.0, 0.0);
        for y in 0..SIDE {
            for x in cols.clone() {
                let v = (img[y * SIDE + x] + 1.0).max(0.0) as f64;
                if v > 1.0 {
                    sum += v * y as f64;
                    weight += v;
                }
            }
        }
        sum / weight
    };
    let tilt = |img: &[f32]| bar_row(img, 30..44) - bar_row(img, 4..18);
    assert!(tilt(&plain).abs() < 1e-9);
    // Rotation tilts the bar, both ways over seeds, by up to tan(15°) x 26 px ≈ 7 rows.
    let rotate = || AugmentConfig { rotate_degrees: 15.0, ..Default::default() };
    let tilts: Vec<f64> = (0..12).map(|s| tilt(&alone(rotate(), s))).collect();
    assert!(tilts.iter().any(|&t| t > 1.0) && tilts.iter().any(|&t| t < -1.0), "rotation tilts: {tilts:?}");
    assert!(tilts.iter().all(|t| t.abs() < 8.0), "within ±15°: {tilts:?}");
    // A shift moves the bar without tilting it.
    let shift = || AugmentConfig { shift: 0.1, ..Default::default() };
    let moved: Vec<(f64, f64)> = (0..12).map(|s| alone(shift(), s)).map(|i| (bar_row(&i, 10..38) - 23.5, tilt(&i))).collect();
    assert!(moved.iter().any(|m| m.0.abs() > 1.0) && moved.iter().all(|m| m.1.abs() < 0.5 && m.0.abs() < 5.5), "{moved:?}");
    // Scaling changes the bar's thickness (its brightness summed down a column, in rows).
    let (dark, light) = (plain[0] as f64, plain[23 * SIDE] as f64);
    let thickness = |img: &[f32]| (0..SIDE).map(|y| ((img[y * SIDE + 24] as f64 - dark) / (light - dark)).max(0.0)).sum::<f64>();
    let scale = || AugmentConfig { scale: 0.1, ..Default::default() };
    let widths: Vec<f64> = (0..12).map(|s| thickness(&alone(scale(), s))).collect();
    assert!((thickness(&plain) - 4.0).abs() < 1e-6);
    assert!(widths.iter().any(|&w| w > 4.15) && widths.iter().any(|&w| w < 3.85), "{widths:?}");
    assert!(widths.iter().all(|&w| (3.5..=4.5).contains(&w)), "within ±10%: {widths:?}");
    // Brightness moves every pixel the same way; contrast spreads them about the mean.
    let mean = |img: &[f32]| img.iter().map(|&v| v as f64).sum::<f64>() / img.len() as f64;
    let spread = |img: &[f32]| img.iter().map(|&v| (v as f64 - mean(img)).abs()).sum::<f64>() / img.len() as f64;
    let bright: Vec<f64> = (0..12).map(|s| mean(&alone(AugmentConfig { brightness: 0.3, ..Default::default() }, s)) - mean(&plain)).collect();
    assert!(bright.iter().any(|&d| d > 0.02) && bright.iter().any(|&d| d < -0.02), "{bright:?}");
    let contrast: Vec<f64> = (0..12).map(|s| spread(&alone(AugmentConfig { contrast: 0.3, ..Default::default() }, s)) / spread(&plain)).collect();
    assert!(contrast.iter().any(|&r| r > 1.05) && contrast.iter().any(|&r| r < 0.95), "{contrast:?}");
    // Erasing blanks a rectangle: some pixels change, most do not.
    let erased = (0..12).map(|s| alone(AugmentConfig { erasing: 1.0, ..Default::default() }, s)).find(|i| *i != plain).expect("erasing at p = 1 erases");
    let changed = erased.iter().zip(&plain).filter(|(a, b)| a != b).count();
    assert!(changed > 20 && changed < PIXELS / 2, "{changed} pixels erased");
}

#[test]
fn mixup_and_cutmix_targets_sum_to_one() {
    let f = faces();
    let idx: Vec<i64> = (0..16).collect();
    for cfg in [AugmentConfig { mixup_alpha: 0.4, ..Default::default() }, AugmentConfig { cutmix_alpha: 1.0, ..Default::default() }] {
        let b = make_batch(&f, &idx, 48, &cfg, 3, true);
        let mut mixed = 0;
        for k in 0..16 {
            let row = &b.targets[k * NUM_CLASSES..(k + 1) * NUM_CLASSES];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
            assert!(row.iter().filter(|&&v| v > 0.0).count() <= 2);
            assert!(row[b.labels[k] as usize] > 0.0, "the face's own label keeps weight");
            mixed += usize::from(row.iter().any(|&v| v > 0.0 && v < 1.0));
        }
        assert!(mixed > 0, "{cfg:?} mixed some faces");
    }
    // At evaluation there is no mixing.
    let b = make_batch(&f, &idx, 48, &AugmentConfig { mixup_alpha: 0.4, ..Default::default() }, 3, false);
    assert!(b.targets.iter().all(|&v| v == 0.0 || v == 1.0));
}

#[test]
fn blocks_build_with_the_shapes_and_parameters_the_counter_expects() {
    for net in [
        ConvNet { widths: vec![8, 16], residual: true, attention: Attention::Se, reduction: 4, ..Default::default() },
        ConvNet { widths: vec![8, 16], residual: true, attention: Attention::Cbam, reduction: 4, ..Default::default() },
        ConvNet { widths: vec![8, 16], separable: true, batch_norm: true, dropout: 0.2, ..Default::default() },
        ConvNet { widths: vec![8, 16], batch_norm: false, downsample: fer::nn::model::Downsample::Stride, ..Default::default() },
        ConvNet { widths: vec![8, 16], input_pool: 3, separable: true, ..Default::default() },
    ] {
        let layers = net.layers();
        let trained = Trained::new(&config_with(&layers), tch::Device::Cpu).unwrap();
        let x = tch::Tensor::zeros([3, 1, 48, 48], (tch::Kind::Float, tch::Device::Cpu));
        let out = tch::nn::ModuleT::forward_t(&trained.net, &x, false);
        assert_eq!(out.size(), [3, 7]);
        let counted = fer::nn::flops::count(&layers).unwrap();
        assert_eq!(counted.params, fer::nn::model::param_count(&trained.vs), "{net:?}");
    }
    // A residual block around a stride-2 body gets a projection shortcut with its own weights.
    let trained = Trained::new(
        &config_with(&ConvNet { widths: vec![8, 16], downsample: fer::nn::model::Downsample::Stride, residual: true, ..Default::default() }.layers()),
        tch::Device::Cpu,
    )
    .unwrap();
    assert!(trained.vs.variables().keys().any(|k| k.contains("shortcut")));
}

fn config_with(layers: &[Layer]) -> Config {
    let mut c = Config::for_network("baseline");
    c.model.network = None;
    c.model.layers = Some(layers.to_vec());
    c
}

#[test]
fn every_lever_round_trips_through_a_config_file() {
    let text = r#"
name = "all-levers"
seed = 3
[model.convnet]
widths = [16, 32]
residual = true
attention = "cbam"
separable = true
input_pool = 2
dropout = 0.3
activation = "silu"
[train]
precision = "bf16"
eval_blur = 2.0
eval_blur_choices = [2.0, 3.0]
teacher = "runs/some-teacher"
distill_temperature = 2.0
distill_weight = 0.7
optimizer = "sgd"
momentum = 0.9
nesterov = true
weight_decay = 5e-4
label_smoothing = 0.1
focal_gamma = 1.0
class_weighted = true
early_stopping_patience = 4
grad_clip = 1.0
input_size = 44
tta = "ten_crop"
schedule = { kind = "cosine", warmup_epochs = 1.0 }
time_budget_minutes = 10.0
ema_decay = 0.99
progressive_resize = { start = 32, until = 0.5 }
[augment]
crop_padding = 4
hflip = true
mixup_alpha = 0.2
erasing = 0.25
"#;
    let c = Config::parse(text).unwrap();
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    assert_eq!(c.train.tta, Tta::TenCrop);
    assert!(Config::parse(&text.replace("input_size = 44", "input_size = 48")).unwrap_err().to_string().contains("ten-crop"));
    assert!(Config::parse(&text.replace("hflip", "hflop")).is_err(), "unknown keys are errors");
    // A list of teachers is an ensemble, and round-trips as one; an empty list is an error.
    let ensemble = Config::parse(&text.replace("\"runs/some-teacher\"", "[\"runs/a\", \"runs/b\"]")).unwrap();
    assert_eq!(ensemble.train.teacher, Some(Teacher::Ensemble(vec!["runs/a".into(), "runs/b".into()])));
    assert_eq!(ensemble.train.teacher.as_ref().unwrap().to_string(), "runs/a + runs/b");
    assert_eq!(Config::parse(&ensemble.to_toml()).unwrap(), ensemble);
    assert_eq!(c.train.teacher, Some(Teacher::One("runs/some-teacher".into())));
    assert!(Config::parse(&text.replace("\"runs/some-teacher\"", "[]")).unwrap_err().to_string().contains("teacher"));
    // Mirroring the teachers' views needs teachers.
    assert!(Config::parse(&text.replace("distill_weight = 0.7", "distill_weight = 0.7\nteacher_flip = true")).unwrap().train.teacher_flip);
    let untaught = common::tiny_config("untaught", 1).to_toml().replace("teacher_flip = false", "teacher_flip = true");
    assert!(Config::parse(&untaught).unwrap_err().to_string().contains("teacher_flip needs a teacher"));
}

/// Faces whose neighbouring pixels are strongly correlated, as in real faces: seeded ramps in
/// both directions with a little noise.
fn smooth_faces(n: usize, seed: u64) -> fer::data::Faces {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut faces = fer::data::Faces::default();
    for i in 0..n {
        let (a, b, c) = (rng.f64() * 4.0 - 2.0, rng.f64() * 4.0 - 2.0, rng.f64() * 0.3);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let wave = (x as f64 * c + y as f64 * (0.3 - c)).sin() * 40.0;
                let v = 128.0 + a * (x as f64 - 24.0) + b * (y as f64 - 24.0) + wave + rng.f64() * 6.0;
                faces.pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
        faces.labels.push((i % NUM_CLASSES) as u8);
    }
    faces
}

/// The covariance of the columns of `[n, d]` rows.
fn covariance(rows: &tch::Tensor) -> tch::Tensor {
    let centred = rows - rows.mean_dim(0, true, tch::Kind::Double);
    centred.transpose(0, 1).matmul(&centred) / rows.size()[0] as f64
}

#[test]
fn the_whitening_stem_decorrelates_the_patches_it_sees() {
    let faces = smooth_faces(300, 5);
    let filters = fer::train::whiten::whitening_filters(&faces, 18, 3, 2, 1);
    assert_eq!(filters.size(), [18, 1, 3, 3]);
    // The patches exactly as a 3x3 stride-2 stem sees them.
    let (pixels, _) = faces.tensors();
    let x = fer::data::normalize(&pixels).to_kind(tch::Kind::Double);
    let patches = x.im2col([3, 3], [1, 1], [1, 1], [2, 2]).transpose(1, 2).reshape([-1, 9]);
    let raw = covariance(&patches);
    let off_diagonal = |c: &tch::Tensor| (c - c.diag(0).diag_embed(0, -2, -1)).abs().max().double_value(&[]);
    assert!(off_diagonal(&raw) > 0.5 * raw.diag(0).min().double_value(&[]), "the test's pixels are correlated");
    // Filter 2i and 2i + 1 are one direction with both signs.
    let rows = filters.to_kind(tch::Kind::Double).reshape([18, 9]);
    let (even, odd) = (rows.slice(0, 0, 18, 2), rows.slice(0, 1, 18, 2));
    assert!(even.allclose(&(-&odd), 0.0, 0.0, false));
    // Through the directions, the patches are decorrelated, each at (nearly) unit variance,
    // the largest first: variance / (variance + eps) falls with the variance.
    let out = covariance(&patches.matmul(&even.transpose(0, 1)));
    assert!(off_diagonal(&out) < 1e-4, "decorrelated: {}", off_diagonal(&out));
    let variances: Vec<f64> = Vec::<f64>::try_from(out.diag(0)).unwrap();
    assert!(variances.iter().all(|&v| v > 0.0 && v <= 1.0), "{variances:?}");
    assert!(variances.windows(2).all(|w| w[0] >= w[1] - 1e-9), "largest variance first: {variances:?}");
    assert!(variances[0] > 0.99, "the strongest direction is whitened to unit variance: {variances:?}");
    // A narrower stem takes the strongest directions.
    let four = fer::train::whiten::whitening_filters(&faces, 8, 3, 2, 1);
    assert!(four.allclose(&filters.narrow(0, 0, 8), 1e-6, 1e-6, false));
    // A stem with a bias (no batch norm after it) is centred: the mean face's flat interior
    // meets every filter at zero, and the weight is frozen while the bias trains.
    let text = "name = \"b\"\n[model]\nlayers = [{ type = \"conv\", out = 6, stride = 2 }, { type = \"relu\" }, { type = \"global_avg_pool\" }, { type = \"linear\", out = 7 }]\n[train]\nwhiten_stem = true\n";
    let model = Trained::new(&Config::parse(text).unwrap(), tch::Device::Cpu).unwrap();
    fer::train::whiten::whiten_stem(&model, &faces).unwrap();
    let vars = model.vs.variables();
    assert!(!vars["0.weight"].requires_grad() && vars["0.bias"].requires_grad());
    let mean = fer::data::normalize(&pixels).mean(tch::Kind::Float);
    let flat = tch::Tensor::ones([1, 1, 9, 9], (tch::Kind::Float, tch::Device::Cpu)) * mean;
    let response = flat.conv2d(&vars["0.weight"], Some(&vars["0.bias"]), [2], [1], [1], 1).narrow(2, 1, 3).narrow(3, 1, 3);
    assert!(response.abs().max().double_value(&[]) < 1e-4, "{response}");
}

#[test]
fn the_whitening_stem_is_frozen_in_training_and_needs_a_plain_stem() {
    tch::set_num_threads(1);
    let data = synthetic([128, 32, 32], 8);
    let mut c = common::tiny_config("whiten", 3);
    c.train.whiten_stem = true;
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "the lever round-trips through a config file");
    let runs = tempfile::tempdir().unwrap();
    train(&c, &data, &common::opts(runs.path())).unwrap();
    let trained = Trained::load(&runs.path().join("whiten"), tch::Device::Cpu).unwrap();
    let untrained = Trained::new(&c, tch::Device::Cpu).unwrap();
    let vars = trained.vs.variables();
    // The tiny net's stem has 8 filters: the 4 strongest directions, each with both signs, as
    // they were before the first step.
    let expected = fer::train::whiten::whitening_filters(&data.split(Split::Training), 8, 3, 2, 1);
    assert!(vars["0.weight"].allclose(&expected, 1e-6, 1e-6, false), "the stem was not trained");
    assert!(!vars["3.weight"].allclose(&untrained.vs.variables()["3.weight"], 1e-3, 1e-3, false), "the layers after it were");
    // Without it the stem trains; a network that does not start with a plain convolution refuses.
    c.train.whiten_stem = false;
    c.name = "plain".into();
    train(&c, &data, &common::opts(runs.path())).unwrap();
    let plain = Trained::load(&runs.path().join("plain"), tch::Device::Cpu).unwrap();
    assert!(!plain.vs.variables()["0.weight"].allclose(&expected, 1e-3, 1e-3, false));
    let pooled = "name = \"p\"\n[model.convnet]\nwidths = [8]\ninput_pool = 2\n[train]\nwhiten_stem = true\n";
    let err = Config::parse(pooled).unwrap_err().to_string();
    assert!(err.contains("whiten_stem") && err.contains("input_pool = 1"), "{err}");
    assert!(Config::parse(&pooled.replace("input_pool = 2", "input_pool = 1")).is_ok());
}

#[test]
fn progressive_resizing_grows_the_faces_and_needs_global_pooling() {
    let resize = fer::config::ProgressiveResize { start: 24, until: 0.5 };
    let sides: Vec<usize> = [0.0, 0.1, 0.25, 0.5, 0.9].iter().map(|&t| resize.side_at(t, 48)).collect();
    assert_eq!(sides, [24, 28, 36, 48, 48]);
    assert_eq!(fer::config::ProgressiveResize { start: 32, until: 0.0 }.side_at(0.0, 40), 40, "until 0: full size from the start");
    // A network that flattens a feature map cannot take smaller faces: a config error.
    let mut c = common::tiny_config("resize", 2);
    c.train.progressive_resize = Some(resize);
    let err = Config::parse(&c.to_toml()).unwrap_err().to_string();
    assert!(err.contains("global pooling"), "{err}");
    let start = |side: usize| Config::parse(&c.to_toml().replace("start = 24", &format!("start = {side}")));
    assert!(start(4).unwrap_err().to_string().contains("between 8 and input_size"));
    // One that pools globally trains with it.
    let text = "name = \"resize\"\n[model.convnet]\nwidths = [8, 16]\n[train]\nepochs = 2\nbatch_size = 32\nprogressive_resize = { start = 24, until = 0.5 }\n";
    let c = Config::parse(text).unwrap();
    let runs = tempfile::tempdir().unwrap();
    tch::set_num_threads(1);
    let s = train(&c, &synthetic([64, 32, 32], 6), &common::opts(runs.path())).unwrap();
    assert_eq!(s.epochs, 2);
}

#[test]
fn a_time_budget_ends_the_run_where_its_schedule_ends() {
    tch::set_num_threads(1);
    let mut c = common::tiny_config("budget", 100_000);
    c.train.schedule = fer::config::Schedule::Linear { warmup: 0.2, start_factor: 0.1 };
    c.train.time_budget_minutes = 0.02; // 1.2 seconds
    let runs = tempfile::tempdir().unwrap();
    // A clock of 0.05 s a step, so the budget holds 24 steps on any machine: 12 epochs of 2.
    let steps = fer::train::Clock::Steps(0.05);
    let opts = TrainOptions { clock: steps, ..common::opts(runs.path()) };
    let s = train(&c, &synthetic([64, 32, 32], 6), &opts).unwrap();
    assert_eq!(64usize.div_ceil(c.train.batch_size), 2, "two steps an epoch");
    assert_eq!(s.epochs, 12, "the budget ended the run, not the epochs");
    let lines = std::fs::read_to_string(runs.path().join("budget/metrics.jsonl")).unwrap();
    let history: Vec<fer::record::EpochMetrics> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(history.len(), s.epochs);
    // The schedule ran its whole course in the time: down close to zero at the end.
    let last = history.last().unwrap();
    assert!(last.lr < 0.5 * c.train.lr, "the rate at the end: {}", last.lr);
    assert!(last.fraction.is_none_or(|f| f > 0.0 && f < 1.0));
    assert!(history.iter().all(|m| m.eval_seconds.is_some_and(|e| e <= m.seconds)));
    // A finished budget run resumed is finished: it neither trains nor scores again.
    let again = train(&c, &synthetic([64, 32, 32], 6), &TrainOptions { resume: true, ..opts }).unwrap();
    assert_eq!((again.epochs, again.test_acc), (s.epochs, s.test_acc));
}

#[test]
fn ten_crop_views_average_to_probabilities() {
    let mut c = common::tiny_config("tta", 1);
    c.train.input_size = 40;
    c.train.tta = Tta::TenCrop;
    let m = Trained::new(&c, tch::Device::Cpu).unwrap();
    let f = synthetic([0, 0, 5], 2).split(Split::PrivateTest);
    let log_p = m.logits_with(&f, Tta::TenCrop);
    assert_eq!(log_p.size(), [5, 7]);
    let sums: Vec<f32> = Vec::try_from(log_p.exp().sum_dim_intlist(-1, false, tch::Kind::Float)).unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    // TTA is a different measurement from the single pass.
    assert!(!log_p.equal(&m.logits(&f)));
    // Exactly the ten views: the four corners and the centre, each also mirrored (five views,
    // or the centre ten times, would score differently).
    assert_eq!(Tta::TenCrop.views(), 10);
    let x = fer::nn::score::input_batches(&f, 100, tch::Device::Cpu, 0.0).next().unwrap();
    let mut outs = Vec::new();
    for (y, x0) in [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)] {
        let crop = x.narrow(2, y, 40).narrow(3, x0, 40);
        for view in [crop.shallow_clone(), crop.flip([3])] {
            outs.push(tch::no_grad(|| tch::nn::ModuleT::forward_t(&m.net, &view, false)));
        }
    }
    let by_hand = fer::nn::score::combine(&outs);
    assert!(by_hand.allclose(&log_p, 1e-5, 1e-5, false), "ten-crop is the mean over the ten views");
    assert!(!fer::nn::score::combine(&outs[..5]).allclose(&log_p, 1e-5, 1e-5, false), "five views would not do");
}

#[test]
fn flip_shift_views_are_the_face_moved_both_ways_with_black_coming_in() {
    let c = common::tiny_config("flip-shift", 1);
    assert_eq!(c.train.input_size, 48, "the views move a whole face, so black comes in");
    let m = Trained::new(&c, tch::Device::Cpu).unwrap();
    let f = synthetic([0, 0, 5], 3).split(Split::PrivateTest);
    let log_p = m.logits_with(&f, Tta::FlipShift);
    assert_eq!(Tta::FlipShift.views(), 6);
    let x = fer::nn::score::input_batches(&f, 100, tch::Device::Cpu, 0.0).next().unwrap();
    // By hand: the face on a black border 2 pixels wide, read at the centre and 2 pixels either way.
    let s = fer::nn::score::TTA_SHIFT;
    let framed = tch::Tensor::full([5, 1, 48 + 2 * s, 48 + 2 * s], -1.0, (tch::Kind::Float, tch::Device::Cpu));
    framed.narrow(2, s, 48).narrow(3, s, 48).copy_(&x);
    let mut outs = Vec::new();
    for o in [s, 0, 2 * s] {
        let moved = framed.narrow(2, o, 48).narrow(3, o, 48);
        for view in [moved.shallow_clone(), moved.flip([3])] {
            outs.push(tch::no_grad(|| tch::nn::ModuleT::forward_t(&m.net, &view, false)));
        }
    }
    assert!(fer::nn::score::combine(&outs).allclose(&log_p, 1e-5, 1e-5, false), "flip-shift is the mean over the six views");
    assert!(!fer::nn::score::combine(&outs[..2]).allclose(&log_p, 1e-5, 1e-5, false), "the shifted views count: flips alone differ");
    let text = c.to_toml();
    assert!(Config::parse(&text.replace("tta = \"none\"", "tta = \"flip_shift\"")).is_ok_and(|c| c.train.tta == Tta::FlipShift));
}

#[test]
fn early_stopping_ends_a_run_that_stopped_improving() {
    tch::set_num_threads(1);
    let mut c = common::tiny_config("stop", 6);
    // Without batch norm and with lr 0 nothing changes, so PublicTest never improves after epoch 1.
    c.model.layers.as_mut().unwrap().retain(|l| *l != Layer::BatchNorm);
    c.train.lr = 0.0;
    c.train.early_stopping_patience = 2;
    let runs = tempfile::tempdir().unwrap();
    let opts = TrainOptions { runs_dir: runs.path().to_path_buf(), quiet: true, ..Default::default() };
    let s = train(&c, &synthetic([70, 35, 35], 4), &opts).unwrap();
    assert_eq!((s.epochs, s.best_epoch), (3, 1));
}

#[test]
fn schedules_and_losses_train_end_to_end() {
    tch::set_num_threads(1);
    let text = format!(
        "name = \"mix\"\nseed = 1\n{}\n[train]\nepochs = 3\nbatch_size = 32\nlr = 0.01\noptimizer = \"adamw\"\nweight_decay = 0.01\nlabel_smoothing = 0.1\nclass_weighted = true\ngrad_clip = 5.0\nschedule = {{ kind = \"one_cycle\" }}\n[augment]\nhflip = true\ncutmix_alpha = 1.0\n",
        common::TINY_NET
    );
    let c = Config::parse(&text).unwrap();
    let runs = tempfile::tempdir().unwrap();
    let opts = TrainOptions { runs_dir: runs.path().to_path_buf(), quiet: true, ..Default::default() };
    train(&c, &synthetic([140, 35, 35], 5), &opts).unwrap();
    let lines = std::fs::read_to_string(runs.path().join("mix/metrics.jsonl")).unwrap();
    let lrs: Vec<f64> = lines.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs.len(), 3);
    assert!(lrs[2] < lrs[0].max(lrs[1]), "one-cycle comes down: {lrs:?}");
}

#[test]
fn bf16_mixed_precision_trains_and_evaluates_in_f32() {
    tch::set_num_threads(1);
    let mut c = common::tiny_config("bf16", 4);
    c.train.precision = fer::config::Precision::Bf16;
    let runs = tempfile::tempdir().unwrap();
    let opts = TrainOptions { runs_dir: runs.path().to_path_buf(), quiet: true, ..Default::default() };
    let data = synthetic([280, 70, 70], 6);
    let s = train(&c, &data, &opts).unwrap();
    assert!(s.val_acc > 0.5, "learns in bf16: {}", s.val_acc);

    let m = Trained::load(&runs.path().join("bf16"), tch::Device::Cpu).unwrap();
    assert!(m.net.bf16_training);
    let x = tch::Tensor::rand([4, 1, 48, 48], (tch::Kind::Float, tch::Device::Cpu));
    let eval = tch::nn::ModuleT::forward_t(&m.net, &x, false);
    // Evaluation is exact f32: the same as the network built without mixed precision.
    let mut f32_net = Trained::new(&m.config, tch::Device::Cpu).unwrap();
    f32_net.vs.copy(&m.vs).unwrap();
    f32_net.net.bf16_training = false;
    assert!(eval.equal(&tch::nn::ModuleT::forward_t(&f32_net.net, &x, false)));
    assert_eq!(eval.kind(), tch::Kind::Float);
    // Training mode computes in bf16 but hands the loss f32 scores, close to the f32 ones.
    let mixed = tch::nn::ModuleT::forward_t(&m.net, &x, true);
    let exact = tch::nn::ModuleT::forward_t(&f32_net.net, &x, true);
    assert_eq!(mixed.kind(), tch::Kind::Float);
    let diff = (&mixed - &exact).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.1 * exact.abs().max().double_value(&[]).max(1.0), "bf16 differs from f32 by {diff}");

    // Every block type takes bf16 features: attention, residual projections, separable blocks.
    for attention in [Attention::Se, Attention::Cbam] {
        let net = ConvNet { widths: vec![8, 16], residual: true, separable: true, attention, reduction: 4, downsample: fer::nn::model::Downsample::Stride, ..Default::default() };
        let mut c = config_with(&net.layers());
        c.train.precision = fer::config::Precision::Bf16;
        let m = Trained::new(&c, tch::Device::Cpu).unwrap();
        let out = tch::nn::ModuleT::forward_t(&m.net, &x, true);
        assert_eq!((out.size(), out.kind()), (vec![4, 7], tch::Kind::Float));
        out.sum(tch::Kind::Float).backward();
    }
}

#[test]
fn zero_counts_and_strides_are_config_errors_not_panics() {
    let base = "name = \"z\"\n[model.convnet]\nwidths = [8, 16]\nattention = \"se\"\nreduction = 4\n[train]\nepochs = 2\n";
    assert!(Config::parse(base).is_ok());
    for (from, to, says) in [
        ("epochs = 2", "epochs = 0", "epochs"),
        ("reduction = 4", "reduction = 0", "reduction"),
        ("widths = [8, 16]", "widths = [8, 16]\nstem_stride = 0", "stride"),
    ] {
        let err = Config::parse(&base.replace(from, to)).expect_err(to).to_string();
        assert!(err.contains(says), "{to}: {err}");
    }
    let layers = "name = \"z\"\n[model]\nlayers = [{ type = \"conv\", out = 8, groups = 0 }, { type = \"global_avg_pool\" }, { type = \"linear\", out = 7 }]\n";
    let err = std::panic::catch_unwind(|| Config::parse(layers).map_err(|e| e.to_string()));
    assert!(matches!(&err, Ok(Err(e)) if e.contains("groups")), "groups = 0: {err:?}");
}
