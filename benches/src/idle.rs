//! Scenario (d): many idle WebSocket connections, each following a room.

use crate::server::{Server, Usage};
use crate::setup;
use crate::ws::{self, Ws};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Connections opened at a time.
const CONNECT_CONCURRENCY: usize = 64;

pub struct Outcome {
    pub requested: usize,
    pub open: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub connect_secs: f64,
    pub before: Usage,
    pub after: Usage,
}

impl Outcome {
    pub fn kib_per_conn(&self) -> f64 {
        if self.open == 0 {
            return 0.0;
        }
        (self.after.rss_kib as f64 - self.before.rss_kib as f64) / self.open as f64
    }
}

/// What the measurement needs from the setup.
pub struct Prepared {
    token: String,
    room: String,
    /// The seq every connection waits for after its resume.
    target: u64,
}

/// One user, one device, a room with one message in it.
pub async fn prepare(server: &Server, client_root: &Path) -> Result<Prepared> {
    let m = setup::user_with_device(&server.url, client_root, "idle00", "idle00").await?;
    let room = m
        .client
        .create_room()
        .await
        .map_err(|e| anyhow!("creating the room: {e}"))?;
    let ack = m
        .client
        .send_text(&room, "one message to deliver on resume")
        .await
        .map_err(|e| anyhow!("sending: {e}"))?;
    Ok(Prepared {
        token: m.token,
        room,
        target: ack.seq,
    })
}

/// Open `n` connections of the prepared device, each resuming the room.
pub async fn run(server: &Server, p: &Prepared, n: usize) -> Result<Outcome> {
    let (room, target) = (&p.room, p.target);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.usage()?;
    let resume = ws::resume_text(room, 0)?;
    let t0 = Instant::now();
    let results: Vec<Result<Ws>> = futures_util::stream::iter(0..n)
        .map(|_| open_one(server.addr(), &p.token, &resume, target))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    eprintln!(
        "  {} connections open and resumed ({failed} failed) in {connect_secs:.1}s",
        conns.len()
    );
    // Let the server settle (forwarders idle, allocator quiet).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.usage()?;
    let open = conns.len();
    drop(conns);
    Ok(Outcome {
        requested: n,
        open,
        failed,
        first_error,
        connect_secs,
        before,
        after,
    })
}

/// Connect, resume the room from 0 and wait until the message `target`
/// arrived: the server is then following the room for this connection.
async fn open_one(addr: &str, token: &str, resume: &str, target: u64) -> Result<Ws> {
    let mut conn = ws::connect(addr, token, true).await?;
    conn.send(Message::text(resume)).await?;
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(msg) = conn.next().await {
            if let Message::Text(t) = msg.context("idle connection")? {
                let f = ws::parse(t.as_str())?;
                if f.kind == "message" && f.envelope.is_some_and(|e| e.seq >= target) {
                    return Ok(());
                }
                if f.kind == "error" {
                    bail!("server error frame: {}", f.code.unwrap_or_default());
                }
            }
        }
        bail!("connection closed before the resumed message arrived")
    })
    .await
    .map_err(|_| anyhow!("no resumed message within 60 s"))??;
    Ok(conn)
}
