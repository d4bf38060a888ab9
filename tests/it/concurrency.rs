//! Idempotent retries and racing commits.

use super::common::*;
use tonari_sdk::Event;
use tonari_wire::ErrorCode;

async fn two_in_a_room(
    server: &TestServer,
    root: &std::path::Path,
) -> (tonari_sdk::Client, tonari_sdk::Client, String) {
    let (a, mut others, room) = room_with(server, root, "ann", &["ben"]).await;
    (a, others.remove(0), room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_txn_id_twice_is_one_message() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (a, b, room) = two_in_a_room(&server, dir.path()).await;

    let bytes = a.testing_encrypt(&room, "only once").expect("encrypt");
    let first = a
        .testing_submit(&room, "txn-1", &bytes, None)
        .await
        .expect("first");
    let second = a
        .testing_submit(&room, "txn-1", &bytes, None)
        .await
        .expect("retry");
    assert_eq!(first.seq, second.seq, "the retry gets the original ack");
    assert!(!first.duplicate && second.duplicate);

    // The same txn id with other bytes is refused and stores nothing.
    let other = a.testing_encrypt(&room, "something else").expect("encrypt");
    let err = a
        .testing_submit(&room, "txn-1", &other, None)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::TxnIdReused), "{err}");

    let ev = sync_until(&b, |ev| !texts(ev, &room).is_empty()).await;
    assert_eq!(texts(&ev, &room), vec!["only once".to_string()]);
    let rooms = b.server_rooms().await.expect("rooms");
    assert_eq!(rooms[0].last_seq, first.seq, "nothing else was stored");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commits_for_one_epoch_one_wins_and_both_converge() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (a, b, room) = two_in_a_room(&server, dir.path()).await;
    register(&server, "cid").await;
    register(&server, "dee").await;
    let c = login(&server, dir.path(), "cid", "phone").await;
    let d = login(&server, dir.path(), "dee", "phone").await;

    // Both build a commit for the same epoch before either is sent.
    let kp_c = a.testing_claim("cid").await.expect("claim").remove(0).1;
    let kp_d = b.testing_claim("dee").await.expect("claim").remove(0).1;
    let epoch = a.epoch(&room).expect("epoch");
    assert_eq!(epoch, b.epoch(&room).expect("epoch"));
    let (ca, wa) = a
        .craft_add_commit_unchecked(&room, &kp_c)
        .expect("commit a");
    let (cb, wb) = b
        .craft_add_commit_unchecked(&room, &kp_d)
        .expect("commit b");
    let (ra, rb) = tokio::join!(
        a.testing_submit_pending_commit(&room, "ca", &ca, Some(&wa)),
        b.testing_submit_pending_commit(&room, "cb", &cb, Some(&wb)),
    );
    let (winner, loser, loser_err, loser_target) = match (ra, rb) {
        (Ok(_), Err(e)) => (&a, &b, e, "dee"),
        (Err(e), Ok(_)) => (&b, &a, e, "cid"),
        other => panic!("exactly one commit must win: {other:?}"),
    };
    assert!(loser_err.is_code(ErrorCode::EpochConflict), "{loser_err}");

    // The loser recovers: drop its commit, process the winner's, retry.
    loser.clear_pending(&room).expect("clear");
    loser.sync().await.expect("catch up");
    loser
        .invite(&room, loser_target)
        .await
        .expect("retry invite");
    winner.sync().await.expect("winner catches up");
    let ea = a.epoch(&room).expect("epoch");
    let eb = b.epoch(&room).expect("epoch");
    assert_eq!(ea, eb, "both converge on one epoch");
    assert_eq!(ea, epoch + 2);

    // Everyone keeps talking.
    sync_until(&c, |ev| {
        ev.iter().any(|e| matches!(e, Event::Joined { .. }))
    })
    .await;
    sync_until(&d, |ev| {
        ev.iter().any(|e| matches!(e, Event::Joined { .. }))
    })
    .await;
    a.send_text(&room, "from ann").await.expect("send");
    b.send_text(&room, "from ben").await.expect("send");
    for x in [&a, &b, &c, &d] {
        sync_until(x, |_| true).await;
        let mut t = history_texts(x, &room).await;
        t.sort();
        assert_eq!(t, vec!["from ann".to_string(), "from ben".to_string()]);
    }
    server.stop().await;
}
