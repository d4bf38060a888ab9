//! End-to-end tests against a running server. Skipped unless
//! `TONARI_TEST_SERVER` (e.g. `http://127.0.0.1:8480`) is set.

use std::sync::Arc;
use std::time::Duration;
use tonari_sdk::{Client, Content, Event, SdkError, room_status};

const PW: &str = "a long test password";

fn server() -> Option<String> {
    std::env::var("TONARI_TEST_SERVER").ok()
}

fn uniq(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}{}", n % 1_000_000_000_000)
}

struct User {
    name: String,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn user(server: &str, name: &str) -> User {
    let name = uniq(name);
    Client::register(server, &name, PW).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = Client::login(server, dir.path(), &name, PW, "test")
        .await
        .unwrap();
    User {
        name,
        client,
        _dir: dir,
    }
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { content, .. } => Some(content.display_text().to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn basic_flow_restart_and_remove() {
    let Some(s) = server() else { return };
    let alice = user(&s, "alice").await;
    let bob = user(&s, "bob").await;
    let room = alice.client.create_room().await.unwrap();
    let ack = alice.client.invite(&room, &bob.name).await.unwrap();
    assert_eq!(ack.seq, 1);
    alice.client.send_text(&room, "hello").await.unwrap();
    let ev = bob.client.sync().await.unwrap();
    assert!(matches!(&ev[0], Event::Joined { room_id } if *room_id == room));
    assert_eq!(texts(&ev), vec!["hello"]);

    // Restart bob from disk.
    let dir = bob._dir.path().to_path_buf();
    let bob2 = Client::open(&dir).unwrap();
    assert_eq!(bob2.device_id(), bob.client.device_id());
    bob2.send_text(&room, "back").await.unwrap();
    let ev = alice.client.sync().await.unwrap();
    assert_eq!(texts(&ev), vec!["back"]);
    let hist = bob2.history(&room).await.unwrap();
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[1].sender.username, bob.name);

    // Remove bob; he sees the commit, then cannot read later messages.
    alice.client.remove(&room, &bob.name).await.unwrap();
    let ev = bob2.sync().await.unwrap();
    assert!(
        ev.iter().any(|e| matches!(e, Event::Removed { .. })),
        "{ev:?}"
    );
    let r = bob2.room(&room).await.unwrap();
    assert_eq!(r.status, room_status::REMOVED);
    let ack = alice.client.send_text(&room, "secret").await.unwrap();
    let envs = alice
        .client
        .fetch_envelopes(&room, ack.seq - 1)
        .await
        .unwrap();
    assert!(bob2.decrypt_raw(&room, &envs[0].message.0).is_err());
    let err = bob2.send_text(&room, "x").await.unwrap_err();
    assert!(matches!(err, SdkError::RoomNotActive { .. }), "{err:?}");
}

#[tokio::test]
async fn subscription_and_leave() {
    let Some(s) = server() else { return };
    let alice = user(&s, "alice").await;
    let bob = user(&s, "bob").await;
    let carol = user(&s, "carol").await;
    let room = alice.client.create_room().await.unwrap();
    let mut sub = bob.client.connect().await.unwrap();
    alice.client.invite(&room, &bob.name).await.unwrap();
    alice.client.send_text(&room, "live").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("timeout")
            .unwrap()
            .unwrap();
        got.push(e);
    }
    assert!(matches!(&got[0], Event::Joined { .. }), "{got:?}");
    assert!(
        matches!(&got[1], Event::Message { content: Content::Text { body }, .. } if body == "live")
    );

    // carol joins; bob leaves; alice's sync commits the leave.
    alice.client.invite(&room, &carol.name).await.unwrap();
    carol.client.sync().await.unwrap();
    let ack = bob.client.leave(&room).await.unwrap();
    assert!(ack.seq > 0);
    let ev = alice.client.sync().await.unwrap();
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::MembersChanged { removed, .. } if removed.len() == 1)),
        "{ev:?}"
    );
    let mut left = false;
    for _ in 0..10 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("timeout")
            .unwrap()
            .unwrap();
        if matches!(e, Event::Left { .. }) {
            left = true;
            break;
        }
    }
    assert!(left);
    let ev = carol.client.sync().await.unwrap();
    assert!(
        ev.iter().any(|e| matches!(e, Event::MembersChanged { .. })),
        "{ev:?}"
    );
    carol.client.send_text(&room, "after").await.unwrap();
    assert_eq!(texts(&alice.client.sync().await.unwrap()), vec!["after"]);
}

#[tokio::test]
async fn concurrent_senders_and_inviters() {
    let Some(s) = server() else { return };
    let alice = user(&s, "alice").await;
    let bob = user(&s, "bob").await;
    let carol = user(&s, "carol").await;
    let dave = user(&s, "dave").await;
    let room = alice.client.create_room().await.unwrap();
    alice.client.invite(&room, &bob.name).await.unwrap();
    bob.client.sync().await.unwrap();
    let a = Arc::new(alice.client.clone());
    let b = Arc::new(bob.client.clone());
    let (r1, r2, cn, dn) = (
        room.clone(),
        room.clone(),
        carol.name.clone(),
        dave.name.clone(),
    );
    let a2 = a.clone();
    let b2 = b.clone();
    let t1 = tokio::spawn(async move {
        for i in 0..5 {
            a2.send_text(&r1, &format!("a{i}")).await.unwrap();
        }
        a2.invite(&r1, &cn).await.unwrap();
    });
    let t2 = tokio::spawn(async move {
        b2.invite(&r2, &dn).await.unwrap();
        for i in 0..5 {
            b2.send_text(&r2, &format!("b{i}")).await.unwrap();
        }
    });
    t1.await.unwrap();
    t2.await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    carol.client.sync().await.unwrap();
    dave.client.sync().await.unwrap();
    let ack = dave.client.send_text(&room, "dave").await.unwrap();
    for c in [&alice.client, &bob.client, &carol.client] {
        c.sync().await.unwrap();
        let h = c.history(&room).await.unwrap();
        assert_eq!(h.last().unwrap().seq, ack.seq);
        assert_eq!(h.last().unwrap().content, Content::text("dave"));
    }
    assert_eq!(alice.client.room(&room).await.unwrap().members.len(), 4);
}

#[tokio::test]
async fn forged_member_is_refused() {
    let Some(s) = server() else { return };
    let alice = user(&s, "alice").await;
    let bob = user(&s, "bob").await;
    let carol = user(&s, "carol").await;
    let room = alice.client.create_room().await.unwrap();
    alice.client.invite(&room, &bob.name).await.unwrap();
    bob.client.sync().await.unwrap();
    let kp = Client::forge_key_package(carol.client.identity()).unwrap();
    let (commit, _welcome) = alice.client.craft_add_commit_unchecked(&room, &kp).unwrap();
    let err = bob.client.process_raw(&room, &commit).await.unwrap_err();
    assert!(
        matches!(&err, SdkError::UntrustedMember { device_id, .. } if *device_id == carol.client.device_id()),
        "{err:?}"
    );
    assert_eq!(
        bob.client.room(&room).await.unwrap().status,
        room_status::UNTRUSTED
    );
    alice.client.clear_pending(&room).unwrap();
    // Alice is unaffected and can go on.
    alice.client.send_text(&room, "ok").await.unwrap();
}

#[tokio::test]
async fn multi_device_user() {
    let Some(s) = server() else { return };
    let alice = user(&s, "alice").await;
    let bob = user(&s, "bob").await;
    let dir2 = tempfile::tempdir().unwrap();
    let bob_phone = Client::login(&s, dir2.path(), &bob.name, PW, "phone")
        .await
        .unwrap();
    assert_ne!(bob_phone.device_id(), bob.client.device_id());
    // Re-login of the same directory keeps the device.
    let again = Client::login(&s, dir2.path(), &bob.name, PW, "phone")
        .await
        .unwrap();
    assert_eq!(again.device_id(), bob_phone.device_id());
    let room = alice.client.create_room().await.unwrap();
    alice.client.invite(&room, &bob.name).await.unwrap();
    alice.client.send_text(&room, "both").await.unwrap();
    assert_eq!(texts(&bob.client.sync().await.unwrap()), vec!["both"]);
    assert_eq!(texts(&bob_phone.sync().await.unwrap()), vec!["both"]);
    bob_phone.send_text(&room, "from phone").await.unwrap();
    assert_eq!(texts(&bob.client.sync().await.unwrap()), vec!["from phone"]);
}
