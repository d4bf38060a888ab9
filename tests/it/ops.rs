//! Operations endpoints: readiness and Prometheus metrics (counts and
//! latencies only, no ids or content).

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_metrics_report_without_ids() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{}/ready", server.url),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"], "ok");

    let (ann, others, room) = room_with(&server, dir.path(), "ann", &["ben"]).await;
    ann.send_text(&room, "METRICS-CANARY 97 mg/dL")
        .await
        .expect("send");
    let _sub = others[0].connect().await.expect("websocket");
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for needle in [
        "tonari_messages_accepted_total{kind=\"application\"} 1",
        "tonari_messages_accepted_total{kind=\"commit\"} 1",
        "tonari_commit_latency_seconds_count 1",
        "tonari_logins_total{outcome=\"ok\"} 2",
        "tonari_write_batch_seconds_count",
        "tonari_websocket_connections",
        "# EOF",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    for secret in [room.as_str(), "ann", "ben", "METRICS-CANARY", "97 mg"] {
        assert!(!text.contains(secret), "metrics leak {secret}");
    }
    server.stop().await;

    // Turned off: 404.
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| c.metrics_enabled = false).await;
    let (status, _) = raw(
        reqwest::Method::GET,
        format!("{}/metrics", server.url),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}
