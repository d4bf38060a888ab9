//! Bad input gets a clear error with a stable code and changes nothing.

use super::common::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tonari_wire::ErrorCode;

const SMALL: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_stable_codes_and_change_nothing() {
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| {
        c.max_body_bytes = SMALL;
        c.ws_max_message_bytes = SMALL;
        c.ws_max_frame_bytes = SMALL;
    })
    .await;
    let (p, mut others, room) = room_with(&server, dir.path(), "pat", &["quinn"]).await;
    let q = others.remove(0);
    p.send_text(&room, "hello").await.expect("send");
    let token = p.testing_token();
    let before = p.server_rooms().await.expect("rooms");
    let url = |path: &str| format!("{}{path}", server.url);
    let msgs = url(&format!("/v1/rooms/{room}/messages"));

    // 401: no token, unknown token.
    for t in [None, Some("not-a-token")] {
        let (status, body) = raw(Method::GET, url("/v1/rooms"), t, None).await;
        assert_eq!((status, code_of(&body)), (401, "unauthenticated"));
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, body) = raw(
        Method::POST,
        msgs.clone(),
        None,
        Some(json!({"txn_id":"x","message":"AAAA"})),
    )
    .await;
    assert_eq!((status, code_of(&body)), (401, "unauthenticated"));

    // 400 invalid_mls_message: bytes that are not MLS, and MLS of the wrong kind.
    let kp = q.testing_claim("quinn").await.expect("claim").remove(0).1;
    for (what, bytes) in [
        ("garbage", vec![0u8, 1, 2, 3]),
        ("empty", vec![]),
        ("a key package", kp),
    ] {
        let (status, body) = raw(
            Method::POST,
            msgs.clone(),
            Some(&token),
            Some(json!({"txn_id": format!("bad-{what}"), "message": b64(&bytes)})),
        )
        .await;
        assert_eq!(
            (status, code_of(&body)),
            (400, "invalid_mls_message"),
            "{what}"
        );
    }
    // A truncated real message.
    let real = p.testing_encrypt(&room, "truncated").expect("encrypt");
    let (status, body) = raw(
        Method::POST,
        msgs.clone(),
        Some(&token),
        Some(json!({"txn_id": "trunc", "message": b64(&real[..real.len() / 2])})),
    )
    .await;
    assert_eq!((status, code_of(&body)), (400, "invalid_mls_message"));

    // 400 invalid_request: not JSON, wrong shape, bad base64.
    for body in [
        json!("nope"),
        json!({"txn_id": 5}),
        json!({"txn_id":"a","message":"!!"}),
    ] {
        let (status, resp) = raw(Method::POST, msgs.clone(), Some(&token), Some(body)).await;
        assert_eq!((status, code_of(&resp)), (400, "invalid_request"));
    }

    // 413: a body over the limit.
    let big = "A".repeat(SMALL + 1024);
    let (status, body) = raw(
        Method::POST,
        msgs.clone(),
        Some(&token),
        Some(json!({"txn_id":"big","message": big})),
    )
    .await;
    assert_eq!((status, code_of(&body)), (413, "payload_too_large"));

    // 404: unknown endpoint, device and welcome ids that are not numbers.
    for path in ["/v1/nope", "/v1/devices/abc", "/v1/welcomes/x"] {
        let method = if path.starts_with("/v1/welcomes") {
            Method::DELETE
        } else {
            Method::GET
        };
        let (status, body) = raw(method, url(path), Some(&token), None).await;
        assert_eq!(status, 404, "{path}");
        assert!(code_of(&body).ends_with("not_found"), "{path}: {body}");
    }

    // 405: a known endpoint with the wrong method; 400: /v1/ws without an upgrade.
    let (status, body) = raw(Method::PUT, url("/v1/rooms"), Some(&token), None).await;
    assert_eq!((status, code_of(&body)), (405, "method_not_allowed"));
    let (status, body) = raw(Method::GET, url("/v1/ws"), Some(&token), None).await;
    assert_eq!((status, code_of(&body)), (400, "invalid_request"));

    // 404: unknown room.
    let (status, body) = raw(
        Method::POST,
        url("/v1/rooms/00112233445566778899aabbccddeeff/messages"),
        Some(&token),
        Some(json!({"txn_id":"x","message": b64(&real)})),
    )
    .await;
    assert_eq!((status, code_of(&body)), (404, "room_not_found"));
    let (status, body) = raw(Method::GET, url("/v1/rooms/00ff"), Some(&token), None).await;
    assert_eq!((status, code_of(&body)), (404, "room_not_found"));

    // 409: a message for an old epoch.
    let stale = p.testing_encrypt(&room, "stale").expect("encrypt");
    p.remove(&room, "quinn")
        .await
        .expect("commit moves the epoch");
    let mid = p.server_rooms().await.expect("rooms");
    let err = p
        .testing_submit(&room, "stale", &stale, None)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::EpochConflict), "{err}");
    assert_eq!(
        p.server_rooms().await.expect("rooms"),
        mid,
        "stale message not stored"
    );

    // 403: a non-member may not post or read.
    let q_token = q.testing_token();
    let (status, body) = raw(
        Method::GET,
        format!("{msgs}?after=100"),
        Some(&q_token),
        None,
    )
    .await;
    assert_eq!((status, code_of(&body)), (403, "not_a_member"));

    // Nothing above changed the room except the one removal commit.
    assert_eq!(mid[0].last_seq, before[0].last_seq + 1);

    // WebSocket: a message over the limit is closed with 1009.
    let mut ws = ws_connect(server.addr, &token).await;
    ws.send(tungstenite::Message::text("x".repeat(SMALL * 2)))
        .await
        .expect("send big frame");
    let close = tokio::time::timeout(WAIT, async {
        while let Some(msg) = ws.next().await {
            if let Ok(tungstenite::Message::Close(frame)) = msg {
                return frame.map(|f| u16::from(f.code));
            }
            if msg.is_err() {
                return None;
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(close, Some(1009));

    // WebSocket without a token: 401 before the upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", server.addr))
        .await
        .unwrap_err();
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected HTTP 401, got {other}"),
    }
    server.stop().await;
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
