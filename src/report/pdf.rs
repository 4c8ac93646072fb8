//! The report as a PDF: the self-contained HTML page printed by headless Chromium (Debian's
//! `chromium`, which the test script installs for the browser test too). Print CSS numbers the
//! pages and keeps figures and tables whole.

use std::path::Path;
use std::process::Command;

/// The browsers tried, in order.
const BROWSERS: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

fn browser() -> anyhow::Result<&'static str> {
    BROWSERS
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .ok_or_else(|| anyhow::anyhow!("no headless Chromium to print the PDF with (tried {}): install it with `sudo apt-get install chromium`, or leave out --pdf", BROWSERS.join(", ")))
}

/// Prints `page` (an HTML document) to `out`.
pub fn print(page: &str, out: &Path) -> anyhow::Result<()> {
    let browser = browser()?;
    let dir = tempfile::tempdir()?;
    let html = dir.path().join("report.html");
    std::fs::write(&html, page)?;
    let partial = dir.path().join("report.pdf");
    let output = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer", "--run-all-compositor-stages-before-draw"])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .arg(format!("--print-to-pdf={}", partial.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .map_err(|e| anyhow::anyhow!("{browser}: {e}"))?;
    let printed = std::fs::metadata(&partial).map_or(0, |m| m.len());
    anyhow::ensure!(output.status.success() && printed > 0, "{browser} could not print the PDF: {}", String::from_utf8_lossy(&output.stderr).trim());
    crate::data::write_atomic(out, &std::fs::read(&partial)?)?;
    Ok(())
}
