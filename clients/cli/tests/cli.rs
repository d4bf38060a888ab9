//! The CLI as a person uses it: real `tonari-cli` processes against a real
//! server on 127.0.0.1:0.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonari::{App, Config};

const WAIT: Duration = Duration::from_secs(60);

fn cli(server: &str, dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tonari-cli"))
        .args(["--server", server, "--device-dir"])
        .arg(dir)
        .args(args)
        .env("TONARI_PASSWORD", "a long enough password")
        .stdin(Stdio::null())
        .output()
        .expect("run tonari-cli")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "tonari-cli failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_create_invite_send_follow_remove_leave() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: tmp.path().join("server"),
        registration: tonari::config::Registration::Open,
        totp_required_roles: Vec::new(),
        ..Config::default()
    };
    let app = App::build(config).await.expect("server");
    let url = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let (alice, bob, cy) = (
        tmp.path().join("alice"),
        tmp.path().join("bob"),
        tmp.path().join("cy"),
    );

    let url2 = url.clone();
    let (a2, b2, c2) = (alice.clone(), bob.clone(), cy.clone());
    let room = tokio::task::spawn_blocking(move || {
        for (dir, user) in [(&a2, "alice"), (&b2, "bob"), (&c2, "cyd")] {
            ok(cli(&url2, dir, &["register", user]));
            ok(cli(
                &url2,
                dir,
                &["login", user, "--device-name", "terminal"],
            ));
        }
        let room = ok(cli(&url2, &a2, &["create"])).trim().to_string();
        assert_eq!(room.len(), 32, "create prints the room id: {room}");
        ok(cli(&url2, &a2, &["invite", &room, "bob"]));
        ok(cli(&url2, &a2, &["invite", &room, "cyd"]));
        let seq = ok(cli(&url2, &a2, &["send", &room, "hello bob"]));
        assert!(
            seq.trim().parse::<u64>().is_ok(),
            "send prints the seq: {seq}"
        );
        room
    })
    .await
    .expect("cli steps");

    // bob follows the room and sees alice's message, then his own reply.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_tonari-cli"))
        .args(["--server", &url, "--device-dir"])
        .arg(&bob)
        .args(["follow", &room, "--history"])
        .env("TONARI_PASSWORD", "unused")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("follow");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let url2 = url.clone();
    let (b3, room2) = (bob.clone(), room.clone());
    let mut sent_reply = false;
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            seen.push(line.clone());
            if line.contains("alice: hello bob") && !sent_reply {
                sent_reply = true;
                let (u, b, r) = (url2.clone(), b3.clone(), room2.clone());
                tokio::task::spawn_blocking(move || {
                    eprintln!("reply: {}", ok(cli(&u, &b, &["send", &r, "hi from bob"])))
                })
                .await
                .expect("reply");
            }
            if line.contains("bob: hi from bob") {
                return;
            }
        }
        panic!("follow ended early: {seen:?}");
    })
    .await
    .expect("follow shows messages in time");
    follow.kill().await.expect("stop follow");

    let url2 = url.clone();
    tokio::task::spawn_blocking(move || {
        let rooms = ok(cli(&url2, &alice, &["rooms"]));
        assert!(rooms.contains(&room) && rooms.contains("cyd"), "{rooms}");
        ok(cli(&url2, &alice, &["remove", &room, "cyd"]));
        ok(cli(&url2, &cy, &["sync"]));
        let out = cli(&url2, &cy, &["send", &room, "still here?"]);
        assert!(!out.status.success(), "a removed member cannot send");
        assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
        ok(cli(&url2, &bob, &["leave", &room]));
        ok(cli(&url2, &alice, &["sync"]));
        let history = ok(cli(&url2, &alice, &["history", &room]));
        assert!(
            history.contains("alice: hello bob") && history.contains("bob: hi from bob"),
            "{history}"
        );
        let rooms = ok(cli(&url2, &alice, &["rooms"]));
        assert!(!rooms.contains("bob (device"), "bob left: {rooms}");
        // Help exists for every subcommand.
        for sub in [
            "register",
            "login",
            "logout",
            "rooms",
            "create",
            "invite",
            "send",
            "follow",
            "history",
            "remove",
            "leave",
            "sync",
            "totp-enroll",
            "totp-confirm",
            "policy",
            "org-create",
            "orgs",
            "invite-email",
            "invitations",
            "directory",
            "consent",
        ] {
            let help = ok(cli(&url2, &alice, &[sub, "--help"]));
            assert!(help.contains("Usage"), "{sub} --help");
        }
        let out = cli(&url2, &alice, &["send", "not-a-room", "x"]);
        assert!(!out.status.success());

        // The care-team commands: a pharmacist (open registration on this
        // test server), a care room for a patient, its policy, the directory.
        let pharm = alice.parent().expect("tmp").join("pharm");
        let reg = ok(cli(
            &url2,
            &pharm,
            &[
                "register",
                "ph-mori",
                "--role",
                "pharmacist",
                "--display-name",
                "Mori",
            ],
        ));
        assert!(reg.contains("role pharmacist"), "{reg}");
        ok(cli(&url2, &pharm, &["login", "ph-mori"]));
        let er = alice.parent().expect("tmp").join("er");
        ok(cli(
            &url2,
            &er,
            &["register", "er-ito", "--role", "emergency"],
        ));
        ok(cli(&url2, &er, &["login", "er-ito"]));
        let out = cli(&url2, &er, &["create", "--patient", "P-42"]);
        assert!(
            !out.status.success(),
            "emergency staff do not create care rooms"
        );
        let care = ok(cli(&url2, &alice, &["create", "--patient", "P-42"]))
            .trim()
            .to_string();
        let policy = ok(cli(&url2, &alice, &["policy", &care]));
        assert!(policy.contains("care room of patient P-42"), "{policy}");
        assert!(
            policy.contains("pharmacist    adds: pharmacist, dentist, therapist; removes: nobody"),
            "{policy}"
        );
        let invited = ok(cli(&url2, &alice, &["invite", &care, "ph-mori"]));
        assert!(invited.contains("invited ph-mori"), "{invited}");
        let out = cli(&url2, &pharm, &["remove", &care, "alice"]);
        assert!(
            !out.status.success(),
            "a pharmacist may not remove a doctor"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("policy_violation"));
        let found = ok(cli(
            &url2,
            &alice,
            &["directory", "mori", "--role", "pharmacist"],
        ));
        assert!(found.contains("ph-mori  \"Mori\"  pharmacist"), "{found}");
        let out = cli(
            &url2,
            &alice,
            &["invite-email", "x@example.org", "--role", "nurse"],
        );
        assert!(!out.status.success(), "no SMTP configured");
        assert!(String::from_utf8_lossy(&out.stderr).contains("e-mail is not set up"));
        let out = cli(&url2, &alice, &["consent", &care, "ph-mori"]);
        assert!(
            !out.status.success(),
            "a doctor does not consent for the patient"
        );
    })
    .await
    .expect("cli steps");

    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}
