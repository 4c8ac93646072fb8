//! Faces in the wild: detection, FER-2013 framing, and `fer predict` on photos and videos.
mod common;

use fer::face::detect::{DetectorOptions, FaceDetector};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn the_detector_finds_the_solvay_conference() {
    let photo = image::open(fixture("solvay-1927.jpg")).unwrap().to_rgb8();
    let detector = FaceDetector::new(DetectorOptions::default()).unwrap();
    let faces = detector.detect(&photo);
    // 29 people sit or stand in the photo: at least 25 found, none twice, and no box in the
    // caption strip below them.
    assert!((25..=29).contains(&faces.len()), "{} faces", faces.len());
    assert!(faces.iter().all(|f| f.bbox.y + f.bbox.h < 860.0 && f.score > 0.7));
    for (i, a) in faces.iter().enumerate() {
        for b in &faces[i + 1..] {
            let (ax, ay) = a.bbox.centre();
            let (bx, by) = b.bbox.centre();
            assert!((ax - bx).hypot(ay - by) > 30.0, "two boxes on one face: {a:?} {b:?}");
        }
    }
    // Landmarks fall inside their box: eyes in the upper half, mouth corners in the lower.
    for f in &faces {
        let b = f.bbox;
        let inside = |(x, y): (f64, f64)| x > b.x && x < b.x + b.w && y > b.y && y < b.y + b.h;
        assert!(f.landmarks.iter().all(|&p| inside(p)), "{f:?}");
        assert!(f.landmarks[0].1 < b.y + b.h / 2.0 && f.landmarks[3].1 > b.y + b.h / 2.0, "{f:?}");
    }
}
