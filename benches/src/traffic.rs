//! Scenarios (a), (b), (c): senders submit pre-encrypted MLS messages while
//! every member device receives them on its own WebSocket.

use crate::server::{Server, Usage};
use crate::setup::Member;
use crate::ws::{self, Ws};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tonari_wire::{Ack, B64, ErrorBody, RoomInfo, SubmitRequest, paths};

/// How sends reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `send` frames on a WebSocket, answered by `ack` / `send_error`.
    Ws,
    /// POST /v1/rooms/{room}/messages, one request per message.
    Http,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws send",
            Transport::Http => "http post",
        }
    }
}

/// No progress for this long ends a run with an error.
const STALL: Duration = Duration::from_secs(60);

pub struct Spec {
    /// Members 0..senders send.
    pub senders: usize,
    pub per_sender: usize,
    /// Sends in flight per sender.
    pub window: usize,
    /// Open-loop pacing: total messages per second over all senders.
    pub rate_total: Option<f64>,
    pub plaintext_bytes: usize,
    pub transport: Transport,
}

pub struct Outcome {
    /// Send → deliver latency of every delivered copy, in ns, sorted.
    pub latencies_ns: Vec<u64>,
    /// Send → ack latency of every acked message, in ns, sorted.
    pub ack_latencies_ns: Vec<u64>,
    pub sent: usize,
    pub acked: usize,
    pub errors: BTreeMap<String, usize>,
    /// First send to last ack.
    pub elapsed: Duration,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub reconnects: u64,
    pub receivers: usize,
    pub before: Usage,
    pub after: Usage,
    pub ciphertext_bytes: usize,
    pub encrypt_secs: f64,
    /// CPU time of this bench process during the timed phase, in clock ticks.
    pub client_cpu_ticks: u64,
}

impl Outcome {
    pub fn msgs_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.acked as f64 / s } else { 0.0 }
    }
}

/// A 256-byte (or `len`-byte) text: unique prefix, padded with dots.
pub fn plaintext(sender: usize, i: usize, len: usize) -> String {
    let mut s = format!("bench s{sender:02} m{i:07} ");
    while s.len() < len {
        s.push('.');
    }
    s.truncate(len);
    s
}

/// Encrypt every message of every sender (real MLS PrivateMessages for the
/// room's current epoch), in parallel, before the timed phase.
async fn encrypt_all(members: &[Member], room: &str, spec: &Spec) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut tasks = Vec::new();
    for (s, m) in members.iter().take(spec.senders).enumerate() {
        let client = m.client.clone();
        let room = room.to_string();
        let n = spec.per_sender;
        let len = spec.plaintext_bytes;
        tasks.push(tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|i| {
                    client
                        .testing_encrypt(&room, &plaintext(s, i, len))
                        .map_err(|e| anyhow!("encrypting: {e}"))
                })
                .collect::<Result<Vec<_>>>()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.context("encrypt task")??);
    }
    Ok(out)
}

/// Receivers and senders are spread over `servers` (member `i` on
/// `servers[i % n]`); resource use is the sum over all of them.
pub async fn run(
    servers: &[Server],
    room: &str,
    members: &[Member],
    spec: &Spec,
) -> Result<Outcome> {
    let server = &servers[0];
    let node = |i: usize| &servers[i % servers.len()];
    let usage = || -> Result<Usage> {
        let mut total = Usage {
            cpu_ticks: 0,
            rss_kib: 0,
        };
        for s in servers {
            let u = s.usage()?;
            total.cpu_ticks += u.cpu_ticks;
            total.rss_kib += u.rss_kib;
        }
        Ok(total)
    };
    if spec.senders == 0 || spec.senders > members.len() {
        bail!("{} senders for {} members", spec.senders, members.len());
    }
    let t_enc = Instant::now();
    let ciphertexts = encrypt_all(members, room, spec).await?;
    let encrypt_secs = t_enc.elapsed().as_secs_f64();
    let ciphertext_bytes = ciphertexts
        .first()
        .and_then(|c| c.first())
        .map(Vec::len)
        .unwrap_or(0);
    eprintln!(
        "  encrypted {} x {} messages ({} B ciphertext each) in {encrypt_secs:.1}s",
        spec.senders, spec.per_sender, ciphertext_bytes
    );

    let start_seq = room_last_seq(&server.url, &members[0].token, room).await?;

    // Receivers: one WebSocket per member device, resumed at the room's end.
    let base = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let expected = spec.senders * spec.per_sender;
    let mut receivers = Vec::new();
    let mut lasts = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let mut conn = ws::connect(node(i).addr(), &m.token, false).await?;
        conn.send(Message::text(ws::resume_text(room, start_seq)?))
            .await?;
        ws::ping_pong(&mut conn, i as u64)
            .await
            .with_context(|| format!("receiver {i} resume"))?;
        let last = Arc::new(AtomicU64::new(start_seq));
        lasts.push(last.clone());
        receivers.push(tokio::spawn(receive(
            node(i).addr().to_string(),
            m.token.clone(),
            room.to_string(),
            conn,
            base,
            last,
            stop_rx.clone(),
            expected,
        )));
    }

    // Everything a sender needs, serialized before the clock starts.
    let interval = spec
        .rate_total
        .map(|r| Duration::from_secs_f64(spec.senders as f64 / r.max(0.001)));
    let mut sender_tasks = Vec::new();
    let mut plans = Vec::new();
    for (s, cts) in ciphertexts.into_iter().enumerate() {
        let txns: Vec<String> = (0..cts.len()).map(|i| format!("b{s}-{i}")).collect();
        let plan = match spec.transport {
            Transport::Ws => {
                let frames = cts
                    .into_iter()
                    .zip(&txns)
                    .map(|(ct, t)| ws::send_text(room, t, ct).map(Message::text))
                    .collect::<Result<Vec<_>>>()?;
                let conn = ws::connect(node(s).addr(), &members[s].token, false).await?;
                Plan::Ws {
                    conn: Box::new(conn),
                    frames,
                }
            }
            Transport::Http => {
                let bodies = cts
                    .into_iter()
                    .zip(&txns)
                    .map(|(ct, t)| {
                        serde_json::to_string(&SubmitRequest {
                            txn_id: t.clone(),
                            message: B64(ct),
                            welcome: None,
                        })
                    })
                    .collect::<serde_json::Result<Vec<_>>>()?;
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(spec.window)
                    .build()?;
                Plan::Http {
                    http,
                    url: format!(
                        "{}{}",
                        node(s).url,
                        paths::fill(paths::ROOM_MESSAGES, &[("room_id", room)])
                    ),
                    token: members[s].token.clone(),
                    bodies,
                }
            }
        };
        plans.push(plan);
    }

    let before = usage()?;
    let own_before = crate::server::cpu_ticks(std::process::id())?;
    let t0 = Instant::now() + Duration::from_millis(50);
    for (s, plan) in plans.into_iter().enumerate() {
        let pace = interval.map(|iv| Pace {
            first: t0 + iv.mul_f64(s as f64 / spec.senders as f64),
            interval: iv,
        });
        let window = spec.window;
        sender_tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(t0.into()).await;
            match plan {
                Plan::Ws { conn, frames } => ws_sender(*conn, frames, window, pace, base).await,
                Plan::Http {
                    http,
                    url,
                    token,
                    bodies,
                } => http_sender(http, url, token, bodies, window, pace, base).await,
            }
            .with_context(|| format!("sender {s}"))
        }));
    }

    let mut seq_sent: HashMap<u64, u64> = HashMap::with_capacity(expected);
    let mut ack_lat = Vec::with_capacity(expected);
    let mut errors = BTreeMap::new();
    let (mut first_send, mut last_ack) = (u64::MAX, 0u64);
    let mut acked = 0usize;
    for t in sender_tasks {
        let out = t.await.context("sender task")??;
        for i in 0..out.seqs.len() {
            first_send = first_send.min(out.send_ns[i]);
            if out.seqs[i] > 0 {
                acked += 1;
                last_ack = last_ack.max(out.ack_ns[i]);
                ack_lat.push(out.ack_ns[i].saturating_sub(out.send_ns[i]));
                if seq_sent.insert(out.seqs[i], out.send_ns[i]).is_some() {
                    bail!("seq {} acked twice", out.seqs[i]);
                }
            }
        }
        for (code, n) in out.errors {
            *errors.entry(code).or_insert(0) += n;
        }
    }
    let max_seq = seq_sent.keys().copied().max().unwrap_or(start_seq);
    eprintln!("  {acked} acked (last seq {max_seq}); waiting for every receiver");
    let deadline = Instant::now() + STALL;
    while lasts.iter().any(|l| l.load(Ordering::Relaxed) < max_seq) {
        if Instant::now() > deadline {
            eprintln!("  some receivers did not reach seq {max_seq} within {STALL:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = usage()?;
    let own_ticks = crate::server::cpu_ticks(std::process::id())?.saturating_sub(own_before);
    let _ = stop_tx.send(true);

    let mut latencies = Vec::with_capacity(expected * members.len());
    let mut deliveries = 0u64;
    let mut reconnects = 0u64;
    for r in receivers {
        let out = r.await.context("receiver task")??;
        reconnects += out.reconnects;
        for (seq, at) in out.records {
            if let Some(sent) = seq_sent.get(&seq) {
                deliveries += 1;
                latencies.push(at.saturating_sub(*sent));
            }
        }
    }
    latencies.sort_unstable();
    ack_lat.sort_unstable();
    Ok(Outcome {
        latencies_ns: latencies,
        ack_latencies_ns: ack_lat,
        sent: expected,
        acked,
        errors,
        elapsed: Duration::from_nanos(last_ack.saturating_sub(first_send)),
        deliveries,
        expected_deliveries: (acked * members.len()) as u64,
        reconnects,
        receivers: members.len(),
        before,
        after,
        ciphertext_bytes,
        encrypt_secs,
        client_cpu_ticks: own_ticks,
    })
}

enum Plan {
    Ws {
        conn: Box<Ws>,
        frames: Vec<Message>,
    },
    Http {
        http: reqwest::Client,
        url: String,
        token: String,
        bodies: Vec<String>,
    },
}

#[derive(Clone, Copy)]
struct Pace {
    first: Instant,
    interval: Duration,
}

impl Pace {
    fn at(&self, i: usize) -> Instant {
        self.first + self.interval.mul_f64(i as f64)
    }
}

struct SenderOut {
    /// Seq of each message (0: not acked).
    seqs: Vec<u64>,
    /// When each message was sent (its scheduled time when paced), ns after `base`.
    send_ns: Vec<u64>,
    ack_ns: Vec<u64>,
    errors: BTreeMap<String, usize>,
}

fn ns_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_nanos() as u64
}

/// Index of a message from its txn id `b{sender}-{index}`.
fn txn_index(txn: &str) -> Result<usize> {
    txn.rsplit_once('-')
        .and_then(|(_, i)| i.parse().ok())
        .ok_or_else(|| anyhow!("unexpected txn id {txn:?}"))
}

async fn ws_sender(
    conn: Ws,
    frames: Vec<Message>,
    window: usize,
    pace: Option<Pace>,
    base: Instant,
) -> Result<SenderOut> {
    let n = frames.len();
    let (mut sink, mut stream) = conn.split();
    let permits = Semaphore::new(window.max(1));
    let send_ns: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let writer = async {
        for (i, frame) in frames.into_iter().enumerate() {
            let intended = pace.map(|p| p.at(i));
            if let Some(t) = intended {
                tokio::time::sleep_until(t.into()).await;
            }
            permits.acquire().await?.forget();
            let at = intended.unwrap_or_else(Instant::now);
            send_ns[i].store(ns_since(base, at), Ordering::Relaxed);
            sink.send(frame).await.context("sending a frame")?;
        }
        Ok::<_, anyhow::Error>(sink)
    };
    let reader = async {
        let mut seqs = vec![0u64; n];
        let mut ack_ns = vec![0u64; n];
        let mut errors = BTreeMap::new();
        let mut done = 0;
        while done < n {
            let msg = tokio::time::timeout(STALL, stream.next())
                .await
                .map_err(|_| anyhow!("no ack for {STALL:?} ({done}/{n} answered)"))?;
            let now = Instant::now();
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let f = ws::parse(t.as_str())?;
                    match f.kind.as_ref() {
                        "ack" => {
                            let i = txn_index(f.txn_id.as_deref().unwrap_or_default())?;
                            let seq = f.ack.ok_or_else(|| anyhow!("ack without ack"))?.seq;
                            if i >= n || seqs[i] != 0 {
                                bail!("unexpected ack for message {i}");
                            }
                            seqs[i] = seq;
                            ack_ns[i] = ns_since(base, now);
                            done += 1;
                            permits.add_permits(1);
                        }
                        "send_error" => {
                            *errors.entry(f.code.unwrap_or_default()).or_insert(0) += 1;
                            done += 1;
                            permits.add_permits(1);
                        }
                        "error" => bail!(
                            "server error frame: {} {}",
                            f.code.unwrap_or_default(),
                            f.message.unwrap_or_default()
                        ),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => bail!("sender connection closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("sender connection"),
                None => bail!("sender connection ended"),
            }
        }
        Ok::<_, anyhow::Error>((seqs, ack_ns, errors))
    };
    let (mut sink, (seqs, ack_ns, errors)) = tokio::try_join!(writer, reader)?;
    let _ = sink.close().await;
    Ok(SenderOut {
        seqs,
        send_ns: send_ns.into_iter().map(AtomicU64::into_inner).collect(),
        ack_ns,
        errors,
    })
}

async fn http_sender(
    http: reqwest::Client,
    url: String,
    token: String,
    bodies: Vec<String>,
    window: usize,
    pace: Option<Pace>,
    base: Instant,
) -> Result<SenderOut> {
    let n = bodies.len();
    let permits = Arc::new(Semaphore::new(window.max(1)));
    let auth = format!("Bearer {token}");
    let mut set = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let intended = pace.map(|p| p.at(i));
        if let Some(t) = intended {
            tokio::time::sleep_until(t.into()).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let at = intended.unwrap_or_else(Instant::now);
        let req = http
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, &auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        set.spawn(async move {
            let res = async {
                let resp = req.send().await?;
                let status = resp.status();
                let bytes = resp.bytes().await?;
                let done = Instant::now();
                if status.is_success() {
                    let ack: Ack = serde_json::from_slice(&bytes)?;
                    Ok::<_, anyhow::Error>((Ok(ack.seq), done))
                } else {
                    let code = serde_json::from_slice::<ErrorBody>(&bytes)
                        .map(|e| e.code)
                        .unwrap_or_else(|_| format!("http {status}"));
                    Ok((Err(code), done))
                }
            }
            .await;
            drop(permit);
            (i, at, res)
        });
    }
    let mut seqs = vec![0u64; n];
    let mut send_ns = vec![0u64; n];
    let mut ack_ns = vec![0u64; n];
    let mut errors = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (i, at, res) = r.context("http send task")?;
        send_ns[i] = ns_since(base, at);
        match res.context("http send")? {
            (Ok(seq), done) => {
                seqs[i] = seq;
                ack_ns[i] = ns_since(base, done);
            }
            (Err(code), _) => *errors.entry(code).or_insert(0) += 1,
        }
    }
    Ok(SenderOut {
        seqs,
        send_ns,
        ack_ns,
        errors,
    })
}

struct ReceiverOut {
    /// (seq, receive time in ns after `base`) of every message frame.
    records: Vec<(u64, u64)>,
    reconnects: u64,
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    addr: String,
    token: String,
    room: String,
    mut conn: Ws,
    base: Instant,
    last: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    expected: usize,
) -> Result<ReceiverOut> {
    let mut records = Vec::with_capacity(expected);
    let mut reconnects = 0u64;
    loop {
        let broken = tokio::select! {
            _ = stop.changed() => break,
            msg = conn.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let at = ns_since(base, Instant::now());
                    let f = ws::parse(t.as_str())?;
                    match f.kind.as_ref() {
                        "message" => {
                            let seq = f.envelope.ok_or_else(|| anyhow!("message without envelope"))?.seq;
                            records.push((seq, at));
                            last.fetch_max(seq, Ordering::Relaxed);
                        }
                        "error" => bail!(
                            "server error frame: {} {}",
                            f.code.unwrap_or_default(),
                            f.message.unwrap_or_default()
                        ),
                        _ => {}
                    }
                    false
                }
                Some(Ok(Message::Close(frame))) => {
                    eprintln!("  receiver closed by the server: {frame:?}; resuming");
                    true
                }
                Some(Ok(_)) => false,
                Some(Err(e)) => {
                    eprintln!("  receiver connection failed: {e}; resuming");
                    true
                }
                None => true,
            },
        };
        if broken {
            reconnects += 1;
            if reconnects > 100 {
                bail!("receiver reconnected more than 100 times");
            }
            conn = ws::connect(&addr, &token, false).await?;
            conn.send(Message::text(ws::resume_text(
                &room,
                last.load(Ordering::Relaxed),
            )?))
            .await?;
        }
    }
    let _ = conn.close(None).await;
    Ok(ReceiverOut {
        records,
        reconnects,
    })
}

/// The q-quantile (0 < q ≤ 1) of sorted values.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The room's last seq, from GET /v1/rooms/{room}.
async fn room_last_seq(url: &str, token: &str, room: &str) -> Result<u64> {
    let resp = reqwest::Client::new()
        .get(format!(
            "{url}{}",
            paths::fill(paths::ROOM, &[("room_id", room)])
        ))
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .context("GET room")?;
    if !resp.status().is_success() {
        bail!("GET room: {}", resp.status());
    }
    let info: RoomInfo = resp.json().await.context("parsing RoomInfo")?;
    Ok(info.last_seq)
}
