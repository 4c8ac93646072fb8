//! The page of `fer serve` in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, through fantoccini). A photo is uploaded and labelled; Chromium's fake camera,
//! fed a video made from a real photo, goes through the webcam path; a refused camera and an
//! unreachable server are said so. Screenshots go to runs/screenshots/.
mod common;

use common::{fixture, start_server};
use fantoccini::{ClientBuilder, Locator};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn found(tool: &str) -> bool {
    let version = if tool == "ffmpeg" { "-version" } else { "--version" };
    let ok = Command::new(tool).arg(version).output().is_ok_and(|o| o.status.success());
    if !ok {
        common::skip(&format!("{tool} is not installed (scripts/test.sh installs chromium and chromium-driver, scripts/env.sh ffmpeg, as root)"));
    }
    ok
}

/// chromedriver on a free port, killed when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("chromedriver").arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Driver(child, port);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromedriver did not start");
}

async fn browser(driver: &Driver, profile: &Path, extra: &[String]) -> fantoccini::Client {
    // Without the background-networking flags Chromium keeps trying hosts this sandbox cannot reach.
    let mut args: Vec<String> = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1300,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend_from_slice(extra);
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), serde_json::json!({ "args": args }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a Chromium session")
}

async fn status_text(c: &fantoccini::Client) -> String {
    c.find(Locator::Id("status")).await.unwrap().text().await.unwrap()
}

/// Waits until the status line contains `what`.
async fn wait_for_status(c: &fantoccini::Client, what: &str) -> String {
    for _ in 0..300 {
        let text = status_text(c).await;
        if text.contains(what) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the status never said `{what}`: {}", status_text(c).await);
}

fn save_screenshot(name: &str, png: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("runs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
    let shot = image::load_from_memory(png).expect("a PNG screenshot");
    assert!(shot.width() >= 1000, "a full-window screenshot");
}

/// The labelled faces on the page: each card's title.
async fn face_titles(c: &fantoccini::Client) -> Vec<String> {
    let mut titles = Vec::new();
    for card in c.find_all(Locator::Css(".face h3")).await.unwrap() {
        titles.push(card.text().await.unwrap());
    }
    titles
}

#[test]
fn the_page_labels_an_uploaded_photo_and_the_webcam() {
    if !found("chromium") || !found("chromedriver") || !found("ffmpeg") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // A group photo, and a fake webcam made from it: 2 s of 640x480 video in Y4M.
    image::open(fixture("solvay-1927.jpg")).unwrap().crop_imm(0, 180, 960, 720).resize_exact(640, 480, image::imageops::FilterType::Triangle).save(w.join("group.png")).unwrap();
    let made = Command::new("ffmpeg")
        .current_dir(w)
        .args(["-v", "error", "-loop", "1", "-i", "group.png", "-t", "2", "-r", "10", "-pix_fmt", "yuv420p", "camera.y4m"])
        .status()
        .unwrap();
    assert!(made.success());
    let (base, stop) = start_server(10_000_000, 16);
    let driver = start_driver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // 1. Upload a photo: boxes drawn, a card with a label and seven bars per face.
        let c = browser(&driver, &w.join("profile-upload"), &[]).await;
        c.goto(&base).await.unwrap();
        c.find(Locator::Id("file")).await.unwrap().send_keys(&fixture("solvay-1927.jpg").display().to_string()).await.unwrap();
        let status = wait_for_status(&c, "faces in 1666x1136 pixels").await;
        let titles = face_titles(&c).await;
        assert!(titles.len() >= 25, "{status}: {titles:?}");
        assert!(titles.iter().all(|t| fer::data::CLASSES.iter().any(|class| t.ends_with(class))), "{titles:?}");
        assert_eq!(c.find_all(Locator::Css(".face .bar")).await.unwrap().len(), 7 * titles.len());
        // The canvas shows the photo with coloured boxes: some pixels are not gray.
        let coloured = c
            .execute(
                "const c = document.getElementById('canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) { if (Math.abs(d[i] - d[i + 1]) > 40 || Math.abs(d[i + 1] - d[i + 2]) > 40) n++; } return n;",
                vec![],
            )
            .await
            .unwrap();
        assert!(coloured.as_u64().unwrap() > 1000, "boxes drawn over the gray photo: {coloured}");
        save_screenshot("upload.png", &c.screenshot().await.unwrap());
        c.close().await.unwrap();

        // 2. The webcam: Chromium's fake camera plays the video; frames go to the server.
        let camera = format!("--use-file-for-fake-video-capture={}", w.join("camera.y4m").display());
        let fake = ["--use-fake-device-for-media-stream".to_string(), "--use-fake-ui-for-media-stream".to_string(), camera];
        let c = browser(&driver, &w.join("profile-camera"), &fake).await;
        c.goto(&base).await.unwrap();
        c.find(Locator::Id("camera")).await.unwrap().click().await.unwrap();
        let status = wait_for_status(&c, "faces in 640x480 pixels").await;
        let titles = face_titles(&c).await;
        assert!(titles.len() >= 3, "{status}: {titles:?}");
        save_screenshot("webcam.png", &c.screenshot().await.unwrap());
        c.close().await.unwrap();

        // 3. A refused camera says so.
        let c = browser(&driver, &w.join("profile-refused"), &["--use-fake-device-for-media-stream".into(), "--deny-permission-prompts".into()]).await;
        c.goto(&base).await.unwrap();
        c.find(Locator::Id("camera")).await.unwrap().click().await.unwrap();
        wait_for_status(&c, "camera was refused").await;

        // 4. A server that has gone away says so.
        stop.send(()).unwrap();
        let addr = base.trim_start_matches("http://").to_string();
        for _ in 0..500 {
            if std::net::TcpStream::connect(&addr).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.find(Locator::Id("file")).await.unwrap().send_keys(&w.join("group.png").display().to_string()).await.unwrap();
        wait_for_status(&c, "unreachable").await;
        c.close().await.unwrap();
    });
}
