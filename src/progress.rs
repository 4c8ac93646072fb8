//! Progress bars for long work (training epochs, batches of photos, calibration).

/// A progress bar on stderr (hidden when stderr is not a terminal, or when quiet).
pub fn bar(len: usize, prefix: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
