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

/// A counter on stderr for work of unknown length (inputs read from a list as they come).
pub fn counter(prefix: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{prefix} {pos} done ({per_sec}) {msg}").unwrap());
    bar.set_prefix(prefix.to_string());
    bar
}

/// A duration as people say it: `42 s`, `12.3 minutes`, `1 h 05 min`.
pub fn duration_in_words(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 3600.0 => format!("{:.1} minutes", s / 60.0),
        s => format!("{} h {:02.0} min", (s / 3600.0).floor(), (s % 3600.0) / 60.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(super::duration_in_words(42.4), "42 s");
        assert_eq!(super::duration_in_words(738.0), "12.3 minutes");
        assert_eq!(super::duration_in_words(3900.0), "1 h 05 min");
    }
}
