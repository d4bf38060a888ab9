//! Two server processes on one PostgreSQL (run with
//! TONARI_TEST_DATABASE=postgres; on SQLite there is one process per
//! database and this test has nothing to check). Clients on different nodes
//! share a room: messages keep one gap-free order, and when both nodes get a
//! commit for the same epoch at once, exactly one wins. Live push between
//! nodes (NATS) is not built yet: members here catch up by syncing.

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
