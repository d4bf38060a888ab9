//! Server and client restarts lose nothing and duplicate nothing.

use super::common::*;
use tonari_sdk::{Client, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_server_and_client_restart() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (k, mut others, room) = room_with(&server, dir.path(), "kim", &["lee"]).await;
    let l = others.remove(0);

    let mut expected = Vec::new();
    for i in 0..10 {
        let t = format!("before {i}");
        k.send_text(&room, &t).await.expect("send");
        expected.push(t);
    }
    // lee reads the first batch, then the server goes away.
    sync_until(&l, |ev| texts(ev, &room).len() >= 10).await;
    for i in 0..10 {
        let t = format!("unread {i}");
        k.send_text(&room, &t).await.expect("send");
        expected.push(t);
    }
    let addr = server.addr;
    server.stop().await;

    // A new App on the same data dir (and port, so stored client URLs work).
    let server = TestServer::start_at(dir.path(), addr).await;
    for i in 0..10 {
        let t = format!("after {i}");
        k.send_text(&room, &t).await.expect("send after restart");
        expected.push(t);
    }

    // lee's client process restarts too: reopen from disk, resume over WebSocket.
    drop(l);
    let l = Client::open(&dir.path().join("lee-phone")).expect("reopen device");
    let mut sub = l.connect().await.expect("websocket");
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < 20 {
            match sub.next().await {
                Some(Ok(Event::Message { content, .. })) => {
                    got.push(content.display_text().to_string())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("subscription error: {e}"),
                None => panic!("subscription ended"),
            }
        }
    })
    .await
    .expect("resumed in time");
    assert_eq!(got, expected[10..].to_vec(), "resume: no gap, no duplicate");
    drop(sub);
    let all = history_texts(&l, &room).await;
    assert_eq!(
        all, expected,
        "local history is exactly the acked messages in order"
    );
    let seqs: Vec<u64> = l
        .history(&room)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    server.stop().await;
}
