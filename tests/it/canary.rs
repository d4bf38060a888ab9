//! A plaintext canary sent in a room appears nowhere but in members' SDKs:
//! not in the database files (incl. -wal/-shm), not in the server's logs (at
//! trace level), not in e-mails the server sends about the room, not in any
//! response to a non-member or in raw responses.

use super::common::*;
use tonari_sdk::{Client, Event};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_canary_never_reaches_server_disk_logs_or_responses() {
    let dir = tmp();
    let data_dir = dir.path().join("server");
    let mut sink = SmtpSink::start().await;
    let server = ServerProcess::spawn_with(
        &data_dir,
        "127.0.0.1:0",
        "trace",
        &[("TONARI_SMTP_URL", &sink.url)],
    )
    .await;
    let url = server.url.clone();

    let canary = format!("CANARY-{}-血糖値", std::process::id() as u64 * 7919 + 13);
    for u in ["mia", "ned", "ozu"] {
        Client::register(&url, u, PASSWORD).await.expect("register");
    }
    let m = Client::login(&url, &dir.path().join("mia"), "mia", PASSWORD, "phone")
        .await
        .expect("login");
    let n = Client::login(&url, &dir.path().join("ned"), "ned", PASSWORD, "phone")
        .await
        .expect("login");
    let o = Client::login(&url, &dir.path().join("ozu"), "ozu", PASSWORD, "phone")
        .await
        .expect("login");
    let room = m.create_room().await.expect("create");
    m.invite(&room, "ned").await.expect("invite");
    sync_until(&n, |ev| {
        ev.iter().any(|e| matches!(e, Event::Joined { .. }))
    })
    .await;
    let ack = m.send_text(&room, &canary).await.expect("send canary");
    let ev = sync_until(&n, |ev| !texts(ev, &room).is_empty()).await;
    assert_eq!(
        texts(&ev, &room),
        vec![canary.clone()],
        "the member reads the canary"
    );

    // An e-mail about the room (an invitation into it) after the canary.
    let mut req = super::care::invitation("kin@home.example", tonari_wire::Role::Family);
    req.patient_network_id = Some("P-1".into());
    req.relationship = Some("son".into());
    req.room_id = Some(room.clone());
    m.invite_by_email(&req).await.expect("invite by e-mail");
    let mail = sink.next_mail().await;
    assert!(
        !mail.raw.contains(&canary)
            && !mail.text.contains(&canary)
            && !mail.raw.contains("CANARY-"),
        "the e-mail contains the canary"
    );

    // Raw responses: to a member (ciphertext) and to a non-member.
    let mut responses = Vec::new();
    for (who, token) in [
        ("member", n.testing_token()),
        ("non-member", o.testing_token()),
    ] {
        for path in [
            format!("/v1/rooms/{room}/messages?after=0"),
            format!("/v1/rooms/{room}"),
            "/v1/rooms".to_string(),
            "/v1/welcomes".to_string(),
            "/metrics".to_string(),
        ] {
            let resp = reqwest::Client::new()
                .get(format!("{url}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("request");
            let body = resp.bytes().await.expect("body").to_vec();
            assert!(
                !contains(&body, canary.as_bytes()),
                "{who} response to {path} leaks the canary"
            );
            responses.push(body);
        }
    }

    // The database while running (SQLite: the files incl. WAL and shm;
    // PostgreSQL: a dump, where bytea shows as hex).
    let db = database_for(&data_dir).await;
    let hex_canary = hex::encode(canary.as_bytes());
    let check_db = |when: &str| {
        let bytes = database_bytes(&db);
        assert!(bytes.len() > 1000, "the database has content");
        assert!(
            !contains(&bytes, canary.as_bytes()) && !contains(&bytes, hex_canary.as_bytes()),
            "the database contains the canary ({when})"
        );
        assert!(
            contains(&bytes, room.as_bytes()),
            "the database holds the room ({when})"
        );
    };
    check_db("running");

    // Graceful stop, then the files and the complete logs.
    let pid = server.child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (exit, logs) = server.wait_output().await;
    assert!(exit.success(), "graceful exit: {exit}");
    check_db("after stop");
    assert!(
        contains(&logs, b"message accepted"),
        "trace logs were captured"
    );
    assert!(contains(&logs, room.as_bytes()), "logs carry ids");
    assert!(
        !contains(&logs, canary.as_bytes()),
        "server logs contain the canary"
    );
    assert!(
        !contains(&logs, b"CANARY-"),
        "server logs contain the canary prefix"
    );
    assert!(ack.seq > 0);
}
