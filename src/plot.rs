//! PNG figures: training curves, confusion matrices and labelled grids of faces.
//! Text uses a font compiled into the binary, so plots need no system fonts.

use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};
use std::path::Path;
use std::sync::Once;

use crate::data::{CLASSES, NUM_CLASSES, SIDE};
use crate::nn::score::Evaluation;
use crate::record::EpochMetrics;

const FONT: &str = "sans-serif";

pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
    });
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// `accuracy.png` and `loss.png` (train and validation against epoch) in `dir`.
pub fn training_curves(dir: &Path, history: &[EpochMetrics]) -> anyhow::Result<()> {
    if history.is_empty() {
        return Ok(());
    }
    // A last epoch cut short by a time budget ends where it stopped.
    let epochs: Vec<f64> = history.iter().map(|m| m.epoch as f64 - 1.0 + m.fraction.unwrap_or(1.0)).collect();
    let pick = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        epochs.iter().copied().zip(history.iter().map(f)).filter_map(|(x, y)| y.map(|y| (x, y))).collect()
    };
    let mut accuracy = vec![
        ("Training (augmented, while it trains)", pick(&|m| Some(100.0 * m.train_acc))),
        ("PublicTest", pick(&|m| m.val_acc.map(|a| 100.0 * a))),
    ];
    let mut loss = vec![
        ("training objective (as configured: smoothed, distilled)", pick(&|m| Some(m.train_loss))),
        ("PublicTest cross-entropy", pick(&|m| m.val_loss)),
    ];
    if history.iter().any(|m| m.ema_val_acc.is_some()) {
        accuracy.push(("PublicTest, weight EMA", pick(&|m| m.ema_val_acc.map(|a| 100.0 * a))));
        loss.push(("PublicTest cross-entropy, weight EMA", pick(&|m| m.ema_val_loss)));
    }
    line_chart(&dir.join("accuracy.png"), "Accuracy", "epoch", "accuracy (%)", &accuracy)?;
    line_chart(&dir.join("loss.png"), "Loss", "epoch", "loss", &loss)
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A line chart of several named series.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> anyhow::Result<()> {
    register_font();
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(err)?;
    for (i, (name, s)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(s.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The confusion matrix as a heat map, with counts and row-normalised percentages.
pub fn confusion_matrix(path: &Path, eval: &Evaluation, split: &str) -> anyhow::Result<()> {
    register_font();
    let (cell, left, top) = (80i32, 110i32, 80i32);
    let size = (left as u32 + 7 * cell as u32 + 20, top as u32 + 7 * cell as u32 + 60);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!("Confusion matrix, {split}: accuracy {:.2}%", 100.0 * eval.accuracy);
    root.draw(&Text::new(title, (left, 15), (FONT, 22).into_font())).map_err(err)?;
    root.draw(&Text::new("predicted class", (left + 7 * cell / 2 - 55, 50), (FONT, 16).into_font())).map_err(err)?;
    root.draw(&Text::new("true class", (8, 50), (FONT, 16).into_font())).map_err(err)?;
    for t in 0..7 {
        let support: u64 = eval.confusion[t].iter().sum::<u64>().max(1);
        let y = top + t as i32 * cell;
        root.draw(&Text::new(CLASSES[t], (8, y + cell / 2 - 8), (FONT, 16).into_font())).map_err(err)?;
        for p in 0..7 {
            let x = left + p as i32 * cell;
            let frac = eval.confusion[t][p] as f64 / support as f64;
            let shade = (255.0 * (1.0 - 0.85 * frac)) as u8;
            let fill = RGBColor(shade, shade, 255);
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], fill.filled())).map_err(err)?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK.mix(0.3))).map_err(err)?;
            let ink = if frac > 0.55 { WHITE } else { BLACK };
            let count = eval.confusion[t][p].to_string();
            root.draw(&Text::new(count, (x + 8, y + 18), (FONT, 18).into_font().color(&ink))).map_err(err)?;
            root.draw(&Text::new(format!("{:.0}%", 100.0 * frac), (x + 8, y + 44), (FONT, 14).into_font().color(&ink)))
                .map_err(err)?;
        }
    }
    for p in 0..7 {
        let x = left + p as i32 * cell;
        root.draw(&Text::new(CLASSES[p], (x + 6, top + 7 * cell + 10), (FONT, 15).into_font())).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One tile of a face grid: a square face (48x48 or smaller) and its caption lines.
pub struct Tile {
    pub pixels: Vec<u8>,
    pub caption: Vec<String>,
    /// Caption colour, e.g. red for a wrong prediction.
    pub color: RGBColor,
}

/// Faces in a grid of `cols` columns, each scaled up and captioned; a title on top.
pub fn face_grid(path: &Path, title: &str, tiles: &[Tile], cols: usize) -> anyhow::Result<()> {
    register_font();
    let scale = 2usize;
    let face = SIDE * scale;
    let side_of = |t: &Tile| (t.pixels.len() as f64).sqrt() as usize;
    let lines = tiles.iter().map(|t| t.caption.len()).max().unwrap_or(0);
    let (tile_w, tile_h, head) = (face + 16, face + 8 + 16 * lines, 40usize);
    let rows = tiles.len().div_ceil(cols.max(1));
    let (w, h) = (cols * tile_w + 10, head + rows * tile_h + 10);
    let mut buf = vec![255u8; w * h * 3];
    for (i, tile) in tiles.iter().enumerate() {
        let (x0, y0) = (5 + (i % cols) * tile_w + 8, head + (i / cols) * tile_h);
        let side = side_of(tile);
        for y in 0..side * scale {
            for x in 0..side * scale {
                let v = tile.pixels[(y / scale) * side + x / scale];
                let at = ((y0 + y) * w + x0 + x) * 3;
                buf[at..at + 3].copy_from_slice(&[v, v, v]);
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        root.draw(&Text::new(title, (10, 10), (FONT, 20).into_font())).map_err(err)?;
        for (i, tile) in tiles.iter().enumerate() {
            let (x0, y0) = (5 + (i % cols) * tile_w + 8, head + (i / cols) * tile_h + face + 3);
            for (k, line) in tile.caption.iter().enumerate() {
                let style = (FONT, 13).into_font().color(&tile.color);
                root.draw(&Text::new(line.as_str(), (x0 as i32, (y0 + 16 * k) as i32), style)).map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    image::save_buffer(path, &buf, w as u32, h as u32, image::ExtendedColorType::Rgb8)?;
    Ok(())
}

/// One colour per class, in label order.
pub const CLASS_COLORS: [RGBColor; NUM_CLASSES] = [
    RGBColor(214, 39, 40),   // angry
    RGBColor(140, 86, 75),   // disgust
    RGBColor(148, 103, 189), // fear
    RGBColor(255, 190, 0),   // happy
    RGBColor(31, 119, 180),  // sad
    RGBColor(44, 160, 44),   // surprise
    RGBColor(127, 127, 127), // neutral
];

/// Draws each face's box, label and probabilities onto the image.
pub fn annotate(image: &mut image::RgbImage, faces: &[crate::face::FaceResult], captions: &[String]) -> anyhow::Result<()> {
    register_font();
    let (w, h) = image.dimensions();
    let root = BitMapBackend::with_buffer(image.as_mut(), (w, h)).into_drawing_area();
    for (i, f) in faces.iter().enumerate() {
        let b = f.bbox;
        let color = CLASS_COLORS[crate::face::argmax(&f.probabilities)];
        let thick = ((b.w / 40.0).round() as u32).clamp(2, 8);
        let (x0, y0, x1, y1) = (b.x as i32, b.y as i32, (b.x + b.w) as i32, (b.y + b.h) as i32);
        root.draw(&Rectangle::new([(x0, y0), (x1, y1)], color.stroke_width(thick))).map_err(err)?;
        // The label above the box; the three likeliest classes below it, as bars.
        let size = (b.w / 4.0).clamp(12.0, 48.0);
        let label = captions.get(i).cloned().unwrap_or_else(|| format!("{i} {}", f.label));
        let text_y = (y0 - size as i32 - 4).max(0);
        root.draw(&Rectangle::new([(x0, text_y), (x0 + (label.len() as f64 * size * 0.55) as i32, text_y + size as i32 + 2)], color.filled())).map_err(err)?;
        root.draw(&Text::new(label, (x0 + 2, text_y), (FONT, size).into_font().color(&BLACK))).map_err(err)?;
        let mut order: Vec<usize> = (0..NUM_CLASSES).collect();
        order.sort_by(|&a, &c| f.probabilities[c].total_cmp(&f.probabilities[a]));
        let line = (size * 0.6).max(10.0);
        for (k, &c) in order[..3].iter().enumerate() {
            let y = y1 + 3 + (k as f64 * (line + 3.0)) as i32;
            let len = (b.w * f.probabilities[c] as f64) as i32;
            root.draw(&Rectangle::new([(x0, y), (x0 + len.max(1), y + line as i32)], CLASS_COLORS[c].mix(0.85).filled())).map_err(err)?;
            let text = format!("{} {:.2}", CLASSES[c], f.probabilities[c]);
            root.draw(&Text::new(text, (x0 + 2, y), (FONT, line).into_font().color(&BLACK))).map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One face's track in a video, for the summary: its id and, per sampled frame it was seen in,
/// the time and its smoothed label.
pub struct TrackLane {
    pub id: u64,
    pub labels: Vec<(f64, usize)>,
}

/// Lanes drawn at most in the summary (the tracks seen longest); the caption counts the rest.
pub const MAX_LANES: usize = 12;

/// The height of a video's summary in pixels: 520 for its chart, and with lanes, 70 for their
/// axes and 24 a lane.
pub fn summary_height(lanes: usize) -> u32 {
    if lanes == 0 { 520 } else { 520 + 70 + 24 * lanes as u32 }
}

/// A video's summary: the main track's smoothed probabilities over time (frames without it
/// leave a gap) and its share of frames per label, and below them one lane per track (the [`MAX_LANES`] seen longest, in order
/// of appearance), coloured by its smoothed label where it was seen. `step` is the sampling
/// interval: a lane's frame covers it, and a gap of more than 1.5 steps shows as white.
pub fn emotion_timeline(path: &Path, name: &str, timeline: &[(f64, Option<[f32; NUM_CLASSES]>)], lanes: &[TrackLane], tracks: usize, step: f64) -> anyhow::Result<()> {
    register_font();
    let t1 = timeline.last().map_or(1.0, |t| t.0 + step).max(1e-3);
    let with_face: Vec<usize> = timeline.iter().filter_map(|(_, p)| p.as_ref().map(crate::face::argmax)).collect();
    // Few enough time labels that they never run into each other, whatever the length.
    let time_label = |t: &f64| if t1 < 10.0 { format!("{t:.1}") } else { format!("{t:.0}") };
    let root = BitMapBackend::new(path, (1000, summary_height(lanes.len()))).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(520);
    if !lanes.is_empty() {
        // Split as the top is, so that both time axes line up.
        let (left, key) = bottom.split_horizontally(760);
        let caption = if tracks > lanes.len() {
            format!("the {} tracks seen longest (of {tracks}), by smoothed label", lanes.len())
        } else {
            format!("every track ({tracks}), by smoothed label")
        };
        let n = lanes.len() as f64;
        let mut chart = ChartBuilder::on(&left)
            .caption(caption, (FONT, 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..t1, -0.5..n - 0.5)
            .map_err(err)?;
        // The first track to appear on top.
        let ids: Vec<String> = lanes.iter().rev().map(|l| format!("#{}", l.id)).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_labels(8)
            .x_label_formatter(&time_label)
            .y_labels(lanes.len())
            .y_label_formatter(&|y| ids.get(y.round() as usize).filter(|_| (y - y.round()).abs() < 0.01).cloned().unwrap_or_default())
            .x_desc("time (s)")
            .y_desc("track")
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        for (row, lane) in lanes.iter().enumerate() {
            let y = n - 1.0 - row as f64;
            let cells = lane.labels.iter().enumerate().map(|(k, &(t, label))| {
                let next = lane.labels.get(k + 1).map_or(t + step, |n| n.0);
                let end = if next - t > 1.5 * step { t + step } else { next };
                Rectangle::new([(t, y - 0.38), (end, y + 0.38)], CLASS_COLORS[label].filled())
            });
            chart.draw_series(cells).map_err(err)?;
        }
        // The lanes' colours, named.
        for (c, class) in CLASSES.iter().enumerate() {
            let y = 40 + 20 * c as i32;
            key.draw(&Rectangle::new([(20, y), (36, y + 14)], CLASS_COLORS[c].filled())).map_err(err)?;
            key.draw(&Text::new(*class, (44, y), (FONT, 13))).map_err(err)?;
        }
    }
    let (left, right) = top.split_horizontally(760);
    let mut chart = ChartBuilder::on(&left)
        .caption(name, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t1, 0.0..1.0)
        .map_err(err)?;
    chart.configure_mesh().x_labels(8).x_label_formatter(&time_label).x_desc("time (s)").y_desc("probability").label_style((FONT, 13)).draw().map_err(err)?;
    for c in 0..NUM_CLASSES {
        // One line per run of frames with a face.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (t, p) in timeline {
            match p {
                Some(p) => runs.last_mut().unwrap().push((*t, p[c] as f64)),
                None if !runs.last().unwrap().is_empty() => runs.push(Vec::new()),
                None => {}
            }
        }
        let color = CLASS_COLORS[c];
        for (k, run) in runs.into_iter().filter(|r| !r.is_empty()).enumerate() {
            let series = chart.draw_series(LineSeries::new(run, color.stroke_width(2))).map_err(err)?;
            if k == 0 {
                series.label(CLASSES[c]).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
            }
        }
    }
    chart.configure_series_labels().label_font((FONT, 13)).background_style(WHITE.mix(0.85)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw().map_err(err)?;
    // Share of frames (with a face) per label, as bars.
    let mut bars = ChartBuilder::on(&right)
        .caption("share of frames", (FONT, 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        // Each class's bar centred on its label.
        .build_cartesian_2d(0.0..100.0, -0.5..NUM_CLASSES as f64 - 0.5)
        .map_err(err)?;
    bars.configure_mesh()
        .disable_mesh()
        .y_labels(NUM_CLASSES)
        .y_label_formatter(&|y| CLASSES.get(y.round() as usize).filter(|_| (y - y.round()).abs() < 0.01).map_or(String::new(), |c| c.to_string()))
        .x_labels(3)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("% of frames")
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    for c in 0..NUM_CLASSES {
        let share = 100.0 * with_face.iter().filter(|&&l| l == c).count() as f64 / with_face.len().max(1) as f64;
        let y = c as f64;
        bars.draw_series([Rectangle::new([(0.0, y - 0.35), (share, y + 0.35)], CLASS_COLORS[c].filled())]).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
