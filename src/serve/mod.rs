//! `fer serve`: the face pipeline behind a JSON API and a web page, on axum + tokio.
//!
//! The model and the detector are loaded once per worker thread; requests reach the workers
//! through a bounded queue, so inference never runs on the async threads and a full queue is
//! answered at once (503) instead of piling up. Every error is JSON with a message.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

use crate::data::CLASSES;
use crate::face::detect::{DetectorOptions, FaceBox};
use crate::face::Pipeline;
use crate::media::{decode_image, ImageError};
use crate::nn::model::Trained;

static PAGE: &str = include_str!("index.html");

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    /// Largest request body, in bytes (413 above it).
    pub max_body: usize,
    /// Requests waiting for a worker before the server answers 503.
    pub queue: usize,
    /// Inference threads, each with its own copy of the model and detector.
    pub workers: usize,
    pub detector: DetectorOptions,
}

/// One face in an answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiFace {
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    pub score: Option<f64>,
    pub label: String,
    pub probabilities: serde_json::Map<String, serde_json::Value>,
}

/// The answer to `POST /api/predict`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub width: u32,
    pub height: u32,
    pub faces: Vec<ApiFace>,
    /// Time spent decoding, detecting, classifying, and in all (with the wait in the queue).
    pub milliseconds: Timings,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub queued: f64,
    pub decode: f64,
    pub detect: f64,
    pub classify: f64,
    pub total: f64,
}

/// An error as the API answers it: a status and a message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        let status = match e {
            ImageError::Empty | ImageError::NotAnImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ImageError::Unreadable(_) => StatusCode::BAD_REQUEST,
            ImageError::TooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError(status, e.to_string())
    }
}

/// Work for an inference thread, and where its answer goes.
struct Job {
    bytes: Vec<u8>,
    detect: bool,
    received: Instant,
    reply: oneshot::Sender<Result<Answer, ApiError>>,
}

#[derive(Clone)]
struct AppState {
    jobs: SyncSender<Job>,
    card: Arc<serde_json::Value>,
    options: Arc<ServeOptions>,
}

/// The model's card: `card.json` of a shipped model, else what its config and summary say.
fn model_card(dir: &std::path::Path) -> serde_json::Value {
    let read = |f: &str| std::fs::read(dir.join(f)).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let mut card = read("card.json").or_else(|| read("summary.json")).unwrap_or_else(|| serde_json::json!({}));
    card["path"] = dir.display().to_string().into();
    card["classes"] = CLASSES.to_vec().into();
    card
}

/// Starts the inference threads; each loads its own pipeline (tch tensors are not `Sync`).
fn start_workers(options: &ServeOptions) -> anyhow::Result<SyncSender<Job>> {
    let (tx, rx) = sync_channel::<Job>(options.queue);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..options.workers.max(1) {
        let model = Trained::load(&options.model, tch::Device::Cpu)?;
        let pipeline = Pipeline::new(model, options.detector)?;
        let rx = rx.clone();
        std::thread::spawn(move || work(pipeline, rx));
    }
    Ok(tx)
}

fn work(pipeline: Pipeline, jobs: Arc<Mutex<Receiver<Job>>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // the server is gone
            },
            Err(_) => return,
        };
        let queued = job.received.elapsed();
        let started = Instant::now();
        let answer = decode_image(&job.bytes).map_err(ApiError::from).map(|image| {
            let decoded = started.elapsed();
            let analysis = pipeline.analyse(&image, job.detect);
            let faces = analysis
                .faces
                .iter()
                .map(|f| ApiFace {
                    bbox: f.bbox,
                    score: f.score,
                    label: f.label.to_string(),
                    probabilities: CLASSES.iter().zip(&f.probabilities).map(|(c, p)| (c.to_string(), (*p as f64).into())).collect(),
                })
                .collect();
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            Answer {
                width: image.width(),
                height: image.height(),
                faces,
                milliseconds: Timings {
                    queued: ms(queued),
                    decode: ms(decoded),
                    detect: ms(analysis.detect),
                    classify: ms(analysis.classify),
                    total: ms(job.received.elapsed()),
                },
            }
        });
        // The client may have gone; nothing to do about it.
        let _ = job.reply.send(answer);
    }
}

/// The application: routes, state and limits.
pub fn app(options: ServeOptions) -> anyhow::Result<Router> {
    let card = Arc::new(model_card(&options.model));
    let jobs = start_workers(&options)?;
    let state = AppState { jobs, card, options: Arc::new(options) };
    Ok(Router::new()
        .route("/", get(page))
        .route("/api/predict", post(predict))
        .route("/api/model", get(model))
        .route("/api/health", get(health))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint: see GET /, POST /api/predict, GET /api/model, GET /api/health".into()) })
        // Bodies are read, and limited, by the handler: its 413 is JSON too.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state))
}

/// Serves until the process is stopped.
pub async fn serve(options: ServeOptions, host: &str, port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port)).await.map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    eprintln!("fer serve: model {}, on http://{addr}/ (Ctrl-C stops)", options.model.display());
    axum::serve(listener, app(options)?).with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn model(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json((*state.card).clone())
}

#[derive(Deserialize)]
struct PredictQuery {
    detect: Option<bool>,
}

async fn predict(State(state): State<AppState>, Query(query): Query<PredictQuery>, request: Request) -> Result<Json<Answer>, ApiError> {
    let received = Instant::now();
    let limit = state.options.max_body;
    let too_big = || ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over the limit of {limit} bytes"));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let is_form = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("multipart/form-data"));
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_big())?;
    let bytes = if is_form { first_file(Request::from_parts(parts, Body::from(bytes))).await? } else { bytes.to_vec() };
    let (reply, answer) = oneshot::channel();
    let job = Job { bytes, detect: query.detect.unwrap_or(true), received, reply };
    match state.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("busy: {} requests are waiting; try again shortly", state.options.queue)))
        }
        Err(TrySendError::Disconnected(_)) => return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the inference threads have stopped".into())),
    }
    let answer = answer.await.map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the inference thread failed on this request".into()))??;
    Ok(Json(answer))
}

/// The first file (or any field) of a multipart form.
async fn first_file(request: Request) -> Result<Vec<u8>, ApiError> {
    let bad = |e: String| ApiError(StatusCode::BAD_REQUEST, format!("malformed multipart form: {e}"));
    let mut form = Multipart::from_request(request, &()).await.map_err(|e| bad(e.body_text()))?;
    if let Some(field) = form.next_field().await.map_err(|e| bad(e.body_text()))? {
        return Ok(field.bytes().await.map_err(|e| bad(e.body_text()))?.to_vec());
    }
    Err(ApiError(StatusCode::BAD_REQUEST, "the form holds no file: send the image as its first field".into()))
}
