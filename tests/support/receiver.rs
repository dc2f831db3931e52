//! A real HTTP receiver for alert deliveries: records every request, answers with scripted
//! statuses (then 200), on a loopback port of its own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};

/// One request as the receiver saw it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Answers a request: status and JSON body.
pub type Responder = Arc<dyn Fn(&Received) -> (u16, serde_json::Value) + Send + Sync>;

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    script: VecDeque<u16>,
    otherwise: u16,
    responders: Vec<(String, Responder)>,
}

/// The receiver; it stops with the test process.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shared: Arc<Mutex<Shared>>,
}

impl Receiver {
    /// Starts a receiver answering 200.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared {
            otherwise: 200,
            ..Shared::default()
        }));
        let state = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(
                    move |uri: Uri, headers: HeaderMap, body: Bytes| {
                        let state = state.clone();
                        async move {
                            let mut shared = state.lock().unwrap();
                            let mut received = Received {
                                path: uri.path().to_string(),
                                headers: headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.as_str().to_string(), v.to_str().unwrap_or("").into())
                                    })
                                    .collect(),
                                body: body.to_vec(),
                                status: 0,
                            };
                            let responder = shared
                                .responders
                                .iter()
                                .find(|(prefix, _)| received.path.starts_with(prefix.as_str()))
                                .map(|(_, r)| r.clone());
                            let (status, answer) = match responder {
                                Some(respond) => {
                                    let (status, json) = respond(&received);
                                    (status, json.to_string())
                                }
                                None => (
                                    shared.script.pop_front().unwrap_or(shared.otherwise),
                                    "ok".to_string(),
                                ),
                            };
                            received.status = status;
                            shared.received.push(received);
                            (StatusCode::from_u16(status).unwrap(), answer)
                        }
                    },
                );
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver { base, shared }
    }

    /// Answers the next requests with `statuses`, in order.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.shared.lock().unwrap().script.extend(statuses);
    }

    /// Answers requests to paths under `prefix` with `respond` (before any script).
    pub fn respond(
        &self,
        prefix: &str,
        respond: impl Fn(&Received) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) {
        self.shared
            .lock()
            .unwrap()
            .responders
            .push((prefix.to_string(), Arc::new(respond)));
    }

    /// Answers every request not scripted with `status`.
    pub fn answer_otherwise(&self, status: u16) {
        self.shared.lock().unwrap().otherwise = status;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// Requests to `path` so far.
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

/// Whether `r` carries a valid `X-Trellis-Signature` for `secret`, checked the way the README
/// tells a receiver to: HMAC-SHA256 over `"<X-Trellis-Timestamp>.<body>"`.
pub fn signed_by(r: &Received, secret: &str) -> bool {
    use hmac::{Hmac, Mac};
    let (Some(timestamp), Some(signature)) = (
        r.header("X-Trellis-Timestamp"),
        r.header("X-Trellis-Signature"),
    ) else {
        return false;
    };
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&expected).is_ok()
}
