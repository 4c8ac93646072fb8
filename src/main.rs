// mimalloc replaces malloc for the whole process, libtorch included: glibc maps and unmaps
// every buffer over 32 MB, and the page faults that follow cost more than the compute.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use fer::config::Config;
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
    },
    /// Time training steps or inference like ../shared/bench/torch_reference.py (JSON line).
    Bench {
        /// step, infer
        mode: String,
        #[arg(long, default_value = "mobile")]
        model: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
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
    }
    match cli.command {
        Command::Train { config, resume, fresh, runs, epochs, device: dev } => {
            let mut cfg = Config::load(&config)?;
            if let Some(e) = epochs {
                cfg.train.epochs = e;
            }
            let data = fer::data::load(&cli.data)?;
            let opts = TrainOptions { runs_dir: runs, resume, fresh, device: device(&dev)?, ..Default::default() };
            train(&cfg, &data, &opts)?;
        }
        Command::Bench { mode, model, batch, steps, warmup } => {
            let args = fer::bench::BenchArgs { mode, model, batch, steps, warmup };
            println!("{}", fer::bench::run(&args)?);
        }
        Command::Flops { model, json } => fer::flops::print(&model, json)?,
    }
    Ok(())
}
