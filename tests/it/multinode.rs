//! Two server processes on one PostgreSQL (run with
//! TONARI_TEST_DATABASE=postgres; on SQLite there is one process per
//! database and this test has nothing to check). Clients on different nodes
//! share a room: messages keep one gap-free order, and when both nodes get a
//! commit for the same epoch at once, exactly one wins; with NATS, a client
//! on node B gets node A's messages live, and with NATS stopped nothing is
//! lost: the client catches up, and push resumes when NATS is back.

use super::common::*;
use tonari_sdk::{ErrorCode, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_database_keep_order_and_one_commit_per_epoch() {
    if !pg_tests() {
        return;
    }
    let dir = tmp();
    let a_node = TestServer::start(dir.path()).await;
    let shared = match &a_node.database {
        tonari::store::Database::Postgres(url) => url.clone(),
        tonari::store::Database::Sqlite(_) => unreachable!("PostgreSQL tests"),
    };
    let b_dir = dir.path().join("node-b");
    let b_node = TestServer::start_with(&b_dir, |c| c.database_url = shared.clone()).await;

    register(&a_node, "ama").await;
    register(&b_node, "bea").await; // registered through node B
    let ama = login(&a_node, dir.path(), "ama", "phone").await;
    let bea = login(&b_node, dir.path(), "bea", "phone").await;
    let room = ama.create_room().await.expect("room on node A");
    ama.invite(&room, "bea").await.expect("invite (node A)");
    sync_until(&bea, |ev| {
        ev.iter().any(|e| matches!(e, Event::Joined { .. }))
    })
    .await;

    // Messages from both nodes, interleaved: one order, gap-free seqs.
    for i in 0..10 {
        let (ta, tb) = (format!("a{i}"), format!("b{i}"));
        let (a, b) = tokio::join!(ama.send_text(&room, &ta), bea.send_text(&room, &tb));
        a.expect("send on A");
        b.expect("send on B");
    }
    ama.sync().await.expect("sync");
    bea.sync().await.expect("sync");
    let ha = history_texts(&ama, &room).await;
    let hb = history_texts(&bea, &room).await;
    assert_eq!(ha.len(), 20, "{ha:?}");
    assert_eq!(ha, hb, "both nodes' clients see one order");
    let info = ama.server_rooms().await.expect("rooms");
    assert_eq!(info[0].last_seq, 21, "invite + 20 messages, gap-free");

    // The same epoch committed on both nodes at once: exactly one wins.
    register(&a_node, "cai").await;
    register(&b_node, "dov").await;
    let _cai = login(&a_node, dir.path(), "cai", "phone").await;
    let _dov = login(&b_node, dir.path(), "dov", "phone").await;
    let (ca, wa) = ama
        .testing_craft_commit(&room, Some("cai"), None)
        .await
        .expect("craft on A");
    let (cb, wb) = bea
        .testing_craft_commit(&room, Some("dov"), None)
        .await
        .expect("craft on B");
    let before = ama.epoch(&room).expect("epoch");
    assert_eq!(before, bea.epoch(&room).expect("epoch"));
    let (ra, rb) = tokio::join!(
        ama.testing_submit_pending_commit(&room, "race-a", &ca, wa.as_deref()),
        bea.testing_submit_pending_commit(&room, "race-b", &cb, wb.as_deref())
    );
    let refused = |r: &Result<tonari_sdk::Ack, tonari_sdk::SdkError>| matches!(r, Err(e) if e.is_code(ErrorCode::EpochConflict) || e.is_code(ErrorCode::Unavailable));
    assert!(
        (ra.is_ok() && refused(&rb)) || (rb.is_ok() && refused(&ra)),
        "exactly one commit for the epoch wins: {ra:?} / {rb:?}"
    );
    // The loser drops its commit; both converge on the winner's epoch.
    for (c, r) in [(&ama, &ra), (&bea, &rb)] {
        if r.is_err() {
            c.clear_pending(&room).expect("clear");
        }
        c.sync().await.expect("sync");
        assert_eq!(c.epoch(&room).expect("epoch"), before + 1);
    }
    ama.send_text(&room, "after the race").await.expect("send");
    sync_until(&bea, |ev| {
        texts(ev, &room).contains(&"after the race".to_string())
    })
    .await;
    b_node.stop().await;
    a_node.stop().await;
}

/// Our own nats-server on a free port (the shared one must not be stopped).
struct Nats {
    child: tokio::process::Child,
    port: u16,
}

impl Nats {
    async fn start(port: Option<u16>) -> Nats {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port")
        });
        let mut child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read") {
                if line.contains("Server is ready") {
                    return;
                }
            }
            panic!("nats-server exited");
        })
        .await
        .expect("nats-server ready");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Nats { child, port }
    }

    async fn stop(mut self) -> u16 {
        self.child.kill().await.expect("stop nats-server");
        self.port
    }
}

/// Wait (bounded) until the subscription delivers a message with `text`.
async fn live(sub: &mut tonari_sdk::Subscription, room: &str, text: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            match sub.next().await {
                Some(Ok(Event::Message {
                    room_id, content, ..
                })) if room_id == room && content.display_text() == text => {
                    return;
                }
                Some(_) => {}
                None => panic!("subscription ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{text} arrived in time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pushes_between_nodes_and_nothing_is_lost_while_it_is_down() {
    if !pg_tests() {
        return;
    }
    let dir = tmp();
    let nats = Nats::start(None).await;
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let url = nats_url.clone();
    let a_node = TestServer::start_with(dir.path(), |c| c.nats_url = url).await;
    let shared = match &a_node.database {
        tonari::store::Database::Postgres(url) => url.clone(),
        tonari::store::Database::Sqlite(_) => unreachable!("PostgreSQL tests"),
    };
    let url = nats_url.clone();
    let b_node = TestServer::start_with(&dir.path().join("node-b"), |c| {
        c.database_url = shared.clone();
        c.nats_url = url;
    })
    .await;
    register(&a_node, "eli").await;
    register(&b_node, "fay").await;
    let eli = login(&a_node, dir.path(), "eli", "phone").await;
    let fay = login(&b_node, dir.path(), "fay", "phone").await;
    let room = eli.create_room().await.expect("room");
    eli.invite(&room, "fay").await.expect("invite");
    // fay is connected to node B only; the welcome itself crosses over NATS.
    let mut sub = fay.connect().await.expect("websocket to node B");
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Event::Joined { .. })) = sub.next().await {
                return;
            }
        }
    })
    .await
    .expect("fay joins live");
    eli.send_text(&room, "live across nodes")
        .await
        .expect("send");
    live(&mut sub, &room, "live across nodes").await;
    let (status, ready) = raw(
        reqwest::Method::GET,
        format!("{}/ready", b_node.url),
        None,
        None,
    )
    .await;
    assert_eq!((status, ready["nats"].as_str()), (200, Some("connected")));

    // NATS goes away: node B stays ready, nothing is lost.
    let port = nats.stop().await;
    eli.send_text(&room, "while NATS is down")
        .await
        .expect("send");
    let (status, _) = raw(
        reqwest::Method::GET,
        format!("{}/ready", b_node.url),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "NATS down does not make a node unready");
    // NATS is back on the same address: push resumes by itself, and the
    // message sent meanwhile arrives too (the seq gap is read from the database).
    let nats = Nats::start(Some(port)).await;
    tokio::time::timeout(WAIT, async {
        loop {
            eli.send_text(&room, "after NATS is back")
                .await
                .expect("send");
            let got = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                loop {
                    match sub.next().await {
                        Some(Ok(Event::Message { content, .. }))
                            if content.display_text() == "after NATS is back" =>
                        {
                            return;
                        }
                        Some(_) => {}
                        None => panic!("subscription ended"),
                    }
                }
            })
            .await;
            if got.is_ok() {
                return;
            }
        }
    })
    .await
    .expect("push resumes after NATS restarts");
    let texts = history_texts(&fay, &room).await;
    assert!(
        texts.contains(&"while NATS is down".to_string()),
        "the message sent while NATS was down is not lost: {texts:?}"
    );
    let seqs: Vec<u64> = fay
        .history(&room)
        .await
        .expect("history")
        .iter()
        .map(|m| m.seq)
        .collect();
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(seqs, sorted, "no duplicates, in order");
    drop(sub);
    b_node.stop().await;
    a_node.stop().await;
    nats.stop().await;
}
