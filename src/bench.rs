//! `fer bench`: the same measurements as `../shared/bench/torch_reference.py`, printed as the
//! same JSON fields, so a line from each can be compared directly.

use serde_json::json;
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use crate::train::optim::Optimizer;
use crate::nn::model::Trained;

pub struct BenchArgs {
    pub mode: String,
    pub model: String,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    /// For `epoch`: batches timed after warm-up, and the data.
    pub batches: usize,
    pub data: std::path::PathBuf,
    /// Training arithmetic for `step` and `epoch`: f32 or bf16 (mixed precision).
    pub precision: crate::config::Precision,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One training step as torch_reference.py times it: forward, cross-entropy, backward, step.
fn train_step(model: &Trained, opt: &mut Optimizer, x: &Tensor, y: &Tensor) {
    opt.zero_grad();
    let loss = model.net.forward_t(x, true).cross_entropy_for_logits(y);
    loss.backward();
    opt.step();
    let _ = loss.double_value(&[]);
}

/// The face pipeline on two photos of about one megapixel made from the Solvay photo: the
/// group (its top 600 rows, 29 faces of about 50 px) and a close-up (5 faces enlarged to about
/// 170 px).
/// Detection and classification times, medians over `steps` runs after `warmup`.
fn faces(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/solvay-1927.jpg");
    let image = crate::media::read_image(&photo).map_err(|e| anyhow::anyhow!("{}: {e}", photo.display()))?;
    let group = image.crop_imm(0, 0, image.width(), 600);
    let close_up = image.crop_imm(580, 150, 400, 300).resize_exact(1155, 866, image::imageops::FilterType::CatmullRom);
    let chosen = crate::models::choose(None)?;
    // `fer`'s pipeline (the detector's networks in libtorch) and the inference core's own (all
    // in tract, as the Python package runs it).
    let torch = chosen.pipeline(Default::default())?;
    let tract = crate::face::Pipeline::new(chosen.classifier()?, Default::default())?;
    let time = |pipeline: &crate::face::Pipeline, image: &image::DynamicImage| {
        let (mut detect, mut classify, mut found) = (Vec::new(), Vec::new(), 0);
        for i in 0..args.warmup + args.steps {
            let a = pipeline.analyse(image, true);
            if i >= args.warmup {
                detect.push(a.detect.as_secs_f64() * 1e3);
                classify.push(a.classify.as_secs_f64() * 1e3);
                found = a.faces.len();
            }
        }
        let (d, c) = (median(detect), median(classify));
        json!({"megapixels": (image.width() * image.height()) as f64 / 1e6, "faces": found, "detect_ms": d, "classify_ms": c, "total_ms": d + c})
    };
    Ok(json!({
        "impl": "fer", "mode": "faces", "detector": "libtorch", "classifier": "tract",
        "group": time(&torch, &group), "close_up": time(&torch, &close_up),
        "tract": {"group": time(&tract, &group), "close_up": time(&tract, &close_up)},
        "threads": rayon::current_num_threads(),
    }))
}

/// Resident memory of this process in MB (Linux), for the load run's "memory stays flat".
fn resident_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

/// A bounded load run of `fer serve` on the loopback interface: `steps` requests of a 640x480
/// photo (a crop of the Solvay photo, 11 faces) from 1, 4 and 16 concurrent clients; requests
/// per second, p50 / p99 latency, failures, and resident memory before and after.
fn serve(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let body = load_photo()?;
    let (_runtime, addr) = loopback_server(crate::serve::ServeOptions { queue: 64, ..Default::default() })?;
    let url = format!("http://{addr}/api/predict");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let post = |agent: &ureq::Agent| agent.post(&url).header("Content-Type", "image/jpeg").send(&body[..]).map(|r| r.status().as_u16()).unwrap_or(0);
    for _ in 0..args.warmup {
        post(&agent);
    }
    let mut rows = Vec::new();
    for clients in [1usize, 4, 16] {
        let before = resident_mb();
        let per_client = args.steps.div_ceil(clients);
        let started = Instant::now();
        let results: Vec<(u16, f64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    let agent = agent.clone();
                    let post = &post;
                    s.spawn(move || {
                        (0..per_client)
                            .map(|_| {
                                let t = Instant::now();
                                let status = post(&agent);
                                (status, t.elapsed().as_secs_f64() * 1e3)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        let wall = started.elapsed().as_secs_f64();
        let mut latency: Vec<f64> = results.iter().map(|r| r.1).collect();
        latency.sort_by(f64::total_cmp);
        let pick = |q: f64| latency[((latency.len() - 1) as f64 * q).round() as usize];
        rows.push(json!({
            "clients": clients, "requests": results.len(), "failed": results.iter().filter(|r| r.0 != 200).count(),
            "requests_per_s": results.len() as f64 / wall, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "rss_mb_before": before, "rss_mb_after": resident_mb(),
        }));
    }
    Ok(json!({"impl": "fer", "mode": "serve", "photo": "640x480 JPEG, 11 faces", "workers": 1, "threads": tch::get_num_threads(), "runs": rows}))
}

/// The 640x480 JPEG the load runs send (a crop of the Solvay photo, 11 faces).
fn load_photo() -> anyhow::Result<Vec<u8>> {
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/solvay-1927.jpg");
    let image = crate::media::read_image(&photo).map_err(|e| anyhow::anyhow!("{}: {e}", photo.display()))?;
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image.crop_imm(0, 180, 960, 720).resize_exact(640, 480, image::imageops::FilterType::Triangle).write_to(&mut jpeg, image::ImageFormat::Jpeg)?;
    Ok(jpeg.into_inner())
}

/// `fer serve` with `options` on a free loopback port, on a runtime of its own (it serves
/// until the runtime is dropped).
fn loopback_server(options: crate::serve::ServeOptions) -> anyhow::Result<(tokio::runtime::Runtime, std::net::SocketAddr)> {
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(crate::serve::serve_on(listener, options, std::future::pending()));
    Ok((runtime, addr))
}

/// Open file descriptors of this process (Linux).
fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A mixed load on `fer serve` over loopback for `--steps` seconds: 4 clients sending the
/// photo, 2 sending garbage, 1 declaring bodies over the limit, and an upload that stalls
/// opened every 20 ms. Requests per second and p50 / p99 latency of the photos; answers wrong
/// for their request (a photo not answered with its faces or a 503, garbage not 415, an
/// oversized body not 413); memory and open files before, and after the stalled uploads' body
/// timeout has passed.
fn serve_mixed(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let body = load_photo()?;
    let body_timeout = Duration::from_secs(3);
    let options = crate::serve::ServeOptions { max_body: 2_000_000, body_timeout, ..Default::default() };
    let (_runtime, addr) = loopback_server(options)?;
    let url = format!("http://{addr}/api/predict");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into();
    let post = |bytes: &[u8], kind: &str| -> (u16, String) {
        match agent.post(&url).header("Content-Type", kind).send(bytes) {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    };
    let faces_in = |answer: &str| serde_json::from_str::<serde_json::Value>(answer).ok().and_then(|v| v["faces"].as_array().map(Vec::len));
    let (status, answer) = post(&body, "image/jpeg");
    anyhow::ensure!(status == 200, "the server did not answer the photo: {status} {answer}");
    let expected = faces_in(&answer);
    let (rss_before, files_before) = (resident_mb(), open_files());
    let seconds = args.steps.max(1) as f64;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let (photos, garbage, oversized, stalled) = std::thread::scope(|s| {
        let photo_clients: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while Instant::now() < until {
                        let t = Instant::now();
                        let (status, answer) = post(&body, "image/jpeg");
                        let right = (status == 200 && faces_in(&answer) == expected) || status == 503;
                        seen.push((status, t.elapsed().as_secs_f64() * 1e3, right));
                    }
                    seen
                })
            })
            .collect();
        let garbage_clients: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while Instant::now() < until {
                        let (status, _) = post(b"certainly not an image", "image/jpeg");
                        seen.push(status == 415 || status == 503);
                    }
                    seen
                })
            })
            .collect();
        let oversized = s.spawn(|| {
            let mut seen = Vec::new();
            while Instant::now() < until {
                let answer = std::net::TcpStream::connect(addr).ok().and_then(|mut c| {
                    c.write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000000\r\n\r\n").ok()?;
                    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                    let mut head = [0u8; 12];
                    c.read_exact(&mut head).ok()?;
                    Some(head)
                });
                seen.push(answer.is_some_and(|h| h.starts_with(b"HTTP/1.1 413")));
            }
            seen
        });
        let stalled = s.spawn(|| {
            let mut open = Vec::new();
            while Instant::now() < until {
                if let Ok(mut c) = std::net::TcpStream::connect(addr) {
                    let _ = c.write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\nabc");
                    open.push(c);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            open.len()
        });
        let photos: Vec<(u16, f64, bool)> = photo_clients.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
        let garbage: Vec<bool> = garbage_clients.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
        (photos, garbage, oversized.join().unwrap_or_default(), stalled.join().unwrap_or_default())
    });
    let wall = started.elapsed().as_secs_f64();
    // The clients' sockets are closed here (the stalled ones, and the agent's kept-alive ones);
    // the server's side of a stalled upload ends at its body timeout.
    drop(agent);
    std::thread::sleep(body_timeout + Duration::from_secs(2));
    let answered: Vec<f64> = {
        let mut v: Vec<f64> = photos.iter().filter(|p| p.0 == 200).map(|p| p.1).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let pick = |q: f64| answered.get(((answered.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN);
    let wrong = photos.iter().filter(|p| !p.2).count() + garbage.iter().filter(|&&r| !r).count() + oversized.iter().filter(|&&r| !r).count();
    Ok(json!({
        "impl": "fer", "mode": "serve-mixed", "seconds": wall, "photo": "640x480 JPEG, 11 faces", "workers": 1, "threads": tch::get_num_threads(),
        "photos": photos.len(), "photos_answered": answered.len(), "photos_busy": photos.iter().filter(|p| p.0 == 503).count(),
        "photos_per_s": answered.len() as f64 / wall, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
        "garbage": garbage.len(), "oversized": oversized.len(), "stalled_uploads": stalled, "wrong_answers": wrong,
        "rss_mb_before": rss_before, "rss_mb_after": resident_mb(), "open_files_before": files_before, "open_files_after": open_files(),
    }))
}

/// Runs one measurement and returns its JSON line.
pub fn run(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    match args.mode.as_str() {
        "faces" => return faces(args),
        "serve" => return serve(args),
        "serve-mixed" => return serve_mixed(args),
        _ => {}
    }
    tch::manual_seed(0);
    let (mut config, _) = crate::nn::flops::resolve(&args.model)?;
    config.train.optimizer = crate::config::OptimizerKind::Adamw;
    config.train.precision = args.precision;
    let mut model = Trained::new(&config, Device::Cpu)?;
    model.net.bf16_inference = args.precision == crate::config::Precision::Bf16;
    let b = args.batch as i64;
    let x = Tensor::rand([b, 1, 48, 48], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let y = Tensor::randint(7, [b], (Kind::Int64, Device::Cpu));
    let mut times = Vec::with_capacity(args.steps);
    let result = match args.mode.as_str() {
        "step" => {
            let mut opt = Optimizer::new(&model.vs, &config.train);
            for i in 0..args.warmup + args.steps {
                let t = Instant::now();
                train_step(&model, &mut opt, &x, &y);
                if i >= args.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            let med = median(std::mem::take(&mut times));
            // Training does about 3x the forward pass's work; 2 flops per multiply-add.
            let flops = crate::nn::flops::count_config(&config)?.fvcore_total as f64;
            json!({"median_step_s": med, "img_per_s": b as f64 / med,
                   "train_gflop_per_s": 3.0 * flops * 2.0 * b as f64 / med / 1e9})
        }
        "infer" => {
            tch::no_grad(|| {
                for i in 0..args.warmup + args.steps {
                    let t = Instant::now();
                    let _ = model.net.forward_t(&x, false);
                    if i >= args.warmup {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
            });
            let med = median(std::mem::take(&mut times));
            json!({"median_batch_s": med, "img_per_s": b as f64 / med})
        }
        "epoch" => {
            // fer's own pipeline: faces from the cache, RandomCrop(48, padding 4) and flip on
            // the worker thread, AdamW steps; timed like torch_reference.py's `epoch`.
            let data = crate::data::load(&args.data)?;
            let faces = std::sync::Arc::new(data.split(crate::data::Split::Training));
            let n = faces.len();
            let mut order: Vec<i64> = (0..n as i64).collect();
            fastrand::Rng::with_seed(0).shuffle(&mut order);
            let aug = crate::config::AugmentConfig { crop_padding: 4, hflip: true, ..Default::default() };
            let rx = crate::train::augment::epoch_batches(faces, order, args.batch, 48, aug, 0, 1);
            let mut opt = Optimizer::new(&model.vs, &config.train);
            let (mut images, mut started) = (0usize, None);
            for (i, batch) in rx.iter().enumerate().take(args.warmup + args.batches) {
                if i == args.warmup {
                    started = Some(Instant::now());
                }
                let len = batch.len() as i64;
                let xb = Tensor::from_slice(&batch.images).reshape([len, 1, 48, 48]);
                let yb = Tensor::from_slice(&batch.labels);
                train_step(&model, &mut opt, &xb, &yb);
                if i >= args.warmup {
                    images += len as usize;
                }
            }
            let seconds = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            anyhow::ensure!(images > 0, "no batches were timed: lower --warmup or --batches");
            json!({"images": images, "seconds": seconds, "img_per_s": images as f64 / seconds,
                   "epoch_s_estimate": n as f64 / (images as f64 / seconds)})
        }
        "data" => {
            // The data path: decoding the image folder (no cache), writing and parsing a
            // full-size Kaggle CSV, and loading everything from the cache.
            let source = crate::data::Source::detect(&args.data)?;
            let t = Instant::now();
            let data = match &source {
                crate::data::Source::Folder(p) => crate::data::read_folder(p)?,
                crate::data::Source::Csv(p) => crate::data::read_csv(p)?,
            };
            let decode_s = t.elapsed().as_secs_f64();
            let tmp = tempfile::tempdir()?;
            let csv = tmp.path().join("fer2013.csv");
            let mut bytes = Vec::new();
            crate::data::write_csv(&data, &mut bytes)?;
            std::fs::write(&csv, &bytes)?;
            let t = Instant::now();
            let parsed = crate::data::read_csv(&csv)?;
            let csv_s = t.elapsed().as_secs_f64();
            anyhow::ensure!(parsed.pixels == data.pixels, "CSV round trip differs");
            let cache = tmp.path().join("cache");
            crate::data::load_with_cache(&args.data, &cache)?;
            let t = Instant::now();
            let cached = crate::data::load_with_cache(&args.data, &cache)?;
            let cache_s = t.elapsed().as_secs_f64();
            json!({"faces": cached.len(), "source_decode_s": decode_s, "csv_bytes": bytes.len(),
                   "csv_parse_s": csv_s, "cache_load_s": cache_s})
        }
        "matmul" => {
            // The machine's matrix-multiply peak (2 flops per multiply-add), for comparison with
            // training throughput.
            // In bf16 this is the AMX / AVX512-BF16 peak that mixed precision can reach.
            let n = 1024i64;
            let kind = if args.precision == crate::config::Precision::Bf16 { Kind::BFloat16 } else { Kind::Float };
            let a = Tensor::rand([n, n], (kind, Device::Cpu));
            let m = Tensor::rand([n, n], (kind, Device::Cpu));
            for i in 0..args.warmup + args.steps {
                let t = Instant::now();
                let _ = a.matmul(&m);
                if i >= args.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            let med = median(std::mem::take(&mut times));
            json!({"n": n, "median_s": med, "gflop_per_s": 2.0 * (n * n * n) as f64 / med / 1e9})
        }
        "flops" => {
            let r = crate::nn::flops::count(&config.layers()?)?;
            json!({"fvcore_flops": r.fvcore_total, "params": r.params})
        }
        other => anyhow::bail!("unknown bench mode `{other}` (step, infer, epoch, data, matmul, flops, faces, serve)"),
    };
    let mut line = json!({
        "engine": "fer-tch-0.24-libtorch-2.11",
        "mode": args.mode,
        "model": args.model,
        "batch": args.batch,
        "threads": tch::get_num_threads(),
        "precision": args.precision,
    });
    for (k, v) in result.as_object().unwrap() {
        line[k] = v.clone();
    }
    Ok(line)
}
