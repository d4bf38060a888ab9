//! WebSocket sends, slow consumers and logout.

use super::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tonari_wire::{B64, ClientFrame, ServerFrame};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(server: &TestServer, token: &str) -> Ws {
    ws_connect(server.addr, token).await
}

async fn send_frame(ws: &mut Ws, frame: &ClientFrame) {
    let text = serde_json::to_string(frame).expect("json");
    ws.send(tungstenite::Message::text(text))
        .await
        .expect("send frame");
}

/// The next server frame that is not a room message.
async fn next_reply(ws: &mut Ws) -> ServerFrame {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(tungstenite::Message::Text(t))) => {
                    let f: ServerFrame = serde_json::from_str(&t).expect("server frame");
                    if !matches!(f, ServerFrame::Message { .. }) {
                        return f;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("websocket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("reply in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_websocket_are_acked_once_durable_and_idempotent() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (a, mut others, room) = room_with(&server, dir.path(), "uma", &["vic"]).await;
    let v = others.remove(0);
    let mut conn = ws(&server, &a.testing_token()).await;

    let msgs: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            a.testing_encrypt(&room, &format!("ws {i}"))
                .expect("encrypt")
        })
        .collect();
    // Pipelined: all sends first, then the acks, in order.
    for (i, m) in msgs.iter().enumerate() {
        send_frame(
            &mut conn,
            &ClientFrame::Send {
                room_id: room.clone(),
                txn_id: format!("w{i}"),
                message: B64(m.clone()),
                welcome: None,
            },
        )
        .await;
    }
    let mut seqs = Vec::new();
    for i in 0..msgs.len() {
        match next_reply(&mut conn).await {
            ServerFrame::Ack { txn_id, ack } => {
                assert_eq!(txn_id, format!("w{i}"), "acks come back in order");
                assert!(!ack.duplicate);
                seqs.push(ack.seq);
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive seqs: {seqs:?}"
    );

    // A retry is answered with the first ack; garbage with a SendError.
    send_frame(
        &mut conn,
        &ClientFrame::Send {
            room_id: room.clone(),
            txn_id: "w3".into(),
            message: B64(msgs[3].clone()),
            welcome: None,
        },
    )
    .await;
    match next_reply(&mut conn).await {
        ServerFrame::Ack { ack, .. } => assert!(ack.duplicate && ack.seq == seqs[3]),
        other => panic!("expected a duplicate ack, got {other:?}"),
    }
    send_frame(
        &mut conn,
        &ClientFrame::Send {
            room_id: room.clone(),
            txn_id: "junk".into(),
            message: B64(vec![1, 2, 3]),
            welcome: None,
        },
    )
    .await;
    match next_reply(&mut conn).await {
        ServerFrame::SendError { txn_id, code, .. } => {
            assert_eq!(
                (txn_id.as_str(), code.as_str()),
                ("junk", "invalid_mls_message")
            );
        }
        other => panic!("expected a send error, got {other:?}"),
    }
    let ev = sync_until(&v, |ev| texts(ev, &room).len() >= 20).await;
    assert_eq!(
        texts(&ev, &room),
        (0..20).map(|i| format!("ws {i}")).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_disconnected_without_slowing_the_room_then_resumes() {
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| {
        c.ws_outbound_queue = 2;
        c.room_broadcast_capacity = 4;
    })
    .await;
    let (a, mut others, room) = room_with(&server, dir.path(), "wes", &["xia"]).await;
    let x = others.remove(0);
    let cursor = x.room(&room).await.expect("room").last_seq;

    // xia's device connects and then stops reading.
    let mut stalled = ws(&server, &x.testing_token()).await;
    send_frame(
        &mut stalled,
        &ClientFrame::Resume {
            rooms: [(room.clone(), cursor)].into_iter().collect(),
        },
    )
    .await;

    // 64 messages of 256 KiB: far more than socket buffers hold.
    let body = "x".repeat(256 * 1024);
    for i in 0..64 {
        a.send_text(&room, &format!("{i} {body}"))
            .await
            .expect("sends are not held up");
    }
    // The server gave up on the stalled connection (close 4008, or the
    // connection simply ends after what the socket buffers held).
    let mut received = 0;
    let close = tokio::time::timeout(WAIT, async {
        while let Some(msg) = stalled.next().await {
            match msg {
                Ok(tungstenite::Message::Text(_)) => received += 1,
                Ok(tungstenite::Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the server drops the stalled reader");
    assert!(
        received < 64,
        "the stalled reader was cut off ({received} frames, close {close:?})"
    );
    assert!(matches!(close, None | Some(4008)), "close code {close:?}");

    // Resuming from the last seq brings everything, once, in order.
    let ev = sync_until(&x, |ev| texts(ev, &room).len() >= 64).await;
    let got: Vec<usize> = texts(&ev, &room)
        .iter()
        .map(|t| t.split_once(' ').expect("shape").0.parse().expect("index"))
        .collect();
    assert_eq!(got, (0..64).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_token_at_once() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    register(&server, "yan").await;
    let y = login(&server, dir.path(), "yan", "phone").await;
    let token = y.testing_token();
    let (status, _) = raw(
        reqwest::Method::GET,
        format!("{}/v1/rooms", server.url),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    y.logout().await.expect("logout");
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/rooms", server.url),
        Some(&token),
        None,
    )
    .await;
    assert_eq!((status, code_of(&body)), (401, "unauthenticated"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_logged_out() {
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| {
        c.session_idle_secs = 3600;
        c.session_cache_secs = 0;
    })
    .await;
    register(&server, "zoe").await;
    let z1 = login(&server, dir.path(), "zoe", "phone").await;
    let z2 = login(&server, dir.path(), "zoe", "laptop").await;
    let rooms = format!("{}/v1/rooms", server.url);
    for z in [&z1, &z2] {
        let (status, _) = raw(
            reqwest::Method::GET,
            rooms.clone(),
            Some(&z.testing_token()),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    // Time passes (simulated in the database, no sleeping): the phone was last
    // used two hours ago, the laptop thirty minutes ago.
    for (device, ago_ms) in [(z1.device_id(), 2 * 3_600_000), (z2.device_id(), 1_800_000)] {
        exec_sql(
            &server.database,
            &format!(
                "UPDATE sessions SET last_used_ms = last_used_ms - {ago_ms} WHERE device_id = {device}"
            ),
        )
        .await;
    }
    let (status, body) = raw(
        reqwest::Method::GET,
        rooms.clone(),
        Some(&z1.testing_token()),
        None,
    )
    .await;
    assert_eq!(
        (status, code_of(&body)),
        (401, "unauthenticated"),
        "idle session logged out"
    );
    let (status, _) = raw(
        reqwest::Method::GET,
        rooms.clone(),
        Some(&z2.testing_token()),
        None,
    )
    .await;
    assert_eq!(status, 200, "a session used within the idle time stays");
    // ... and that use counted: it is fresh again.
    let fresh = query_i64(
        &server.database,
        &format!(
            "SELECT last_used_ms FROM sessions WHERE device_id = {}",
            z2.device_id()
        ),
    )
    .await;
    assert!(tonari::accounts::now_ms() - fresh < 60_000);
    server.stop().await;
}
