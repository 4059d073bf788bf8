//! A Hugging Face dataset mirror on 127.0.0.1 for tests and benchmarks: the paths of
//! `allenai/objaverse` (object-paths, 160 metadata shards, GLBs) served by axum from a
//! generated tree, with faults to inject (status codes, `Retry-After`, a connection dropped
//! half-way, a truncated body, an HTML page) and a log of every request.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DATASET: &str = "allenai/objaverse";
pub const REVISION: &str = "main";

/// One injected misbehaviour, used up by one request.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    /// A status with `Retry-After: SECS`.
    RetryAfter(u16, u64),
    /// Sends half the body with the full `Content-Length`, then drops the connection.
    DropHalf,
    /// Sends the first half of the file as if it were all of it (a consistent, short
    /// response: only the content check can tell).
    Truncate,
    /// Answers with an HTML page and status 200.
    Html,
    /// Sends half the body and drops the connection, like `DropHalf`, and the file is
    /// replaced by these bytes meanwhile (the repository's `main` moved).
    DropHalfThenChange(Vec<u8>),
    /// Sends the file whole with one byte changed (damage on the way that keeps the
    /// length: only a checksum can tell).
    FlipByte,
}

/// A request the mirror received.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Path inside the dataset (`glbs/000-001/<uid>.glb`).
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub at: Instant,
}

#[derive(Default)]
struct MirrorState {
    /// Dataset path → bytes.
    files: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    /// Paths that always answer 404 (in addition to paths with no file).
    log: Mutex<Vec<Logged>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Delay before answering a GLB request (to make overlap observable).
    glb_latency: Mutex<Duration>,
    /// Answer every request with an HTML page (a web server, not a mirror).
    html_everywhere: Mutex<bool>,
}

/// A running mirror.
pub struct Mirror {
    /// What `HF_ENDPOINT` is set to.
    pub endpoint: String,
    state: Arc<MirrorState>,
    _runtime: std::thread::JoinHandle<()>,
}

/// An object of the generated dataset.
#[derive(Clone, Debug)]
pub struct Object {
    pub uid: String,
    pub shard: usize,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Sketchfab category slugs (often empty).
    pub categories: Vec<String>,
    pub license: String,
    pub glb: Arc<Vec<u8>>,
}

impl Object {
    /// An object with a generated GLB of about `size` bytes (at least a few hundred).
    pub fn new(n: u32, shard: usize, categories: &[&str], name: &str, size: usize) -> Object {
        Object {
            uid: uid(n),
            shard,
            name: name.to_string(),
            description: format!("<p>A <b>{name}</b>&nbsp;model.</p>"),
            tags: vec![format!("tag{n}"), "model".into()],
            categories: categories.iter().map(|c| c.to_string()).collect(),
            license: if n.is_multiple_of(2) { "by" } else { "cc0" }.to_string(),
            glb: Arc::new(make_glb(n, size)),
        }
    }

    /// A catalog entry outside the objects of interest (a category other than food,
    /// or none), sharing one small GLB with every other filler object.
    pub fn filler(n: u32, glb: &Arc<Vec<u8>>) -> Object {
        const OTHER: [&str; 5] = ["animals-pets", "architecture", "music", "people", ""];
        let category = OTHER[n as usize % OTHER.len()];
        Object {
            uid: uid(n),
            shard: n as usize % 160,
            name: format!("Object {n}"),
            description: format!("Scanned object number {n}, with a longer description."),
            tags: vec![format!("tag{n}"), "scan".into()],
            categories: if category.is_empty() {
                vec![]
            } else {
                vec![category.to_string()]
            },
            license: "by".into(),
            glb: glb.clone(),
        }
    }

    pub fn path(&self) -> String {
        format!("glbs/{}/{}.glb", shard_name(self.shard), self.uid)
    }
}

/// A deterministic uid for object `n`.
pub fn uid(n: u32) -> String {
    format!("{:032x}", (n as u128 + 1) * 0x9e37_79b9_7f4a_7c15)
}

pub fn shard_name(i: usize) -> String {
    format!("{:03}-{:03}", i / 1000, i % 1000)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A valid binary glTF 2.0 file: a tetrahedron (positions and indices), its BIN chunk
/// padded so the file is about `size` bytes. `seed` varies the geometry.
pub fn make_glb(seed: u32, size: usize) -> Vec<u8> {
    let s = 0.5 + (seed % 7) as f32 * 0.05;
    let positions: [[f32; 3]; 4] = [[0.0, 0.0, 0.0], [s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, s]];
    let indices: [u16; 12] = [0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3];
    let mut bin = Vec::new();
    for p in positions {
        for c in p {
            bin.extend_from_slice(&c.to_le_bytes());
        }
    }
    for i in indices {
        bin.extend_from_slice(&i.to_le_bytes());
    }
    let geometry = bin.len();
    let json = format!(
        concat!(
            r#"{{"asset":{{"version":"2.0","generator":"mvc test mirror"}},"scene":0,"#,
            r#""scenes":[{{"nodes":[0]}}],"nodes":[{{"mesh":0}}],"#,
            r#""meshes":[{{"primitives":[{{"attributes":{{"POSITION":0}},"indices":1}}]}}],"#,
            r#""accessors":[{{"bufferView":0,"componentType":5126,"count":4,"type":"VEC3","#,
            r#""min":[0,0,0],"max":[{s},{s},{s}]}},"#,
            r#"{{"bufferView":1,"componentType":5123,"count":12,"type":"SCALAR"}}],"#,
            r#""bufferViews":[{{"buffer":0,"byteOffset":0,"byteLength":48}},"#,
            r#"{{"buffer":0,"byteOffset":48,"byteLength":24}}],"#,
            r#""buffers":[{{"byteLength":{len}}}]}}"#
        ),
        s = s,
        len = "LEN"
    );
    // Pad BIN to reach the size asked for (and a multiple of 4).
    let mut json = json.into_bytes();
    let overhead = 12 + 8 + 8 + json.len() + 16;
    let mut bin_len = size.saturating_sub(overhead).max(geometry);
    bin_len = bin_len.div_ceil(4) * 4;
    bin.resize(bin_len, (seed % 251) as u8);
    let text = String::from_utf8(json)
        .unwrap()
        .replace(":LEN}", &format!(":{bin_len}}}"));
    json = text.into_bytes();
    while json.len() % 4 != 0 {
        json.push(b' ');
    }
    let total = 12 + 8 + json.len() + 8 + bin.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&json);
    out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    out.extend_from_slice(b"BIN\0");
    out.extend_from_slice(&bin);
    out
}

/// A Sketchfab annotation of the shape Objaverse stores.
fn annotation(o: &Object) -> serde_json::Value {
    let thumbnails: Vec<serde_json::Value> = [256, 640, 1024, 1920]
        .iter()
        .map(|w| {
            serde_json::json!({
                "url": format!("https://media.sketchfab.example/models/{}/thumbnails/{w}.jpeg", o.uid),
                "width": w, "height": w * 9 / 16, "size": w * 40, "uid": format!("{:x}", w * 77),
            })
        })
        .collect();
    serde_json::json!({
        "uri": format!("https://api.sketchfab.com/v3/models/{}", o.uid),
        "uid": o.uid,
        "name": o.name,
        "staffpickedAt": null,
        "viewCount": 7,
        "likeCount": 1,
        "animationCount": 0,
        "viewerUrl": format!("https://sketchfab.com/3d-models/{}", o.uid),
        "embedUrl": format!("https://sketchfab.com/models/{}/embed", o.uid),
        "commentCount": 0,
        "isDownloadable": true,
        "publishedAt": "2021-01-01T00:00:00.000000",
        "tags": o.tags.iter().map(|t| serde_json::json!({"name": t, "slug": t, "uri": ""})).collect::<Vec<_>>(),
        "categories": o.categories.iter().map(|c| serde_json::json!({"name": c, "uri": ""})).collect::<Vec<_>>(),
        "thumbnails": {"images": thumbnails},
        "user": {"username": "tester"},
        "description": o.description,
        "faceCount": 4,
        "createdAt": "2021-01-01T00:00:00.000000",
        "vertexCount": 4,
        "isAgeRestricted": false,
        "archives": {"glb": {"size": o.glb.len(), "type": "glb", "textureCount": 0, "faceCount": 4, "vertexCount": 4}},
        "license": o.license,
    })
}

impl Mirror {
    /// Serves `objects` as the dataset `allenai/objaverse` at `main`.
    pub fn start(objects: &[Object]) -> Mirror {
        let state = Arc::new(MirrorState::default());
        let mirror_state = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().fallback(serve).with_state(mirror_state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        let mirror = Mirror {
            endpoint: format!("http://{addr}"),
            state,
            _runtime: runtime,
        };
        mirror.publish(objects);
        mirror
    }

    /// (Re)writes the dataset files for `objects`: object-paths, all 160 shards, GLBs.
    pub fn publish(&self, objects: &[Object]) {
        let mut files = self.state.files.lock().unwrap();
        files.clear();
        let paths: BTreeMap<String, String> =
            objects.iter().map(|o| (o.uid.clone(), o.path())).collect();
        files.insert(
            "object-paths.json.gz".into(),
            Arc::new(gzip(&serde_json::to_vec(&paths).unwrap())),
        );
        for shard in 0..160 {
            let entries: BTreeMap<String, serde_json::Value> = objects
                .iter()
                .filter(|o| o.shard == shard)
                .map(|o| (o.uid.clone(), annotation(o)))
                .collect();
            files.insert(
                format!("metadata/{}.json.gz", shard_name(shard)),
                Arc::new(gzip(&serde_json::to_vec(&entries).unwrap())),
            );
        }
        for o in objects {
            files.insert(o.path(), o.glb.clone());
        }
    }

    /// Serves `bytes` at `path`: relative to the dataset's root, or, starting with `/`, an
    /// absolute path on the server (a model repository: `/owner/name/resolve/rev/file`).
    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(bytes));
    }

    /// Removes a file (requests for it get 404).
    pub fn remove(&self, path: &str) {
        self.state.files.lock().unwrap().remove(path);
    }

    /// Queues faults for the next requests of `path`, in order.
    pub fn fault(&self, path: &str, faults: &[Fault]) {
        self.state
            .faults
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .extend(faults.iter().cloned());
    }

    pub fn set_glb_latency(&self, latency: Duration) {
        *self.state.glb_latency.lock().unwrap() = latency;
    }

    pub fn set_html_everywhere(&self, on: bool) {
        *self.state.html_everywhere.lock().unwrap() = on;
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests so far for paths starting with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.path.starts_with(prefix))
            .collect()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// The most requests it answered at once since the log was last cleared.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Counts a request in flight while alive.
struct InFlight(Arc<MirrorState>);

impl InFlight {
    fn new(state: &Arc<MirrorState>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

const HTML: &str =
    "<!DOCTYPE html><html><head><title>Not a mirror</title></head><body>Welcome</body></html>";

async fn serve(State(state): State<Arc<MirrorState>>, uri: Uri, headers: HeaderMap) -> Response {
    let _guard = InFlight::new(&state);
    let prefix = format!("/datasets/{DATASET}/resolve/{REVISION}/");
    let full = uri.path().to_string();
    let path = full.strip_prefix(&prefix).unwrap_or(&full).to_string();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    log_request(&state, &path, &range, &headers);
    if *state.html_everywhere.lock().unwrap() {
        return html();
    }
    if path.starts_with("glbs/") {
        let latency = *state.glb_latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
    let fault = state
        .faults
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(|q| q.pop_front());
    let file = state.files.lock().unwrap().get(&path).cloned();
    // Outside the dataset, only what `put` placed at an absolute path.
    if !full.starts_with(&prefix) && file.is_none() {
        return status(StatusCode::NOT_FOUND);
    }
    match fault {
        Some(Fault::Status(code)) => return status(StatusCode::from_u16(code).unwrap()),
        Some(Fault::RetryAfter(code, secs)) => {
            let mut r = status(StatusCode::from_u16(code).unwrap());
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        Some(Fault::Html) => return html(),
        _ => {}
    }
    let Some(file) = file else {
        return status(StatusCode::NOT_FOUND);
    };
    // As the hub: a strong ETag on every file, and an LFS file's SHA-256 as X-Linked-Etag.
    let sha256 = mvc::text::hex(&sha2::Sha256::digest(&file[..]));
    let etag = format!("\"{sha256}\"");
    let linked = path.starts_with("glbs/").then(|| etag.clone());
    let with_validators = |mut r: Response| {
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
        if let Some(l) = &linked {
            r.headers_mut()
                .insert("x-linked-etag", HeaderValue::from_str(l).unwrap());
        }
        r
    };
    if let Some(Fault::DropHalfThenChange(next)) = &fault {
        state
            .files
            .lock()
            .unwrap()
            .insert(path.clone(), Arc::new(next.clone()));
    }
    if let Some(broken) = broken_body(&fault, &file) {
        return with_validators(broken);
    }
    if let Some(Fault::Truncate) = fault {
        let half = file[..file.len() / 2].to_vec();
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, half.len())
            .body(Body::from(half))
            .unwrap();
    }
    // `If-Range` that is not this file's ETag: the whole file, as RFC 9110 says.
    let same_file = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
    let start = range
        .as_deref()
        .filter(|_| same_file)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    with_validators(from_byte(&file, start))
}

/// Notes a request in the mirror's log.
fn log_request(state: &MirrorState, path: &str, range: &Option<String>, headers: &HeaderMap) {
    state.log.lock().unwrap().push(Logged {
        path: path.to_string(),
        range: range.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        at: Instant::now(),
    });
}

/// The body of a fault that sends a file wrong: a flipped byte, or half of it and then a
/// dropped connection.
fn broken_body(fault: &Option<Fault>, file: &[u8]) -> Option<Response> {
    match fault {
        Some(Fault::FlipByte) => {
            let mut bytes = file.to_vec();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_LENGTH, bytes.len())
                    .body(Body::from(bytes))
                    .unwrap(),
            )
        }
        Some(Fault::DropHalf) | Some(Fault::DropHalfThenChange(_)) => {
            let half = file.len() / 2;
            let first = axum::body::Bytes::copy_from_slice(&file[..half]);
            // The pause lets the first half reach the client before the connection drops.
            let stream = futures_util::StreamExt::chain(
                futures_util::stream::iter(vec![Ok::<_, std::io::Error>(first)]),
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(std::io::Error::other(
                        "connection dropped by the test mirror",
                    ))
                }),
            );
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_LENGTH, file.len())
                    .body(Body::from_stream(stream))
                    .unwrap(),
            )
        }
        _ => None,
    }
}

/// The file from byte `start` (206, or 416 past its end), or whole (200).
fn from_byte(file: &[u8], start: Option<usize>) -> Response {
    match start {
        Some(start) if start >= file.len() => {
            let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE);
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", file.len())).unwrap(),
            );
            r
        }
        Some(start) => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{}", file.len() - 1, file.len()),
            )
            .header(header::CONTENT_LENGTH, file.len() - start)
            .body(Body::from(file[start..].to_vec()))
            .unwrap(),
        None => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, file.len())
            .body(Body::from(file.to_vec()))
            .unwrap(),
    }
}

fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::from(code.to_string()))
        .unwrap()
}

fn html() -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from(HTML))
        .unwrap()
}
