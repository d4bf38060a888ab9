//! WebSocket transport: push of room messages, welcomes and device events.
//!
//! One connection = one task that owns everything it spawns: a forwarder per
//! resumed room (a `JoinSet`, aborted when the connection ends) and a send
//! task that validates the connection's `Send` frames in order. Forwarders
//! first catch up from the store, then follow the room's live broadcast;
//! they push into the connection's bounded outbound queue. A live frame that
//! does not fit the queue means the client is too slow: the connection is
//! closed with 4008 and the client resumes later from its last seq.

use crate::accounts::AuthDevice;
use crate::app::AppState;
use crate::delivery::{Pending, frame_text};
use crate::error::Error;
use crate::http::ApiError;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tonari_wire::{ClientFrame, ErrorCode, ServerFrame, SubmitRequest, close_codes};

/// A write that takes longer than this ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read/write buffer sizes: small, so idle connections stay cheap.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;
type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Utf8Bytes>> + Send>>;

/// Frames written before one flush.
const MAX_FRAMES_PER_FLUSH: usize = 64;
/// Sends of one connection waiting for durability before reading pauses.
const MAX_SENDS_IN_FLIGHT: usize = 256;

pub async fn upgrade(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A page of another site must not use a browser's session here.
    if !crate::web::origin_allowed(&s.config.allowed_origins, &headers) {
        return ApiError(Error::new(
            ErrorCode::Forbidden,
            "this origin may not open the WebSocket",
        ))
        .into_response();
    }
    // Native clients send `Authorization: Bearer`; browsers cannot, and offer
    // the token as a subprotocol instead (see `crate::web`).
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let (token, browser) = match (header_token, crate::web::ws_protocol_token(&headers)) {
        (Some(t), _) => (t, false),
        (None, Some(t)) => (t, true),
        (None, None) => return ApiError(Error::unauthenticated()).into_response(),
    };
    let auth = match s.accounts.authenticate(token).await {
        // Like `Auth`: a session that still has to enrol TOTP gets no socket.
        Ok(auth) if auth.restricted => {
            return ApiError(crate::http::totp_enrollment_required()).into_response();
        }
        Ok(auth) => auth,
        Err(e) => return ApiError(e).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError(Error::new(
                ErrorCode::InvalidRequest,
                format!(
                    "a WebSocket upgrade is required here: {}",
                    rejection.body_text()
                ),
            ))
            .into_response();
        }
    };
    let tracker = s.tasks.clone();
    // Answer with `tonari.v1` only: the token subprotocol is never echoed.
    let ws = if browser {
        ws.protocols([crate::web::WS_PROTOCOL])
    } else {
        ws
    };
    ws.max_message_size(s.config.ws_max_message_bytes)
        .max_frame_size(s.config.ws_max_frame_bytes)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            // Owned by the app's task tracker: shutdown waits for it.
            let _guard = tracker.token();
            connection(socket, s, auth).await;
        })
}

enum ForwardEnd {
    /// The room ended for this device (removed) or the connection closed.
    Done,
    /// The outbound queue was full: the client is too slow.
    Slow,
}

async fn connection(socket: WebSocket, s: Arc<AppState>, auth: AuthDevice) {
    let device_id = auth.device_id;
    tracing::debug!(device_id, "websocket connected");
    s.metrics.ws_connections.inc();
    let (conn_id, mut device_events) = s.hub.register_device(device_id);
    let (out_tx, mut out_rx) = mpsc::channel::<Utf8Bytes>(s.config.ws_outbound_queue.max(1));
    let mut forwarders: JoinSet<Result<ForwardEnd, Error>> = JoinSet::new();
    let mut by_room: HashMap<String, AbortHandle> = HashMap::new();
    // Sends waiting for durability; each yields its Ack/SendError frame, in
    // the order the sends arrived (the writer makes them durable in order).
    let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let mut sends_in_flight = 0usize;
    // The send task and its channels exist only once the connection sends
    // (most connections only receive; idle ones must stay small).
    let mut sender: Option<SendTask> = None;
    let (mut sink, mut stream) = socket.split();

    let close: Option<(u16, &'static str)> = loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => break Some((close_codes::GOING_AWAY, "server shutting down")),
            incoming = stream.next(), if sends_in_flight < MAX_SENDS_IN_FLIGHT => match incoming {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) => {
                    let too_big = e.to_string().to_ascii_lowercase().contains("too long")
                        || e.to_string().to_ascii_lowercase().contains("capacity");
                    tracing::debug!(device_id, error = %e, "websocket read failed");
                    if too_big {
                        break Some((close_codes::TOO_BIG, "message too big"));
                    }
                    break None;
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(ClientFrame::Resume { rooms }) => {
                        for (room_id, after) in rooms {
                            match s.delivery.is_member(device_id, &room_id).await {
                                Ok(true) => {
                                    if let Some(old) = by_room.remove(&room_id) {
                                        old.abort();
                                    }
                                    let handle = forwarders.spawn(forward(
                                        s.clone(), auth, room_id.clone(), after, out_tx.clone(),
                                    ));
                                    by_room.insert(room_id, handle);
                                }
                                Ok(false) => {
                                    let _ = out_tx.try_send(error_frame(
                                        ErrorCode::NotAMember,
                                        "this device is not a member of a room it resumed",
                                    ));
                                }
                                Err(e) => {
                                    e.log("websocket resume");
                                    let _ = out_tx.try_send(error_frame(e.code, &e.message));
                                }
                            }
                        }
                    }
                    Ok(ClientFrame::Ping { nonce }) => {
                        if let Ok(f) = frame_text(&ServerFrame::Pong { nonce })
                            && out_tx.try_send(f).is_err()
                        {
                            break Some((close_codes::SLOW_CONSUMER, "too slow"));
                        }
                    }
                    Ok(ClientFrame::Send { room_id, txn_id, message, welcome }) => {
                        // Validated in order by the connection's send task,
                        // so this loop never waits for a room lock.
                        sends_in_flight += 1;
                        let req = SubmitRequest { txn_id, message, welcome };
                        let task = sender.get_or_insert_with(|| SendTask::spawn(s.clone(), auth));
                        if task.to_validate.try_send((room_id, req)).is_err() {
                            break Some((1011, "internal error"));
                        }
                    }
                    Err(_) => break Some((close_codes::INVALID_FRAME, "invalid frame")),
                },
                Some(Ok(Message::Binary(_))) => break Some((close_codes::INVALID_FRAME, "binary frames are not used")),
                Some(Ok(_)) => {} // ping/pong are answered by the library
            },
            event = device_events.recv() => match event {
                Some(frame) => {
                    if out_tx.try_send(frame).is_err() {
                        break Some((close_codes::SLOW_CONSUMER, "too slow"));
                    }
                }
                None => break Some((close_codes::SLOW_CONSUMER, "too slow")),
            },
            frame = out_rx.recv() => {
                let Some(frame) = frame else { break None };
                // Write everything already queued, then flush once: one
                // syscall for a burst instead of one per frame.
                let write = async {
                    sink.feed(Message::Text(frame)).await?;
                    let mut frames = 1u64;
                    for _ in 1..MAX_FRAMES_PER_FLUSH {
                        match out_rx.try_recv() {
                            Ok(f) => {
                                sink.feed(Message::Text(f)).await?;
                                frames += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    sink.flush().await.map(|()| frames)
                };
                match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                    Ok(Ok(frames)) => {
                        s.metrics.delivered.inc_by(frames);
                    }
                    _ => break None,
                }
            }
            Some((room_id, txn_id, outcome)) = next_validated(&mut sender) => {
                acks.push_back(ack_frame(s.clone(), room_id, txn_id, outcome));
            }
            Some(done) = acks.next(), if !acks.is_empty() => {
                sends_in_flight = sends_in_flight.saturating_sub(1);
                if let Some(frame) = done
                    && out_tx.try_send(frame).is_err()
                {
                    break Some((close_codes::SLOW_CONSUMER, "too slow"));
                }
            }
            Some(done) = forwarders.join_next() => match done {
                Ok(Ok(ForwardEnd::Done)) | Err(_) => {}
                Ok(Ok(ForwardEnd::Slow)) => break Some((close_codes::SLOW_CONSUMER, "too slow: resume from your last seq")),
                Ok(Err(e)) => {
                    e.log("websocket forward");
                    break Some((1011, "internal error"));
                }
            },
        }
    };
    forwarders.abort_all();
    // Sends already queued stay queued (they will be durable); only the
    // acks are not delivered: the client retries with the same txn_id.
    drop(acks);
    if let Some(task) = sender {
        task.handle.abort();
    }
    s.hub.unregister_device(device_id, conn_id);
    s.metrics.ws_connections.dec();
    if close.is_some_and(|c| c.0 == close_codes::SLOW_CONSUMER) {
        s.metrics.queue_drop("websocket_outbound");
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    tracing::debug!(device_id, close = ?close.map(|c| c.0), "websocket closed");
}

type Validated = (String, String, Result<Pending, Error>);

/// A connection's send task with its input and output.
struct SendTask {
    to_validate: mpsc::Sender<(String, SubmitRequest)>,
    validated: mpsc::Receiver<Validated>,
    handle: tokio::task::JoinHandle<()>,
}

impl SendTask {
    fn spawn(s: Arc<AppState>, auth: AuthDevice) -> SendTask {
        let (to_validate, validate_rx) = mpsc::channel(MAX_SENDS_IN_FLIGHT);
        let (validated_tx, validated) = mpsc::channel(MAX_SENDS_IN_FLIGHT);
        let handle = tokio::spawn(validate_sends(s, auth, validate_rx, validated_tx));
        SendTask {
            to_validate,
            validated,
            handle,
        }
    }
}

/// The next validated send, or never when the connection has not sent.
async fn next_validated(sender: &mut Option<SendTask>) -> Option<Validated> {
    match sender {
        Some(task) => task.validated.recv().await,
        None => std::future::pending().await,
    }
}

/// The connection's send task: validates and queues its sends in order.
async fn validate_sends(
    s: Arc<AppState>,
    auth: AuthDevice,
    mut sends: mpsc::Receiver<(String, SubmitRequest)>,
    out: mpsc::Sender<Validated>,
) {
    while let Some((room_id, req)) = sends.recv().await {
        let txn_id = req.txn_id.clone();
        let outcome = if req.message.0.len() > s.config.ws_max_message_bytes {
            Err(Error::new(
                ErrorCode::PayloadTooLarge,
                "the MLS message is too large",
            ))
        } else {
            s.delivery.enqueue(auth, &room_id, req).await
        };
        if out.send((room_id, txn_id, outcome)).await.is_err() {
            return;
        }
    }
}

/// The frame that answers a send, once it is durable (or refused).
fn ack_frame(
    s: Arc<AppState>,
    room_id: String,
    txn_id: String,
    outcome: Result<Pending, Error>,
) -> AckFuture {
    Box::pin(async move {
        let frame = match outcome {
            Ok(pending) => pending
                .durable(&s.delivery)
                .await
                .map(|ack| ServerFrame::Ack {
                    txn_id: txn_id.clone(),
                    ack,
                }),
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| {
            e.log("websocket send");
            send_error(room_id, txn_id, &e)
        });
        frame_text(&frame).ok()
    })
}

fn send_error(room_id: String, txn_id: String, e: &Error) -> ServerFrame {
    ServerFrame::SendError {
        room_id,
        txn_id,
        code: e.code.as_str().to_string(),
        message: e.message.clone(),
    }
}

fn error_frame(code: ErrorCode, message: &str) -> Utf8Bytes {
    frame_text(&ServerFrame::Error {
        code: code.as_str().to_string(),
        message: message.to_string(),
    })
    .unwrap_or_else(|_| {
        Utf8Bytes::from_static("{\"type\":\"error\",\"code\":\"internal\",\"message\":\"\"}")
    })
}

/// Deliver a room to one connection: catch up from disk, then follow live.
async fn forward(
    s: Arc<AppState>,
    auth: AuthDevice,
    room_id: String,
    after: u64,
    out: mpsc::Sender<Utf8Bytes>,
) -> Result<ForwardEnd, Error> {
    // Subscribe before reading the disk, so nothing falls between the two.
    let mut live = s.hub.subscribe_room(&room_id);
    let mut last = after;
    if !catch_up(&s, auth, &room_id, &mut last, &out).await? {
        return Ok(ForwardEnd::Done);
    }
    loop {
        match live.recv().await {
            Ok(d) => {
                if d.seq <= last {
                    continue;
                }
                if d.seq > last + 1 {
                    if !catch_up(&s, auth, &room_id, &mut last, &out).await? {
                        return Ok(ForwardEnd::Done);
                    }
                    if d.seq <= last {
                        continue;
                    }
                }
                match out.try_send(d.frame.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => return Ok(ForwardEnd::Slow),
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(ForwardEnd::Done),
                }
                last = d.seq;
                if d.removed.contains(&auth.device_id) {
                    return Ok(ForwardEnd::Done);
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !catch_up(&s, auth, &room_id, &mut last, &out).await? {
                    return Ok(ForwardEnd::Done);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(ForwardEnd::Done),
        }
    }
}

/// Send everything after `last` from the store. `Ok(false)` when the device
/// is no longer a member (after sending up to the commit that removed it).
async fn catch_up(
    s: &AppState,
    auth: AuthDevice,
    room_id: &str,
    last: &mut u64,
    out: &mpsc::Sender<Utf8Bytes>,
) -> Result<bool, Error> {
    let mut final_pass = false;
    loop {
        let page = match s
            .delivery
            .history(auth, room_id, *last, crate::delivery::MAX_PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) if e.code == ErrorCode::NotAMember => return Ok(false),
            Err(e) => return Err(e),
        };
        for envelope in page.messages {
            let seq = envelope.seq;
            let frame = frame_text(&ServerFrame::Message { envelope })?;
            if out.send(frame).await.is_err() {
                return Ok(false);
            }
            *last = seq;
        }
        if page.more {
            continue;
        }
        if final_pass {
            return Ok(false);
        }
        if s.delivery.is_member(auth.device_id, room_id).await? {
            return Ok(true);
        }
        // Removed meanwhile: deliver up to the removing commit, then stop.
        final_pass = true;
    }
}
