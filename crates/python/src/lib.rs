//! `ferkit._ferkit`: the thin PyO3 layer over `fer-core`. Python's `ferkit` package
//! (`python/ferkit/__init__.py`) wraps what this returns into dataclasses; everything here
//! hands over plain tuples and releases the interpreter while it works.

use std::path::{Path, PathBuf};

use fer_core::classes::{argmax, CLASSES};
use fer_core::face::detect::DetectorOptions;
use fer_core::face::track::Tracker;
use fer_core::face::Analysis;
use fer_core::media::{self, Sampling};
use image::DynamicImage;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(ferkit, FerError, PyException, "An input or a model that fer cannot use; the message says why.");

fn error(message: impl std::fmt::Display) -> PyErr {
    FerError::new_err(message.to_string())
}

/// One face: box (x, y, w, h), detector score, label, probabilities in class order.
type RawFace = ((f64, f64, f64, f64), Option<f64>, &'static str, Vec<f32>);
/// One face of a video frame: the face, its track, its smoothed label and probabilities.
type RawTrackedFace = (RawFace, u64, &'static str, Vec<f32>);

fn raw_faces(analysis: &Analysis) -> Vec<RawFace> {
    analysis.faces.iter().map(|f| ((f.bbox.x, f.bbox.y, f.bbox.w, f.bbox.h), f.score, f.label, f.probabilities.to_vec())).collect()
}

/// The face pipeline over one model, shared by every call (and thread) that uses it.
#[pyclass(frozen, module = "ferkit._ferkit")]
struct Pipeline {
    inner: fer_core::Pipeline,
    #[pyo3(get)]
    model: String,
    #[pyo3(get)]
    card: Option<String>,
}

#[pymethods]
impl Pipeline {
    #[new]
    #[pyo3(signature = (model, min_face))]
    fn new(py: Python<'_>, model: PathBuf, min_face: f64) -> PyResult<Pipeline> {
        py.detach(|| {
            let opened = fer_core::models::open(&model).map_err(error)?;
            let classifier = opened.classifier().map_err(error)?;
            let inner = fer_core::Pipeline::new(classifier, DetectorOptions { min_face, ..Default::default() }).map_err(error)?;
            Ok(Pipeline { inner, model: opened.name, card: opened.card })
        })
    }

    /// Faces in an encoded image (JPEG, PNG, WebP, ...).
    fn predict_encoded(&self, py: Python<'_>, data: &[u8], detect: bool) -> PyResult<Vec<RawFace>> {
        py.detach(|| {
            let image = media::decode_image(data).map_err(error)?;
            Ok(raw_faces(&self.inner.analyse(&image, detect)))
        })
    }

    /// Faces in an image file, read here (so its errors read as `fer predict`'s do).
    fn predict_file(&self, py: Python<'_>, path: PathBuf, detect: bool) -> PyResult<Vec<RawFace>> {
        py.detach(|| {
            let named = |e: String| error(format!("{}: {e}", path.display()));
            let image = media::read_image(&path).map_err(named)?;
            Ok(raw_faces(&self.inner.analyse(&image, detect)))
        })
    }

    /// Faces in raw 8-bit pixels, row-major: 1 (gray), 3 (RGB) or 4 (RGBA) channels.
    fn predict_pixels(&self, py: Python<'_>, data: &[u8], width: u32, height: u32, channels: u32, detect: bool) -> PyResult<Vec<RawFace>> {
        py.detach(|| {
            let expected = width as u64 * height as u64 * channels as u64;
            if data.len() as u64 != expected {
                return Err(error(format!("{} bytes are not {width}x{height} pixels of {channels} channels", data.len())));
            }
            if width as u64 * height as u64 > media::MAX_PIXELS || width.max(height) > media::MAX_SIDE {
                return Err(error(media::ImageError::TooLarge { w: width, h: height }));
            }
            let data = data.to_vec();
            let image = match channels {
                1 => image::GrayImage::from_raw(width, height, data).map(DynamicImage::ImageLuma8),
                3 => image::RgbImage::from_raw(width, height, data).map(DynamicImage::ImageRgb8),
                4 => image::RgbaImage::from_raw(width, height, data).map(DynamicImage::ImageRgba8),
                n => return Err(error(format!("images have 1, 3 or 4 channels, not {n}"))),
            }
            .ok_or_else(|| error("the pixels do not fit the size"))?;
            Ok(raw_faces(&self.inner.analyse(&image, detect)))
        })
    }
}

/// A video's sampled frames, each with its faces linked into tracks (ffmpeg decodes them).
#[pyclass(module = "ferkit._ferkit")]
struct Video {
    pipeline: Py<Pipeline>,
    frames: Option<media::Frames>,
    tracker: Tracker,
    detect: bool,
    #[pyo3(get)]
    width: u32,
    #[pyo3(get)]
    height: u32,
    #[pyo3(get)]
    fps: f64,
    #[pyo3(get)]
    seconds: f64,
}

#[pymethods]
impl Video {
    #[new]
    #[pyo3(signature = (pipeline, path, every_seconds, smooth_seconds, detect))]
    fn new(py: Python<'_>, pipeline: Py<Pipeline>, path: PathBuf, every_seconds: f64, smooth_seconds: f64, detect: bool) -> PyResult<Video> {
        if !(every_seconds > 0.0 && every_seconds.is_finite()) {
            return Err(error(format!("every_seconds must be positive, not {every_seconds}")));
        }
        if !(smooth_seconds > 0.0 && smooth_seconds.is_finite()) {
            return Err(error(format!("smooth_seconds must be positive, not {smooth_seconds}")));
        }
        let frames = py.detach(|| open_video(&path, every_seconds))?;
        let info = frames.info;
        Ok(Video { pipeline, frames: Some(frames), tracker: Tracker::new(smooth_seconds), detect, width: info.width, height: info.height, fps: info.fps, seconds: info.seconds })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// (frame number, time in seconds, faces with their tracks), or the end.
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<(u64, f64, Vec<RawTrackedFace>)>> {
        let pipeline = self.pipeline.get();
        let (detect, tracker) = (self.detect, &mut self.tracker);
        let Some(frames) = self.frames.as_mut() else { return Ok(None) };
        let next = py.detach(|| frames.next().map(|(k, frame)| (k, frames.frame_of(k), frames.time_of(k), pipeline.inner.analyse(&DynamicImage::ImageRgb8(frame), detect))));
        let Some((_, number, time, analysis)) = next else {
            // The end, or ffmpeg's failure: say which.
            let frames = self.frames.take().expect("open until here");
            py.detach(|| frames.finish()).map_err(error)?;
            return Ok(None);
        };
        let tracked = tracker.update(time, &analysis.faces.iter().map(|f| (f.bbox, f.probabilities)).collect::<Vec<_>>());
        let faces = raw_faces(&analysis).into_iter().zip(tracked).map(|(face, t)| (face, t.track, CLASSES[argmax(&t.smoothed)], t.smoothed.to_vec())).collect();
        Ok(Some((number, time, faces)))
    }
}

fn open_video(path: &Path, every_seconds: f64) -> PyResult<media::Frames> {
    if !path.is_file() {
        return Err(error(format!("{}: no such file", path.display())));
    }
    media::Frames::open(path, Sampling::EverySeconds(every_seconds)).map_err(|e| error(format!("{}: {e}", path.display())))
}

/// The shipped models compiled into this package: (name, card as JSON).
#[pyfunction]
fn shipped_models() -> Vec<(&'static str, &'static str)> {
    fer_core::models::all().into_iter().map(|m| (m.name, m.card)).collect()
}

#[pymodule]
fn _ferkit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FerError", m.py().get_type::<FerError>())?;
    m.add("CLASSES", CLASSES.to_vec())?;
    m.add("DEFAULT_MODEL", fer_core::models::DEFAULT)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Pipeline>()?;
    m.add_class::<Video>()?;
    m.add_function(wrap_pyfunction!(shipped_models, m)?)?;
    Ok(())
}
