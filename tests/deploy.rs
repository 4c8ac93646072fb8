//! Deployment: batch-norm folding, distillation, model export, and the shipped models.
mod common;

use common::{opts, real_data, synthetic, tiny_config};
use fer::config::{Config, Teacher};
use fer::data::Split;
use fer::nn::export::{export, fold, Card};
use fer::nn::model::Layer;
use fer::nn::model::Trained;
use fer::train::train;
use std::path::Path;
use tch::{Kind, Tensor};

/// A model of `model_toml` whose batch norms hold trained-looking, non-trivial statistics.
fn with_random_batch_norms(model_toml: &str) -> Trained {
    tch::manual_seed(3);
    let config = Config::parse(&format!("name = \"fold\"\n{model_toml}")).unwrap();
    let model = Trained::new(&config, tch::Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in model.vs.variables() {
            let size = var.size();
            if name.ends_with("running_var") {
                var.copy_(&(Tensor::rand(&size, (Kind::Float, tch::Device::Cpu)) * 2.0 + 0.5));
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                var.copy_(&(Tensor::randn(&size, (Kind::Float, tch::Device::Cpu)) * 0.5));
            } else if var.dim() == 1 {
                var.copy_(&(Tensor::rand(&size, (Kind::Float, tch::Device::Cpu)) + 0.5));
            }
        }
    });
    model
}

fn has_batch_norm(layers: &[Layer]) -> bool {
    layers.iter().any(|l| match l {
        Layer::BatchNorm | Layer::Separable { .. } => true,
        Layer::Residual { body } => has_batch_norm(body),
        _ => false,
    })
}

#[test]
fn folding_batch_norm_keeps_the_outputs_and_drops_its_flops() {
    tch::set_num_threads(1);
    let models = [
        "[model]\nnetwork = \"mobile\"",
        "[model]\nnetwork = \"vgg\"",
        "[model]\nnetwork = \"resnet\"",
        // Separable convolutions, strided downsampling (a projection shortcut with its own
        // batch norm) and SE attention, all at once.
        "[model.convnet]\nwidths = [8, 16]\nblocks = 2\nstem_stride = 2\nseparable = true\nresidual = true\nattention = \"se\"\nreduction = 4\ndownsample = \"stride\"",
        // Explicit layers: a separable block, and a batch norm with no convolution before it.
        "[model]\nlayers = [{ type = \"conv\", out = 8, stride = 2 }, { type = \"batch_norm\" }, { type = \"relu\" }, { type = \"separable\", out = 16, stride = 2 }, { type = \"max_pool\" }, { type = \"batch_norm\" }, { type = \"flatten\" }, { type = \"linear\", out = 7 }]",
    ];
    let x = Tensor::randn([5, 1, 48, 48], (Kind::Float, tch::Device::Cpu));
    for toml in models {
        let model = with_random_batch_norms(toml);
        let folded = fold(&model).unwrap();
        let layers = folded.config.layers().unwrap();
        let before = tch::no_grad(|| tch::nn::ModuleT::forward_t(&model.net, &x, false));
        let after = tch::no_grad(|| tch::nn::ModuleT::forward_t(&folded.net, &x, false));
        let diff = (&before - &after).abs().max().double_value(&[]);
        let scale = before.abs().max().double_value(&[]);
        assert!(diff <= 1e-4 * scale.max(1.0), "{toml}: folded outputs differ by {diff} (scale {scale})");
        // As a teacher runs it: folded, in bfloat16. Its soft targets (temperature 4) barely move.
        let mut teacher = fold(&model).unwrap();
        teacher.net.bf16_inference = true;
        let taught = tch::no_grad(|| tch::nn::ModuleT::forward_t(&teacher.net, &x, false));
        let soft = |logits: &Tensor| (logits / 4.0).softmax(-1, Kind::Float);
        let moved = (soft(&after) - soft(&taught)).abs().max().double_value(&[]);
        assert!(moved > 1e-5 && moved < 1e-2, "{toml}: bfloat16 soft targets moved by {moved} (0 means it ran in f32)");
        let flops = |c: &Config| fer::nn::flops::count_config(c).unwrap().fvcore_total;
        assert!(flops(&folded.config) < flops(&model.config), "{toml}: folding removes the batch-norm FLOPs");
        if !toml.contains("flatten") {
            assert!(!has_batch_norm(&layers), "{toml}: every batch norm follows a conv, so none is left");
        }
    }
}

#[test]
fn a_student_learns_from_the_teacher_alone() {
    tch::set_num_threads(1);
    let data = synthetic([280, 70, 70], 21);
    let runs = tempfile::tempdir().unwrap();
    train(&tiny_config("teacher", 4), &data, &opts(runs.path())).unwrap();
    let teacher = runs.path().join("teacher");

    // The student sees every Training face labelled Angry; with the distillation weight at 1
    // the labels play no part, so all it can learn of the classes comes from the teacher.
    let mut mislabelled = data.clone();
    for (label, split) in mislabelled.labels.iter_mut().zip(&mislabelled.splits) {
        if *split == Split::Training {
            *label = 0;
        }
    }
    let mut student = tiny_config("student", 4);
    student.seed = 8;
    student.train.teacher = Some(Teacher::One(teacher.display().to_string()));
    student.train.distill_weight = 1.0;
    let summary = train(&student, &mislabelled, &opts(runs.path())).unwrap();
    assert!(summary.val_acc > 0.5, "the student learned the classes from the teacher: {}", summary.val_acc);

    // An ensemble teaches too: the teacher and a second, worse one (one epoch, another seed).
    let mut second = tiny_config("second", 1);
    second.seed = 9;
    train(&second, &data, &opts(runs.path())).unwrap();
    let members = vec![teacher.display().to_string(), runs.path().join("second").display().to_string()];
    let mut taught_by_two = student.clone();
    taught_by_two.name = "taught-by-two".into();
    taught_by_two.train.teacher = Teacher::new(members.clone());
    let summary = train(&taught_by_two, &mislabelled, &opts(runs.path())).unwrap();
    assert!(summary.val_acc > 0.5, "the student learned the classes from the ensemble: {}", summary.val_acc);

    // A teacher that also sees the mirror image teaches the mean of the two views: the same
    // target for a face and its mirror, which one view alone does not give.
    let one = Trained::load(&teacher, tch::Device::Cpu).unwrap();
    let x = fer::nn::score::input_batches(&data.split(Split::PublicTest), 16, tch::Device::Cpu, 0.0).next().unwrap();
    let teachers = [one];
    let flipped = fer::train::teach(&teachers, &x, true);
    let by_hand = fer::nn::score::combine(&tch::no_grad(|| [x.shallow_clone(), x.flip([3])].map(|v| tch::nn::ModuleT::forward_t(&teachers[0].net, &v, false))));
    assert!(flipped.allclose(&by_hand, 1e-5, 1e-5, false), "the mean of the face's and the mirror's scores");
    assert!(flipped.allclose(&fer::train::teach(&teachers, &x.flip([3]), true), 1e-5, 1e-5, false), "a face and its mirror are taught alike");
    assert!(!fer::train::teach(&teachers, &x, false).allclose(&flipped, 1e-4, 1e-4, false), "one view alone teaches otherwise");
    let mut flip_taught = student.clone();
    flip_taught.name = "flip-taught".into();
    flip_taught.train.teacher_flip = true;
    let summary = train(&flip_taught, &mislabelled, &opts(runs.path())).unwrap();
    assert!(summary.val_acc > 0.5, "the student learned the classes from the mirrored teacher: {}", summary.val_acc);

    // A teacher that is not there, alone or in an ensemble, is a clear error naming it, not a
    // silent undistilled run.
    let missing = runs.path().join("missing").display().to_string();
    for teacher in [Teacher::One(missing.clone()), Teacher::Ensemble(vec![members[0].clone(), missing.clone()])] {
        let mut orphan = tiny_config("orphan", 1);
        orphan.train.teacher = Some(teacher);
        let err = train(&orphan, &data, &opts(runs.path())).unwrap_err().to_string();
        assert!(err.contains("teacher") && err.contains(&missing), "{err}");
    }
}

#[test]
fn export_writes_a_folded_model_folder_that_loads_and_agrees() {
    tch::set_num_threads(1);
    let data = synthetic([140, 70, 70], 22);
    let runs = tempfile::tempdir().unwrap();
    train(&tiny_config("shipme", 2), &data, &opts(runs.path())).unwrap();
    let out = runs.path().join("models/shipme");
    let card = export(&runs.path().join("shipme"), &out, Some(&data)).unwrap();
    for f in ["model.safetensors", "config.toml", "train.toml", "card.md", "card.json"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    assert!(card.fvcore_flops < card.fvcore_flops_unfolded);
    assert!(card.reproduce.contains("fer train --config"));
    let saved: Card = serde_json::from_slice(&std::fs::read(out.join("card.json")).unwrap()).unwrap();
    assert_eq!(saved.test_acc, card.test_acc);

    let run = Trained::load(&runs.path().join("shipme"), tch::Device::Cpu).unwrap();
    let shipped = Trained::load(&out, tch::Device::Cpu).unwrap();
    let faces = data.split(Split::PrivateTest);
    let diff = (run.logits(&faces) - shipped.logits(&faces)).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "the shipped model computes what the run does: {diff}");
    assert_eq!(100.0 * shipped.evaluate(&faces).accuracy, 100.0 * card.test_acc);
}

/// Every folder of `models/` with a model card (the face detector has none).
fn shipped_model_folders() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut dirs: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).filter(|d| d.join("card.json").is_file()).collect();
    dirs.sort();
    dirs
}

#[test]
fn shipped_models_reproduce_their_cards() {
    let Some(data_path) = real_data() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let data = fer::data::load(&data_path).unwrap();
    let test = data.split(Split::PrivateTest);
    let mut checked = Vec::new();
    for dir in shipped_model_folders() {
        let card: Card = serde_json::from_slice(&std::fs::read(dir.join("card.json")).unwrap()).unwrap();
        let name = card.name.clone();
        let model = Trained::load(&dir, tch::Device::Cpu).unwrap();
        let scored = model.evaluate(&test);
        let acc = scored.accuracy;
        // The card's figure is the run's own PrivateTest score, before folding: allow the one
        // face a float rounding may flip.
        assert!(
            (acc - card.test_acc).abs() * test.len() as f64 <= 1.0,
            "{name}: PrivateTest {:.2}%, card {:.2}%",
            100.0 * acc,
            100.0 * card.test_acc
        );
        // And its leak-aware score, over the PrivateTest faces with no twin in Training.
        let unseen = scored.unseen.unwrap_or_else(|| panic!("{name}: no leak-aware score from the real data"));
        assert_eq!(Some(unseen.faces), card.test_unseen_faces, "{name}: faces without a twin in Training");
        let card_unseen = card.test_acc_unseen.unwrap_or_else(|| panic!("{name}: the card has no leak-aware score"));
        assert!(
            (unseen.accuracy - card_unseen).abs() * unseen.faces as f64 <= 1.0,
            "{name}: leak-aware PrivateTest {:.2}%, card {:.2}%",
            100.0 * unseen.accuracy,
            100.0 * card_unseen
        );
        let flops = fer::nn::flops::count_config(&model.config).unwrap().fvcore_total;
        assert_eq!(flops, card.fvcore_flops, "{name}: the card's FLOPs are the folded model's");
        // Its flip test-time augmentation, scored at export from the folded model itself.
        let flip = card.flip_tta.as_ref().unwrap_or_else(|| panic!("{name}: no flip TTA on the card: re-export it with the data"));
        let flipped = model.evaluate_with(&test, fer::config::Tta::Flip).accuracy;
        assert!((flipped - flip.test_acc).abs() * test.len() as f64 <= 1.0, "{name}: flip TTA {flipped}, card {}", flip.test_acc);
        assert_eq!(flip.fvcore_flops, 2 * flops, "{name}: two forward passes");
        checked.push(name);
    }
    assert!(checked.contains(&"tiny".to_string()) && checked.contains(&"accurate".to_string()), "checked {checked:?}");
    assert_eq!(fer::models::default_folder().unwrap(), root.join("tiny"), "the tiny model is the default");
}

/// Faces to check ONNX files on: 200 real PublicTest faces where the data is present.
fn check_faces() -> fer::data::Faces {
    match real_data() {
        Some(path) => {
            let mut faces = fer::data::load(&path).unwrap().split(Split::PublicTest);
            faces.pixels.truncate(200 * 48 * 48);
            faces.labels.truncate(200);
            faces.twin_in_training.clear();
            faces
        }
        None => synthetic([0, 200, 0], 31).split(Split::PublicTest),
    }
}

/// tract's logits and probabilities for `faces`, run `batch` faces at a time through one loaded
/// model.
fn tract_outputs(onnx: &[u8], faces: &fer::data::Faces, batch: usize) -> (Vec<f32>, Vec<f32>) {
    let model = fer_core::Classifier::from_onnx(onnx).unwrap();
    let (mut logits, mut probs) = (Vec::new(), Vec::new());
    for chunk in faces.pixels.chunks(batch * 48 * 48) {
        let (l, p) = model.run(chunk).unwrap();
        logits.extend(l);
        probs.extend(p);
    }
    (logits, probs)
}

/// How far tract's run of a model's ONNX file is from libtorch's run of the model.
struct Disagreement {
    /// Largest probability difference.
    probabilities: f64,
    /// Largest logit difference, over the largest logit's size (at least 1).
    logits_relative: f64,
    /// Faces whose labels differ.
    labels: usize,
    /// Faces tract labels right.
    right: usize,
}

fn onnx_disagreement(model: &Trained, onnx: &[u8], faces: &fer::data::Faces, batch: usize) -> Disagreement {
    let torch_logits = model.logits(faces);
    let torch = Vec::<f32>::try_from(torch_logits.softmax(-1, Kind::Float).view(-1)).unwrap();
    let torch_logits = Vec::<f32>::try_from(torch_logits.view(-1)).unwrap();
    let (logits, tract) = tract_outputs(onnx, faces, batch);
    assert_eq!(torch.len(), tract.len(), "tract gives 7 probabilities per face");
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    let scale = torch_logits.iter().map(|x| x.abs() as f64).fold(1.0, f64::max);
    let argmax = |row: &[f32]| (0..7).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
    Disagreement {
        probabilities: max_diff(&torch, &tract),
        logits_relative: max_diff(&torch_logits, &logits) / scale,
        labels: torch.chunks(7).zip(tract.chunks(7)).filter(|(a, b)| argmax(a) != argmax(b)).count(),
        right: tract.chunks(7).zip(&faces.labels).filter(|(p, &y)| argmax(p) == y as usize).count(),
    }
}

#[test]
fn onnx_export_runs_in_tract_as_in_libtorch_for_every_layer_kind() {
    tch::set_num_threads(1);
    let faces = check_faces();
    let models = [
        // Convolutions with groups, stride and explicit padding, batch norm with no convolution
        // before it, every activation, max and average pooling, flatten, dropout, linear with and
        // without bias.
        "[model]\nlayers = [{ type = \"conv\", out = 8, kernel = 5, stride = 2, padding = 1 }, { type = \"batch_norm\" }, { type = \"leaky_relu\", slope = 0.1 }, { type = \"conv\", out = 16, groups = 4 }, { type = \"silu\" }, { type = \"max_pool\", kernel = 3, stride = 2 }, { type = \"batch_norm\" }, { type = \"gelu\" }, { type = \"avg_pool\" }, { type = \"flatten\" }, { type = \"dropout\", p = 0.5 }, { type = \"linear\", out = 16, bias = false }, { type = \"relu\" }, { type = \"linear\", out = 7 }]",
        // Input pooling, separable blocks, residual blocks with projections, SE; a centre crop.
        "[model.convnet]\nwidths = [8, 16]\nblocks = 2\ninput_pool = 2\nseparable = true\nresidual = true\nattention = \"se\"\nreduction = 4\ndownsample = \"stride\"\n[train]\ninput_size = 44",
        // CBAM, residual shortcuts without batch norm, the evaluation blur.
        "[model.convnet]\nwidths = [8, 16]\nstem_stride = 2\nbatch_norm = false\nresidual = true\nattention = \"cbam\"\nreduction = 4\nactivation = \"leaky_relu\"\n[train]\neval_blur = 1.0",
        "[model]\nnetwork = \"baseline\"",
    ];
    for toml in models {
        let model = with_random_batch_norms(toml);
        let folded = fold(&model).unwrap();
        for (what, m) in [("as trained", &model), ("folded", &folded)] {
            let onnx = fer::nn::onnx::to_onnx(m, &[("note".into(), "kept".into())]).unwrap();
            // 37 faces a run, then the 15 left: one loaded model, two batch sizes.
            let d = onnx_disagreement(m, &onnx, &faces, 37);
            // Random weights give near-uniform probabilities, so the logits are checked too.
            assert!(
                d.probabilities < 1e-5 && d.logits_relative < 1e-5 && d.labels == 0,
                "{toml} ({what}): probabilities differ by {:.2e}, logits by {:.2e} of their size, labels on {} faces",
                d.probabilities,
                d.logits_relative,
                d.labels
            );
        }
    }

    // The conventions a user of the file relies on, read back from the protobuf.
    use prost::Message;
    let onnx = fer::nn::onnx::to_onnx(&with_random_batch_norms(models[1]), &[("note".into(), "kept".into())]).unwrap();
    let proto = tract_onnx::pb::ModelProto::decode(&onnx[..]).unwrap();
    let graph = proto.graph.unwrap();
    let names = |v: &[tract_onnx::pb::ValueInfoProto]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&graph.input), ["pixels"]);
    assert_eq!(names(&graph.output), ["logits", "probabilities"]);
    let meta: std::collections::HashMap<_, _> = proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert_eq!(meta["classes"], fer::data::CLASSES.join(","));
    assert_eq!(meta["note"], "kept");
}

#[test]
fn shipped_models_run_the_same_through_onnx() {
    tch::set_num_threads(2);
    let data = real_data().map(|path| fer::data::load(&path).unwrap());
    let faces = match &data {
        Some(d) => d.split(Split::PublicTest),
        None => check_faces(),
    };
    let mut checked = Vec::new();
    for dir in shipped_model_folders() {
        let card: Card = serde_json::from_slice(&std::fs::read(dir.join("card.json")).unwrap()).unwrap();
        let onnx = std::fs::read(dir.join("model.onnx"))
            .unwrap_or_else(|e| panic!("{}: no model.onnx ({e}); `fer export {} --onnx` writes it", card.name, dir.display()));
        let model = Trained::load(&dir, tch::Device::Cpu).unwrap();
        let d = onnx_disagreement(&model, &onnx, &faces, 512);
        assert!(d.probabilities < 1e-5 && d.labels == 0, "{}: probabilities differ by {:.2e}, labels on {} faces", card.name, d.probabilities, d.labels);
        let check = card.onnx.as_ref().unwrap_or_else(|| panic!("{}: the card records the ONNX check", card.name));
        assert_eq!(check.agreement.same_label, check.agreement.faces);
        if data.is_some() {
            let acc = d.right as f64 / faces.len() as f64;
            let card_acc = card.folded_val_acc.expect("exported with the data");
            assert_eq!((acc * faces.len() as f64).round(), (card_acc * faces.len() as f64).round(), "{}: PublicTest through tract {acc}, card {card_acc}", card.name);
        }
        checked.push(card.name);
    }
    checked.sort();
    assert!(checked.contains(&"tiny".to_string()) && checked.contains(&"accurate".to_string()), "checked {checked:?}");
}

/// Every shipped model.onnx in onnxruntime, the reference ONNX runtime, beside libtorch: fer's
/// files are checked by a runtime other than its own (scripts/onnxruntime_check.py).
#[test]
fn shipped_models_run_the_same_in_onnxruntime() {
    tch::set_num_threads(2);
    let faces = check_faces();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("faces.u8");
    std::fs::write(&raw, &faces.pixels).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let folders = shipped_model_folders();
    let onnx: Vec<_> = folders.iter().map(|d| d.join("model.onnx")).collect();
    let out = std::process::Command::new("python3").arg(root.join("scripts/onnxruntime_check.py")).arg(&raw).args(&onnx).output();
    // Only an install that could not happen is a skip (scripts/script_env.py's INSTALL_FAILED);
    // onnxruntime refusing a file, or the script failing, is a failure.
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) if o.status.code() == Some(77) => return common::skip(&format!("onnxruntime could not be installed (no network?): {}", String::from_utf8_lossy(&o.stderr).trim())),
        Ok(o) => panic!("scripts/onnxruntime_check.py failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr)),
        Err(e) => return common::skip(&format!("python3 is not installed: {e}")),
    };
    assert!(folders.iter().any(|d| d.ends_with("tiny")) && folders.iter().any(|d| d.ends_with("accurate")), "checked {folders:?}");
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (dir, path) in folders.iter().zip(&onnx) {
        let answer = &answers[path.to_str().unwrap()];
        assert_eq!(answer["outputs"], serde_json::json!(["logits", "probabilities"]), "{}", path.display());
        let theirs: Vec<f64> = answer["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let model = Trained::load(dir, tch::Device::Cpu).unwrap();
        let ours: Vec<f32> = Vec::try_from(model.logits(&faces).softmax(-1, tch::Kind::Float).flatten(0, -1)).unwrap();
        assert_eq!(theirs.len(), ours.len(), "{}: {} faces x 7", path.display(), faces.len());
        let diff = ours.iter().zip(&theirs).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-4, "{}: onnxruntime's probabilities differ from libtorch's by {diff:.2e}", path.display());
        let label = |p: &[f64]| (0..7).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        let ours: Vec<f64> = ours.iter().map(|&v| v as f64).collect();
        let same = ours.chunks(7).zip(theirs.chunks(7)).filter(|(a, b)| label(a) == label(b)).count();
        assert_eq!(same, faces.len(), "{}: the same label on every face", path.display());
    }
}

#[test]
fn a_teacher_cache_teaches_what_the_teachers_would_and_builds_once() {
    use fer::config::AugmentConfig;
    use fer::train::augment::{make_batch, render_view};
    use fer::train::teacher_cache::TeacherCache;
    tch::set_num_threads(1);
    let data = synthetic([40, 14, 14], 5);
    let faces = data.split(Split::Training);
    let runs = tempfile::tempdir().unwrap();
    let augment = AugmentConfig { crop_padding: 2, hflip: true, ..Default::default() };

    // The views a batch records draw its images again, so a view is all the cache needs.
    let order: Vec<i64> = (0..faces.len() as i64).rev().collect();
    let batch = make_batch(&faces, &order, 48, &augment, 11, true);
    assert_eq!(batch.indices, order);
    let mut drawn = vec![0f32; fer::data::PIXELS];
    for (k, (&i, &view)) in batch.indices.iter().zip(&batch.views).enumerate() {
        render_view(faces.image(i as usize), &mut drawn, view);
        assert_eq!(&batch.images[k * drawn.len()..(k + 1) * drawn.len()], &drawn[..], "face {i} as {view:?}");
    }
    assert!(batch.views.iter().any(|v| v.mirrored) && batch.views.iter().any(|v| v.dx != 0 || v.dy != 0), "crops and flips were drawn");

    // Two teachers, as training runs them: folded, in bfloat16.
    let teachers: Vec<Trained> = [1u64, 2]
        .iter()
        .map(|&seed| {
            let mut config = tiny_config("teacher", 1);
            config.seed = seed;
            tch::manual_seed(seed as i64);
            let mut t = fold(&Trained::new(&config, tch::Device::Cpu).unwrap()).unwrap();
            t.net.bf16_inference = true;
            t
        })
        .collect();
    let cache = TeacherCache::open_or_build(&teachers, &faces, &augment, false, runs.path(), tch::Device::Cpu, true).unwrap();
    let x = Tensor::from_slice(&batch.images).reshape([faces.len() as i64, 1, 48, 48]);
    for flip in [false, true] {
        let looked_up = cache.teach(&batch.indices, &batch.views, flip);
        let computed = fer::train::teach(&teachers, &x, flip);
        let soft = |s: &Tensor| (s / 4.0).softmax(-1, Kind::Float);
        let gap = (soft(&looked_up) - soft(&computed)).abs().max().double_value(&[]);
        assert!(gap < 1e-3, "flip {flip}: the cache teaches what the teachers do, up to bfloat16 rounding ({gap})");
    }
    assert!(!cache.teach(&batch.indices, &batch.views, false).allclose(&cache.teach(&batch.indices, &batch.views, true), 1e-3, 1e-3, false));

    // Built once: a chunk's file is read again, not rescored; another teacher is another cache.
    let dir = std::fs::read_dir(runs.path().join("teacher-cache")).unwrap().next().unwrap().unwrap().path();
    let chunk = dir.join("chunk-0000.safetensors");
    let written = std::fs::metadata(&chunk).unwrap().modified().unwrap();
    let built = std::fs::read_to_string(dir.join("build.jsonl")).unwrap();
    assert!(built.contains("\"views\":50"), "25 crops, each also mirrored: {built}");
    let again = TeacherCache::open_or_build(&teachers, &faces, &augment, false, runs.path(), tch::Device::Cpu, true).unwrap();
    assert_eq!(std::fs::metadata(&chunk).unwrap().modified().unwrap(), written);
    assert_eq!(std::fs::read_to_string(dir.join("build.jsonl")).unwrap(), built);
    // What the scoring took is the build's record, read again by every later student; a chunk
    // scored twice counts once, at its last scoring.
    let line: serde_json::Value = serde_json::from_str(built.trim()).unwrap();
    assert!(cache.build_seconds > 0.0 && cache.build_seconds == line["seconds"].as_f64().unwrap() && again.build_seconds == cache.build_seconds);
    fer::record::append_json_line(&dir.join("build.jsonl"), &serde_json::json!({"chunk": 0, "faces": 40, "views": 50, "seconds": 1000.0})).unwrap();
    let rescored = TeacherCache::open_or_build(&teachers, &faces, &augment, false, runs.path(), tch::Device::Cpu, true).unwrap();
    assert_eq!(rescored.build_seconds, 1000.0);
    TeacherCache::open_or_build(&teachers[..1], &faces, &augment, false, runs.path(), tch::Device::Cpu, true).unwrap();
    assert_eq!(std::fs::read_dir(runs.path().join("teacher-cache")).unwrap().count(), 2);
    // A file cut short is an error that says how to recover, not scores read wrong.
    std::fs::write(&chunk, b"cut").unwrap();
    let err = TeacherCache::open_or_build(&teachers, &faces, &augment, false, runs.path(), tch::Device::Cpu, true).err().unwrap().to_string();
    assert!(err.contains("delete it"), "{err}");

    // In training: a student taught from the cache learns the classes from it alone, and the
    // recipe refuses views the cache cannot hold.
    let data = synthetic([280, 70, 70], 21);
    let teacher_run = runs.path().join("teacher-run");
    let taught_by_none = train(&tiny_config("teacher-run", 4), &data, &opts(runs.path())).unwrap();
    assert_eq!(taught_by_none.teacher_cache_seconds, None);
    let mut mislabelled = data.clone();
    for (label, split) in mislabelled.labels.iter_mut().zip(&mislabelled.splits) {
        if *split == Split::Training {
            *label = 0;
        }
    }
    let mut student = tiny_config("cached-student", 6);
    student.train.teacher = Some(Teacher::One(teacher_run.display().to_string()));
    student.train.distill_weight = 1.0;
    student.train.teacher_cache = true;
    student.train.teacher_flip = true;
    student.augment = AugmentConfig { crop_padding: 1, ..Default::default() };
    let summary = train(&student, &mislabelled, &opts(runs.path())).unwrap();
    assert!(summary.val_acc > 0.5, "the student learned the classes from the cached teacher: {}", summary.val_acc);
    // Its record keeps the scoring's time apart from its own epochs'.
    assert!(summary.teacher_cache_seconds.is_some_and(|s| s > 0.0), "{:?}", summary.teacher_cache_seconds);
    let mixed = student.to_toml().replace("mixup_alpha = 0.0", "mixup_alpha = 0.2");
    let err = Config::parse(&mixed).unwrap_err().to_string();
    assert!(err.contains("teacher_cache") && err.contains("mixup_alpha"), "{err}");
}
