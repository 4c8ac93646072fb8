//! `fer serve` over real HTTP on the loopback interface: answers, every error, a full queue.
mod common;

use common::{fixture, start_server};

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
    let (base, _stop) = start_server(10_000_000, 16);
    assert_eq!(get(&format!("{base}/api/health")), (200, serde_json::json!({"status": "ok"})));
    let (status, card) = get(&format!("{base}/api/model"));
    assert_eq!(status, 200);
    for key in ["name", "fvcore_flops", "test_acc", "test_acc_unseen", "classes"] {
        assert!(card.get(key).is_some(), "{key} missing from {card}");
    }
    let page = agent().get(&base).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(page.contains("getUserMedia") && page.contains("/api/predict"), "the page is served");

    let photo = std::fs::read(fixture("solvay-1927.jpg")).unwrap();
    let (status, answer) = post(&format!("{base}/api/predict"), "image/jpeg", &photo);
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["width"].as_u64(), answer["height"].as_u64()), (Some(1666), Some(1136)));
    let faces = answer["faces"].as_array().unwrap();
    assert!(faces.len() >= 25, "{} faces", faces.len());
    for f in faces {
        assert!(f["box"]["w"].as_f64().unwrap() > 20.0 && f["score"].as_f64().unwrap() > 0.7);
        assert_eq!(f["probabilities"].as_object().unwrap().len(), 7);
        assert!(fer::data::CLASSES.contains(&f["label"].as_str().unwrap()));
    }
    assert!(answer["milliseconds"]["total"].as_f64().unwrap() > 0.0);

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
    let photo = std::fs::read(fixture("solvay-1927.jpg")).unwrap();
    // Room for everyone: 6 clients at once, all answered alike.
    let (base, _stop) = start_server(10_000_000, 16);
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| post(&format!("{base}/api/predict"), "image/jpeg", &photo))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, a)| *status == 200 && a["faces"] == answers[0].1["faces"]));

    // One worker, room for one waiting request: of 8 at once, some are turned away with 503.
    let (base, _stop) = start_server(10_000_000, 1);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| post(&format!("{base}/api/predict"), "image/jpeg", &photo))).collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, answer) = h.join().unwrap();
                if status == 503 {
                    assert!(answer["error"].as_str().unwrap().contains("busy"), "{answer}");
                }
                status
            })
            .collect()
    });
    assert!(statuses.iter().all(|&s| s == 200 || s == 503), "{statuses:?}");
    assert!(statuses.contains(&503) && statuses.contains(&200), "{statuses:?}");
    // And afterwards it serves again.
    assert_eq!(post(&format!("{base}/api/predict"), "image/jpeg", &photo).0, 200);
}
