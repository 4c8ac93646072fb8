//! PNG figures: training curves, confusion matrices and labelled grids of faces.
//! Text uses a font compiled into the binary, so plots need no system fonts.

use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};
use std::path::Path;
use std::sync::Once;

use crate::data::{CLASSES, SIDE};
use crate::eval::Evaluation;
use crate::train::EpochMetrics;

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
    let epochs: Vec<f64> = history.iter().map(|m| m.epoch as f64).collect();
    let pick = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> { epochs.iter().copied().zip(history.iter().map(f)).collect() };
    line_chart(
        &dir.join("accuracy.png"),
        "Accuracy",
        "epoch",
        "accuracy (%)",
        &[("train", pick(|m| 100.0 * m.train_acc)), ("validation (PublicTest)", pick(|m| 100.0 * m.val_acc))],
    )?;
    line_chart(
        &dir.join("loss.png"),
        "Cross-entropy loss",
        "epoch",
        "loss",
        &[("train", pick(|m| m.train_loss)), ("validation (PublicTest)", pick(|m| m.val_loss))],
    )
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
    root.draw(&Text::new("predicted", (left + 7 * cell / 2 - 35, 45), (FONT, 16).into_font())).map_err(err)?;
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
