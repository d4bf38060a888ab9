//! No silent member adds: unknown device keys are refused by the server and
//! by clients.

use super::common::*;
use tonari_sdk::SdkError;
use tonari_wire::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_device_key_is_refused_by_server_and_client() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (f, mut others, room) = room_with(&server, dir.path(), "fay", &["gus"]).await;
    let g = others.remove(0);
    register(&server, "hal").await;
    let h = login(&server, dir.path(), "hal", "phone").await;
    let before = f.server_rooms().await.expect("rooms");

    // A key package that claims hal's identity with a key the directory does not have.
    let forged = tonari_sdk::testing::forge_key_package(h.identity()).expect("forge");
    let (commit, welcome) = f.craft_add_commit_unchecked(&room, &forged).expect("craft");

    // Server side: refused, nothing changes.
    let err = f
        .testing_submit(&room, "forged-add", &commit, Some(&welcome))
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::UnknownDeviceKey), "{err}");
    assert_eq!(
        f.server_rooms().await.expect("rooms"),
        before,
        "room unchanged"
    );

    // Client side: gus is fed the crafted commit directly and refuses the epoch.
    let epoch = g.epoch(&room).expect("epoch");
    let err = g.process_raw(&room, &commit).await.unwrap_err();
    assert!(matches!(err, SdkError::UntrustedMember { .. }), "{err}");
    assert_eq!(g.epoch(&room).expect("epoch"), epoch, "epoch not trusted");

    // Uploading such a key package is refused too.
    let err = h.testing_upload_key_package(&forged).await.unwrap_err();
    assert!(err.is_code(ErrorCode::UnknownDeviceKey), "{err}");

    f.clear_pending(&room).expect("clear");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_claimed_once_and_devices_told_when_low() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    register(&server, "ivy").await;
    register(&server, "jon").await;
    let i = login(&server, dir.path(), "ivy", "phone").await;
    let j = login(&server, dir.path(), "jon", "phone").await;
    let start = j.key_package_count().await.expect("count").available;
    assert!(start > 0);
    // Two concurrent claims never get the same key package.
    let mut tasks = Vec::new();
    for _ in 0..start {
        tasks.push(i.testing_claim("jon"));
    }
    let results = futures_util::future::join_all(tasks).await;
    let mut seen = std::collections::HashSet::new();
    for r in results {
        for (_, kp) in r.expect("claim") {
            assert!(seen.insert(kp), "a key package was handed out twice");
        }
    }
    assert_eq!(seen.len() as u32, start);
    let count = j.key_package_count().await.expect("count");
    assert_eq!(count.available, 0);
    assert!(count.low, "the device is told it runs low");
    let err = i.testing_claim("jon").await;
    assert!(
        err.map(|v| v.is_empty()).unwrap_or(true),
        "nothing left to claim"
    );
    let topped = j.top_up_key_packages().await.expect("top up");
    assert!(!topped.low);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_server_cannot_fully_check_is_refused_by_members() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let (f, mut others, room) = room_with(&server, dir.path(), "ike", &["jun"]).await;
    let g = others.remove(0);
    register(&server, "kai").await;
    let _k = login(&server, dir.path(), "kai", "phone").await;

    // A real commit adding a registered device, with its membership tag (the
    // last bytes, which need epoch secrets to check) altered.
    let kp = f.testing_claim("kai").await.expect("claim").remove(0).1;
    let (mut commit, welcome) = f.craft_add_commit_unchecked(&room, &kp).expect("craft");
    let last = commit.len() - 1;
    commit[last] ^= 0x01;
    // The server's checks pass (signature, epoch, tree, directory)...
    f.testing_submit(&room, "bad-tag", &commit, Some(&welcome))
        .await
        .expect("the server cannot see the bad tag");
    // ...but the member refuses the epoch and marks the room untrusted.
    let epoch = g.epoch(&room).expect("epoch");
    let err = g.sync().await.unwrap_err();
    assert!(matches!(err, SdkError::UntrustedCommit { .. }), "{err}");
    assert_eq!(g.room(&room).await.expect("room").status, "untrusted");
    assert_eq!(
        g.epoch(&room).expect("epoch"),
        epoch,
        "the new epoch is not trusted"
    );
    let err = g.send_text(&room, "still talking?").await.unwrap_err();
    assert!(matches!(err, SdkError::RoomNotActive { .. }), "{err}");
    server.stop().await;
}
