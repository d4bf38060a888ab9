//! Live delivery over the WebSocket.

use crate::client::{Client, Event};
use crate::error::{Result, SdkError, ServerCode};
use crate::store::{self, status};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest, protocol::WebSocketConfig,
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tonari_wire::{ClientFrame, ErrorCode, MessageKind, ServerFrame, close_codes, paths};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const MAX_WS_MESSAGE: usize = 16 << 20;
const RECONNECT_ATTEMPTS: u32 = 6;
const PING_EVERY: Duration = Duration::from_secs(30);

/// A live event stream of one [`Client`] (see [`Client::connect`]).
///
/// Events produced by other operations of the same client (a `sync`, the
/// catch-up after a send, ...) are delivered here as well, so nothing is
/// missed. Reconnects (after a network error or close code 4008) happen
/// transparently with a Resume from the current cursors.
pub struct Subscription {
    client: Client,
    rx: mpsc::UnboundedReceiver<Event>,
    ws: Option<Ws>,
    ping: tokio::time::Interval,
    nonce: u64,
    /// Set while a frame is being processed: if `next` is cancelled midway,
    /// the next call catches every room up over HTTP first.
    resync_needed: bool,
    /// An error to report from the next `next` call.
    pending_error: Option<SdkError>,
    /// Highest message seq yielded per room: no message is yielded twice,
    /// whichever path (this process or another on the same device) saw it.
    yielded: std::collections::HashMap<String, u64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("connected", &self.ws.is_some())
            .finish()
    }
}

impl Client {
    /// Open the WebSocket: pending welcomes are joined first, then a Resume
    /// with every room's cursor is sent; the backlog and live messages are
    /// processed in order and yielded by [`Subscription::next`].
    pub async fn connect(&self) -> Result<Subscription> {
        let rx = self.register_subscriber()?;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sub = Subscription {
            client: self.clone(),
            rx,
            ws: None,
            ping,
            nonce: 0,
            resync_needed: false,
            pending_error: None,
            yielded: std::collections::HashMap::new(),
        };
        sub.open().await?;
        Ok(sub)
    }

    async fn open_ws(&self) -> Result<Ws> {
        let token = self.token()?;
        let base = self.server_url();
        let url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}{}", paths::WS)
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}{}", paths::WS)
        } else {
            return Err(SdkError::Invalid("bad server url".into()));
        };
        let mut req = url
            .into_client_request()
            .map_err(|e| SdkError::Invalid(format!("websocket request: {e}")))?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| SdkError::Invalid("token is not a valid header".into()))?;
        req.headers_mut()
            .insert(tungstenite::http::header::AUTHORIZATION, value);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_WS_MESSAGE))
            .max_frame_size(Some(MAX_WS_MESSAGE));
        match tokio_tungstenite::connect_async_with_config(req, Some(config), true).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                Err(
                    match serde_json::from_slice::<tonari_wire::ErrorBody>(body) {
                        Ok(eb) => SdkError::Server {
                            code: match ErrorCode::parse(&eb.code) {
                                Some(c) => ServerCode::Known(c),
                                None => ServerCode::Unknown(eb.code),
                            },
                            status,
                            message: eb.message,
                        },
                        Err(_) if status == 401 => unauthenticated(),
                        Err(_) => SdkError::Network(format!("websocket upgrade refused: {status}")),
                    },
                )
            }
            Err(e) => Err(SdkError::Network(format!("websocket: {e}"))),
        }
    }
}

fn unauthenticated() -> SdkError {
    SdkError::Server {
        code: ServerCode::Known(ErrorCode::Unauthenticated),
        status: 401,
        message: "session is not valid".into(),
    }
}

impl Subscription {
    /// Connect, join pending welcomes and resume every room.
    async fn open(&mut self) -> Result<()> {
        let ws = self.client.open_ws().await?;
        self.ws = Some(ws);
        {
            let _g = self.client.inner.proc_lock.lock().await;
            // Events go to our channel through `finish`.
            if let Err(e) = self.client.accept_welcomes().await {
                if e.is_retryable() {
                    return Err(e);
                }
                self.pending_error = Some(e);
            }
        }
        let cursors = self.client.cursors()?;
        self.send(&ClientFrame::Resume { rooms: cursors }).await
    }

    async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        let text = serde_json::to_string(frame).map_err(|e| SdkError::Invalid(e.to_string()))?;
        let Some(ws) = self.ws.as_mut() else {
            return Err(SdkError::Network("not connected".into()));
        };
        ws.send(Message::text(text))
            .await
            .map_err(|e| SdkError::Network(format!("websocket send: {e}")))
    }

    async fn reconnect(&mut self) -> Result<()> {
        let mut last = SdkError::Network("not connected".into());
        for attempt in 0..RECONNECT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt))).await;
            }
            match self.open().await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.is_code(ErrorCode::Unauthenticated)
                        || matches!(e, SdkError::NotLoggedIn) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(attempt, "reconnect failed: {e}");
                    self.ws = None;
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Whether to yield `ev`: a message is yielded at most once per seq.
    fn admit(&mut self, ev: &Event) -> bool {
        if let Event::Message { room_id, seq, .. } = ev {
            let last = self.yielded.entry(room_id.clone()).or_insert(0);
            if *seq <= *last {
                return false;
            }
            *last = *seq;
        }
        true
    }

    /// The next event, in order. `None` only if the client went away.
    ///
    /// Cancel-safe while waiting (e.g. under `tokio::time::timeout`); if it
    /// is cancelled while processing a frame, the next call catches up over
    /// HTTP, so nothing is lost or processed twice.
    /// Errors (network trouble after several reconnect attempts, an
    /// untrusted commit, ...) are returned as `Some(Err(_))`; calling `next`
    /// again continues (and reconnects).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Ok(ev) = self.rx.try_recv() {
                if self.admit(&ev) {
                    return Some(Ok(ev));
                }
                continue;
            }
            if let Some(e) = self.pending_error.take() {
                return Some(Err(e));
            }
            if self.resync_needed {
                if let Err(e) = self.resync().await {
                    return Some(Err(e));
                }
                continue;
            }
            if self.ws.is_none()
                && let Err(e) = self.reconnect().await
            {
                return Some(Err(e));
            }
            enum Step {
                Event(Option<Event>),
                Ws(Option<std::result::Result<Message, tungstenite::Error>>),
                Ping,
            }
            let step = {
                let Subscription { rx, ws, ping, .. } = self;
                let Some(ws) = ws.as_mut() else { continue };
                tokio::select! {
                    ev = rx.recv() => Step::Event(ev),
                    msg = ws.next() => Step::Ws(msg),
                    _ = ping.tick() => Step::Ping,
                }
            };
            match step {
                Step::Event(None) => return None,
                Step::Event(Some(ev)) => {
                    if self.admit(&ev) {
                        return Some(Ok(ev));
                    }
                }
                Step::Ping => {
                    self.nonce += 1;
                    let nonce = self.nonce;
                    if self.send(&ClientFrame::Ping { nonce }).await.is_err() {
                        self.ws = None;
                    }
                }
                Step::Ws(None) => self.ws = None,
                Step::Ws(Some(Err(e))) => {
                    tracing::debug!("websocket error: {e}");
                    self.ws = None;
                }
                Step::Ws(Some(Ok(msg))) => match msg {
                    Message::Text(t) => {
                        self.resync_needed = true;
                        let res = self.handle_text(t.as_str()).await;
                        self.resync_needed = false;
                        if let Err(e) = res {
                            return Some(Err(e));
                        }
                    }
                    Message::Close(frame) => {
                        let code = frame.map(|f| u16::from(f.code));
                        self.ws = None;
                        if code == Some(close_codes::UNAUTHENTICATED) {
                            return Some(Err(unauthenticated()));
                        }
                        tracing::debug!(?code, "websocket closed; resuming");
                    }
                    _ => {}
                },
            }
        }
    }

    /// Catch every followed room up over HTTP (after an interrupted `next`).
    async fn resync(&mut self) -> Result<()> {
        let client = self.client.clone();
        let _g = client.inner.proc_lock.lock().await;
        for room in client.cursors()?.into_keys() {
            client.catch_up_room(&room).await?;
            client.after_processing(&room).await?;
        }
        self.resync_needed = false;
        Ok(())
    }

    async fn handle_text(&mut self, text: &str) -> Result<()> {
        let frame: ServerFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("ignoring unknown server frame: {e}");
                return Ok(());
            }
        };
        match frame {
            ServerFrame::Message { envelope } => {
                let client = self.client.clone();
                let _g = client.inner.proc_lock.lock().await;
                let Some(room) = client.with_provider(|_, c| store::room(c, &envelope.room_id))?
                else {
                    return Ok(());
                };
                if room.status != status::ACTIVE && room.status != status::LEAVING {
                    return Ok(());
                }
                if envelope.seq <= room.last_seq {
                    // Already processed, maybe by another process using this
                    // device directory: show it from the local history.
                    let seen = self.yielded.get(&envelope.room_id).copied().unwrap_or(0);
                    if envelope.kind == MessageKind::Application
                        && envelope.seq > seen
                        && let Some(raw) =
                            client.stored_message_raw(&envelope.room_id, envelope.seq)?
                    {
                        client.finish(vec![raw]).await;
                    }
                    return Ok(());
                }
                if envelope.seq > room.last_seq + 1 {
                    client.catch_up_room(&envelope.room_id).await?;
                } else {
                    client.process_envelope(&envelope).await?;
                }
                if envelope.kind != MessageKind::Application {
                    client.after_processing(&envelope.room_id).await?;
                }
                Ok(())
            }
            ServerFrame::Welcome { .. } => {
                let res = {
                    let _g = self.client.inner.proc_lock.lock().await;
                    self.client.accept_welcomes().await
                };
                // Resume every room (new ones included); older cursors only
                // replay what we skip as duplicates.
                let rooms = self.client.cursors()?;
                self.send(&ClientFrame::Resume { rooms }).await?;
                res.map(|_| ())
            }
            ServerFrame::KeyPackagesLow { .. } => {
                if let Err(e) = self.client.top_up_key_packages().await {
                    tracing::warn!("key package top-up failed: {e}");
                }
                Ok(())
            }
            // The SDK sends over HTTP; WebSocket send answers are not expected.
            ServerFrame::Pong { .. } | ServerFrame::Ack { .. } | ServerFrame::SendError { .. } => {
                Ok(())
            }
            ServerFrame::Error { code, message } => {
                tracing::warn!(%code, "server reported an error on the websocket: {message}");
                Ok(())
            }
        }
    }
}
