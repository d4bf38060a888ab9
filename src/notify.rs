//! Result notices by e-mail: "new results arrived in a care room", with a
//! link, never values, test names or patient names. Rooms noted by the lab
//! bot are collected for `notify_batch_secs` and then each recipient gets
//! one e-mail listing their rooms (not one per observation). Recipients are
//! the room's current members who want notices (`users.notify_results`,
//! default: care managers). The queue is bounded; the task is owned by the
//! app and flushes what it has when the server stops.

use crate::mailer::Mailer;
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const QUEUE: usize = 1024;
const MAX_ROOMS_PER_BATCH: usize = 10_000;

/// A handle to note rooms with new results.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<String>,
}

impl Notifier {
    /// Note that `room_id` got new results (never blocks; a full queue drops
    /// the note and logs it).
    pub fn note(&self, room_id: &str) {
        if self.tx.try_send(room_id.to_string()).is_err() {
            tracing::warn!(room = %room_id, "result notice dropped: queue full");
        }
    }
}

pub fn spawn(
    store: Store,
    mailer: Arc<Mailer>,
    batch: Duration,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> Notifier {
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    tasks.spawn(async move {
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => None,
                r = rx.recv() => r,
            };
            let Some(first) = first else { break };
            let mut rooms = BTreeSet::from([first]);
            let deadline = tokio::time::Instant::now() + batch;
            let mut stop = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = cancel.cancelled() => { stop = true; break }
                    r = rx.recv() => match r {
                        Some(room) => {
                            if rooms.len() < MAX_ROOMS_PER_BATCH {
                                rooms.insert(room);
                            }
                        }
                        None => { stop = true; break }
                    },
                }
            }
            flush(&store, &mailer, rooms).await;
            if stop {
                break;
            }
        }
    });
    Notifier { tx }
}

async fn flush(store: &Store, mailer: &Mailer, rooms: BTreeSet<String>) {
    let mut by_addr: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
    for room in rooms {
        match store.result_notice_recipients(&room).await {
            Ok(list) => {
                for r in list {
                    by_addr
                        .entry(r.email)
                        .or_insert_with(|| (r.user_id, Vec::new()))
                        .1
                        .push(room.clone());
                }
            }
            Err(e) => tracing::error!(room = %room, error = %e, "result notice recipients failed"),
        }
    }
    for (addr, (user_id, rooms)) in by_addr {
        match mailer.send_results_notice(&addr, &rooms).await {
            Ok(()) => tracing::info!(user = user_id, rooms = rooms.len(), "result notice sent"),
            Err(e) => tracing::warn!(user = user_id, error = %e.message, "result notice not sent"),
        }
    }
}

// ---------------------------------------------------------------- preferences

use crate::app::AppState;
use crate::http::{ApiError, ApiJson, Auth};
type ApiResult<T> = Result<T, ApiError>;
use axum::Json;
use axum::extract::State;
use tonari_wire::NoticePrefs;

async fn prefs_of(s: &AppState, user_id: i64) -> ApiResult<Json<NoticePrefs>> {
    let (results, role) = s
        .store
        .notice_pref(user_id)
        .await
        .map_err(crate::error::Error::from)?
        .unwrap_or((None, String::new()));
    Ok(Json(NoticePrefs {
        results,
        effective: results.unwrap_or(role == "care_manager"),
    }))
}

/// `GET /v1/me/notices`.
pub async fn get_prefs(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
) -> ApiResult<Json<NoticePrefs>> {
    prefs_of(&s, auth.user_id).await
}

/// `POST /v1/me/notices`: set (or with `null`, reset) the result notices.
pub async fn set_prefs(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    ApiJson(req): ApiJson<NoticePrefs>,
) -> ApiResult<Json<NoticePrefs>> {
    s.store
        .set_notice_pref(auth.user_id, req.results)
        .await
        .map_err(crate::error::Error::from)?;
    tracing::info!(user = auth.user_id, "notice preference changed");
    prefs_of(&s, auth.user_id).await
}
