//! Crash safety: the server runs as a child process under load and is
//! killed with SIGKILL again and again. Afterwards: every acknowledged
//! message is stored exactly once at its acknowledged seq, nothing is
//! duplicated (retries reuse their txn id across the crash), and the seqs
//! are gap-free. `TONARI_CRASH_KILLS` sets the number of kills (default 20;
//! use 100 or more for a longer run).

use super::common::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Mutex, Notify};
use tonari_sdk::Client;
use tonari_wire::{Ack, B64, MessagePage, SubmitRequest};

const SENDERS: usize = 4;
/// Acks to collect in a round before the kill.
const ACKS_PER_ROUND: usize = 12;

async fn start(data_dir: &std::path::Path, port: u16) -> ServerProcess {
    ServerProcess::spawn(data_dir, &format!("127.0.0.1:{port}"), "warn").await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// What the senders know: acked (txn → seq) and the one message per sender
/// whose outcome a crash left unknown.
#[derive(Default)]
struct Ledger {
    acked: HashMap<String, u64>,
    unknown: Vec<(String, usize)>,
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    txn: &str,
    msg: &[u8],
) -> Option<Ack> {
    let req = SubmitRequest {
        txn_id: txn.to_string(),
        message: B64(msg.to_vec()),
        welcome: None,
    };
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&req)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        // A 5xx during shutdown is an unknown outcome too; 4xx would be a bug.
        assert!(
            resp.status().is_server_error(),
            "unexpected refusal {}",
            resp.status()
        );
        return None;
    }
    resp.json::<Ack>().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_duplicates_nothing() {
    let kills: usize = std::env::var("TONARI_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tmp();
    let data_dir = dir.path().join("server");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = start(&data_dir, port).await;

    for u in ["rin", "sol"] {
        Client::register(&url, u, PASSWORD).await.expect("register");
    }
    let r = Client::login(&url, &dir.path().join("rin"), "rin", PASSWORD, "phone")
        .await
        .expect("login");
    let s = Client::login(&url, &dir.path().join("sol"), "sol", PASSWORD, "phone")
        .await
        .expect("login");
    let room = r.create_room().await.expect("create");
    r.invite(&room, "sol").await.expect("invite");
    sync_until(&s, |ev| {
        ev.iter()
            .any(|e| matches!(e, tonari_sdk::Event::Joined { .. }))
    })
    .await;

    // Real MLS messages, encrypted up front (no commit happens during the run).
    let total = kills * ACKS_PER_ROUND * 3 + 200;
    let messages: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..total)
            .map(|i| {
                r.testing_encrypt(&room, &format!("crash message {i}"))
                    .expect("encrypt")
            })
            .collect(),
    );
    let token = r.testing_token();
    let submit_url = format!("{url}/v1/rooms/{room}/messages");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicUsize::new(0));

    for round in 0..=kills {
        let acked_this_round = Arc::new(AtomicUsize::new(0));
        let enough = Arc::new(Notify::new());
        let last_round = round == kills;
        // Unknown outcomes from the previous crash are retried first, with
        // the same txn id and bytes.
        let retries = std::mem::take(&mut ledger.lock().await.unknown);
        let mut tasks = Vec::new();
        for sender in 0..SENDERS {
            let mine: Vec<(String, usize)> = retries
                .iter()
                .filter(|(_, i)| i % SENDERS == sender)
                .cloned()
                .collect();
            let (ledger, next, messages) = (ledger.clone(), next.clone(), messages.clone());
            let (acked, enough) = (acked_this_round.clone(), enough.clone());
            let (token, submit_url) = (token.clone(), submit_url.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut queue = mine.into_iter();
                loop {
                    let (txn, i) = match queue.next() {
                        Some(x) => x,
                        None => {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= messages.len()
                                || (last_round && acked.load(Ordering::SeqCst) >= ACKS_PER_ROUND)
                            {
                                return;
                            }
                            (format!("crash-{i}"), i)
                        }
                    };
                    match post(&http, &submit_url, &token, &txn, &messages[i]).await {
                        Some(ack) => {
                            let mut l = ledger.lock().await;
                            if let Some(prev) = l.acked.insert(txn.clone(), ack.seq) {
                                assert_eq!(prev, ack.seq, "a retry got another seq");
                            }
                            drop(l);
                            if acked.fetch_add(1, Ordering::SeqCst) + 1 == ACKS_PER_ROUND {
                                enough.notify_one();
                            }
                        }
                        None => {
                            ledger.lock().await.unknown.push((txn, i));
                            return;
                        }
                    }
                }
            }));
        }
        if last_round {
            for t in tasks {
                t.await.expect("sender");
            }
            break;
        }
        tokio::time::timeout(WAIT, enough.notified())
            .await
            .expect("acks in time");
        child.child.start_kill().expect("SIGKILL");
        child.wait_output().await;
        for t in tasks {
            t.await.expect("sender");
        }
        child = start(&data_dir, port).await;
    }

    // Everything the server stored, read back by the room's creator.
    let stoken = r.testing_token();
    let http = reqwest::Client::new();
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page: MessagePage = http
            .get(format!(
                "{url}/v1/rooms/{room}/messages?after={after}&limit=500"
            ))
            .bearer_auth(&stoken)
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("page");
        after = page.messages.last().map_or(after, |m| m.seq);
        stored.extend(page.messages);
        if !page.more {
            break;
        }
    }
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs are gap-free from 1");

    let by_bytes: HashMap<&[u8], u64> = stored
        .iter()
        .map(|m| (m.message.0.as_slice(), m.seq))
        .collect();
    assert_eq!(by_bytes.len(), stored.len(), "no message is stored twice");
    let ledger = ledger.lock().await;
    let mut lost = 0;
    for (txn, seq) in &ledger.acked {
        let i: usize = txn.trim_start_matches("crash-").parse().expect("txn index");
        match by_bytes.get(messages[i].as_slice()) {
            Some(found) => assert_eq!(found, seq, "{txn} stored at its acked seq"),
            None => lost += 1,
        }
    }
    assert_eq!(lost, 0, "acknowledged messages lost");
    let acked_seqs: HashSet<u64> = ledger.acked.values().copied().collect();
    assert_eq!(
        acked_seqs.len(),
        ledger.acked.len(),
        "one seq per acked message"
    );
    assert!(
        ledger.acked.len() >= kills * ACKS_PER_ROUND,
        "load ran in every round"
    );
    eprintln!(
        "crash test: {kills} kills, {} acked, {} stored, 0 lost, 0 duplicated",
        ledger.acked.len(),
        stored.len()
    );

    // The audit chain survived every kill intact.
    let audit = tonari::audit::verify_database(&database_for(&data_dir).await)
        .await
        .expect("read audit log");
    assert!(audit.is_ok(), "audit chain after crashes: {audit:?}");

    // The member's SDK decrypts everything that was stored.
    let events = s.sync().await.expect("sync");
    let texts = history_texts(&s, &room).await;
    if texts.len() + 1 != stored.len() {
        let odd: Vec<_> = events
            .iter()
            .filter(|e| !matches!(e, tonari_sdk::Event::Message { .. }))
            .collect();
        eprintln!("crash test: member events other than messages: {odd:?}");
    }
    // Everything but the invite commit (seq 1) is a text message.
    assert_eq!(
        texts.len(),
        stored.len() - 1,
        "the member reads every stored message"
    );
    child.child.start_kill().expect("stop");
    child.wait_output().await;
}
