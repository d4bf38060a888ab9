//! The audit chain: security events are recorded with ids only, and
//! `tonari audit verify` detects an edited, deleted or reordered entry.

use super::common::*;
use tonari::store::Database;
use tonari_sdk::Event;

fn verify_cli(db: &Database) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tonari"))
        .args(["audit", "verify"])
        .args(database_args(db))
        .output()
        .expect("run tonari audit verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_are_chained_and_tampering_is_detected() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (ada, mut others, room) = room_with(&server, dir.path(), "ada", &["bob"]).await;
    let bob = others.remove(0);
    ada.send_text(&room, "AUDIT-CANARY blood pressure 180/110")
        .await
        .expect("send");
    ada.remove(&room, "bob").await.expect("remove");
    sync_until(&bob, |ev| {
        ev.iter().any(|e| matches!(e, Event::Removed { .. }))
    })
    .await;
    let (status, _) = raw(
        reqwest::Method::POST,
        format!("{}/v1/login", server.url),
        None,
        Some(serde_json::json!({
            "username": "bob", "password": "wrong password!", "device_name": "x",
            "signature_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        })),
    )
    .await;
    assert_eq!(status, 401);
    let db = server.database.clone();
    let entries = server.stop_and_read_audit().await;

    // Intact: verifies, and holds the expected events with ids only.
    let (ok, out) = verify_cli(&db);
    assert!(ok, "intact log verifies: {out}");
    assert!(out.starts_with("audit log OK:"), "{out}");
    let kinds: Vec<&str> = entries.iter().map(|e| e.event.event.as_str()).collect();
    for kind in [
        "user_registered",
        "device_added",
        "login",
        "room_created",
        "room_members_changed",
        "login_failed",
    ] {
        assert!(kinds.contains(&kind), "{kind} recorded: {kinds:?}");
    }
    let changes: Vec<_> = entries
        .iter()
        .filter(|e| e.event.event == "room_members_changed")
        .collect();
    assert_eq!(changes.len(), 2, "the invite and the removal");
    assert!(
        changes
            .iter()
            .all(|e| e.event.subject == format!("room:{room}")
                && e.event.details.contains("\"decision\":\"allowed\""))
    );
    for e in &entries {
        let text = format!("{:?}", e.event);
        assert!(!text.contains("AUDIT-CANARY") && !text.contains("180/110"));
    }
    assert!(entries.len() >= 8);

    // Edited: the entry's hash no longer matches.
    let edited = copy_database(&db, &dir.path().join("edited")).await;
    exec_sql(
        &edited,
        "UPDATE audit_log SET subject = 'user:999' WHERE seq = 3",
    )
    .await;
    let (ok, out) = verify_cli(&edited);
    assert!(
        !ok && out.contains("BROKEN at entry 3") && out.contains("changed"),
        "{out}"
    );

    // Deleted: the chain has a hole.
    let deleted = copy_database(&db, &dir.path().join("deleted")).await;
    exec_sql(&deleted, "DELETE FROM audit_log WHERE seq = 4").await;
    let (ok, out) = verify_cli(&deleted);
    assert!(!ok && out.contains("BROKEN at entry 4"), "{out}");

    // Deleted and renumbered: the link to the previous entry breaks.
    let renumbered = copy_database(&db, &dir.path().join("renumbered")).await;
    exec_sql(
        &renumbered,
        "DELETE FROM audit_log WHERE seq = 4;
         UPDATE audit_log SET seq = -seq WHERE seq > 4;
         UPDATE audit_log SET seq = -seq - 1 WHERE seq < 0;",
    )
    .await;
    let (ok, out) = verify_cli(&renumbered);
    assert!(!ok && out.contains("BROKEN at entry 4"), "{out}");

    // Reordered: entries 2 and 3 swap places.
    let reordered = copy_database(&db, &dir.path().join("reordered")).await;
    exec_sql(
        &reordered,
        "UPDATE audit_log SET seq = -2 WHERE seq = 2;
         UPDATE audit_log SET seq = 2 WHERE seq = 3;
         UPDATE audit_log SET seq = 3 WHERE seq = -2;",
    )
    .await;
    let (ok, out) = verify_cli(&reordered);
    assert!(!ok && out.contains("BROKEN at entry 2"), "{out}");
}
