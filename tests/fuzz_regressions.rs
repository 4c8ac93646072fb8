//! Replays the fuzz targets' seeds and every input a fuzzer failed on (fuzz/regressions/) through
//! the properties the targets check (fuzz/properties.rs), so a fixed crash stays fixed without
//! cargo-fuzz. The fuzzers themselves run from scripts/fuzz.sh, not in CI.

#[path = "../fuzz/properties.rs"]
mod properties;

use std::path::Path;

fn inputs(folder: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(folder).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<_> = entries.map(|e| e.expect("a readable folder").path()).collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())).collect()
}

/// Every seed and regression input of `target` through `check`; returns the names it accepted.
fn replay(target: &str, check: fn(&[u8]) -> bool) -> Vec<String> {
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "fuzz/seeds/{target} is empty");
    let regressions = inputs("regressions", target);
    seeds.into_iter().chain(regressions).filter(|(_, bytes)| check(bytes)).map(|(name, _)| name).collect()
}

#[test]
fn csv_seeds_and_regressions() {
    let accepted = replay("csv", properties::csv);
    // The well-formed seeds read (a BOM, CRLF, quotes and reordered columns included); the short row does not.
    assert_eq!(accepted, ["bom-crlf-quoted.csv", "columns-reordered.csv", "two-rows.csv"]);
}

#[test]
fn image_seeds_and_regressions() {
    let accepted = replay("image", properties::image);
    for (seed, _) in inputs("seeds", "image") {
        assert!(accepted.contains(&seed), "seed {seed} decodes: {accepted:?}");
    }
}

#[test]
fn body_seeds_and_regressions() {
    let accepted = replay("body", properties::body);
    assert_eq!(accepted, ["form-own-boundary.bin", "form-png.bin", "raw-png.bin"]);
}
