//! The web client's server side: assets at `/` with a strict CSP, unknown
//! API paths still JSON, the WebSocket token in the subprotocol, and the
//! Origin check on the upgrade.

use super::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonari_wire::{ClientFrame, ServerFrame};

/// Register and log in over raw HTTP; returns the session token.
async fn token(server: &TestServer, username: &str) -> String {
    let (status, _) = raw(
        reqwest::Method::POST,
        format!("{}/v1/register", server.url),
        None,
        Some(serde_json::json!({"username": username, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = raw(
        reqwest::Method::POST,
        format!("{}/v1/login", server.url),
        None,
        Some(serde_json::json!({
            "username": username, "password": PASSWORD, "device_name": "web",
            "signature_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_string()
}

/// A WebSocket upgrade request with the given extra headers.
async fn upgrade(
    server: &TestServer,
    headers: &[(&'static str, String)],
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let mut req = format!("ws://{}/v1/ws", server.addr)
        .into_client_request()
        .expect("ws request");
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().expect("header"));
    }
    tokio_tungstenite::connect_async(req).await
}

fn refused_status(r: Result<impl std::fmt::Debug, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn root_serves_the_app_with_a_strict_csp_or_says_it_is_not_built() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let resp = reqwest::get(format!("{}/", server.url))
        .await
        .expect("GET /");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    // A clone without `npm run build` has no web/dist: then / says so (JSON
    // 404) and the rest of the server works as before.
    if std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("web/dist/index.html")
        .exists()
    {
        assert_eq!(status, 200);
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} in {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains(&format!("ws://{}", server.addr)));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(body.contains("<div id=\"app\">"));
        // No inline script: every <script> has a src.
        for part in body.split("<script").skip(1) {
            let tag = &part[..part.find('>').expect("tag ends")];
            assert!(tag.contains("src="), "inline script: <script{tag}>");
        }
        let script = body
            .split("src=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a script src");
        let js = reqwest::get(format!("{}{script}", server.url))
            .await
            .expect("GET script");
        assert_eq!(js.status().as_u16(), 200);
        assert!(
            js.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
    } else {
        assert_eq!(status, 404);
        assert!(body.contains("not built"));
    }
    // API paths keep their JSON errors.
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/nope", server.url),
        None,
        None,
    )
    .await;
    assert_eq!((status, code_of(&body)), (404, "not_found"));
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{}/assets/missing.js", server.url),
        None,
        None,
    )
    .await;
    assert_eq!((status, code_of(&body)), (404, "not_found"));
    server.stop().await;
}

#[tokio::test]
async fn websocket_takes_the_token_as_a_subprotocol_and_checks_the_origin() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let token = token(&server, "webby").await;
    let own_origin = format!("http://{}", server.addr);
    let protocols = format!("tonari.v1, tonari-token.{token}");

    // A page of another site is refused, even with a valid token.
    for evil in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let r = upgrade(
            &server,
            &[
                ("origin", evil.to_string()),
                ("sec-websocket-protocol", protocols.clone()),
            ],
        )
        .await;
        assert_eq!(refused_status(r), 403, "origin {evil}");
    }
    // A wrong token in the subprotocol is refused.
    let r = upgrade(
        &server,
        &[
            ("origin", own_origin.clone()),
            (
                "sec-websocket-protocol",
                "tonari.v1, tonari-token.0000".into(),
            ),
        ],
    )
    .await;
    assert_eq!(refused_status(r), 401);

    // The server's own page: the token as a subprotocol works, and the
    // answer names only `tonari.v1` (the token is never echoed).
    let (mut ws, resp) = upgrade(
        &server,
        &[
            ("origin", own_origin.clone()),
            ("sec-websocket-protocol", protocols.clone()),
        ],
    )
    .await
    .expect("upgrade with the token in the subprotocol");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "tonari.v1");
    let ping = serde_json::to_string(&ClientFrame::Ping { nonce: 7 }).unwrap();
    ws.send(tungstenite::Message::text(ping))
        .await
        .expect("send");
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("reply in time");
    match reply {
        Some(Ok(tungstenite::Message::Text(t))) => {
            let f: ServerFrame = serde_json::from_str(&t).expect("frame");
            assert!(matches!(f, ServerFrame::Pong { nonce: 7 }), "{f:?}");
        }
        other => panic!("no pong: {other:?}"),
    }
    drop(ws);

    // Native clients (no Origin) keep using the Authorization header.
    let (mut native, _) = upgrade(&server, &[("authorization", format!("Bearer {token}"))])
        .await
        .expect("native upgrade");
    native.close(None).await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn allowed_origins_are_configurable() {
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| {
        c.allowed_origins = vec!["https://care.example.org".into()];
    })
    .await;
    let token = token(&server, "webby").await;
    let protocols = format!("tonari.v1, tonari-token.{token}");
    let ok = upgrade(
        &server,
        &[
            ("origin", "https://care.example.org".into()),
            ("sec-websocket-protocol", protocols.clone()),
        ],
    )
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let r = upgrade(
        &server,
        &[
            ("origin", "https://other.example.org".into()),
            ("sec-websocket-protocol", protocols),
        ],
    )
    .await;
    assert_eq!(refused_status(r), 403);
    server.stop().await;
}
