// mimalloc replaces malloc for the whole process, libtorch included: glibc maps and unmaps
// every buffer over 32 MB, and the page faults that follow cost more than the compute.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use fer::config::Config;
use fer::data::Split;
use fer::nn::model::Trained;
use fer::train::{train, TrainOptions};

#[derive(Parser)]
#[command(name = "fer", version, about = "Facial-expression recognition on FER-2013: data, training, evaluation, FLOPs")]
struct Cli {
    /// FER-2013: the image-folder release, or Kaggle's fer2013.csv (or a folder holding it).
    #[arg(long, global = true, env = "FER_DATA", default_value = "../shared/data/fer2013")]
    data: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<i32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config file; writes runs/<name>/.
    Train {
        /// The experiment's config (TOML).
        #[arg(long, default_value = "configs/baseline.toml")]
        config: PathBuf,
        /// Continue an interrupted run from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Delete an earlier run of the same name and start over.
        #[arg(long, conflicts_with = "resume")]
        fresh: bool,
        /// Where run folders go.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Override the config's epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Train on this device: cpu, or cuda / cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// When done, copy the run's record (config, metrics, summary, plots; no weights) here.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Distil from this trained run or model folder (sets the config's train.teacher);
        /// give it more than once to distil from the ensemble of them.
        #[arg(long)]
        teacher: Vec<PathBuf>,
        /// Train with this seed instead of the config's; the run is named <name>-seed<N>.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Write REPORT.md and a self-contained report.html from run records.
    Report {
        /// The baseline's run (or record) folder.
        #[arg(long, default_value = "results/baseline")]
        baseline: PathBuf,
        /// Other run folders to include.
        #[arg(long)]
        run: Vec<PathBuf>,
        /// An ablation's output folder (table and row records); repeat for cumulative and one-off.
        #[arg(long)]
        ablation: Vec<PathBuf>,
        /// Records of one recipe trained again with other seeds (`fer train --seed N`): the noise.
        #[arg(long)]
        seed_run: Vec<PathBuf>,
        /// `fer data stats` JSON.
        #[arg(long)]
        data_stats: Option<PathBuf>,
        /// Extra figures to include (e.g. runs/data/samples.png; keep those out of git).
        #[arg(long)]
        figure: Vec<PathBuf>,
        #[arg(long, default_value = "results/report")]
        out: PathBuf,
        /// Shipped model folders (from `fer export`) to report with their cards.
        #[arg(long)]
        model: Vec<PathBuf>,
        /// Also write the Markdown here (e.g. REPORT.md), its links rebased.
        #[arg(long)]
        copy_to: Option<PathBuf>,
        /// A MiniJinja template over the records (docs/report/report.md.j2 is the project's);
        /// without it, the default report of the records given above.
        #[arg(long)]
        template: Option<PathBuf>,
        /// Also print report.pdf beside REPORT.md (needs headless Chromium).
        #[arg(long)]
        pdf: bool,
        /// Render another template over the same records into a file: TEMPLATE=OUTPUT
        /// (e.g. docs/report/README.md.j2=README.md); repeatable.
        #[arg(long, value_parser = parse_document)]
        render: Vec<(PathBuf, PathBuf)>,
    },
    /// Run an ablation: one training run per combination of methods, and its table.
    Ablate {
        /// The ablation file (TOML: name, base, mode, [[methods]]).
        file: PathBuf,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Where the table and each row's record go (default results/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A JSON API and a web page (photo upload and webcam) on the face pipeline.
    Serve {
        /// A shipped model (tiny, nano, small, accurate), an ONNX file, a model folder or a
        /// finished run (default: tiny).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Largest request body in megabytes.
        #[arg(long, default_value_t = 10.0)]
        max_body_mb: f64,
        /// Requests that may wait for a worker; more are answered 503.
        #[arg(long, default_value_t = 16)]
        queue: usize,
        /// Inference threads (they share one pipeline).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Smallest face the detector searches for, in pixels.
        #[arg(long, default_value_t = 40.0)]
        min_face: f64,
        /// Seconds a connection has to send its request headers.
        #[arg(long, default_value_t = 10.0)]
        header_timeout: f64,
        /// Seconds an admitted request has to send its body.
        #[arg(long, default_value_t = 30.0)]
        body_timeout: f64,
        /// Seconds within which every request is answered (503 past it).
        #[arg(long, default_value_t = 60.0)]
        request_timeout: f64,
        /// Connections open at once (lowered to fit the open-file limit).
        #[arg(long, default_value_t = 512)]
        max_connections: usize,
        /// The key clients must send (`Authorization: Bearer KEY` or `X-Api-Key: KEY`); needed
        /// when the server listens beyond loopback, unless --open.
        #[arg(long, env = "FER_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Listen beyond loopback without an API key.
        #[arg(long)]
        open: bool,
    },
    /// Face detection: calibrate the FER-2013 framing.
    Detect {
        #[command(subcommand)]
        command: DetectCommand,
    },
    /// Inspect the data set: statistics, figures, CSV export.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Accuracy, per-class precision / recall / F1 and the confusion matrix on a split.
    Eval {
        /// A run or model folder (default: the shipped tiny model, else runs/baseline); given
        /// more than once, the models are scored as an ensemble (their probabilities averaged).
        #[arg(long)]
        model: Vec<PathBuf>,
        /// Training, PublicTest (val) or PrivateTest (test). PublicTest by default: it is the
        /// split choices are made on; PrivateTest is for a finished model, once, by name.
        #[arg(long, default_value = "PublicTest")]
        split: String,
        /// Test-time augmentation: the mean of the face and its mirror image (flip, 2 forward
        /// passes), of ten crops (ten-crop, 10 passes; models trained on crops under 48x48), or of
        /// the face and its mirror, each also moved 2 pixels both ways (flip-shift, 6 passes).
        #[arg(long, value_enum, default_value = "none")]
        tta: fer::config::Tta,
        /// Score against FER+'s majority labels (ten annotators a face; Microsoft's
        /// fer2013new.csv, needs the whole release) instead of FER-2013's, over the faces whose
        /// majority is one of the seven expressions.
        #[arg(long, value_name = "FER2013NEW_CSV", num_args = 0..=1, default_missing_value = fer::data::FERPLUS_DEFAULT)]
        ferplus: Option<PathBuf>,
        /// Also write the confusion matrix here (PNG).
        #[arg(long)]
        png: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Ship a finished run as a model folder: batch norm folded, weights, config, model card;
    /// with --onnx also `model.onnx`, checked against libtorch in tract.
    Export {
        /// The finished run's folder (runs/<name>); or, with --onnx, a model folder already
        /// exported (models/<name>), which gains its `model.onnx`.
        run: PathBuf,
        /// The model folder to write (default models/<run name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write `model.onnx` (opset 17, input `pixels` [N, 1, 48, 48] in 0..255, outputs
        /// `logits` and `probabilities`), checked against libtorch on PublicTest.
        #[arg(long)]
        onnx: bool,
    },
    /// Find and label every face in photos, folders, videos or standard input (`-`); or draw a
    /// grid of random test faces with their predictions.
    Predict {
        /// Images (any common format), videos (through ffmpeg), folders (searched recursively),
        /// or `-` for an image on standard input.
        inputs: Vec<PathBuf>,
        /// Instead of inputs: this many random test faces, drawn into a PNG grid.
        #[arg(long, conflicts_with = "inputs")]
        random: Option<usize>,
        /// The split --random draws from: PublicTest, or PrivateTest by name (scored once per
        /// finished model: looking at it is for the end).
        #[arg(long, default_value = "PublicTest", requires = "random")]
        split: String,
        /// A shipped model (tiny, nano, small, accurate), an ONNX file, a model folder or a
        /// finished run (default: tiny).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Each image is one face, already cropped: no detection (automatic for 48x48 grayscale).
        #[arg(long)]
        no_detect: bool,
        /// Smallest face the detector searches for, in pixels.
        #[arg(long, default_value_t = 40.0)]
        min_face: f64,
        /// Output: an aligned table, JSON lines or CSV (one line per face).
        #[arg(long, value_enum, default_value = "table")]
        format: fer::predict::Format,
        /// Same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Same as --format csv.
        #[arg(long, conflicts_with_all = ["format", "json"])]
        csv: bool,
        /// Write the JSON lines or CSV rows to this file instead of standard output (every
        /// input gets at least one line: one without a face has `"face": null`).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Continue a run that stopped: skip the inputs --output already has (the last one is
        /// done again, in case it was cut off).
        #[arg(long, requires = "output")]
        resume: bool,
        /// Only part I of N of the inputs (input k when k % N == I), to split a collection
        /// over machines: `I/N`, or `N` with I from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
        #[arg(long)]
        shard: Option<String>,
        /// Read more inputs from this file, one path per line (`-`: standard input), as the
        /// work goes: for collections of any size.
        #[arg(long)]
        files_from: Option<PathBuf>,
        /// Write annotated copies here (images as PNG, videos as MP4, plus a summary plot per video).
        #[arg(long)]
        annotate: Option<PathBuf>,
        /// Photos: write each face here as the 48x48 frame the classifier saw, `<name>-<i>.png`
        /// (to look at, or to score another classifier on the very same faces).
        #[arg(long)]
        faces: Option<PathBuf>,
        /// Videos: look at every Nth frame.
        #[arg(long, default_value_t = 10, conflicts_with = "every_seconds")]
        every: u32,
        /// Videos: look at one frame every this many seconds instead.
        #[arg(long)]
        every_seconds: Option<f64>,
        /// Videos: the half-life, in seconds, of the moving average that smooths each track's
        /// probabilities (its new label follows a real change within this).
        #[arg(long, default_value_t = fer::face::track::DEFAULT_HALF_LIFE)]
        smooth_seconds: f64,
        /// Where the grid of --random goes.
        #[arg(long, default_value = "runs/predictions.png")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// The main job, about 11 minutes: data analysed, the notebook's baseline (its committed
    /// record), the speedrun model trained to 10 minutes, PrivateTest once each, FLOPs and
    /// efficiency, predictions, the report. Killed, a rerun continues.
    Pipeline {
        /// The notebook's baseline recipe (trained only with --retrain-baseline).
        #[arg(long, default_value = "configs/baseline.toml")]
        baseline: PathBuf,
        /// The baseline's committed record, reused by default.
        #[arg(long, default_value = "results/baseline")]
        baseline_record: PathBuf,
        /// Train the baseline again instead (about an hour on 2 cores).
        #[arg(long)]
        retrain_baseline: bool,
        /// The model trained to a time budget.
        #[arg(long, default_value = "configs/speedrun.toml")]
        speedrun: PathBuf,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
    },
    /// Time training steps or inference like ../shared/bench/torch_reference.py (JSON line).
    Bench {
        /// step, infer, epoch (the real images), data (decode, CSV, cache timings), matmul (peak), flops,
        /// faces (detection and classification of a one-megapixel photo), serve (a load run of
        /// `fer serve` on loopback: --steps requests at 1, 4 and 16 clients), serve-mixed (--steps
        /// seconds of valid photos, garbage, oversized bodies and stalled uploads at once)
        mode: String,
        #[arg(long, default_value = "mobile")]
        model: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// `epoch`: batches timed after warm-up.
        #[arg(long, default_value_t = 40)]
        batches: usize,
        /// Arithmetic: f32, or bf16 (step, epoch: mixed-precision training; infer: the forward pass).
        #[arg(long, value_enum, default_value = "f32")]
        precision: fer::config::Precision,
    },
    /// FLOPs per layer as fvcore counts them, parameters, and the efficiency of a run.
    Flops {
        /// A named network (baseline, mobile, vgg), a config file, or a run / model folder.
        #[arg(default_value = "baseline")]
        model: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DetectCommand {
    /// Write MTCNN's three networks as the ONNX files the inference core compiles in
    /// (`pnet.onnx`, `rnet.onnx`, `onet.onnx`), from facenet-pytorch's converted weights.
    Export {
        #[arg(long, default_value = "models/detector/mtcnn.safetensors")]
        weights: PathBuf,
        #[arg(long, default_value = "models/detector")]
        out: PathBuf,
    },
    /// Measure where FER-2013's 48x48 frame lies around the detector's box (medians over many
    /// faces) and write it where `fer predict` reads it (compiled in: rebuild after).
    Calibrate {
        #[arg(long, default_value_t = 2000)]
        faces: usize,
        #[arg(long, default_value = "Training")]
        split: String,
        #[arg(long, default_value = "models/detector/framing.json")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Counts per class and split, imbalance, duplicates, blank faces, sample and mean faces.
    Stats {
        /// Folder for stats.json, stats.md, samples.png and mean_faces.png.
        #[arg(long, default_value = "runs/data")]
        out: PathBuf,
        /// Print the statistics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A PNG grid of Training faces as a config's augmentation shows them to the network.
    AugmentPreview {
        #[arg(long, default_value = "configs/baseline.toml")]
        config: PathBuf,
        #[arg(long, default_value = "runs/augment-preview.png")]
        out: PathBuf,
        #[arg(long, default_value_t = 6)]
        rows: usize,
        #[arg(long, default_value_t = 7)]
        per_face: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// How often FER-2013's labels are FER+'s majority labels (ten annotators a face), per split.
    Ferplus {
        /// Microsoft's FER+ relabelling, fer2013new.csv.
        #[arg(long, default_value = fer::data::FERPLUS_DEFAULT)]
        ferplus: PathBuf,
        /// Also write the agreement here (JSON).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the data set as Kaggle's fer2013.csv (emotion,pixels,Usage).
    ExportCsv {
        #[arg(long, default_value = "fer2013.csv")]
        out: PathBuf,
    },
}

/// `TEMPLATE=OUTPUT` for `fer report --render`.
fn parse_document(s: &str) -> Result<(PathBuf, PathBuf), String> {
    match s.split_once('=') {
        Some((t, o)) if !t.is_empty() && !o.is_empty() => Ok((PathBuf::from(t), PathBuf::from(o))),
        _ => Err(format!("expected TEMPLATE=OUTPUT (e.g. docs/report/README.md.j2=README.md), got `{s}`")),
    }
}

fn device(name: &str) -> anyhow::Result<tch::Device> {
    match name {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Ok(tch::Device::Cuda(i)),
            None => anyhow::bail!("unknown device `{other}` (use cpu, cuda or cuda:N)"),
        },
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        tch::set_num_threads(n);
        // The inference core's parallel work (pyramid levels, crops, batches) runs on rayon.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1) as usize).build_global();
    }
    match cli.command {
        Command::Train { config, resume, fresh, runs, epochs, device: dev, record, teacher, seed } => {
            let mut cfg = Config::load(&config)?;
            if let Some(s) = seed {
                cfg.seed = s;
                cfg.name = format!("{}-seed{s}", cfg.name);
            }
            if let Some(e) = epochs {
                cfg.train.epochs = e;
            }
            if let Some(t) = fer::config::Teacher::new(teacher.iter().map(|t| t.display().to_string()).collect()) {
                cfg.train.teacher = Some(t);
            }
            let data = fer::data::load(&cli.data)?;
            let opts = TrainOptions { runs_dir: runs.clone(), resume, fresh, device: device(&dev)?, ..Default::default() };
            train(&cfg, &data, &opts)?;
            if let Some(dest) = record {
                fer::ablate::record_run(&runs.join(&cfg.name), &dest)?;
                println!("record copied to {}", dest.display());
            }
        }
        Command::Report { baseline, run, ablation, seed_run, data_stats, figure, out, model, copy_to, template, pdf, render } => {
            let inputs = fer::report::ReportInputs {
                baseline,
                runs: run,
                ablations: ablation,
                seed_runs: seed_run,
                data_stats,
                figures: figure,
                out,
                models: model,
                copy_to,
                template,
                pdf,
                documents: render,
                root: PathBuf::new(),
            };
            let path = fer::report::write(&inputs)?;
            println!("wrote {} and report.html{} beside it", path.display(), if pdf { " and report.pdf" } else { "" });
        }
        Command::Ablate { file, runs, out } => {
            let (ablation, base) = fer::ablate::AblationFile::load(&file)?;
            let out = out.unwrap_or_else(|| PathBuf::from("results").join(&ablation.name));
            let data = fer::data::load(&cli.data)?;
            println!("{}", fer::ablate::run(&ablation, &base, &data, &runs, &out)?);
        }
        Command::Serve { model, host, port, max_body_mb, queue, workers, min_face, header_timeout, body_timeout, request_timeout, max_connections, api_key, open } => {
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                loopback || api_key.is_some() || open,
                "fer serve on {host} answers the network: give it a key (--api-key KEY, or FER_API_KEY) or say --open to serve without one"
            );
            let seconds = |s: f64, flag: &str| {
                anyhow::ensure!(s > 0.0 && s.is_finite(), "--{flag} must be a positive number of seconds, not {s}");
                Ok(std::time::Duration::from_secs_f64(s))
            };
            let options = fer::serve::ServeOptions {
                model: model.unwrap_or_else(|| PathBuf::from(fer_core::models::DEFAULT)),
                max_body: (max_body_mb * 1e6) as usize,
                queue,
                workers,
                detector: fer::face::detect::DetectorOptions { min_face, ..Default::default() },
                header_timeout: seconds(header_timeout, "header-timeout")?,
                body_timeout: seconds(body_timeout, "body-timeout")?,
                request_timeout: seconds(request_timeout, "request-timeout")?,
                max_connections,
                api_key: api_key.filter(|k| !k.is_empty()),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(fer::serve::serve(options, &host, port))?;
        }
        Command::Detect { command: DetectCommand::Export { weights, out } } => {
            let bytes = std::fs::read(&weights).map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
            for (file, onnx) in fer::nn::onnx::detector_onnx(&bytes)? {
                fer::data::write_atomic(&out.join(file), &onnx)?;
                println!("{}: {} bytes", out.join(file).display(), onnx.len());
            }
        }
        Command::Detect { command: DetectCommand::Calibrate { faces, split, out } } => {
            let split = Split::parse(&split).ok_or_else(|| anyhow::anyhow!("unknown split `{split}`"))?;
            let data = fer::data::load(&cli.data)?;
            let detector = fer::nn::mtcnn::detector(Default::default())?;
            let bar = fer::progress::bar(faces, "calibrating", false);
            let framing = fer::calibrate::calibrate(&data, split, faces, &detector, &bar)?;
            bar.finish_and_clear();
            fer::data::write_atomic(&out, (serde_json::to_string_pretty(&framing)? + "\n").as_bytes())?;
            println!(
                "the detector found {} of {} {split} faces; FER frame = {:.3} x box width, centre offset ({:+.3}, {:+.3}) box widths; written to {}",
                framing.faces_found,
                framing.faces_tried,
                framing.side,
                framing.dx,
                framing.dy,
                out.display()
            );
        }
        Command::Data { command: DataCommand::Stats { out, json } } => {
            let data = fer::data::load(&cli.data)?;
            let stats = fer::stats::write(&data, &out, 8)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!("{}\nwritten to {}/ (stats.json, stats.md, samples.png, mean_faces.png)", stats.text(), out.display());
            }
        }
        Command::Data { command: DataCommand::AugmentPreview { config, out, rows, per_face, seed } } => {
            let cfg = Config::load(&config)?;
            let data = fer::data::load(&cli.data)?;
            let train = data.split(Split::Training);
            fer::train::augment::preview(&train, &cfg.augment, cfg.train.input_size, rows, per_face, seed, &out)?;
            println!("wrote {}", out.display());
        }
        Command::Data { command: DataCommand::Ferplus { ferplus, out } } => {
            let data = fer::data::load(&cli.data)?;
            let agreement = fer::data::ferplus_agreement(&data, &fer::data::read_ferplus(&ferplus)?)?;
            for a in &agreement {
                println!("{}: FER+ gives {} of its {} faces a majority label among the seven; FER-2013's label is that label on {} ({:.2}%)", a.split, a.relabelled, a.faces, a.agree, 100.0 * a.agreement);
            }
            if let Some(out) = out {
                fer::data::write_atomic(&out, format!("{}\n", serde_json::to_string_pretty(&agreement)?).as_bytes())?;
                println!("written to {}", out.display());
            }
        }
        Command::Data { command: DataCommand::ExportCsv { out } } => {
            let data = fer::data::load(&cli.data)?;
            let mut bytes = Vec::with_capacity(data.len() * 9000);
            fer::data::write_csv(&data, &mut bytes)?;
            fer::data::write_atomic(&out, &bytes)?;
            println!("wrote {} faces to {}", data.len(), out.display());
        }
        Command::Eval { model, split, tta, ferplus, png, json } => {
            let split = Split::parse(&split).ok_or_else(|| anyhow::anyhow!("unknown split `{split}`"))?;
            let dirs = if model.is_empty() { vec![fer::models::default_folder()?] } else { model };
            let mut models = Vec::new();
            for dir in &dirs {
                let trained = Trained::load(dir, tch::Device::Cpu)?;
                tta.check_input(trained.config.train.input_size).map_err(|e| anyhow::anyhow!("{}: {e}: try --tta flip", dir.display()))?;
                models.push(trained);
            }
            let mut data = fer::data::load(&cli.data)?;
            if let Some(path) = &ferplus {
                let relabelled = data.with_ferplus_labels(&fer::data::read_ferplus(path)?)?;
                let note = format!("FER+ majority labels ({}): {} of the {} faces of {split}", path.display(), relabelled.indices(split).len(), data.indices(split).len());
                if json { eprintln!("{note}") } else { println!("{note}") }
                data = relabelled;
            }
            let faces = data.split(split);
            let eval = fer::nn::score::evaluate_faces(&fer::nn::score::ensemble_logits(&models, &faces, tta), &faces);
            // What the views and models cost: each is one more forward pass.
            let flops = models.iter().map(|m| m.flops_with(tta)).sum::<anyhow::Result<i64>>()?;
            if tta != fer::config::Tta::None || models.len() > 1 {
                let what = match (models.len(), tta) {
                    (1, tta) => format!("{tta} test-time augmentation"),
                    (n, fer::config::Tta::None) => format!("an ensemble of {n} models"),
                    (n, tta) => format!("an ensemble of {n} models, each with {tta} test-time augmentation"),
                };
                let note = format!(
                    "{what}: {} forward passes, {flops} fvcore FLOPs a face, efficiency {:.1} %/GFLOP",
                    models.len() * tta.views(),
                    fer::nn::flops::efficiency(100.0 * eval.accuracy, flops)
                );
                if json { eprintln!("{note}") } else { println!("{note}") }
            }
            let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            if json {
                // The scores, and what was scored: the models, the views, the FLOPs of a face.
                let mut record = serde_json::to_value(&eval)?;
                record["models"] = serde_json::json!(names);
                record["weights"] = serde_json::json!(dirs.iter().map(|d| fer::nn::model::weights_fingerprint(d)).collect::<anyhow::Result<Vec<_>>>()?);
                record["tta"] = serde_json::json!(tta.to_string());
                record["forward_passes"] = serde_json::json!(models.len() * tta.views());
                record["fvcore_flops"] = serde_json::json!(flops);
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("{} on {split}:\n{}", names.join(" + "), eval.tables());
            }
            if let Some(png) = png {
                fer::plot::confusion_matrix(&png, &eval, split.name())?;
            }
        }
        Command::Export { run, out, onnx } => {
            // With the data, export checks the folded model (and the ONNX file) on PublicTest;
            // without, it says so.
            let data = fer::data::load(&cli.data).map_err(|e| eprintln!("no PublicTest check: {e:#}")).ok();
            let is_model_folder = run.join("card.json").is_file() && !run.join("summary.json").is_file();
            if is_model_folder {
                anyhow::ensure!(onnx && out.is_none(), "{} is a model folder, not a run: `fer export {} --onnx` adds its model.onnx; to re-export, give the run (runs/<name>)", run.display(), run.display());
                return print_onnx_check(&run, data.as_ref());
            }
            let out = out.unwrap_or_else(|| PathBuf::from("models").join(run.file_name().unwrap_or_default()));
            let card = fer::nn::export::export(&run, &out, data.as_ref())?;
            println!(
                "{}: {} fvcore FLOPs after folding ({} before), PublicTest {:.2}%, PrivateTest {:.2}%, efficiency {:.1}; card in {}/card.md",
                card.name,
                card.fvcore_flops,
                card.fvcore_flops_unfolded,
                100.0 * card.val_acc,
                100.0 * card.test_acc,
                card.efficiency,
                out.display()
            );
            if onnx {
                print_onnx_check(&out, data.as_ref())?;
            }
        }
        Command::Predict { inputs, random, split, model, no_detect, min_face, format, json, csv, output, resume, shard, files_from, annotate, faces, every, every_seconds, smooth_seconds, out, seed } => {
            let chosen = fer::models::choose(model.as_deref())?;
            if let Some(n) = random {
                let split = Split::parse(&split).ok_or_else(|| anyhow::anyhow!("unknown split `{split}`"))?;
                let data = fer::data::load(&cli.data)?;
                let acc = fer::predict::random_grid(&chosen.classifier()?, &data, split, n, seed, &out)?;
                println!("{n} random {split} faces, {:.0}% right: {}", 100.0 * acc, out.display());
                return Ok(());
            }
            let options = fer::face::detect::DetectorOptions { min_face, ..Default::default() };
            let pipeline = chosen.pipeline(options)?;
            let format = if json { fer::predict::Format::Json } else if csv { fer::predict::Format::Csv } else { format };
            let sampling = match every_seconds {
                Some(t) if t > 0.0 => fer::media::Sampling::EverySeconds(t),
                Some(t) => anyhow::bail!("--every-seconds must be positive, not {t}"),
                None => fer::media::Sampling::EveryNth(every.max(1)),
            };
            anyhow::ensure!(smooth_seconds > 0.0 && smooth_seconds.is_finite(), "--smooth-seconds must be positive, not {smooth_seconds}");
            let shard = shard.map(|s| fer::predict::parse_shard(&s, |k| std::env::var(k).ok())).transpose().map_err(anyhow::Error::msg)?;
            let opts = fer::predict::PredictOptions { detect: !no_detect, format, annotate, faces, sampling, half_life: smooth_seconds, quiet: false, output, resume, shard, files_from };
            fer::predict::run(&pipeline, &inputs, &opts)?;
        }
        Command::Pipeline { baseline, baseline_record, retrain_baseline, speedrun, runs } => {
            let opts = fer::pipeline::PipelineOptions { data: cli.data.clone(), baseline, baseline_record, retrain_baseline, speedrun, runs };
            fer::pipeline::run(&opts)?;
        }
        Command::Bench { mode, model, batch, steps, warmup, batches, precision } => {
            let args = fer::bench::BenchArgs { mode, model, batch, steps, warmup, batches, data: cli.data.clone(), precision };
            println!("{}", fer::bench::run(&args)?);
        }
        Command::Flops { model, json } => fer::nn::flops::print(&model, json)?,
    }
    Ok(())
}

/// `fer export --onnx`: writes and checks `dir/model.onnx`, and says how it went.
fn print_onnx_check(dir: &std::path::Path, data: Option<&fer::data::Dataset>) -> anyhow::Result<()> {
    eprintln!("{}: writing model.onnx and running it in tract beside libtorch ...", dir.display());
    let check = fer::nn::export::export_onnx(dir, data)?;
    let a = &check.agreement;
    print!(
        "{}: tract runs it on {} {} faces within {:.1e} of libtorch's probabilities, the same label on {} of them",
        dir.join("model.onnx").display(),
        a.faces,
        check.faces_from,
        a.max_probability_diff,
        a.same_label
    );
    match check.val_acc {
        Some(acc) => println!("; PublicTest through tract {:.2}%", 100.0 * acc),
        None => println!(),
    }
    Ok(())
}
