//! `fer data stats`: what the data set holds. Counts per class and split, the imbalance,
//! exact duplicates (and those that cross splits), near-blank faces, sample and mean faces.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

use crate::data::{duplicate_groups, near_constant, Dataset, Split, CLASSES, NUM_CLASSES, PIXELS};
use crate::plot::{face_grid, Tile};

/// Faces with a pixel standard deviation below this are reported as blank or near-constant.
pub const NEAR_CONSTANT_STD: f64 = 3.0;

#[derive(Clone, Debug, Serialize)]
pub struct DataStats {
    pub total: usize,
    /// `counts[split][class]`.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Largest over smallest class count in Training.
    pub imbalance: f64,
    pub duplicate_groups: usize,
    /// Faces that have an identical twin somewhere else in the data set.
    pub faces_in_duplicate_groups: usize,
    /// Groups whose members sit in more than one split (a leak between train and test).
    pub cross_split_groups: Vec<Vec<String>>,
    pub cross_split_pairs: BTreeMap<String, usize>,
    /// Duplicate groups whose copies carry different labels (label noise).
    pub conflicting_label_groups: usize,
    pub near_constant: Vec<String>,
    /// Mean absolute difference of horizontally adjacent pixels, per split: a sharpness
    /// measure. Splits far apart mean the faces were processed differently (e.g. blurred).
    pub sharpness: BTreeMap<String, f64>,
    /// The Gaussian blur (sigma, pixels) that makes PublicTest faces as smooth as Training
    /// faces: an estimate of how Training was blurred (None if it is not smoother).
    pub training_blur_sigma: Option<f64>,
}

/// Mean |p(x+1, y) - p(x, y)| over the faces of each split.
pub fn sharpness(data: &Dataset) -> BTreeMap<String, f64> {
    let mut sum = [0f64; 3];
    let mut n = [0usize; 3];
    for i in 0..data.len() {
        let img = data.image(i);
        let mut d = 0u64;
        for row in img.chunks(crate::data::SIDE) {
            d += row.windows(2).map(|w| w[0].abs_diff(w[1]) as u64).sum::<u64>();
        }
        let s = data.splits[i] as usize;
        sum[s] += d as f64 / (crate::data::SIDE * (crate::data::SIDE - 1)) as f64;
        n[s] += 1;
    }
    Split::ALL.iter().map(|s| (s.name().to_string(), sum[*s as usize] / n[*s as usize].max(1) as f64)).collect()
}

/// The sigma at which Gaussian-blurred PublicTest faces match Training's sharpness, by
/// bisection (sharpness falls as sigma grows); None unless Training is over 10% smoother.
pub fn matching_blur(data: &Dataset, sharpness: &BTreeMap<String, f64>) -> Option<f64> {
    let target = *sharpness.get(Split::Training.name())?;
    let test = data.split(Split::PublicTest);
    if test.is_empty() || target <= 0.0 {
        return None;
    }
    let x = tch::Tensor::from_slice(&test.pixels).reshape([test.len() as i64, 1, 48, 48]).to_kind(tch::Kind::Float);
    let smoothness = |sigma: f64| {
        let b = crate::nn::blur::blur(&x, sigma);
        (b.narrow(3, 1, 47) - b.narrow(3, 0, 47)).abs().mean(tch::Kind::Float).double_value(&[])
    };
    // Within 10% the splits are equally sharp: noise, not a blur worth naming.
    if smoothness(0.0) <= 1.1 * target {
        return None;
    }
    let (mut lo, mut hi) = (0.0, 10.0);
    for _ in 0..30 {
        let mid = (lo + hi) / 2.0;
        if smoothness(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some((lo + hi) / 2.0)
}

pub fn analyse(data: &Dataset) -> DataStats {
    let counts = data.counts();
    let mut table = BTreeMap::new();
    for split in Split::ALL {
        let row = (0..NUM_CLASSES).map(|c| (CLASSES[c].to_string(), counts[split as usize][c])).collect();
        table.insert(split.name().to_string(), row);
    }
    let sharp = sharpness(data);
    let train = counts[Split::Training as usize];
    let imbalance = *train.iter().max().unwrap() as f64 / (*train.iter().min().unwrap()).max(1) as f64;
    let groups = duplicate_groups(data);
    let mut cross_split_groups = Vec::new();
    let mut cross_split_pairs: BTreeMap<String, usize> = BTreeMap::new();
    for g in &groups {
        let mut splits: Vec<Split> = g.iter().map(|&i| data.splits[i]).collect();
        splits.sort();
        splits.dedup();
        if splits.len() > 1 {
            cross_split_groups.push(g.iter().map(|&i| format!("{} ({}, {})", data.sources[i], data.splits[i], CLASSES[data.labels[i] as usize])).collect());
            for (a, sa) in splits.iter().enumerate() {
                for sb in &splits[a + 1..] {
                    *cross_split_pairs.entry(format!("{sa}-{sb}")).or_default() += 1;
                }
            }
        }
    }
    DataStats {
        total: data.len(),
        counts: table,
        imbalance,
        duplicate_groups: groups.len(),
        faces_in_duplicate_groups: groups.iter().map(Vec::len).sum(),
        cross_split_groups,
        cross_split_pairs,
        conflicting_label_groups: groups.iter().filter(|g| g.iter().any(|&i| data.labels[i] != data.labels[g[0]])).count(),
        near_constant: near_constant(data, NEAR_CONSTANT_STD)
            .into_iter()
            .map(|(i, std)| format!("{} ({}, std {std:.2})", data.sources[i], data.splits[i]))
            .collect(),
        training_blur_sigma: matching_blur(data, &sharp),
        sharpness: sharp,
    }
}

impl DataStats {
    /// The class-by-split table in Markdown.
    pub fn counts_table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::ASCII_MARKDOWN);
        let mut header = vec!["class".to_string()];
        header.extend(Split::ALL.iter().map(|s| s.name().to_string()));
        header.push("total".into());
        header.push("share".into());
        t.set_header(header);
        for class in CLASSES {
            let per: Vec<usize> = Split::ALL.iter().map(|s| self.counts[s.name()][class]).collect();
            let total: usize = per.iter().sum();
            let mut row: Vec<String> = vec![class.to_string()];
            row.extend(per.iter().map(usize::to_string));
            row.push(total.to_string());
            row.push(format!("{:.1}%", 100.0 * total as f64 / self.total.max(1) as f64));
            t.add_row(row);
        }
        let mut row = vec!["total".to_string()];
        row.extend(Split::ALL.iter().map(|s| self.counts[s.name()].values().sum::<usize>().to_string()));
        row.push(self.total.to_string());
        row.push("100%".into());
        t.add_row(row);
        t.to_string()
    }

    pub fn text(&self) -> String {
        let mut s = format!("{}\n\n", self.counts_table());
        s += &format!("Imbalance (Training, largest class / smallest): {:.1}x\n", self.imbalance);
        s += &format!(
            "Exact duplicates: {} groups holding {} faces; {} groups cross splits {:?}; {} groups carry conflicting labels\n",
            self.duplicate_groups,
            self.faces_in_duplicate_groups,
            self.cross_split_groups.len(),
            self.cross_split_pairs,
            self.conflicting_label_groups
        );
        s += &format!("Blank or near-constant faces (pixel std < {NEAR_CONSTANT_STD}): {}\n", self.near_constant.len());
        let sharp: Vec<String> = self.sharpness.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        s += &format!("Sharpness (mean |horizontal pixel difference|): {}\n", sharp.join(", "));
        let values: Vec<f64> = self.sharpness.values().copied().filter(|v| *v > 0.0).collect();
        let (lo, hi) = values.iter().fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        if !values.is_empty() && hi > 1.5 * lo {
            s += &format!("WARNING: the splits differ in sharpness by {:.1}x: some were blurred or re-encoded differently. A model trained on one will see a shifted distribution on the other (see `eval_blur` in the config).\n", hi / lo);
        }
        match self.training_blur_sigma {
            Some(sigma) => s += &format!("Training is as smooth as PublicTest blurred by a Gaussian of sigma {sigma:.2} px.\n"),
            None if !values.is_empty() && hi <= 1.1 * lo => s += "The splits are equally sharp (within 10%): no sign of blurring.\n",
            None => {}
        }
        s
    }
}

/// Writes `stats.json`, `stats.md`, `samples.png` and `mean_faces.png` into `out`.
pub fn write(data: &Dataset, out: &Path, per_class: usize) -> anyhow::Result<DataStats> {
    std::fs::create_dir_all(out)?;
    let stats = analyse(data);
    std::fs::write(out.join("stats.json"), serde_json::to_vec_pretty(&stats)?)?;
    std::fs::write(out.join("stats.md"), stats.text())?;

    // Sample faces: the first `per_class` Training faces of each class, one row per class.
    let mut tiles = Vec::new();
    for c in 0..NUM_CLASSES {
        let picks = (0..data.len()).filter(|&i| data.labels[i] as usize == c && data.splits[i] == Split::Training);
        for i in picks.take(per_class) {
            tiles.push(Tile { pixels: data.image(i).to_vec(), caption: vec![CLASSES[c].into()], color: plotters::style::BLACK });
        }
    }
    face_grid(&out.join("samples.png"), "FER-2013 Training faces, one row per class", &tiles, per_class)?;

    // Mean face per class over Training.
    let mut sums = vec![[0u64; PIXELS]; NUM_CLASSES];
    let mut n = [0u64; NUM_CLASSES];
    for i in 0..data.len() {
        if data.splits[i] == Split::Training {
            let c = data.labels[i] as usize;
            n[c] += 1;
            for (s, &p) in sums[c].iter_mut().zip(data.image(i)) {
                *s += p as u64;
            }
        }
    }
    let means: Vec<Tile> = (0..NUM_CLASSES)
        .map(|c| Tile {
            pixels: sums[c].iter().map(|&s| (s / n[c].max(1)) as u8).collect(),
            caption: vec![CLASSES[c].into(), format!("n={}", n[c])],
            color: plotters::style::BLACK,
        })
        .collect();
    face_grid(&out.join("mean_faces.png"), "Mean Training face per class", &means, NUM_CLASSES)?;
    Ok(stats)
}
