mod common;

use common::{csv_text, real_data, synthetic, write_folder};
use fer::data::{self, parse_csv, read_folder, Split, PIXELS};
use std::path::Path;

/// PrivateTest and PublicTest faces of the real data with a pixel-identical twin in Training.
const LEAKED_PRIVATE: usize = 288;
const LEAKED_PUBLIC: usize = 280;

fn row(label: &str, pixels: &str, usage: &str) -> String {
    format!("emotion,pixels,Usage\n{label},{pixels},{usage}\n")
}

fn ones(n: usize) -> String {
    vec!["1"; n].join(" ")
}

fn csv_error(text: &str) -> String {
    parse_csv(text.as_bytes(), "t.csv").unwrap_err().to_string()
}

#[test]
fn csv_round_trip() {
    let d = synthetic([14, 7, 7], 1);
    assert_eq!(d.len(), 28);
    let back = parse_csv(csv_text(&d).as_bytes(), "x.csv").unwrap();
    assert_eq!(back.pixels, d.pixels);
    assert_eq!(back.labels, d.labels);
    assert_eq!(back.splits, d.splits);
    assert_eq!(back.sources[0], "line 2");
}

#[test]
fn csv_accepts_crlf_bom_and_quotes() {
    let d = synthetic([3, 2, 2], 2);
    let text = csv_text(&d);
    let mut quoted = String::from("\u{feff}\"emotion\",\"pixels\",\"Usage\"\r\n");
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        quoted += &format!("{},\"{}\",\"{}\"\r\n", f[0], f[1], f[2]);
    }
    let back = parse_csv(quoted.as_bytes(), "q.csv").unwrap();
    assert_eq!(back.pixels, d.pixels);
    assert_eq!(back.labels, d.labels);
    assert_eq!(back.splits, d.splits);
}

#[test]
fn csv_bad_inputs_name_the_line_and_the_problem() {
    let p = ones(PIXELS);
    let cases = [
        (row("3", &ones(PIXELS - 1), "Training"), "2303 pixel values, expected 2304"),
        (row("3", &ones(PIXELS + 1), "Training"), "2305 pixel values"),
        (row("3", &p.replacen("1", "x", 1), "Training"), "pixel 1 is `x`, not a whole number"),
        (row("3", &p.replacen("1", "1.5", 1), "Training"), "not a whole number"),
        (row("3", &p.replacen("1", "256", 1), "Training"), "pixel 1 is 256, outside 0..255"),
        (row("3", &p.replacen("1", "-4", 1), "Training"), "pixel 1 is -4, outside 0..255"),
        (row("7", &p, "Training"), "emotion label 7 is outside 0..6"),
        (row("-1", &p, "Training"), "outside 0..6"),
        (row("happy", &p, "Training"), "emotion label `happy` is not a number"),
        (row("3", &p, "Validation"), "unknown Usage `Validation`"),
        (format!("emotion,pixels,Usage\n3,{p},Training\n3,{}", &p[..100]), "line 3: 2 fields, expected 3"),
        ("emotion,pixels\n3,1 2\n".to_string(), "expected `emotion,pixels,Usage`"),
        ("emotion,pixels,Usage\n".to_string(), "no faces"),
        (String::new(), "empty file"),
        ("\n\n".to_string(), "empty file"),
    ];
    for (text, want) in cases {
        let e = csv_error(&text);
        assert!(e.starts_with("t.csv"), "error names the file: {e}");
        assert!(e.contains(want), "expected `{want}` in `{e}`");
    }
    // The line is named for errors inside rows.
    assert!(csv_error(&row("9", &p, "Training")).starts_with("t.csv, line 2:"));
}

#[test]
fn folder_reader_matches_the_csv_reader() {
    let d = synthetic([14, 7, 7], 3);
    let dir = tempfile::tempdir().unwrap();
    write_folder(&d, dir.path());
    let from_folder = read_folder(dir.path()).unwrap();
    assert_eq!(from_folder.pixels, d.pixels);
    assert_eq!(from_folder.labels, d.labels);
    assert_eq!(from_folder.splits, d.splits);
    // Export to CSV and read back: the two readers agree.
    let from_csv = parse_csv(csv_text(&from_folder).as_bytes(), "e.csv").unwrap();
    assert_eq!(from_csv.pixels, from_folder.pixels);
    assert_eq!(from_csv.labels, from_folder.labels);
}

fn folder_error(setup: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&synthetic([7, 0, 0], 4), dir.path());
    setup(dir.path());
    read_folder(dir.path()).unwrap_err().to_string()
}

#[test]
fn folder_bad_inputs_name_the_image_and_the_problem() {
    let e = folder_error(|r| std::fs::create_dir_all(r.join("train/contempt")).unwrap());
    assert!(e.contains("train/contempt") && e.contains("unknown class folder `contempt`"), "{e}");

    let e = folder_error(|r| std::fs::write(r.join("train/happy/Training_99.jpg"), b"").unwrap());
    assert!(e.contains("Training_99.jpg") && e.contains("empty file"), "{e}");

    let e = folder_error(|r| std::fs::write(r.join("train/happy/Training_99.jpg"), b"not an image at all").unwrap());
    assert!(e.contains("Training_99.jpg") && e.contains("unreadable image"), "{e}");

    let e = folder_error(|r| image::GrayImage::new(64, 64).save(r.join("train/sad/Training_98.png")).unwrap());
    assert!(e.contains("Training_98.png") && e.contains("64x64, expected 48x48"), "{e}");

    let e = folder_error(|r| image::RgbImage::new(48, 48).save(r.join("train/sad/Training_97.png")).unwrap());
    assert!(e.contains("Training_97.png") && e.contains("expected 8-bit grayscale"), "{e}");

    let e = folder_error(|r| image::GrayImage::new(48, 48).save(r.join("train/sad/face_1.png")).unwrap());
    assert!(e.contains("face_1.png") && e.contains("cannot tell the split"), "{e}");

    // A JPEG cut short is unreadable, and named.
    let e = folder_error(|r| {
        let mut jpg = Vec::new();
        image::GrayImage::new(48, 48).write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg).unwrap();
        std::fs::write(r.join("train/fear/Training_96.jpg"), &jpg[..jpg.len() / 3]).unwrap();
    });
    assert!(e.contains("Training_96.jpg") && e.to_lowercase().contains("jpeg"), "the file and what is wrong with it: {e}");

    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("train")).unwrap();
    assert!(read_folder(empty.path()).unwrap_err().to_string().contains("no face images"));
}

#[test]
fn jpeg_faces_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("test/happy");
    std::fs::create_dir_all(&class).unwrap();
    let img = image::GrayImage::from_fn(48, 48, |x, _| image::Luma([(x * 5) as u8]));
    img.save(class.join("PrivateTest_5.jpg")).unwrap();
    let d = read_folder(dir.path()).unwrap();
    assert_eq!((d.len(), d.labels[0], d.splits[0]), (1, 3, Split::PrivateTest));
    // JPEG is lossy: close, not equal.
    let err: i32 = d.image(0).iter().zip(img.as_raw()).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
    assert!(err < 8, "max error {err}");
}

#[test]
fn cache_round_trips_and_notices_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let csv = dir.path().join("fer2013.csv");
    let d = synthetic([7, 7, 7], 5);
    std::fs::write(&csv, csv_text(&d)).unwrap();
    let first = data::load_with_cache(dir.path(), &cache).unwrap();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let second = data::load_with_cache(&csv, &cache).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.pixels, d.pixels);

    // A changed source gets a new cache entry with the new content.
    let d2 = synthetic([8, 7, 7], 6);
    std::fs::write(&csv, csv_text(&d2)).unwrap();
    let third = data::load_with_cache(&csv, &cache).unwrap();
    assert_eq!(third.len(), 22);
    assert_eq!(third.pixels, d2.pixels);
}

#[test]
fn a_corrupt_cache_is_refused_and_read_again_from_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let csv = dir.path().join("fer2013.csv");
    let d = synthetic([7, 7, 7], 8);
    std::fs::write(&csv, csv_text(&d)).unwrap();
    let first = data::load_with_cache(&csv, &cache).unwrap();
    let file = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    // The first PrivateTest face's split byte, made Training's (0): layout is magic (8), hash
    // (32), count (8), pixels, labels, then the split ids.
    let n = d.len();
    let at = 48 + n * data::PIXELS + n + d.splits.iter().position(|&s| s == data::Split::PrivateTest).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes[at], data::Split::PrivateTest as u8);
    bytes[at] = data::Split::Training as u8;
    std::fs::write(&file, &bytes).unwrap();
    let err = data::read_cache(&file).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(data::load_with_cache(&csv, &cache).unwrap(), first, "read again from the CSV");
}

#[test]
fn bad_input_leaves_no_cache_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, row("3", &ones(10), "Training")).unwrap();
    let e = data::load_with_cache(&csv, &cache).unwrap_err().to_string();
    assert!(e.contains("bad.csv, line 2") && e.contains("10 pixel values"), "{e}");
    let left = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no cache file after a failed read");
}

#[test]
fn stats_find_duplicates_across_splits_and_blank_faces() {
    let mut d = synthetic([7, 7, 7], 8);
    // Face 0 (Training) copied into PublicTest slot 7; PublicTest face 8 made blank.
    let copy = d.image(0).to_vec();
    d.pixels[7 * PIXELS..8 * PIXELS].copy_from_slice(&copy);
    d.pixels[8 * PIXELS..9 * PIXELS].fill(128);
    let s = fer::stats::analyse(&d);
    assert_eq!(s.duplicate_groups, 1);
    assert_eq!(s.cross_split_pairs.get("Training-PublicTest"), Some(&1));
    assert_eq!(s.near_constant.len(), 1);
    assert_eq!(s.counts["Training"]["angry"], 1);
    assert!((s.imbalance - 1.0).abs() < 1e-9);
}

#[test]
fn real_data_csv_and_folder_readers_agree() {
    let Some(root) = real_data() else { return };
    let folder = read_folder(&root).unwrap();
    assert_eq!(folder.len(), 35_887);
    let counts = folder.counts();
    assert_eq!(counts[0].iter().sum::<usize>(), 28_709);
    assert_eq!(counts[1].iter().sum::<usize>(), 3_589);
    assert_eq!(counts[2].iter().sum::<usize>(), 3_589);
    assert_eq!(counts[0][1], 436, "disgust in Training");
    let csv = parse_csv(csv_text(&folder).as_bytes(), "export.csv").unwrap();
    assert_eq!(csv.pixels, folder.pixels);
    assert_eq!(csv.labels, folder.labels);
    assert_eq!(csv.splits, folder.splits);
}

#[test]
fn stats_flag_splits_of_different_sharpness() {
    let mut d = synthetic([14, 14, 0], 9);
    let sharp = fer::stats::analyse(&d);
    assert!(!sharp.text().contains("WARNING"), "{}", sharp.text());
    assert_eq!(sharp.training_blur_sigma, None, "equally sharp splits name no blur");
    assert!(sharp.text().contains("equally sharp"), "{}", sharp.text());
    // Blur the Training faces (3x3 box), as the shared release's Training split is blurred.
    for i in 0..d.len() {
        if d.splits[i] == Split::Training {
            let img = d.image(i).to_vec();
            for y in 1..47 {
                for x in 1..47 {
                    let s: u32 = (0..9).map(|k| img[(y + k / 3 - 1) * 48 + x + k % 3 - 1] as u32).sum();
                    d.pixels[i * PIXELS + y * 48 + x] = (s / 9) as u8;
                }
            }
        }
    }
    let s = fer::stats::analyse(&d);
    assert!(s.sharpness["Training"] * 1.5 < s.sharpness["PublicTest"], "{:?}", s.sharpness);
    assert!(s.text().contains("WARNING: the splits differ in sharpness"));
    // A 3x3 box has the variance of a Gaussian of sigma sqrt(2/3) = 0.82.
    let sigma = s.training_blur_sigma.expect("Training is smoother");
    assert!((0.6..1.1).contains(&sigma), "estimated blur {sigma}");
}

#[test]
fn faces_with_a_twin_in_training_are_marked() {
    let mut d = synthetic([7, 7, 7], 12);
    // PrivateTest face 0 (index 14) becomes a copy of Training face 3: a leaked face.
    let copy = d.image(3).to_vec();
    d.pixels[14 * PIXELS..15 * PIXELS].copy_from_slice(&copy);
    let private = d.split(Split::PrivateTest);
    assert_eq!(private.twin_in_training, [true, false, false, false, false, false, false]);
    assert!(d.split(Split::PublicTest).twin_in_training.iter().all(|t| !t));
    assert!(d.split(Split::Training).twin_in_training.is_empty(), "not defined for Training itself");
}

#[test]
fn real_data_exports_the_original_csv_and_has_leaked_test_faces() {
    let Some(root) = real_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fer2013.csv");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fer"))
        .args(["--data", &root.display().to_string(), "data", "export-csv", "--out", &out.display().to_string()])
        .env("FER_CACHE", dir.path().join("cache"))
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len(), 301_072_766);
    use md5::Digest;
    let digest = format!("{:x}", md5::Md5::digest(&bytes));
    assert_eq!(digest, "f8428a1edbd21e88f42c73edd2a14f95", "the checksum torchvision expects of fer2013.csv");

    let data = read_folder(&root).unwrap();
    let leaked = |split| data.split(split).twin_in_training.iter().filter(|&&t| t).count();
    assert_eq!(leaked(Split::PrivateTest), LEAKED_PRIVATE);
    assert_eq!(leaked(Split::PublicTest), LEAKED_PUBLIC);
}

const FERPLUS_HEADER: &str = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF";

fn ferplus_file(dir: &Path, rows: &[&str]) -> std::path::PathBuf {
    let path = dir.join("fer2013new.csv");
    std::fs::write(&path, format!("{FERPLUS_HEADER}\n{}\n", rows.join("\n"))).unwrap();
    path
}

#[test]
fn ferplus_majority_labels_follow_the_authors_rule() {
    let dir = tempfile::tempdir().unwrap();
    // Votes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.
    let rows = [
        "Training,a.png,3,0,0,0,6,0,1,0,0,0",     // anger 6 of 9 once fear's single vote goes
        "Training,b.png,0,5,0,5,0,0,0,0,0,0",     // a tie: no majority
        "PublicTest,c.png,2,0,0,0,0,0,0,8,0,0",   // contempt: not one of FER-2013's seven
        "PrivateTest,d.png,3,0,4,0,1,1,1,0,0,0",  // surprise: 4 of 10, but 4 of 7 without the single votes
    ];
    let ferplus = data::read_ferplus(&ferplus_file(dir.path(), &rows)).unwrap();
    assert_eq!(ferplus, [(Split::Training, Some(0)), (Split::Training, None), (Split::PublicTest, None), (Split::PrivateTest, Some(5))]);

    let d = synthetic([2, 1, 1], 4); // FER-2013 labels 0, 1, 0, 0
    let relabelled = d.with_ferplus_labels(&ferplus).unwrap();
    assert_eq!(relabelled.labels, [0, 5]);
    assert_eq!(relabelled.splits, [Split::Training, Split::PrivateTest]);
    assert_eq!(relabelled.image(1), d.image(3), "the faces keep their pixels");
    let agreement = data::ferplus_agreement(&d, &ferplus).unwrap();
    let counts: Vec<(usize, usize, usize)> = agreement.iter().map(|a| (a.faces, a.relabelled, a.agree)).collect();
    assert_eq!(counts, [(2, 1, 1), (1, 0, 0), (1, 1, 0)], "FER-2013 says angry where FER+ says surprise");

    // FER+ labels fer2013.csv row for row: another count or order of faces is refused.
    let err = synthetic([3, 1, 1], 4).with_ferplus_labels(&ferplus).unwrap_err().to_string();
    assert!(err.contains("labels 4 faces") && err.contains("holds 5"), "{err}");
    let err = synthetic([1, 2, 1], 4).with_ferplus_labels(&ferplus).unwrap_err().to_string();
    assert!(err.contains("row 2 is in Training") && err.contains("not fer2013.csv's"), "{err}");
    // A file that is not FER+'s, or a row that is not votes, is named with the problem.
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "emotion,pixels,Usage\n0,1 2,Training\n").unwrap();
    assert!(data::read_ferplus(&other).unwrap_err().to_string().contains("not FER+'s fer2013new.csv"));
    let bad = ferplus_file(dir.path(), &["Training,a.png,3,x,0,0,6,0,1,0,0,0"]);
    let err = data::read_ferplus(&bad).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("whole numbers"), "{err}");
}

#[test]
fn real_data_labels_agree_with_ferplus_on_about_two_faces_in_three() {
    let Some(path) = real_data() else { return };
    let ferplus = Path::new(env!("CARGO_MANIFEST_DIR")).join(data::FERPLUS_DEFAULT);
    if !ferplus.is_file() {
        return common::skip(&format!("FER+ is not at {}", ferplus.display()));
    }
    let d = data::load(&path).unwrap();
    let agreement = data::ferplus_agreement(&d, &data::read_ferplus(&ferplus).unwrap()).unwrap();
    let private = &agreement[2];
    // FER+ gives 3,137 PrivateTest faces a majority label among the seven; FER-2013 agrees on 2,114.
    assert_eq!((private.split.as_str(), private.faces, private.relabelled, private.agree), ("PrivateTest", 3589, 3137, 2114));
}
