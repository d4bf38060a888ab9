//! Three people on four devices in one encrypted room.

use super::common::*;
use std::collections::HashMap;
use std::sync::Arc;
use tonari_sdk::Event;
use tonari_wire::ErrorCode;

const N: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_people_four_devices_talk_remove_and_add_device() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    for u in ["alice", "bob", "carol"] {
        register(&server, u).await;
    }
    let a1 = Arc::new(login(&server, dir.path(), "alice", "phone").await);
    let a2 = Arc::new(login(&server, dir.path(), "alice", "laptop").await);
    let b1 = Arc::new(login(&server, dir.path(), "bob", "phone").await);
    let c1 = Arc::new(login(&server, dir.path(), "carol", "tablet").await);

    // alice creates the room and invites bob, carol and her own second device.
    let room = a1.create_room().await.expect("create room");
    a1.invite(&room, "bob").await.expect("invite bob");
    a1.invite(&room, "carol").await.expect("invite carol");
    a1.invite(&room, "alice")
        .await
        .expect("invite alice's other device");
    for c in [&a2, &b1, &c1] {
        sync_until(c, |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Joined { room_id } if *room_id == room))
        })
        .await;
    }
    let members = a1.room(&room).await.expect("room").members;
    assert_eq!(members.len(), 4, "four devices are members: {members:?}");

    // a2 follows over WebSocket while everyone talks.
    let mut follow = a2.connect().await.expect("websocket");

    // 100 messages each way, from three senders at once.
    let mut senders = Vec::new();
    for (who, client) in [
        ("alice", a1.clone()),
        ("bob", b1.clone()),
        ("carol", c1.clone()),
    ] {
        let room = room.clone();
        senders.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..N {
                let ack = client
                    .send_text(&room, &format!("{who} {i}"))
                    .await
                    .expect("send");
                seqs.push(ack.seq);
            }
            seqs
        }));
    }
    let mut all_seqs = Vec::new();
    for s in senders {
        let seqs = s.await.expect("sender task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "acks increase per sender"
        );
        all_seqs.extend(seqs);
    }
    all_seqs.sort_unstable();
    all_seqs.dedup();
    assert_eq!(all_seqs.len(), 3 * N, "every message got its own seq");

    // The WebSocket follower sees all 300 in order, without gaps or duplicates.
    let mut live = Vec::new();
    let mut last_seq = 0;
    tokio::time::timeout(WAIT, async {
        while live.len() < 3 * N {
            match follow.next().await {
                Some(Ok(Event::Message {
                    room_id,
                    seq,
                    content,
                    ..
                })) if room_id == room => {
                    assert!(seq > last_seq, "seq order: {seq} after {last_seq}");
                    last_seq = seq;
                    live.push(content.display_text().to_string());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("subscription error: {e}"),
                None => panic!("subscription ended"),
            }
        }
    })
    .await
    .expect("all messages pushed in time");
    drop(follow);

    // Every device has all messages, each sender's in order.
    for c in [&a1, &b1, &c1] {
        sync_until(c, |_| true).await;
    }
    for (name, c) in [("a1", &a1), ("a2", &a2), ("b1", &b1), ("c1", &c1)] {
        let got = if name == "a2" {
            live.clone()
        } else {
            history_texts(c, &room).await
        };
        assert_eq!(got.len(), 3 * N, "{name} has every message");
        let mut per_sender: HashMap<String, Vec<usize>> = HashMap::new();
        for t in &got {
            let (who, i) = t.split_once(' ').expect("text shape");
            per_sender
                .entry(who.to_string())
                .or_default()
                .push(i.parse().expect("index"));
        }
        for (who, idx) in per_sender {
            assert_eq!(
                idx,
                (0..N).collect::<Vec<_>>(),
                "{name}: {who}'s messages in order"
            );
        }
    }
    let a1_hist: Vec<u64> = a1
        .history(&room)
        .await
        .expect("history")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(a1.history(&room).await.unwrap().len(), 3 * N);
    assert!(a1_hist.windows(2).all(|w| w[0] < w[1]));

    // carol is removed: her device cannot decrypt anything sent afterwards.
    let removal = a1.remove(&room, "carol").await.expect("remove carol");
    let after = a1
        .send_text(&room, "after carol left")
        .await
        .expect("send after removal");
    assert!(after.seq > removal.seq);
    let events = sync_until(&c1, |ev| {
        ev.iter().any(|e| matches!(e, Event::Removed { .. }))
    })
    .await;
    assert!(
        texts(&events, &room).is_empty(),
        "carol sees nothing after her removal"
    );
    let err = c1.sync().await.err();
    assert!(
        err.is_none(),
        "carol's sync still works (room marked removed)"
    );
    let store = tonari::store::Store::open_read_only(&server.database)
        .await
        .expect("open store read side");
    let raw_after = store
        .messages_between(&room, after.seq - 1, after.seq, 1)
        .await
        .expect("read ciphertext")
        .pop()
        .expect("message stored");
    assert!(
        c1.decrypt_raw(&room, &raw_after.data).is_err(),
        "a removed device cannot decrypt later messages"
    );
    let (status, body) = raw(
        reqwest::Method::GET,
        format!(
            "{}/v1/rooms/{room}/messages?after={}",
            server.url, removal.seq
        ),
        Some(&c1.testing_token()),
        None,
    )
    .await;
    assert_eq!(
        (status, code_of(&body)),
        (403, ErrorCode::NotAMember.as_str())
    );
    store.close().await;

    // bob adds a new device later; inviting bob again adds just that device.
    let b2 = login(&server, dir.path(), "bob", "laptop").await;
    a1.invite(&room, "bob").await.expect("add bob's new device");
    sync_until(&b2, |ev| {
        ev.iter().any(|e| matches!(e, Event::Joined { .. }))
    })
    .await;
    a1.send_text(&room, "welcome bob's laptop")
        .await
        .expect("send");
    b1.send_text(&room, "hello from bob's phone")
        .await
        .expect("send");
    let ev = sync_until(&b2, |ev| texts(ev, &room).len() >= 2).await;
    assert_eq!(
        texts(&ev, &room),
        vec![
            "welcome bob's laptop".to_string(),
            "hello from bob's phone".to_string()
        ]
    );
    let ev = sync_until(&a2, |ev| texts(ev, &room).len() >= 2).await;
    assert!(texts(&ev, &room).ends_with(&[
        "welcome bob's laptop".to_string(),
        "hello from bob's phone".to_string()
    ]));
    let members = b2.room(&room).await.expect("room").members;
    assert_eq!(members.len(), 4, "alice x2, bob x2: {members:?}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_can_leave_and_the_others_commit_it() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (d, mut others, room) = room_with(&server, dir.path(), "dora", &["eli"]).await;
    let e = others.remove(0);
    e.leave(&room).await.expect("leave request");
    // dora's sync sees the request and commits it.
    sync_until(&d, |ev| {
        ev.iter()
            .any(|x| matches!(x, Event::MembersChanged { removed, .. } if !removed.is_empty()))
    })
    .await;
    sync_until(&e, |ev| ev.iter().any(|x| matches!(x, Event::Left { .. }))).await;
    let info = d.server_rooms().await.expect("rooms");
    assert_eq!(info[0].member_devices, vec![d.device_id()]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_evicted_from_memory_reload_without_losing_anything() {
    let dir = tmp();
    // Only one room fits in memory: every switch evicts the other one.
    let server = TestServer::start_with(dir.path(), |c| c.room_cache_max = 1).await;
    let (a, mut others, room1) = room_with(&server, dir.path(), "gil", &["hana"]).await;
    let h = others.remove(0);
    let room2 = a.create_room().await.expect("second room");
    a.invite(&room2, "hana").await.expect("invite");
    sync_until(&h, |ev| {
        ev.iter()
            .any(|e| matches!(e, Event::Joined { room_id } if *room_id == room2))
    })
    .await;
    // Both rooms at once, from both members.
    let mut tasks = Vec::new();
    for (client, who) in [(a.clone(), "gil"), (h.clone(), "hana")] {
        for room in [room1.clone(), room2.clone()] {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..15 {
                    client
                        .send_text(&room, &format!("{who} {i}"))
                        .await
                        .expect("send");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("sender");
    }
    for c in [&a, &h] {
        sync_until(c, |_| true).await;
        for room in [&room1, &room2] {
            let got = history_texts(c, room).await;
            assert_eq!(got.len(), 30, "every message in {room}");
            for who in ["gil", "hana"] {
                let mine: Vec<String> =
                    got.iter().filter(|t| t.starts_with(who)).cloned().collect();
                assert_eq!(
                    mine,
                    (0..15).map(|i| format!("{who} {i}")).collect::<Vec<_>>()
                );
            }
        }
    }
    for room in [&room1, &room2] {
        let info = a
            .server_rooms()
            .await
            .expect("rooms")
            .into_iter()
            .find(|r| r.room_id == *room)
            .expect("room listed");
        assert_eq!(
            info.last_seq, 31,
            "one invite commit + 30 messages, gap-free"
        );
    }
    server.stop().await;
}
