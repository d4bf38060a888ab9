//! Clinical ingestion: FHIR R4 JSON over HTTP (`POST /v1/ingest/fhir`) and
//! HL7 v2.5 ORU^R01 over MLLP (`mllp.rs`). Everything received goes into the
//! bots' own store (`store/bots.rs`), never into the delivery tables; the lab
//! bot is woken to post it.
//!
//! **Authentication: one API key per source system.** The config lists
//! `ingest_api_keys` as `NAME:SHA256HEX` (the server keeps only hashes;
//! `tonari ingest-key NAME` makes a key). FHIR clients send
//! `Authorization: Bearer KEY`; HL7 senders put the key in MSH-8 (Security).
//! The source's name scopes idempotency keys and the held-results report.
//! MLLP is plain TCP: run it on a private network or behind a TLS tunnel.
//!
//! Logs carry ids (item ids, sources, control ids), never values or names.

pub mod fhir;
pub mod hl7;
pub mod mllp;

use crate::app::AppState;
use crate::store::bots::{BotStore, NewItem, Stored};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// POST a FHIR resource or Bundle.
pub const FHIR_PATH: &str = "/v1/ingest/fhir";
/// POST a resource of that type (`/v1/ingest/fhir/Observation`, ...).
pub const FHIR_TYPE_PATH: &str = "/v1/ingest/fhir/{resource_type}";
/// GET the source's held results (ids only).
pub const HELD_PATH: &str = "/v1/ingest/held";

/// Parse `ingest_api_keys` entries (`NAME:SHA256HEX`).
pub fn parse_keys(entries: &[String]) -> Result<HashMap<[u8; 32], String>, String> {
    let mut out = HashMap::new();
    for e in entries {
        let (name, hash) = e
            .split_once(':')
            .ok_or_else(|| "ingest_api_keys entries are NAME:SHA256HEX".to_string())?;
        let name = name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(
                "an ingest source name must be 1-64 letters, digits, '-', '_' or '.'".into(),
            );
        }
        let bytes: [u8; 32] = hex::decode(hash.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!("ingest_api_keys: the hash of source {name} is not 64 hex digits")
            })?;
        out.insert(bytes, name.to_string());
    }
    Ok(out)
}

/// The `ingest_api_keys` entry for `key`.
pub fn key_entry(source: &str, key: &str) -> String {
    format!("{source}:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A new random API key and its config entry.
pub fn new_key(source: &str) -> (String, String) {
    let mut b = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    let key = format!("tik_{}", hex::encode(b));
    let entry = key_entry(source, &key);
    (key, entry)
}

pub struct Ingestor {
    pub store: BotStore,
    keys: HashMap<[u8; 32], String>,
    /// Woken after new lab sets are stored (the lab bot waits on it).
    pub wake: Arc<Notify>,
    pub network_id_system: String,
    pub network_id_authority: String,
    /// Counters by protocol and outcome (none in `tonari bots`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Ingestor {
    pub fn new(
        store: BotStore,
        keys: HashMap<[u8; 32], String>,
        network_id_system: String,
        network_id_authority: String,
    ) -> Ingestor {
        Ingestor {
            store,
            keys,
            wake: Arc::new(Notify::new()),
            network_id_system,
            network_id_authority,
            metrics: None,
        }
    }

    /// Count one request or message.
    pub fn count(&self, protocol: &str, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.ingest(protocol, outcome);
        }
    }

    /// The source an API key belongs to.
    pub fn source_for_key(&self, key: &str) -> Option<&str> {
        if key.is_empty() {
            return None;
        }
        let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.keys.get(&h).map(String::as_str)
    }

    /// Store items from `source` (one transaction), wake the lab bot.
    pub async fn store(&self, source: &str, items: &[NewItem]) -> Result<Stored, sqlx::Error> {
        let stored = self
            .store
            .insert_items(source, items, crate::accounts::now_ms())
            .await?;
        tracing::info!(
            source,
            items = ?stored.inserted,
            duplicates = stored.duplicates,
            "ingested"
        );
        if !stored.inserted.is_empty() {
            self.wake.notify_one();
        }
        Ok(stored)
    }
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(FHIR_PATH, post(fhir_post))
        .route(FHIR_TYPE_PATH, post(fhir_post_typed))
        .route(HELD_PATH, get(held))
}

fn fhir_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

fn authenticate<'a>(ing: &'a Ingestor, headers: &HeaderMap) -> Option<&'a str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let key = value.strip_prefix("Bearer ")?.trim();
    ing.source_for_key(key)
}

fn unauthorized() -> Response {
    fhir_response(
        StatusCode::UNAUTHORIZED,
        fhir::outcome(
            "error",
            "login",
            "send the source system's API key as Authorization: Bearer KEY",
        ),
    )
}

async fn fhir_post(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    fhir_ingest(&s, &headers, &body, None).await
}

async fn fhir_post_typed(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(resource_type): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fhir_ingest(&s, &headers, &body, Some(&resource_type)).await
}

async fn fhir_ingest(
    s: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    expected: Option<&str>,
) -> Response {
    let ing = &s.ingest;
    let Some(source) = authenticate(ing, headers) else {
        ing.count("fhir", "401");
        return unauthorized();
    };
    let root: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            ing.count("fhir", "400");
            return fhir_response(
                StatusCode::BAD_REQUEST,
                fhir::outcome("error", "structure", "the body is not JSON"),
            );
        }
    };
    if let Some(t) = expected
        && root.get("resourceType").and_then(Value::as_str) != Some(t)
    {
        ing.count("fhir", "422");
        return fhir_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            fhir::outcome(
                "error",
                "invalid",
                "the body's resourceType does not match the type in the URL",
            ),
        );
    }
    let items = match fhir::items(&root, &ing.network_id_system, source) {
        Ok(i) => i,
        Err(e) => {
            ing.count("fhir", "422");
            tracing::info!(source, code = e.code, "FHIR input refused");
            return fhir_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                fhir::outcome("error", e.code, &e.diagnostics),
            );
        }
    };
    match ing.store(source, &items).await {
        Ok(stored) => {
            ing.count(
                "fhir",
                if stored.inserted.is_empty() && stored.duplicates > 0 {
                    "duplicate"
                } else {
                    "stored"
                },
            );
            fhir_response(
                StatusCode::OK,
                json!({
                    "resourceType": "OperationOutcome",
                    "issue": [{
                        "severity": "information",
                        "code": "informational",
                        "diagnostics": format!("stored {}, duplicates {}", stored.inserted.len(), stored.duplicates)
                    }]
                }),
            )
        }
        Err(e) => {
            ing.count("fhir", "503");
            tracing::error!(error = %e, "bots store failed");
            fhir_response(
                StatusCode::SERVICE_UNAVAILABLE,
                fhir::outcome(
                    "error",
                    "transient",
                    "the results could not be stored; send again",
                ),
            )
        }
    }
}

/// The source's results that no room has taken yet (ids, keys, network ids).
async fn held(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(source) = authenticate(&s.ingest, &headers) else {
        return unauthorized();
    };
    match s.ingest.store.held_of_source(source).await {
        Ok(rows) => {
            let held: Vec<Value> = rows
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "key": r.idem_key,
                        "patient_network_id": r.patient_network_id,
                        "received_ms": r.received_ms
                    })
                })
                .collect();
            (StatusCode::OK, axum::Json(json!({ "held": held }))).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "bots store failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
