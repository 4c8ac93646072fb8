//! `fer serve` over real HTTP on the loopback interface: answers, every error, a full queue.
mod common;

use common::{fixture, start_server};

/// The tests of this file run one at a time: some time the server or load it, and on two cores
/// two at once would measure each other.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends raw request text and returns everything the server answers before closing.
fn raw_request(base: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the JSON body is complete (the connection may stay open).
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// POSTs `body` and returns (status, JSON answer).
fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut response = agent().post(url).header("Content-Type", content_type).send(body).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

fn get(url: &str) -> (u16, serde_json::Value) {
    let mut response = agent().get(url).call().unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap())
}

#[test]
fn the_api_answers_photos_forms_and_cropped_faces() {
    let _alone = alone();
    let (base, _stop) = start_server(10_000_000, 16);
    assert_eq!(get(&format!("{base}/api/health")), (200, serde_json::json!({"status": "ok", "workers": 1, "workers_alive": 1})));
    let (status, card) = get(&format!("{base}/api/model"));
    assert_eq!(status, 200);
    // The default model's own card, with values (a key present but null would not do).
    let shipped: serde_json::Value = serde_json::from_slice(&std::fs::read(fer::models::default_folder().unwrap().join("card.json")).unwrap()).unwrap();
    for key in ["name", "fvcore_flops", "test_acc", "test_acc_unseen"] {
        assert!(!card[key].is_null() && card[key] == shipped[key], "{key}: {} against the card's {}", card[key], shipped[key]);
    }
    assert_eq!(card["classes"], serde_json::json!(fer::data::CLASSES));
    let page = agent().get(&base).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(page.contains("getUserMedia") && page.contains("/api/predict"), "the page is served");

    let photo = std::fs::read(fixture("solvay-1927.jpg")).unwrap();
    let (status, answer) = post(&format!("{base}/api/predict"), "image/jpeg", &photo);
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["width"].as_u64(), answer["height"].as_u64()), (Some(1666), Some(1136)));
    let faces = answer["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 29, "all the Solvay faces");
    for f in faces {
        assert!(f["box"]["w"].as_f64().unwrap() > 20.0 && f["score"].as_f64().unwrap() > 0.7);
        assert_eq!(f["probabilities"].as_object().unwrap().len(), 7);
        assert!(fer::data::CLASSES.contains(&f["label"].as_str().unwrap()));
    }
    // The whole request takes at least its parts, each of which did real work.
    let ms = |part: &str| answer["milliseconds"][part].as_f64().unwrap_or_else(|| panic!("no {part} time in {answer}"));
    assert!(ms("decode") > 0.0 && ms("detect") > 0.0 && ms("classify") > 0.0, "{answer}");
    assert!(ms("total") >= ms("queued") + ms("decode") + ms("detect") + ms("classify") - 1e-6, "{answer}");

    // The same photo as a multipart form gives the same faces.
    let boundary = "fer-test-boundary";
    let mut form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"solvay.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").into_bytes();
    form.extend_from_slice(&photo);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (status, from_form) = post(&format!("{base}/api/predict"), &format!("multipart/form-data; boundary={boundary}"), &form);
    assert_eq!(status, 200, "{from_form}");
    assert_eq!(from_form["faces"], answer["faces"]);

    // ?detect=false: the image is one pre-cropped face.
    let mut png = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_fn(60, 60, |x, y| image::Luma([(x * 4 + y) as u8])).write_to(&mut png, image::ImageFormat::Png).unwrap();
    let (status, cropped) = post(&format!("{base}/api/predict?detect=false"), "image/png", png.get_ref());
    assert_eq!(status, 200);
    assert_eq!(cropped["faces"].as_array().unwrap().len(), 1);
    assert_eq!(cropped["faces"][0]["score"], serde_json::Value::Null);
}

#[test]
fn every_error_is_json_and_leaves_the_server_working() {
    let _alone = alone();
    let (base, _stop) = start_server(1_000_000, 16);
    let url = format!("{base}/api/predict");
    let photo = std::fs::read(fixture("solvay-1927.jpg")).unwrap();
    let mut bomb = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(1, 1).write_to(&mut bomb, image::ImageFormat::Bmp).unwrap();
    let mut bomb = bomb.into_inner();
    bomb[18..22].copy_from_slice(&50_000i32.to_le_bytes());
    bomb[22..26].copy_from_slice(&50_000i32.to_le_bytes());
    let mut png = std::io::Cursor::new(Vec::new());
    image::GrayImage::new(300, 300).write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    // A body declared over the limit is refused from its headers, before it is sent.
    let answer = raw_request(&base, "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1500000\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("over the limit of 1000000 bytes"), "{answer}");
    let cases: [(&[u8], u16, &str); 4] = [
        (b"just some text", 415, "not an image"),
        (b"", 415, "empty"),
        (&png[..png.len() / 2], 400, "unreadable Png image"),
        (&bomb, 422, "50000x50000 pixels is over the limit"),
    ];
    for (body, want, message) in cases {
        let (status, answer) = post(&url, "application/octet-stream", body);
        assert_eq!(status, want, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(message), "{answer}");
    }
    let (status, answer) = post(&url, "multipart/form-data; boundary=x", b"--x\r\nnot a form");
    assert_eq!(status, 400, "{answer}");
    assert_eq!(get(&format!("{base}/api/nothing")).0, 404);
    // Still serving: a photo under the limit gets its faces.
    let small = image::load_from_memory(&photo).unwrap().crop_imm(0, 180, 640, 360);
    let mut jpeg = std::io::Cursor::new(Vec::new());
    small.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let (status, answer) = post(&url, "image/jpeg", jpeg.get_ref());
    assert_eq!(status, 200, "{answer}");
    assert!(answer["faces"].as_array().unwrap().len() >= 5);
}

#[test]
fn concurrent_requests_all_get_answers_and_a_full_queue_says_503() {
    let _alone = alone();
    let photo = std::fs::read(fixture("solvay-1927.jpg")).unwrap();
    // Room for everyone: 6 clients at once, all answered alike.
    let (base, _stop) = start_server(10_000_000, 16);
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| post(&format!("{base}/api/predict"), "image/jpeg", &photo))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, a)| *status == 200 && a["faces"] == answers[0].1["faces"]));

    // One worker, room for one waiting request. The worker is held on its first request (a hold
    // point: it waits while a file exists), so of 7 more at once exactly one waits in the queue
    // and 6 are turned away with 503; let go, the held and the queued one are answered.
    let hold = tempfile::tempdir().unwrap();
    let held = hold.path().join("held");
    std::fs::write(&held, b"").unwrap();
    let spec = format!("serve:answer={}", held.display());
    let (base, _server) = serve_process(&["--workers", "1", "--queue", "1"], &[("FER_HOLD_AT", &spec)], None);
    let url = format!("{base}/api/predict");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let first = s.spawn(|| post(&url, "image/jpeg", &photo));
        for wait in 0.. {
            if held.with_extension("reached").exists() {
                break;
            }
            assert!(wait < 3000, "the worker never reached its hold point");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let more: Vec<_> = (0..7).map(|_| s.spawn(|| post(&url, "image/jpeg", &photo))).collect();
        // The turned-away are answered at once, while the worker is still held (the bound is
        // only a guard against a hang); then it is let go.
        for _ in 0..3000 {
            if more.iter().filter(|h| h.is_finished()).count() >= 6 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let answered_while_held = more.iter().filter(|h| h.is_finished()).count();
        std::fs::remove_file(&held).unwrap();
        let mut statuses = Vec::new();
        for h in more.into_iter().chain([first]) {
            let (status, answer) = h.join().unwrap();
            if status == 503 {
                assert!(answer["error"].as_str().unwrap().contains("busy"), "{answer}");
            }
            statuses.push(status);
        }
        assert_eq!(answered_while_held, 6, "{statuses:?}");
        statuses
    });
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 6, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 2, "{statuses:?}");
    // And afterwards it serves again.
    assert_eq!(post(&url, "image/jpeg", &photo).0, 200);
}

/// `fer serve` as its own process on a free loopback port (`extra` flags, `env` set, and at most
/// `open_files` file descriptors): its base URL, and the child, killed when dropped.
fn serve_process(extra: &[&str], env: &[(&str, &str)], open_files: Option<u64>) -> (String, ChildGuard) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fer"));
    command.args(["--threads", "1", "serve", "--port", "0"]).args(extra).envs(env.iter().copied());
    command.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    if let Some(n) = open_files {
        // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
    }
    let mut child = command.spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let base = line.split("on http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep reading what it says, so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in stderr.lines() {});
    (format!("http://{base}"), ChildGuard(child, line))
}

struct ChildGuard(std::process::Child, String);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A 48x48 face-sized PNG: a request that costs one classification.
fn small_png() -> Vec<u8> {
    let mut png = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_fn(48, 48, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8])).write_to(&mut png, image::ImageFormat::Png).unwrap();
    png.into_inner()
}

#[test]
fn two_thousand_stalled_uploads_do_not_stop_an_honest_request() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let _alone = alone();
    // 1,024 open files for the server; 2,000 clients that send their headers and a few bytes of
    // a 100 kB body, then stall.
    let body_timeout = 30.0;
    let (base, _server) = serve_process(&["--body-timeout", &body_timeout.to_string(), "--queue", "16"], &[], Some(1024));
    let addr = base.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let stalled: Vec<std::net::TcpStream> = (0..2000)
        .filter_map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).ok()?;
            s.write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n0123456789").ok()?;
            Some(s)
        })
        .collect();
    assert!(stalled.len() >= 1900, "only {} stalled clients connected", stalled.len());
    let connected = started.elapsed();
    // Once they count as stalled, an honest request is answered, long before any timeout.
    std::thread::sleep(Duration::from_millis(2500));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(3))).build().into();
    // The agent's timeout only guards against a hang; the claim is the 200 while the stalled
    // uploads are still held, which the body timeout, far off, cannot yet have released.
    let mut response = agent.post(&format!("{base}/api/predict?detect=false")).header("Content-Type", "image/png").send(&small_png()[..]).expect("answered");
    assert_eq!(response.status().as_u16(), 200, "{}", response.body_mut().read_to_string().unwrap_or_default());
    assert!(started.elapsed() < Duration::from_secs_f64(body_timeout), "the machine was too slow for the test to show anything: the body timeout had passed (connected in {connected:?})");
    // And every stalled connection is closed by the server: displaced, or at its body timeout.
    // The last refused uploads began their body timeout as they connected.
    let deadline = started + connected + Duration::from_secs_f64(body_timeout + 5.0);
    let mut open = 0;
    let total = stalled.len();
    let mut open_at = Vec::new();
    for (i, mut s) in stalled.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        let mut rest = Vec::new();
        let closed = match s.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        let text = String::from_utf8_lossy(&rest);
        open += usize::from(!closed);
        if !closed {
            open_at.push((i, rest.len()));
            continue;
        }
        assert!(rest.is_empty() || text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 503"), "{text}");
    }
    assert_eq!(open, 0, "{open} of {total} stalled connections still open {:?} after they began: {open_at:?}", started.elapsed());
}

#[test]
fn a_worker_that_panics_answers_500_and_goes_on() {
    let _alone = alone();
    let (base, _server) = serve_process(&[], &[("FER_PANIC_AT", "serve:answer:1")], None);
    let url = format!("{base}/api/predict?detect=false");
    let (status, answer) = post(&url, "image/png", &small_png());
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("failed on this request"), "{answer}");
    let (status, answer) = post(&url, "image/png", &small_png());
    assert_eq!((status, answer["faces"].as_array().map(Vec::len)), (200, Some(1)), "{answer}");
    assert_eq!(get(&format!("{base}/api/health")), (200, serde_json::json!({"status": "ok", "workers": 1, "workers_alive": 1})));
}

#[test]
fn wrong_methods_bad_queries_and_missing_keys_are_json_errors() {
    let _alone = alone();
    let (base, _stop) = common::start_server_with(fer::serve::ServeOptions {
        model: fer::models::default_folder().unwrap(),
        api_key: Some("sesame".into()),
        ..Default::default()
    });
    let answer = raw_request(&base, "GET /api/predict HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405") && answer.contains("allow: POST") && answer.contains("\"error\":\"GET /api/predict is not served: use POST\""), "{answer}");
    let answer = raw_request(&base, "POST /api/model HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405") && answer.contains("use GET"), "{answer}");
    // Without the key, or with a wrong one: 401, before the body is looked at.
    let png = small_png();
    let send = |path: &str, key: Option<(&str, &str)>| {
        let mut request = agent().post(&format!("{base}{path}")).header("Content-Type", "image/png");
        if let Some((name, value)) = key {
            request = request.header(name, value);
        }
        let mut response = request.send(&png[..]).unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_str::<serde_json::Value>(&response.body_mut().read_to_string().unwrap()).unwrap())
    };
    for key in [None, Some(("X-Api-Key", "sesam")), Some(("Authorization", "Bearer nope"))] {
        let (status, answer) = send("/api/predict?detect=false", key);
        assert_eq!(status, 401, "{key:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("API key"), "{answer}");
    }
    assert_eq!(send("/api/predict?detect=false", Some(("X-Api-Key", "sesame"))).0, 200);
    assert_eq!(send("/api/predict?detect=false", Some(("Authorization", "Bearer sesame"))).0, 200);
    // A malformed query is a JSON 400 that says what the parameter takes.
    let (status, answer) = send("/api/predict?detect=maybe", Some(("X-Api-Key", "sesame")));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("`detect` takes true or false"), "{answer}");
    // The health check stays open; the card says which model, not where it lives.
    assert_eq!(get(&format!("{base}/api/health")).0, 200);
    let mut response = agent().get(&format!("{base}/api/model")).header("X-Api-Key", "sesame").call().unwrap();
    let card = response.body_mut().read_to_string().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(card.contains("\"model\":\"tiny\"") && !card.contains(root) && !card.contains("\"path\""), "{card}");
}

#[test]
fn serving_beyond_loopback_needs_a_key_or_open() {
    let _alone = alone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fer")).args(["serve", "--host", "0.0.0.0", "--port", "0"]).env_remove("FER_API_KEY").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--api-key") && err.contains("--open"), "{err}");
    // Loopback is open by default, and its first line says so.
    let (_, server) = serve_process(&[], &[], None);
    assert!(server.1.contains("open to this machine only"), "{}", server.1);
    let (_, server) = serve_process(&["--api-key", "k"], &[], None);
    assert!(server.1.contains("the API needs its key"), "{}", server.1);
}
