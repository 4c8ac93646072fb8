//! What must hold for any input to the three parsers that take untrusted bytes: shared by the
//! fuzz targets (fuzz/fuzz_targets/) and by tests/fuzz_regressions.rs, which replays the seeds
//! and every input a fuzzer ever failed on.

#![allow(dead_code)] // each fuzz target uses one of the three

use axum::body::Bytes;
use axum::http::HeaderValue;
use fer_core::media::{decode_image, MAX_PIXELS, MAX_SIDE};

/// Kaggle's fer2013.csv reader: a dataset or an error, never a panic; a dataset read is written
/// back and read again unchanged. Returns whether the bytes were a dataset.
pub fn csv(bytes: &[u8]) -> bool {
    let Ok(data) = fer::data::parse_csv(bytes, "fuzz.csv") else { return false };
    assert_eq!(data.pixels.len(), data.len() * fer::data::PIXELS);
    assert!(data.labels.iter().all(|&l| (l as usize) < fer::data::NUM_CLASSES));
    let mut written = Vec::new();
    fer::data::write_csv(&data, &mut written).expect("writes to memory");
    let again = fer::data::parse_csv(&written, "again.csv").expect("what was written reads back");
    assert_eq!((again.pixels, again.labels, again.splits), (data.pixels, data.labels, data.splits));
    true
}

/// Image decoding with its size checks: an image within the pixel limits or an error, never a
/// panic or an allocation over the limit. Returns whether the bytes were an image.
pub fn image(bytes: &[u8]) -> bool {
    let Ok(image) = decode_image(bytes) else { return false };
    let (w, h) = (image.width(), image.height());
    assert!(w.max(h) <= MAX_SIDE && w as u64 * h as u64 <= MAX_PIXELS, "{w}x{h} got through");
    let _ = image.to_luma8();
    true
}

/// POST /api/predict's body as the server handles it (`fer::serve::body_image`, then the image
/// decode): the first byte picks the content type (raw bytes; a multipart form with the boundary
/// `fuzz`; or a content type whose parameters are the input's first line), the rest is the
/// body. Image bytes or a 400, never a panic. Returns whether an image came out.
pub fn body(input: &[u8]) -> bool {
    let Some((&choice, rest)) = input.split_first() else { return false };
    let (content_type, body) = match choice % 3 {
        0 => (None, rest),
        1 => (Some("multipart/form-data; boundary=fuzz".to_string()), rest),
        _ => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            (Some(format!("multipart/form-data; {}", String::from_utf8_lossy(&rest[..end]))), rest.get(end + 1..).unwrap_or(&[]))
        }
    };
    let header = content_type.and_then(|t| HeaderValue::from_str(&t).ok());
    // One runtime for every input, built once.
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));
    match runtime.block_on(fer::serve::body_image(header.as_ref(), Bytes::copy_from_slice(body))) {
        Ok(bytes) => {
            assert!(bytes.len() <= body.len(), "a form's field is part of its body");
            image(&bytes)
        }
        Err(e) => {
            assert_eq!(e.status().as_u16(), 400, "a malformed body is a bad request");
            false
        }
    }
}
