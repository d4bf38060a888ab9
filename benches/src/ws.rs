//! Raw WebSocket access with tonari-wire frames.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tonari_wire::{B64, ClientFrame, paths};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect to `ws://addr/v1/ws` as the device of `token`. `small` keeps the
/// client's buffers small (for many idle connections).
pub async fn connect(addr: &str, token: &str, small: bool) -> Result<Ws> {
    let url = format!("ws://{addr}{}", paths::WS);
    let mut req = url
        .into_client_request()
        .context("building the WebSocket request")?;
    let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("token is not a valid header value")?;
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    let mut config = WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    if small {
        config = config.read_buffer_size(4096).write_buffer_size(0);
    }
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .context("WebSocket connect")?;
    Ok(ws)
}

pub fn resume_text(room: &str, after: u64) -> Result<String> {
    let mut rooms = BTreeMap::new();
    rooms.insert(room.to_string(), after);
    Ok(serde_json::to_string(&ClientFrame::Resume { rooms })?)
}

pub fn send_text(room: &str, txn_id: &str, message: Vec<u8>) -> Result<String> {
    Ok(serde_json::to_string(&ClientFrame::Send {
        room_id: room.to_string(),
        txn_id: txn_id.to_string(),
        message: B64(message),
        welcome: None,
    })?)
}

/// The fields of a `ServerFrame` the bench needs. serde skips the rest (the
/// base64 ciphertext is scanned, not decoded), so receivers stay cheap while
/// still parsing every frame as JSON.
#[derive(Debug, Deserialize)]
pub struct LiteFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub envelope: Option<LiteSeq>,
    #[serde(default, borrow)]
    pub txn_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub ack: Option<LiteSeq>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LiteSeq {
    pub seq: u64,
}

pub fn parse(text: &str) -> Result<LiteFrame<'_>> {
    serde_json::from_str(text).context("unparsable server frame")
}

/// Does the server take `send` frames on the WebSocket? Sends a frame that
/// cannot be valid (4 bytes are no MLS message): a server that knows `send`
/// answers `send_error`; one that does not closes the connection (1003).
pub async fn server_takes_ws_send(addr: &str, token: &str, room: &str) -> Result<bool> {
    let mut ws = connect(addr, token, false).await?;
    ws.send(Message::text(send_text(
        room,
        "bench-probe",
        vec![0, 0, 0, 0],
    )?))
    .await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let f = parse(t.as_str())?;
                    match f.kind.as_ref() {
                        "send_error" | "ack" => return Ok(true),
                        "error" => return Ok(false),
                        _ => {}
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return Ok(false),
                Ok(_) => {}
            }
        }
        Ok::<_, anyhow::Error>(false)
    })
    .await
    .map_err(|_| anyhow!("no answer to the probe send within 10 s"))??;
    let _ = ws.close(None).await;
    Ok(answer)
}

/// Wait for the pong of a ping: every frame sent before it was handled.
pub async fn ping_pong(ws: &mut Ws, nonce: u64) -> Result<()> {
    ws.send(Message::text(serde_json::to_string(&ClientFrame::Ping {
        nonce,
    })?))
    .await?;
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                let f = parse(t.as_str())?;
                match f.kind.as_ref() {
                    "pong" => return Ok(()),
                    "error" => bail!(
                        "server error frame: {} {}",
                        f.code.unwrap_or_default(),
                        f.message.unwrap_or_default()
                    ),
                    _ => {}
                }
            }
        }
        bail!("connection closed before the pong")
    })
    .await
    .map_err(|_| anyhow!("no pong within 30 s"))?
}
