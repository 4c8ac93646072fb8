//! Small synthetic FER-style data for tests: faces whose class is visible in the pixels.
#![allow(dead_code)]

use fer::data::{Dataset, Split, CLASSES, PIXELS, SIDE};
use std::path::{Path, PathBuf};

/// `per_split` faces in each split; class `c` has a bright 12x12 block at a class-specific
/// place over seeded noise, so a small network can learn it in a few epochs.
pub fn synthetic(per_split: [usize; 3], seed: u64) -> Dataset {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = Dataset::default();
    let mut id = 0;
    for (s, &n) in Split::ALL.iter().zip(&per_split) {
        for i in 0..n {
            let label = (i % CLASSES.len()) as u8;
            let mut img = [0u8; PIXELS];
            for p in img.iter_mut() {
                *p = rng.u8(0..120);
            }
            let (bx, by) = ((label as usize % 4) * 12, (label as usize / 4) * 24 + 6);
            for y in by..by + 12 {
                for x in bx..bx + 12 {
                    img[y * SIDE + x] = 200 + rng.u8(0..55);
                }
            }
            data.pixels.extend_from_slice(&img);
            data.labels.push(label);
            data.splits.push(*s);
            data.sources.push(format!("{}_{id}.png", s.name()));
            id += 1;
        }
    }
    data
}

/// Kaggle CSV text for `data`.
pub fn csv_text(data: &Dataset) -> String {
    let mut out = Vec::new();
    fer::data::write_csv(data, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Writes `data` as an image-folder release of lossless PNGs under `root`.
pub fn write_folder(data: &Dataset, root: &Path) {
    for i in 0..data.len() {
        let part = if data.splits[i] == Split::Training { "train" } else { "test" };
        let dir = root.join(part).join(CLASSES[data.labels[i] as usize]);
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, data.image(i).to_vec()).unwrap();
        img.save(dir.join(format!("{}_{i}.png", data.splits[i].name()))).unwrap();
    }
}

/// Notes that the running test skips its real work, and why. cargo hides what passing tests
/// print, so the note also goes to `target/tmp/skipped-tests.txt`, which `scripts/test.sh`
/// shows at the end of the run. Under `FER_FORBID_SKIPS=1` (CI, where everything is installed)
/// a skip is a failure.
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    if std::env::var_os("FER_FORBID_SKIPS").is_some_and(|v| v == "1") {
        panic!("{test} may not skip here (FER_FORBID_SKIPS=1): {why}");
    }
    eprintln!("skipped {test}: {why}");
    let list = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(list) {
        use std::io::Write;
        let _ = writeln!(f, "{test}: {why}");
    }
}

/// The real data set, or None (with a message) where it is absent.
pub fn real_data() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/fer2013");
    if path.join("train").is_dir() {
        Some(path)
    } else {
        skip(&format!("the real FER-2013 data is not at {}", path.display()));
        None
    }
}

/// Quiet training into `runs`.
pub fn opts(runs: &Path) -> fer::train::TrainOptions {
    fer::train::TrainOptions { runs_dir: runs.to_path_buf(), quiet: true, ..Default::default() }
}

/// A small network that trains in well under a second per epoch on synthetic data.
pub const TINY_NET: &str = r#"
[model]
layers = [
  { type = "conv", out = 8, stride = 2, bias = false },
  { type = "batch_norm" },
  { type = "relu" },
  { type = "conv", out = 16, stride = 2 },
  { type = "relu" },
  { type = "max_pool", kernel = 4 },
  { type = "flatten" },
  { type = "linear", out = 7 },
]
"#;

pub fn tiny_config(name: &str, epochs: usize) -> fer::config::Config {
    let text = format!("name = \"{name}\"\nseed = 7\n{TINY_NET}\n[train]\nepochs = {epochs}\nbatch_size = 32\nlr = 0.01\n");
    fer::config::Config::parse(&text).unwrap()
}

/// A `fer serve` app on a free loopback port, run on its own thread: its base URL, and the
/// switch that stops it.
pub fn start_server(max_body: usize, queue: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    let model = fer::models::default_folder().unwrap();
    start_server_with(fer::serve::ServeOptions { model, max_body, queue, ..Default::default() })
}

/// As [`start_server`], with every option given; through the server's own accept loop.
pub fn start_server_with(options: fer::serve::ServeOptions) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            fer::serve::serve_on(listener, options, async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    (format!("http://{}", addr_rx.recv().unwrap()), stop_tx)
}

/// A file of `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}
