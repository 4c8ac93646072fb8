//! Faces in the wild: detection, FER-2013 framing, and `fer predict` on photos and videos.
mod common;

use common::fixture;

use fer::face::detect::{DetectorOptions, FaceDetector};
use std::path::Path;

#[test]
fn the_detector_finds_the_solvay_conference() {
    let photo = image::open(fixture("solvay-1927.jpg")).unwrap().to_rgb8();
    let detector = FaceDetector::new(DetectorOptions::default()).unwrap();
    let faces = detector.detect(&photo);
    // 29 people sit or stand in the photo: all found, none twice, and no box in the caption
    // strip below them.
    assert_eq!(faces.len(), 29, "{} faces", faces.len());
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

fn fer(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fer")).current_dir(dir).args(["--threads", "2"]).args(args).output().unwrap()
}

fn has_ffmpeg() -> bool {
    let ok = std::process::Command::new("ffmpeg").arg("-version").output().is_ok_and(|o| o.status.success());
    if !ok {
        common::skip("ffmpeg is not installed (scripts/env.sh installs it)");
    }
    ok
}

/// A crop of the Solvay photo with a handful of faces, as a PNG of `w` x `h` at (`x`, `y`).
fn solvay_crop(dest: &Path, x: u32, y: u32, w: u32, h: u32) {
    let photo = image::open(fixture("solvay-1927.jpg")).unwrap();
    photo.crop_imm(x, y, w, h).save(dest).unwrap();
}

#[test]
fn predict_labels_every_face_and_names_every_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let photos = d.join("photos");
    std::fs::create_dir_all(photos.join("nested")).unwrap();
    std::fs::copy(fixture("solvay-1927.jpg"), photos.join("solvay.jpg")).unwrap();
    solvay_crop(&photos.join("nested/front-row.webp"), 0, 220, 640, 200);
    image::RgbImage::from_pixel(300, 200, image::Rgb([40, 120, 200])).save(photos.join("sky.png")).unwrap();
    std::fs::write(photos.join("notes.jpg"), "not an image at all").unwrap();
    std::fs::write(photos.join("empty.png"), "").unwrap();
    let jpeg = std::fs::read(fixture("solvay-1927.jpg")).unwrap();
    std::fs::write(photos.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    // A BMP whose header claims 60000 x 60000 pixels: a decompression bomb.
    let mut bmp = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(1, 1).write_to(&mut bmp, image::ImageFormat::Bmp).unwrap();
    let mut bmp = bmp.into_inner();
    bmp[18..22].copy_from_slice(&60_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&60_000i32.to_le_bytes());
    std::fs::write(photos.join("bomb.bmp"), bmp).unwrap();
    // A real image, too big: 12000 x 9000 pixels (108 megapixels) of one colour.
    image::GrayImage::new(12_000, 9_000).save(photos.join("huge.png")).unwrap();
    // A PNG signature over garbage: recognised, unreadable.
    std::fs::write(photos.join("garbled.png"), [&b"\x89PNG\r\n\x1a\n"[..], &[7u8; 200]].concat()).unwrap();

    let o = fer(d, &["predict", "--json", "photos", "missing.png", "--annotate", "annotated"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{err}");
    for (name, why) in [
        ("notes.jpg", "not an image"),
        ("empty.png", "empty file"),
        ("truncated.jpg", "truncated Jpeg image"),
        ("bomb.bmp", "60000x60000 pixels is over the limit"),
        ("huge.png", "12000x9000 pixels is over the limit"),
        ("garbled.png", "unreadable Png image"),
        ("missing.png", "no such file or folder"),
    ] {
        assert!(err.lines().any(|l| l.starts_with("error: ") && l.contains(name) && l.contains(why)), "{name}: {err}");
    }
    assert!(err.contains("sky.png: no face found"), "{err}");
    assert!(err.contains("7 of 10 inputs failed"), "{err}");

    // One JSON line per face, with the documented fields; the good files were all processed; a
    // photo without a face has one line that says so.
    let mut lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let faceless: Vec<serde_json::Value> = lines.iter().filter(|l| l["face"].is_null()).cloned().collect();
    assert_eq!(faceless, [serde_json::json!({ "file": photos.join("sky.png").strip_prefix(d).unwrap().to_str().unwrap(), "face": null })]);
    lines.retain(|l| !l["face"].is_null());
    let in_file = |name: &str| lines.iter().filter(|l| l["file"].as_str().unwrap().ends_with(name)).count();
    assert_eq!(in_file("solvay.jpg"), 29, "{out}");
    assert!(in_file("front-row.webp") >= 3, "{out}");
    for l in &lines {
        for key in ["file", "face", "box", "score", "label", "probabilities"] {
            assert!(!l[key].is_null(), "{key} missing: {l}");
        }
        // Photos have no frame or time: the keys are there, empty.
        assert!(l.get("frame").is_some_and(|v| v.is_null()) && l.get("time").is_some_and(|v| v.is_null()), "{l}");
        let total: f64 = l["probabilities"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4);
        assert!(l["box"]["w"].as_f64().unwrap() > 20.0 && l["score"].as_f64().unwrap() > 0.7);
    }
    // Annotated copies decode, at the size of their source.
    let annotated = image::open(d.join("annotated/solvay.annotated.png")).unwrap();
    assert_eq!((annotated.width(), annotated.height()), (1666, 1136));
    assert!(d.join("annotated/front-row.annotated.png").is_file());

    // CSV: a header, then one row per face with the same fields.
    let o = fer(d, &["predict", "--csv", "photos/nested"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = String::from_utf8_lossy(&o.stdout);
    assert!(csv.starts_with("file,frame,time,face,x,y,w,h,score,label,angry,disgust,fear,happy,sad,surprise,neutral,track,smoothed_label,smoothed_angry,"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + in_file("front-row.webp"));
}

#[test]
fn predict_reads_standard_input_and_pre_cropped_faces() {
    let dir = tempfile::tempdir().unwrap();
    let face = image::GrayImage::from_fn(48, 48, |x, y| image::Luma([(x * 5 + y * 2) as u8]));
    face.save(dir.path().join("face.png")).unwrap();
    // A 48x48 grayscale image is a pre-cropped face: classified whole, without detection.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fer"))
        .current_dir(dir.path())
        .args(["predict", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &std::fs::read(dir.path().join("face.png")).unwrap()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(line["file"], "<stdin>");
    assert_eq!(line["score"], serde_json::Value::Null, "no detection");
    assert_eq!(line["box"]["w"], 48.0);
}

/// `--faces` writes the 48x48 frames the classifier saw: classified again as pre-cropped faces,
/// they give back exactly the probabilities of the photo's faces.
#[test]
fn predict_writes_the_faces_it_classified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    solvay_crop(&d.join("front-row.png"), 0, 220, 640, 200);
    let o = fer(d, &["predict", "--json", "--faces", "faces", "front-row.png"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let found: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(found.len() >= 3, "a handful of faces in the front row, not {}", found.len());
    for (i, face) in found.iter().enumerate() {
        let path = d.join(format!("faces/front-row-{i}.png"));
        let frame = image::open(&path).unwrap();
        assert_eq!((frame.width(), frame.height(), frame.color()), (48, 48, image::ColorType::L8), "{}", path.display());
        let again = fer(d, &["predict", "--json", "--no-detect", path.to_str().unwrap()]);
        let again: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&again.stdout).trim()).unwrap();
        assert_eq!(again["probabilities"], face["probabilities"], "face {i}");
    }
    assert!(!d.join(format!("faces/front-row-{}.png", found.len())).exists(), "one file a face");
}

#[test]
fn predict_samples_a_video_and_annotates_it() {
    if !has_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    solvay_crop(&d.join("group.png"), 0, 180, 640, 360);
    // 2 seconds at 10 frames per second of the same group photo.
    let made = std::process::Command::new("ffmpeg")
        .current_dir(d)
        .args(["-v", "error", "-loop", "1", "-i", "group.png", "-t", "2", "-r", "10", "-pix_fmt", "yuv420p", "group.mp4"])
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(d.join("broken.mp4"), "this is not a video").unwrap();

    let o = fer(d, &["predict", "--json", "--every", "5", "group.mp4", "broken.mp4", "--annotate", "out"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("error: broken.mp4") && l.contains("ffmpeg cannot read it")), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let frames: std::collections::BTreeSet<u64> = lines.iter().map(|l| l["frame"].as_u64().unwrap()).collect();
    assert_eq!(frames.into_iter().collect::<Vec<_>>(), [0, 5, 10, 15], "every 5th of 20 frames");
    // Every face is on a track; the same people in every frame keep theirs, one each.
    let per_frame = lines.iter().filter(|l| l["frame"] == 0).count();
    let tracks: std::collections::BTreeSet<u64> = lines.iter().map(|l| l["track"].as_u64().expect("a track")).collect();
    assert!(per_frame >= 5 && tracks.len() == per_frame, "{} tracks for {per_frame} faces a frame", tracks.len());
    for l in &lines {
        assert!(fer::data::CLASSES.contains(&l["smoothed_label"].as_str().unwrap()) && l["smoothed"].as_object().unwrap().len() == 7, "{l}");
    }
    assert!(err.contains("labels change") && err.contains("smoothed (half-life 0.5 s)"), "{err}");
    let last = lines.iter().find(|l| l["frame"] == 15).unwrap();
    assert!((last["time"].as_f64().unwrap() - 1.5).abs() < 1e-6);
    assert!(err.contains("group.mp4: 4 frames sampled"), "{err}");
    // The annotated video decodes (4 frames), and the summary plot is there.
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(d.join("out/group.annotated.mp4"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "4");
    // The summary has a lane per track under its chart.
    let summary = image::open(d.join("out/group.annotated.summary.png")).unwrap();
    let lanes = tracks.len().min(fer::plot::MAX_LANES);
    assert_eq!(summary.height(), fer::plot::summary_height(lanes), "one lane per track ({} tracks)", tracks.len());
}

/// Both detectors, the inference core's (its networks in tract, as the Python package runs it)
/// and `fer`'s (the same search, its networks in libtorch), against what the libtorch detector
/// found in the fixture photo before the core existed, at three smallest-face sizes
/// (`tests/fixtures/detections-libtorch.json`): the same faces, every box within 1 px, the same
/// labels from the tiny model.
#[test]
fn both_detectors_find_what_the_libtorch_one_did_before_the_move() {
    let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("detections-libtorch.json")).unwrap()).unwrap();
    let photo = image::open(fixture("solvay-1927.jpg")).unwrap();
    let chosen = fer::models::choose(None).unwrap();
    for case in recorded["cases"].as_array().unwrap() {
        let min_face = case["min_face"].as_f64().unwrap();
        let options = DetectorOptions { min_face, ..Default::default() };
        let pipelines = [("libtorch", chosen.pipeline(options).unwrap()), ("tract", fer::face::Pipeline::new(chosen.classifier().unwrap(), options).unwrap())];
        for (runtime, pipeline) in &pipelines {
            let got = pipeline.analyse(&photo, true).faces;
            let expected = case["faces"].as_array().unwrap();
            assert_eq!(got.len(), expected.len(), "{runtime}, min_face {min_face}: faces found");
            let mut worst = 0f64;
            for e in expected {
                let b = &e["box"];
                let (x, y, w, h) = (b["x"].as_f64().unwrap(), b["y"].as_f64().unwrap(), b["w"].as_f64().unwrap(), b["h"].as_f64().unwrap());
                let distance = |f: &&fer::face::FaceResult| (f.bbox.x - x).abs() + (f.bbox.y - y).abs();
                let nearest = got.iter().min_by(|p, q| distance(p).total_cmp(&distance(q))).unwrap();
                let off = [(nearest.bbox.x - x).abs(), (nearest.bbox.y - y).abs(), (nearest.bbox.w - w).abs(), (nearest.bbox.h - h).abs()].into_iter().fold(0f64, f64::max);
                worst = worst.max(off);
                assert!(off <= 1.0, "{runtime}, min_face {min_face}: a box moved by {off:.2} px: {:?} against {b}", nearest.bbox);
                assert_eq!(nearest.label, e["label"].as_str().unwrap(), "{runtime}, min_face {min_face}: the face at {b}");
            }
            eprintln!("{runtime}, min_face {min_face}: {} faces, boxes within {worst:.4} px of the record", got.len());
        }
    }
}

#[test]
fn calibrated_framing_gives_back_the_faces_the_model_knows() {
    let Some(path) = common::real_data() else { return };
    let data = fer::data::load(&path).unwrap();
    let mut pipeline = fer::models::choose(None).unwrap().pipeline(DetectorOptions::default()).unwrap();
    // 300 PublicTest faces, each enlarged 3x with room around it, as a face in a photo would be.
    let picks: Vec<usize> = data.indices(fer::data::Split::PublicTest).into_iter().step_by(12).take(300).collect();
    let mut direct = fer::data::Faces::default();
    for &i in &picks {
        direct.pixels.extend_from_slice(data.image(i));
        direct.labels.push(data.labels[i]);
    }
    let direct: Vec<usize> = pipeline.classifier.probabilities(&direct.pixels).iter().map(fer::face::argmax).collect();
    let mut agreement = |framing: fer::face::frame::Framing| -> (usize, usize) {
        pipeline.framing = framing;
        let (mut found, mut same) = (0, 0);
        for (k, &i) in picks.iter().enumerate() {
            let (canvas, frame) = fer::face::frame::embed(data.image(i), 3, 0.5);
            let analysis = pipeline.analyse(&image::DynamicImage::ImageRgb8(canvas), true);
            let face = analysis.faces.iter().find(|f| {
                let (cx, cy) = f.bbox.centre();
                cx > frame.x && cx < frame.x + frame.w && cy > frame.y && cy < frame.y + frame.h
            });
            if let Some(f) = face {
                found += 1;
                same += usize::from(fer::face::argmax(&f.probabilities) == direct[k]);
            }
        }
        (found, same)
    };
    let shipped = fer::face::frame::Framing::shipped();
    let (found, same) = agreement(shipped.clone());
    // The raw box: its own width and centre (the landmarks' centroid sits a little below it).
    let (_, same_raw) = agreement(fer::face::frame::Framing { side: 1.0, dx: 0.0, dy: -0.1, ..shipped });
    eprintln!("found {found} of {}; same label as the original face: {same} calibrated, {same_raw} with the raw box", picks.len());
    assert!(found * 100 >= picks.len() * 80, "the detector finds most faces: {found}");
    assert!(same * 100 >= found * 70, "framed faces mostly get the original's label: {same} of {found}");
    // Measured: 207 vs 198 of 264 with the shipped tiny model (taught by three accurate runs);
    // 211 vs 183 with the one taught by one (seed 1; seed 0 213 vs 198), the 60-epoch one 205 vs
    // 188, the plain one 77% vs 67%; the margin asks for more than a couple of faces.
    assert!(same > same_raw + found / 40, "the calibration beats the raw box: {same} vs {same_raw}");
}

#[test]
fn large_photos_are_searched_smaller_and_answered_in_their_own_pixels() {
    let photo = image::open(fixture("solvay-1927.jpg")).unwrap();
    let pipeline = fer::models::choose(None).unwrap().pipeline(DetectorOptions::default()).unwrap();
    let small: Vec<(f64, f64)> = pipeline.analyse(&photo, true).faces.iter().map(|f| f.bbox.centre()).collect();
    // Twice the size: 7.6 megapixels, searched at 4.
    let big = photo.resize_exact(3332, 2272, image::imageops::FilterType::Triangle);
    let faces = pipeline.analyse(&big, true).faces;
    let matched = faces
        .iter()
        .filter(|f| {
            let (x, y) = f.bbox.centre();
            small.iter().any(|&(sx, sy)| (x / 2.0 - sx).hypot(y / 2.0 - sy) < 6.0)
        })
        .count();
    // Every one of the original's 29 faces is found again; at 7.6 megapixels one more box may
    // appear (there is one today).
    assert_eq!((small.len(), matched), (29, 29), "faces in the original, and found again where they sit");
    assert!(faces.len() <= 30, "{} boxes", faces.len());
}

#[test]
fn calibrating_on_no_faces_is_an_error_not_a_panic() {
    let detector = FaceDetector::new(DetectorOptions::default()).unwrap();
    let data = common::synthetic([4, 2, 2], 3);
    let bar = indicatif::ProgressBar::hidden();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fer::calibrate::calibrate(&data, fer::data::Split::PublicTest, 0, &detector, &bar).map(|_| ())));
    assert!(matches!(&result, Ok(Err(e)) if e.to_string().contains("--faces")), "{:?}", result.as_ref().map(|r| r.as_ref().map_err(|e| e.to_string())));
}

#[test]
fn a_phone_video_is_read_upright_and_a_playlist_in_disguise_is_refused() {
    if !has_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    solvay_crop(&d.join("group.png"), 0, 180, 640, 360);
    let ffmpeg = |args: &[&str]| assert!(std::process::Command::new("ffmpeg").current_dir(d).args(["-v", "error", "-y"]).args(args).status().unwrap().success());
    ffmpeg(&["-loop", "1", "-i", "group.png", "-t", "1", "-r", "5", "-pix_fmt", "yuv420p", "plain.mp4"]);
    // As a phone stores it: the frames sideways (360x640), tagged to be shown turned back a
    // quarter (ffmpeg's rotate=90 is counter-clockwise, as its display matrix says).
    image::imageops::rotate90(&image::open(d.join("group.png")).unwrap().to_rgb8()).save(d.join("sideways.png")).unwrap();
    ffmpeg(&["-loop", "1", "-i", "sideways.png", "-t", "1", "-r", "5", "-pix_fmt", "yuv420p", "stored.mp4"]);
    ffmpeg(&["-i", "stored.mp4", "-c", "copy", "-metadata:s:v:0", "rotate=90", "phone.mp4"]);
    let frames = |name: &str| {
        let mut frames = fer::media::Frames::open(&d.join(name), fer::media::Sampling::EveryNth(1)).unwrap();
        let first: Vec<image::RgbImage> = frames.by_ref().map(|(_, f)| f).collect();
        frames.finish().unwrap();
        first
    };
    let (plain, phone) = (frames("plain.mp4"), frames("phone.mp4"));
    assert_eq!((plain.len(), phone.len()), (5, 5));
    assert_eq!(plain[0].dimensions(), (640, 360));
    assert_eq!(phone[0].dimensions(), (640, 360), "shown upright, so read upright");
    // Frame for frame, the phone's is the plain one.
    let diff: f64 = plain[0].as_raw().iter().zip(phone[0].as_raw()).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / phone[0].as_raw().len() as f64;
    assert!(diff < 4.0, "the phone frame differs from the plain one by {diff} levels on average");
    // And its faces are found, as many as in the plain video.
    let faces = |name: &str| {
        let o = fer(d, &["predict", "--json", "--every", "5", name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    let (plain_faces, phone_faces) = (faces("plain.mp4"), faces("phone.mp4"));
    assert!(plain_faces >= 5 && phone_faces == plain_faces, "{phone_faces} faces in the phone clip, {plain_faces} in the plain one");

    // A playlist named like a video, pointing at a local file: ffmpeg would follow it.
    std::fs::write(d.join("evil.mp4"), format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{}\n#EXT-X-ENDLIST\n", d.join("plain.mp4").display())).unwrap();
    let err = match fer::media::Frames::open(&d.join("evil.mp4"), fer::media::Sampling::EveryNth(1)) {
        Ok(_) => panic!("the playlist was opened"),
        Err(e) => e,
    };
    assert!(err.contains("ffmpeg cannot read it as a video"), "{err}");
}

#[test]
fn folders_are_walked_once_through_symlink_loops_and_annotated_copies_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["photos/a", "photos/b"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let face = image::GrayImage::from_fn(48, 48, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
    face.save(d.join("photos/a/x.png")).unwrap();
    face.save(d.join("photos/b/x.png")).unwrap();
    face.save(d.join("photos/b/X-2.png")).unwrap();
    // A link from deep inside back to the top: a loop.
    std::os::unix::fs::symlink(d.join("photos"), d.join("photos/b/loop")).unwrap();
    let o = fer(d, &["predict", "--json", "photos", "--annotate", "out"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    let files: std::collections::BTreeSet<String> = out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].as_str().unwrap().to_string()).collect();
    assert_eq!(files.len(), 3, "each photo once: {files:?}");
    let mut copies: Vec<String> = std::fs::read_dir(d.join("out")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    copies.sort();
    assert_eq!(copies, ["X-2.annotated.png", "x-3.annotated.png", "x.annotated.png"], "three inputs, three copies");
}

#[test]
fn the_detectors_onnx_files_are_what_fer_detect_export_writes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/detector");
    let weights = std::fs::read(dir.join("mtcnn.safetensors")).unwrap();
    let files = fer::nn::onnx::detector_onnx(&weights).unwrap();
    assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), ["pnet.onnx", "rnet.onnx", "onet.onnx"]);
    for (file, bytes) in files {
        assert!(std::fs::read(dir.join(file)).unwrap() == bytes, "models/detector/{file} is stale: run `fer detect export`");
    }
}

/// The inference core is what the Python package and any program that only uses a model link:
/// libtorch must stay out of it.
#[test]
fn the_inference_core_does_not_depend_on_libtorch() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "fer-core", "-e", "normal", "--prefix", "none", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.lines().any(|l| l.starts_with("tract-onnx ")), "the core runs its networks in tract:\n{tree}");
    let torch: Vec<&str> = tree.lines().filter(|l| l.starts_with("tch ") || l.starts_with("torch-sys ")).collect();
    assert!(torch.is_empty(), "fer-core depends on {torch:?}");
}

/// `fer predict` over a list of files: read as it goes, every input given at least one line,
/// continued where it stopped with --resume (the same lines as one uninterrupted run), and split
/// into shards that cover the list exactly once.
#[test]
fn predict_streams_a_list_resumes_where_it_stopped_and_splits_into_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut names = Vec::new();
    for i in 0..9u32 {
        let name = format!("p{i}.png");
        if i % 3 == 0 {
            image::RgbImage::from_pixel(120, 90, image::Rgb([30 * i as u8, 90, 160])).save(d.join(&name)).unwrap();
        } else {
            solvay_crop(&d.join(&name), 60 * i, 200, 320, 240);
        }
        names.push(name);
    }
    std::fs::write(d.join("list.txt"), names.join("\n") + "\n\n").unwrap();
    let o = fer(d, &["predict", "--json", "--files-from", "list.txt", "--output", "all.jsonl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "the lines go to the file");
    let all = std::fs::read_to_string(d.join("all.jsonl")).unwrap();
    let files = |text: &str| -> Vec<String> {
        let mut f: Vec<String> = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].as_str().unwrap().to_string()).collect();
        f.dedup();
        f
    };
    assert_eq!(files(&all), names, "every input, in order, at least one line each");
    assert_eq!(all.lines().filter(|l| l.contains(r#""face":null"#)).count(), 3, "the three blank pictures");

    // Stopped after a few inputs, mid-line: resumed, the file is what one run writes.
    let lines: Vec<&str> = all.lines().collect();
    let cut = lines.iter().position(|l| l.contains("p4.png")).unwrap();
    std::fs::write(d.join("all.jsonl"), lines[..cut].join("\n") + "\n" + &lines[cut][..20]).unwrap();
    let o = fer(d, &["predict", "--json", "--files-from", "list.txt", "--output", "all.jsonl", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("inputs already done"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(d.join("all.jsonl")).unwrap(), all);

    // Three shards: each input in exactly one, with the same lines as the whole run.
    let mut shards = Vec::new();
    for i in 0..3 {
        let out = format!("shard{i}.jsonl");
        let o = fer(d, &["predict", "--json", "--files-from", "list.txt", "--output", &out, "--shard", &format!("{i}/3")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        shards.extend(std::fs::read_to_string(d.join(&out)).unwrap().lines().map(String::from));
    }
    let mut whole: Vec<String> = all.lines().map(String::from).collect();
    whole.sort();
    shards.sort();
    assert_eq!(shards, whole);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fer")).current_dir(d).env("JOB_COMPLETION_INDEX", "1").args(["predict", "--json", "--files-from", "list.txt", "--shard", "3"]).output().unwrap();
    assert_eq!(files(&String::from_utf8_lossy(&o.stdout)), ["p1.png", "p4.png", "p7.png"], "the index from a Kubernetes indexed job");
}
