//! Photos and videos as `fer predict` meets them: images of any common format, size or colour
//! (EXIF orientation applied, decompression bombs refused), and video frames through `ffmpeg`.

use image::{DynamicImage, ImageReader, Limits, RgbImage};
use std::io::{Cursor, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The largest image accepted, in pixels (a 100-megapixel photo decodes in about 300 MB).
pub const MAX_PIXELS: u64 = 100_000_000;
/// The largest width or height accepted.
pub const MAX_SIDE: u32 = 30_000;

/// File extensions read as video (everything else is tried as an image).
pub const VIDEO_EXTENSIONS: [&str; 11] = ["mp4", "m4v", "mov", "avi", "mkv", "webm", "mpg", "mpeg", "wmv", "flv", "3gp"];
/// File extensions a folder is searched for.
pub const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "pnm"];

pub fn has_extension(path: &Path, list: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| list.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Why bytes are not a usable image.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("not an image (unrecognised format)")]
    NotAnImage,
    /// A recognised format that does not decode (corrupt, truncated).
    #[error("{0}")]
    Unreadable(String),
    /// Over the size limits: refused from the header, before decoding (decompression bombs).
    #[error("{w}x{h} pixels is over the limit of {} megapixels ({MAX_SIDE} px a side): refused", MAX_PIXELS / 1_000_000)]
    TooLarge { w: u32, h: u32 },
}

/// Decodes an image from its bytes: the format from its content, the first frame of an
/// animation, EXIF orientation applied.
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let unreadable = |e: String| ImageError::Unreadable(e);
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(ImageError::NotAnImage);
    };
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off image with gray rather than failing.
        return Err(unreadable("truncated Jpeg image: no end-of-image marker after its last scan".into()));
    }
    // Refuse what would not fit before decoding it: dimensions are in the header.
    let (w, h) = reader.into_dimensions().map_err(|e| unreadable(format!("unreadable {format:?} image: {e}")))?;
    if w.max(h) > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
        return Err(ImageError::TooLarge { w, h });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| unreadable(format!("unreadable {format:?} image: {e}")))?;
    let orientation = image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| unreadable(format!("unreadable {format:?} image: {e}")))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Whether a JPEG's last scan (its last SOS marker, FF DA) is followed by the end-of-image
/// marker (FF D9). Inside compressed data FF is always followed by 00 or a restart marker, so
/// neither pair occurs there by chance; bytes after the end marker are allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_scan.is_some_and(|at| bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// Reads and decodes an image file.
pub fn read_image(path: &Path) -> Result<DynamicImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    decode_image(&bytes).map_err(|e| e.to_string())
}

/// Reads all of standard input.
pub fn read_stdin() -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|e| format!("cannot read standard input: {e}"))?;
    Ok(bytes)
}

/// Which frames of a video to look at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    EveryNth(u32),
    EverySeconds(f64),
}

/// A video's size as its frames are shown (rotation applied), frame rate and length, from
/// `ffprobe`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub seconds: f64,
}

fn ffmpeg_missing(tool: &str, e: std::io::Error) -> String {
    format!("cannot run {tool} ({e}): videos need ffmpeg (Debian: apt-get install ffmpeg; scripts/env.sh installs it)")
}

/// Input options for ffprobe and ffmpeg: local files of the usual video containers only, so a
/// crafted file (a playlist, a concat list) cannot make ffmpeg open other files or the network.
const INPUT_WHITELIST: [&str; 4] = ["-protocol_whitelist", "file,pipe", "-format_whitelist", "mov,mp4,m4a,3gp,3g2,mj2,avi,matroska,webm,mpeg,mpegvideo,mpegts,asf,flv"];

pub fn probe(path: &Path) -> Result<VideoInfo, String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(INPUT_WHITELIST)
        .args(["-select_streams", "v:0", "-show_entries", "stream=width,height,avg_frame_rate,r_frame_rate:stream_tags=rotate:stream_side_data=rotation:format=duration", "-of", "json"])
        .arg(path)
        .output()
        .map_err(|e| ffmpeg_missing("ffprobe", e))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    video_info(&json).map_err(|why| match why {
        Some(why) => why,
        None => format!("ffmpeg cannot read it as a video: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no video stream")),
    })
}

/// What ffprobe's JSON says of the first video stream; Err(None) when it has none.
fn video_info(json: &serde_json::Value) -> Result<VideoInfo, Option<String>> {
    let stream = &json["streams"][0];
    let (Some(width), Some(height)) = (stream["width"].as_u64(), stream["height"].as_u64()) else { return Err(None) };
    // Refused before a frame buffer is made for it.
    if width.max(height) > MAX_SIDE as u64 || width * height > MAX_PIXELS {
        return Err(Some(format!("its frames are {width}x{height} pixels, over the limit of {} megapixels ({MAX_SIDE} px a side): refused", MAX_PIXELS / 1_000_000)));
    }
    // A phone's video is stored as shot and shown rotated: ffmpeg hands over the frames as
    // shown, so a quarter turn swaps the sides.
    let rotation = stream["side_data_list"]
        .as_array()
        .and_then(|l| l.iter().find_map(|d| d["rotation"].as_f64()))
        .or_else(|| stream["tags"]["rotate"].as_str().and_then(|r| r.parse().ok()))
        .unwrap_or(0.0);
    let quarter_turn = (rotation.round() as i64).rem_euclid(180) == 90;
    let (width, height) = if quarter_turn { (height, width) } else { (width, height) };
    let rate = |key: &str| -> Option<f64> {
        let (n, d) = stream[key].as_str()?.split_once('/')?;
        let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
        (n > 0.0 && d > 0.0).then_some(n / d)
    };
    let fps = rate("avg_frame_rate").or_else(|| rate("r_frame_rate")).unwrap_or(25.0);
    let seconds = json["format"]["duration"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    Ok(VideoInfo { width: width as u32, height: height as u32, fps, seconds })
}

/// The sampled frames of a video, decoded by `ffmpeg` as they are needed.
pub struct Frames {
    child: Child,
    pub info: VideoInfo,
    sampling: Sampling,
    next: u64,
    /// ffmpeg's messages, read as they come on a thread of their own (unread, a video with
    /// many decode errors would fill the pipe and stop ffmpeg and us both).
    messages: Option<std::thread::JoinHandle<String>>,
}

impl Frames {
    pub fn open(path: &Path, sampling: Sampling) -> Result<Frames, String> {
        let info = probe(path)?;
        let filter = match sampling {
            Sampling::EveryNth(n) => format!("select=not(mod(n\\,{}))", n.max(1)),
            Sampling::EverySeconds(t) => format!("fps=1/{t}"),
        };
        let mut child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin"])
            .args(INPUT_WHITELIST)
            .arg("-i")
            .arg(path)
            // The size probe() promised, whatever the stream says later.
            .args(["-vf", &format!("{filter},scale={}:{}", info.width, info.height), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ffmpeg_missing("ffmpeg", e))?;
        let messages = child.stderr.take().map(|stderr| std::thread::spawn(move || last_lines(stderr, 64 * 1024)));
        Ok(Frames { child, info, sampling, next: 0, messages })
    }

    /// The time of the k-th sampled frame, in seconds.
    pub fn time_of(&self, k: u64) -> f64 {
        match self.sampling {
            Sampling::EveryNth(n) => (k * n as u64) as f64 / self.info.fps,
            Sampling::EverySeconds(t) => k as f64 * t,
        }
    }

    /// The frame number in the video of the k-th sampled frame.
    pub fn frame_of(&self, k: u64) -> u64 {
        match self.sampling {
            Sampling::EveryNth(n) => k * n as u64,
            Sampling::EverySeconds(t) => (k as f64 * t * self.info.fps).round() as u64,
        }
    }

    /// What ffmpeg said on the way out, when it failed.
    pub fn finish(mut self) -> Result<(), String> {
        // Stop reading early (the caller may not want every frame): ffmpeg ends on its own.
        drop(self.child.stdout.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        let err = self.messages.take().and_then(|m| m.join().ok()).unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(format!("ffmpeg failed: {}", err.lines().last().unwrap_or("no message")))
        }
    }
}

impl Iterator for Frames {
    /// (sample index, frame)
    type Item = (u64, RgbImage);

    fn next(&mut self) -> Option<Self::Item> {
        let (w, h) = (self.info.width, self.info.height);
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        self.child.stdout.as_mut()?.read_exact(&mut buf).ok()?;
        let k = self.next;
        self.next += 1;
        Some((k, RgbImage::from_raw(w, h, buf)?))
    }
}

/// The last `keep` bytes of what a reader says, read to its end.
fn last_lines(mut reader: impl Read, keep: usize) -> String {
    let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = reader.read(&mut chunk) {
        if n == 0 {
            break;
        }
        tail.extend(&chunk[..n]);
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
    }
    String::from_utf8_lossy(tail.make_contiguous()).into_owned()
}

/// An `ffmpeg` encoder fed RGB frames on its standard input (an annotated video).
pub struct VideoWriter {
    child: Child,
}

impl VideoWriter {
    pub fn create(path: &Path, width: u32, height: u32, fps: f64) -> Result<VideoWriter, String> {
        let child = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &format!("{width}x{height}"), "-r", &format!("{fps}"), "-i", "-"])
            // Even sides, as yuv420p needs.
            .args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast"])
            .arg(path)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ffmpeg_missing("ffmpeg", e))?;
        Ok(VideoWriter { child })
    }

    pub fn write(&mut self, frame: &RgbImage) -> Result<(), String> {
        use std::io::Write;
        self.child.stdin.as_mut().ok_or("encoder closed")?.write_all(frame.as_raw()).map_err(|e| format!("video encoder: {e}"))
    }

    pub fn finish(mut self) -> Result<(), String> {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("video encoder failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_common_formats_and_refuses_the_rest() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8 * 8, y as u8 * 12, 100])));
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg, image::ImageFormat::Bmp, image::ImageFormat::Gif, image::ImageFormat::WebP] {
            let back = decode_image(&encode(&img, format)).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((back.width(), back.height()), (30, 20), "{format:?}");
        }
        let message = |bytes: &[u8]| decode_image(bytes).unwrap_err().to_string();
        assert_eq!(decode_image(b"").unwrap_err(), ImageError::Empty);
        assert_eq!(decode_image(b"hello, world").unwrap_err(), ImageError::NotAnImage);
        let png = encode(&img, image::ImageFormat::Png);
        assert!(message(&png[..png.len() / 2]).contains("unreadable Png image"));
        let jpeg = encode(&img, image::ImageFormat::Jpeg);
        assert!(message(&jpeg[..jpeg.len() - 40]).contains("truncated Jpeg image"));
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"data some cameras append");
        assert!(decode_image(&trailing).is_ok(), "bytes after the end marker are fine");
    }

    #[test]
    fn probed_videos_are_sized_as_shown_and_huge_ones_refused() {
        let probe = |stream: serde_json::Value| video_info(&serde_json::json!({ "streams": [stream], "format": { "duration": "2.5" } }));
        let plain = probe(serde_json::json!({ "width": 596, "height": 336, "avg_frame_rate": "30/1" })).unwrap();
        assert_eq!(plain, VideoInfo { width: 596, height: 336, fps: 30.0, seconds: 2.5 });
        // A phone's clip, stored landscape and shown portrait: by its display matrix, or by
        // the older rotate tag.
        let matrix = probe(serde_json::json!({ "width": 596, "height": 336, "avg_frame_rate": "30/1", "side_data_list": [{ "side_data_type": "Display Matrix", "rotation": -90 }] })).unwrap();
        assert_eq!((matrix.width, matrix.height), (336, 596));
        let tag = probe(serde_json::json!({ "width": 596, "height": 336, "r_frame_rate": "25/1", "tags": { "rotate": "270" } })).unwrap();
        assert_eq!((tag.width, tag.height, tag.fps), (336, 596, 25.0));
        let half = probe(serde_json::json!({ "width": 596, "height": 336, "tags": { "rotate": "180" } })).unwrap();
        assert_eq!((half.width, half.height), (596, 336));
        let err = probe(serde_json::json!({ "width": 65535, "height": 65535 })).unwrap_err().unwrap();
        assert!(err.contains("65535x65535 pixels, over the limit"), "{err}");
        assert_eq!(video_info(&serde_json::json!({ "streams": [] })), Err(None));
    }

    #[test]
    fn the_last_lines_of_a_long_message_are_kept() {
        let long: Vec<u8> = (0..100_000).map(|i| b'a' + (i % 26) as u8).collect();
        let tail = last_lines(&long[..], 1000);
        assert_eq!(tail.as_bytes(), &long[long.len() - 1000..]);
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        // A BMP header claiming 50000 x 50000 pixels (2.5 gigapixels) over a few bytes of data.
        let mut bmp = encode(&DynamicImage::ImageRgb8(RgbImage::new(1, 1)), image::ImageFormat::Bmp);
        bmp[18..22].copy_from_slice(&50_000i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&50_000i32.to_le_bytes());
        let err = decode_image(&bmp).unwrap_err();
        assert_eq!(err, ImageError::TooLarge { w: 50_000, h: 50_000 });
        assert!(err.to_string().contains("50000x50000 pixels is over the limit"), "{err}");
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 40x20 JPEG whose EXIF says "rotate 90 degrees clockwise to display" (orientation 6).
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(40, 20, |x, _| image::Rgb([if x < 20 { 0 } else { 255 }; 3])));
        let jpeg = encode(&img, image::ImageFormat::Jpeg);
        let tiff: &[u8] = &[b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0];
        let payload = [b"Exif\0\0".as_slice(), tiff].concat();
        let mut with_exif = jpeg[..2].to_vec();
        with_exif.extend_from_slice(&[0xFF, 0xE1]);
        with_exif.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        with_exif.extend_from_slice(&payload);
        with_exif.extend_from_slice(&jpeg[2..]);
        let shown = decode_image(&with_exif).unwrap().to_luma8();
        assert_eq!(shown.dimensions(), (20, 40), "rotated upright");
        // The dark left half of the stored image is the top half once rotated clockwise.
        assert!(shown.get_pixel(10, 5).0[0] < 60 && shown.get_pixel(10, 35).0[0] > 200);
    }
}
