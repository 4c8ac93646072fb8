//! `fer serve`: the face pipeline behind a JSON API and a web page, on axum + tokio.
//!
//! The pipeline (model and detector, in tract) is loaded once and shared by the worker threads; requests reach the workers
//! through a bounded queue, so inference never runs on the async threads. What bounds the rest
//! is in layers and in the accept loop ([`limits`]): a header read timeout and a cap on open
//! connections per connection, an admission permit before a body is read, a body read timeout,
//! a deadline per request, and an API key where the server listens beyond loopback. A worker
//! that panics answers 500 for that request and goes on. Every error is JSON with a message.

pub mod limits;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use limits::{Admission, Connection, Limits};

use crate::data::CLASSES;
use crate::face::detect::{DetectorOptions, FaceBox};
use crate::face::Pipeline;
use crate::media::{decode_image, ImageError};

static PAGE: &str = include_str!("index.html");

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    /// Largest request body, in bytes (413 above it).
    pub max_body: usize,
    /// Requests waiting for a worker before the server answers 503.
    pub queue: usize,
    /// Inference threads, sharing one pipeline.
    pub workers: usize,
    pub detector: DetectorOptions,
    /// A connection's request headers must arrive within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this once it is admitted.
    pub body_timeout: Duration,
    /// Every request is answered within this (503 when inference takes longer).
    pub request_timeout: Duration,
    /// Connections open at once (lowered to fit the open-file limit); past it the oldest one
    /// not waiting on inference is closed.
    pub max_connections: usize,
    /// Required as `Authorization: Bearer KEY` or `X-Api-Key: KEY` on `/api/predict` and
    /// `/api/model` when set.
    pub api_key: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            model: PathBuf::from(fer_core::models::DEFAULT),
            max_body: 10_000_000,
            queue: 16,
            workers: 1,
            detector: DetectorOptions::default(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 512,
            api_key: None,
        }
    }
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

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The connection closes after an error: the request's body may be unread (a refused
        // upload), and a client that erred is not worth a kept-alive connection.
        (self.0, [(header::CONNECTION, "close")], Json(serde_json::json!({ "error": self.1 }))).into_response()
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
    /// The request's admission, released when the answer is sent.
    _admission: Admission,
}

#[derive(Clone)]
struct AppState {
    jobs: SyncSender<Job>,
    card: Arc<serde_json::Value>,
    options: Arc<ServeOptions>,
    limits: Arc<Limits>,
    workers_alive: Arc<AtomicUsize>,
}

/// The model's card (`card.json` of a shipped or exported model, else what its run's summary
/// says), under the model's name, never its path on the server.
fn model_card(chosen: &crate::models::Chosen) -> serde_json::Value {
    let mut card = if chosen.card.is_object() { chosen.card.clone() } else { serde_json::json!({}) };
    if let Some(map) = card.as_object_mut() {
        map.remove("path");
        map.remove("run");
    }
    card["model"] = chosen.name.clone().into();
    card["classes"] = CLASSES.to_vec().into();
    card
}

/// Starts the inference threads over one pipeline (tract's plans run from any thread).
fn start_workers(pipeline: Arc<Pipeline>, options: &ServeOptions, alive: &Arc<AtomicUsize>) -> SyncSender<Job> {
    let (tx, rx) = sync_channel::<Job>(options.queue);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..options.workers.max(1) {
        let (rx, alive, pipeline) = (rx.clone(), alive.clone(), pipeline.clone());
        alive.fetch_add(1, Ordering::AcqRel);
        std::thread::spawn(move || {
            work(&pipeline, rx);
            alive.fetch_sub(1, Ordering::AcqRel);
        });
    }
    tx
}

/// Answers jobs until the server is gone. A panic while answering one is that request's 500;
/// the thread goes on with the next.
fn work(pipeline: &Pipeline, jobs: Arc<Mutex<Receiver<Job>>>) {
    loop {
        // A poisoned lock only means another worker panicked holding it: the queue is intact.
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return, // the server is gone
        };
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(pipeline, &job))).unwrap_or_else(|_| {
            Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the inference thread failed on this request; it goes on with the next".into()))
        });
        // The client may have gone; nothing to do about it.
        let _ = job.reply.send(answer);
    }
}

/// One job's answer: the image decoded, its faces found and classified.
fn answer(pipeline: &Pipeline, job: &Job) -> Result<Answer, ApiError> {
    crate::crash::panic_point("serve:answer");
    crate::crash::hold_point("serve:answer");
    let queued = job.received.elapsed();
    let started = Instant::now();
    decode_image(&job.bytes).map_err(ApiError::from).map(|image| {
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
        })
}

/// The application: routes, state and the layers that bound a request, with the limits the
/// accept loop shares ([`serve_on`]).
pub fn app(options: ServeOptions) -> anyhow::Result<(Router, Arc<Limits>)> {
    let chosen = crate::models::choose(Some(&options.model))?;
    let pipeline = Arc::new(chosen.pipeline(options.detector)?);
    let card = Arc::new(model_card(&chosen));
    let workers_alive = Arc::new(AtomicUsize::new(0));
    let jobs = start_workers(pipeline, &options, &workers_alive);
    // Admitted at once: as many requests as the workers run and the queue holds.
    let limits = Arc::new(Limits::new(options.max_connections, options.queue + options.workers.max(1)));
    let state = AppState { jobs, card, options: Arc::new(options), limits: limits.clone(), workers_alive };
    let api = Router::new()
        .route("/api/predict", post(predict))
        .route("/api/model", get(model))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_key));
    let router = Router::new()
        .route("/", get(page))
        .route("/api/health", get(health))
        .merge(api)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint: see GET /, POST /api/predict, GET /api/model, GET /api/health".into()) })
        .method_not_allowed_fallback(|request: Request| async move {
            let allowed = if request.uri().path() == "/api/predict" { "POST" } else { "GET" };
            let mut response = ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("{} {} is not served: use {allowed}", request.method(), request.uri().path())).into_response();
            response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allowed));
            response
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), deadline))
        // Bodies are read, and limited, by the handler: its 413 is JSON too.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state);
    Ok((router, limits))
}

/// Every request answered within the deadline: past it, a JSON 503 (the worker finishes the
/// job, and its answer goes nowhere).
async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.options.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("no answer within the deadline of {} s; try a smaller image", limit.as_secs_f64())).into_response(),
    }
}

/// The API key, where one is set: `Authorization: Bearer KEY` or `X-Api-Key: KEY`.
async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.options.api_key.as_deref() else { return next.run(request).await };
    let headers = request.headers();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    // Compared in full whatever the first difference, so that timing says nothing of the key.
    let matches = given.is_some_and(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0);
    if matches {
        next.run(request).await
    } else {
        ApiError(StatusCode::UNAUTHORIZED, "this server needs its API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`".into()).into_response()
    }
}

/// Serves `listener` until `shutdown` resolves: each connection on its own task, under the
/// header read timeout and the connection cap.
pub async fn serve_on(listener: tokio::net::TcpListener, options: ServeOptions, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;
    let header_timeout = options.header_timeout;
    let (router, limits) = app(options)?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors (or a connection reset before it was taken):
                    // make room and go on.
                    limits.close_oldest_idle();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let connection = limits.open();
        let (router, limits) = (router.clone(), limits.clone());
        tokio::spawn(async move {
            let this = connection.clone();
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(this.clone());
                router.clone().call(request.map(Body::new))
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = served => {}
                () = connection.closed_for_another() => {}
            }
            limits.close(&connection);
        });
    }
}

/// Serves until the process is stopped.
pub async fn serve(options: ServeOptions, host: &str, port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port)).await.map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    let access = match &options.api_key {
        Some(_) => "the API needs its key",
        None if addr.ip().is_loopback() => "open to this machine only",
        None => "open to the network, without a key (--open)",
    };
    eprintln!("fer serve: model {}, on http://{addr}/, {access} (Ctrl-C stops)", options.model.display());
    serve_on(listener, options, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// Ok while every inference thread lives; 503 and how many do when some have stopped.
async fn health(State(state): State<AppState>) -> Response {
    let (alive, workers) = (state.workers_alive.load(Ordering::Acquire), state.options.workers.max(1));
    let body = serde_json::json!({ "status": if alive == workers { "ok" } else { "degraded" }, "workers": workers, "workers_alive": alive });
    let status = if alive == workers { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn model(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json((*state.card).clone())
}

#[derive(Deserialize)]
struct PredictQuery {
    detect: Option<bool>,
}

async fn predict(
    State(state): State<AppState>,
    connection: Option<Extension<Arc<Connection>>>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<Answer>, ApiError> {
    let received = Instant::now();
    let Query(query) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{}: `detect` takes true or false", e.body_text())))?;
    let limit = state.options.max_body;
    let too_big = || ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over the limit of {limit} bytes"));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let body = request.into_body();
    // Admitted before the body is read: a full server keeps nothing more. The refused body is
    // read and dropped (within the body timeout), so that a client still sending it sees the 503.
    let busy = || ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("busy: {} requests are waiting; try again shortly", state.options.queue));
    let Some(admission) = state.limits.admit(connection.as_ref().map(|Extension(c)| c)) else {
        discard(body, limit, state.options.body_timeout).await;
        return Err(busy());
    };
    let wait = state.options.body_timeout;
    let bytes = match tokio::time::timeout(wait, axum::body::to_bytes(body, limit)).await {
        Ok(read) => read.map_err(|_| too_big())?,
        Err(_) => return Err(ApiError(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {} s", wait.as_secs_f64()))),
    };
    admission.body_received();
    let bytes = body_image(content_type.as_ref(), bytes).await?;
    let (reply, answer) = oneshot::channel();
    let job = Job { bytes, detect: query.detect.unwrap_or(true), received, reply, _admission: admission };
    match state.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => return Err(busy()),
        Err(TrySendError::Disconnected(_)) => return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the inference threads have stopped".into())),
    }
    let answer = answer.await.map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the inference thread failed on this request".into()))??;
    Ok(Json(answer))
}

/// Reads and drops up to `limit` bytes of `body` for at most `wait`.
async fn discard(body: Body, limit: usize, wait: Duration) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0;
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > limit {
                break;
            }
        }
    })
    .await;
}

/// The image a request carries: its body, or the first field of a `multipart/form-data` body.
/// Public for the fuzz target `fuzz/fuzz_targets/body.rs`.
pub async fn body_image(content_type: Option<&HeaderValue>, bytes: Bytes) -> Result<Vec<u8>, ApiError> {
    let Some(content_type) = content_type.filter(|v| v.to_str().is_ok_and(|t| t.starts_with("multipart/form-data"))) else {
        return Ok(bytes.to_vec());
    };
    let mut request = Request::new(Body::from(bytes));
    request.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
    first_file(request).await
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
