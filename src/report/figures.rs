//! The report's figures, drawn from the records at render time: accuracy against FLOPs with the
//! front, time to accuracy, a run's curves, and the class balance. Legends sit outside the data
//! and only the points a reader needs are labelled, so a figure stays legible at a page's width.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

use super::{load_run, ANCHORS};
use crate::data::CLASSES;

const FONT: &str = "sans-serif";
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(230, 110, 0);
const LIGHT_BLUE: RGBColor = RGBColor(120, 170, 210);
const GREY: RGBColor = RGBColor(130, 130, 130);
const PALETTE: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(230, 110, 0), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("figure: {e}")
}

/// How a legend entry is drawn: as its series is.
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dot,
    Cross,
    Triangle,
}

/// A legend drawn in its own area, beside or below the plot: one row per entry.
fn legend(area: &DrawingArea<BitMapBackend, Shift>, entries: &[(String, RGBColor, Mark)]) -> anyhow::Result<()> {
    for (i, (label, color, mark)) in entries.iter().enumerate() {
        let y = 20 + 26 * i as i32;
        match mark {
            Mark::Line => area.draw(&PathElement::new(vec![(8, y), (34, y)], color.stroke_width(3))),
            Mark::Dot => area.draw(&Circle::new((21, y), 5, color.filled())),
            Mark::Cross => area.draw(&Cross::new((21, y), 7, color.stroke_width(3))),
            Mark::Triangle => area.draw(&TriangleMarker::new((21, y), 7, color.filled())),
        }
        .map_err(err)?;
        area.draw(&Text::new(label.clone(), (42, y - 9), (FONT, 17).into_font().color(&BLACK))).map_err(err)?;
    }
    Ok(())
}

/// PrivateTest accuracy against fvcore GFLOPs (log scale): every run as a dot, the shipped
/// models as labelled crosses, the front (no cheaper point is as accurate) as a line, and the
/// published reference points as grey triangles.
pub fn pareto(path: &Path, runs: &[std::path::PathBuf], models: &[std::path::PathBuf]) -> anyhow::Result<()> {
    crate::plot::register_font();
    // A shipped model's run is the same weights before folding: one point, drawn as the model.
    let mut shipped = Vec::new();
    let mut shipped_runs = Vec::new();
    for dir in models {
        let card = super::load_card(dir)?;
        shipped.push((card.name.clone(), card.fvcore_flops as f64 / 1e9, 100.0 * card.test_acc));
        shipped_runs.extend(super::records::card_value(dir)?["run"].as_str().map(String::from));
    }
    let mut dots = Vec::new();
    for dir in runs.iter().filter(|d| !d.file_name().is_some_and(|n| shipped_runs.iter().any(|r| n == r.as_str()))) {
        let s = load_run(dir)?.summary;
        dots.push((s.fvcore_flops as f64 / 1e9, 100.0 * s.test_acc));
    }
    let mut front: Vec<(f64, f64)> = dots.iter().copied().chain(shipped.iter().map(|s| (s.1, s.2))).collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best = f64::MIN;
    front.retain(|p| {
        let keep = p.1 > best;
        best = best.max(p.1);
        keep
    });
    let xs = dots.iter().map(|p| p.0).chain(shipped.iter().map(|s| s.1)).chain(ANCHORS.iter().map(|a| a.2));
    let ys = dots.iter().map(|p| p.1).chain(shipped.iter().map(|s| s.2)).chain(ANCHORS.iter().map(|a| a.1));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));

    let root = BitMapBackend::new(path, (1100, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, side) = root.split_horizontally(820);
    let mut chart = ChartBuilder::on(&plot)
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 / 2.0..x1 * 3.0).log_scale(), (y0 - 3.0).floor()..(y1 + 3.0).ceil())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("fvcore GFLOPs of one forward pass (log scale)")
        .y_desc("PrivateTest accuracy (%)")
        .x_label_formatter(&|v| format!("{v}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(err)?;
    chart.draw_series(LineSeries::new(front.iter().copied(), BLUE.mix(0.5).stroke_width(2))).map_err(err)?;
    chart.draw_series(dots.iter().map(|&p| Circle::new(p, 4, LIGHT_BLUE.filled()))).map_err(err)?;
    let label = |text: String, color: RGBColor, dx: i32, dy: i32| {
        move |coord: (f64, f64)| EmptyElement::at(coord) + Text::new(text.clone(), (dx, dy), (FONT, 17).into_font().color(&color))
    };
    // Each label goes where it covers the fewest points and stays inside the plot: the first
    // free place among its candidates, in order of preference (pixel offsets from its point).
    let px = |p: (f64, f64)| chart.backend_coord(&p);
    let shipped_px: Vec<(i32, i32)> = shipped.iter().map(|s| px((s.1, s.2))).collect();
    let anchors_px: Vec<(i32, i32)> = ANCHORS.iter().map(|a| px((a.2, a.1))).collect();
    let mut marks: Vec<(i32, i32)> = dots.iter().map(|&p| px(p)).collect();
    marks.extend(shipped_px.iter().chain(&anchors_px));
    for w in front.windows(2) {
        let (a, b) = (px(w[0]), px(w[1]));
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) / 4).max(1);
        marks.extend((0..=steps).map(|i| (a.0 + (b.0 - a.0) * i / steps, a.1 + (b.1 - a.1) * i / steps)));
    }
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let place = |marks: &mut Vec<(i32, i32)>, at: (i32, i32), width: i32, candidates: &[(i32, i32)]| -> (i32, i32) {
        let cost = |&(dx, dy): &(i32, i32)| {
            // The text's box, grown by a marker's radius.
            let (l, t, r, b) = (at.0 + dx - 6, at.1 + dy - 6, at.0 + dx + width + 6, at.1 + dy + 23);
            let covered = marks.iter().filter(|m| m.0 >= l && m.0 <= r && m.1 >= t && m.1 <= b && **m != at).count();
            let outside = l < xr.start || r > xr.end || t < yr.start || b > yr.end;
            covered + if outside { 1000 } else { 0 }
        };
        let (dx, dy) = candidates.iter().copied().min_by_key(|c| cost(c)).unwrap_or((10, 4));
        // Later labels avoid this one too.
        marks.extend((0..=width / 6).flat_map(|i| [(at.0 + dx + 6 * i, at.1 + dy + 2), (at.0 + dx + 6 * i, at.1 + dy + 15)]));
        (dx, dy)
    };
    for ((name, x, y), at) in shipped.iter().zip(shipped_px) {
        chart.draw_series([Cross::new((*x, *y), 8, ORANGE.stroke_width(3))]).map_err(err)?;
        let text = format!("{name} {y:.2}%");
        let width = 8 * text.len() as i32;
        let (dx, dy) = place(&mut marks, at, width, &[(10, 4), (10, -24), (-width - 10, -24), (-width - 10, 4)]);
        chart.draw_series([label(text, ORANGE, dx, dy)((*x, *y))]).map_err(err)?;
    }
    for ((name, y, x), at) in ANCHORS.into_iter().zip(anchors_px) {
        chart.draw_series([TriangleMarker::new((x, y), 7, GREY.filled())]).map_err(err)?;
        let width = 8 * name.len() as i32;
        let (dx, dy) = place(&mut marks, at, width, &[(12, -9), (-width / 2, -28), (-width / 2, 10), (-width - 12, -9)]);
        chart.draw_series([label(name.to_string(), GREY, dx, dy)((x, y))]).map_err(err)?;
    }
    legend(
        &side,
        &[
            ("a run of this project, as trained".into(), LIGHT_BLUE, Mark::Dot),
            ("the front (runs and models)".into(), BLUE, Mark::Line),
            ("shipped model, BN folded".into(), ORANGE, Mark::Cross),
            ("published".into(), GREY, Mark::Triangle),
        ],
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// PublicTest accuracy against cumulative training time (minutes), one labelled line per run
/// (at most six: a figure with more is not read), the legend beside the plot.
pub fn time_to_accuracy(path: &Path, runs: &[std::path::PathBuf], labels: &[String]) -> anyhow::Result<()> {
    crate::plot::register_font();
    anyhow::ensure!(runs.len() == labels.len(), "time_plot: {} runs but {} labels", runs.len(), labels.len());
    anyhow::ensure!(runs.len() <= PALETTE.len(), "time_plot: at most {} runs, got {}", PALETTE.len(), runs.len());
    let mut series = Vec::new();
    for dir in runs {
        let run = load_run(dir)?;
        let mut t = 0.0;
        let pts: Vec<(f64, f64)> = run
            .metrics
            .iter()
            .filter_map(|m| {
                t += m.seconds / 60.0;
                m.val_acc.map(|a| (t, 100.0 * a))
            })
            .collect();
        anyhow::ensure!(!pts.is_empty(), "{}: no metrics.jsonl to plot", dir.display());
        series.push(pts);
    }
    let x1 = series.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let (y0, y1) = series.iter().flatten().map(|p| p.1).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, side) = root.split_horizontally(760);
    let mut chart = ChartBuilder::on(&plot)
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..x1 * 1.05).log_scale(), (y0 - 2.0).floor()..(y1 + 2.0).ceil())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training time (minutes, log scale)")
        .y_desc("PublicTest accuracy (%)")
        .x_label_formatter(&|v| format!("{v}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(err)?;
    for (i, pts) in series.iter().enumerate() {
        chart.draw_series(LineSeries::new(pts.iter().copied(), PALETTE[i].stroke_width(2))).map_err(err)?;
    }
    legend(&side, &labels.iter().enumerate().map(|(i, l)| (l.clone(), PALETTE[i], Mark::Line)).collect::<Vec<_>>())?;
    root.present().map_err(err)?;
    Ok(())
}

/// A run's accuracy and loss by epoch, side by side: what it was trained on (the training
/// objective, with its label smoothing, distillation or mixup) against PublicTest's plain
/// cross-entropy, named as such.
pub fn curves(path: &Path, dir: &Path) -> anyhow::Result<()> {
    crate::plot::register_font();
    let run = load_run(dir)?;
    anyhow::ensure!(!run.metrics.is_empty(), "{}: no metrics.jsonl to plot", dir.display());
    let root = BitMapBackend::new(path, (1100, 470)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (panels, below) = root.split_vertically(410);
    let (left, right) = panels.split_horizontally(550);
    let epochs = run.metrics.len() as f64;
    // PublicTest's values are missing for the epochs `eval_from` did not score.
    type Pick = fn(&crate::record::EpochMetrics) -> Option<f64>;
    let panel = |area: &DrawingArea<BitMapBackend, Shift>, title: &str, y_desc: &str, train: Pick, val: Pick| -> anyhow::Result<()> {
        let values = run.metrics.iter().flat_map(|m| [train(m), val(m)]).flatten();
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = (hi - lo) * 0.08 + 1e-6;
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(1f64..epochs.max(2.0), (lo - pad)..(hi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(err)?;
        for (pick, color) in [(train, PALETTE[0]), (val, PALETTE[1])] {
            chart.draw_series(LineSeries::new(run.metrics.iter().filter_map(|m| pick(m).map(|v| (m.epoch as f64, v))), color.stroke_width(2))).map_err(err)?;
        }
        Ok(())
    };
    panel(&left, "Accuracy", "accuracy (%)", |m| Some(100.0 * m.train_acc), |m| m.val_acc.map(|a| 100.0 * a))?;
    panel(&right, "Loss", "loss", |m| Some(m.train_loss), |m| m.val_loss)?;
    let (a, b) = below.split_horizontally(550);
    // The baseline trains on the faces as they are; most runs on augmented ones.
    let augmented = crate::config::Config::parse(&run.config).map_or(true, |c| c.augment != crate::config::AugmentConfig::default());
    let batches = if augmented { "accuracy on the augmented batches" } else { "accuracy on the batches" };
    legend(&a, &[(format!("Training: {batches}; loss = the training objective"), PALETTE[0], Mark::Line)])?;
    legend(&b, &[("PublicTest: accuracy; loss = plain cross-entropy".into(), PALETTE[1], Mark::Line)])?;
    root.present().map_err(err)?;
    Ok(())
}

/// Each class's share of its split (Training, PublicTest, PrivateTest), as grouped bars with the
/// counts above them: the imbalance, and that the three splits share it.
pub fn class_counts(path: &Path, stats: &Path) -> anyhow::Result<()> {
    crate::plot::register_font();
    let stats = super::records::json_value(stats)?;
    let splits = ["Training", "PublicTest", "PrivateTest"];
    let count = |split: &str, class: &str| -> anyhow::Result<f64> {
        stats["counts"][split][class].as_f64().ok_or_else(|| anyhow::anyhow!("data statistics: no count for {class} in {split}"))
    };
    let mut shares = Vec::new();
    for split in splits {
        let total: f64 = CLASSES.iter().map(|c| count(split, c)).sum::<anyhow::Result<f64>>()?;
        shares.push(CLASSES.iter().map(|c| Ok((count(split, c)?, 100.0 * count(split, c)? / total))).collect::<anyhow::Result<Vec<_>>>()?);
    }
    let top = shares.iter().flatten().map(|s| s.1).fold(0.0, f64::max);
    let root = BitMapBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, side) = root.split_horizontally(880);
    let mut chart = ChartBuilder::on(&plot)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..CLASSES.len() as f64, 0f64..top * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(CLASSES.len() * 2 + 1)
        .x_label_formatter(&|v| {
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() < 0.01 && i < CLASSES.len() {
                CLASSES[i].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("share of the split's faces (%)")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(err)?;
    for (s, split) in shares.iter().enumerate() {
        let color = PALETTE[s];
        for (c, &(n, share)) in split.iter().enumerate() {
            let x = c as f64 + 0.12 + 0.26 * s as f64;
            chart.draw_series([Rectangle::new([(x, 0.0), (x + 0.24, share)], color.filled())]).map_err(err)?;
            if s == 0 {
                chart
                    .draw_series([EmptyElement::at((x, share)) + Text::new(format!("{n:.0}"), (-4, -18), (FONT, 13).into_font().color(&BLACK))])
                    .map_err(err)?;
            }
        }
    }
    let entries: Vec<(String, RGBColor, Mark)> = splits.iter().enumerate().map(|(i, s)| (s.to_string(), PALETTE[i], Mark::Dot)).collect();
    legend(&side, &entries)?;
    side.draw(&Text::new("numbers: Training faces", (8, 110), (FONT, 15).into_font().color(&BLACK))).map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
