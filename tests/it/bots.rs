//! Bots and clinical ingestion end to end: HL7 v2.5 ORU^R01 over a real
//! MLLP TCP connection and FHIR R4 over HTTP, the lab and summary bots as
//! real MLS members, the members' SDKs decrypting the cards, ACK codes, the
//! batched content-free e-mail notice, the ciphertext canary, held results
//! for unknown patients, and random / truncated input.

use super::care::{invitation, invite_and_join, world};
use super::common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonari_sdk::{Client, Content, Event};
use tonari_wire::{Card, LabCard, LabFlag, Role, RoomSettings, SummaryCard};

pub const SOURCE: &str = "minami-lab";
pub const KEY: &str = "tik_test_0123456789abcdef0123456789abcdef";

pub fn ingest_config(c: &mut tonari::Config) {
    c.bots_enabled = true;
    c.ingest_api_keys = vec![tonari::ingest::key_entry(SOURCE, KEY)];
    c.mllp_listen = "127.0.0.1:0".into();
    // Long enough that the results of one test land in one batch.
    c.notify_batch_secs = 4;
}

/// A fixture with the API key filled in; HL7 segments end in `\r`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("fixture");
    let text = text.replace("{KEY}", KEY);
    if name.ends_with(".hl7") {
        text.trim_end().replace('\n', "\r") + "\r"
    } else {
        text
    }
}

/// One MLLP exchange on an open connection: the ACK's text.
pub async fn mllp_exchange(stream: &mut TcpStream, msg: &[u8]) -> Option<String> {
    stream
        .write_all(&tonari::ingest::mllp::wrap(msg))
        .await
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(frame) = tonari::ingest::mllp::take_frame(&mut buf) {
                return Some(String::from_utf8(frame).expect("ACK is UTF-8"));
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("ACK in time")
}

/// Send one message on a new MLLP connection; the ACK's text.
pub async fn mllp_send(addr: SocketAddr, msg: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("MLLP connects");
    mllp_exchange(&mut s, msg.as_bytes()).await.expect("an ACK")
}

/// (MSA-1, MSA-2, MSA-3) of an ACK.
pub fn msa(ack: &str) -> (String, String, String) {
    let line = ack
        .split('\r')
        .find(|l| l.starts_with("MSA|"))
        .unwrap_or_else(|| panic!("no MSA in {ack:?}"));
    let f: Vec<&str> = line.split('|').collect();
    let g = |i: usize| f.get(i).copied().unwrap_or("").to_string();
    (g(1), g(2), g(3))
}

pub async fn post_fhir(server: &TestServer, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/ingest/fhir", server.url))
        .header("content-type", "application/fhir+json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let v = resp.json().await.unwrap_or(Value::Null);
    (status, v)
}

fn diagnostics(v: &Value) -> String {
    v["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Add a bot to a room, once its account has a device with key packages
/// (the bots log in while the server starts).
pub async fn add_bot(client: &Client, room: &str, bot: &str) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last = String::new();
    let done = tokio::time::timeout(WAIT, async {
        loop {
            tick.tick().await;
            match client.invite(room, bot).await {
                Ok(_) => return,
                Err(e) if e.to_string().contains("already in the room") => return,
                Err(e) => last = e.to_string(),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the bot could not be added: {last}");
}

/// Cards in the local history of a room (none before the device joined it).
pub async fn history_cards(client: &Client, room: &str) -> Vec<Card> {
    client
        .history(room)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.content.card().cloned())
        .collect()
}

/// Sync until the room's history (all cards so far, whether seen by a sync
/// or while the client was doing something else) satisfies `pred`.
pub async fn cards_until(
    client: &Client,
    room: &str,
    mut pred: impl FnMut(&[Card]) -> bool,
) -> Vec<Card> {
    let mut cards = Vec::new();
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            cards = history_cards(client, room).await;
            if pred(&cards) {
                return;
            }
            let events = client.sync().await.expect("sync");
            if events.is_empty() {
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
    assert!(reached.is_ok(), "condition not reached; cards: {cards:?}");
    cards
}

pub fn labs_of(cards: &[Card]) -> Vec<LabCard> {
    cards
        .iter()
        .filter_map(|c| match c {
            Card::LabResults(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

pub fn summaries_of(cards: &[Card]) -> Vec<SummaryCard> {
    cards
        .iter()
        .filter_map(|c| match c {
            Card::Summary(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn file_bytes(path: &Path) -> Vec<u8> {
    let mut out = std::fs::read(path).unwrap_or_default();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    out.extend(std::fs::read(Path::new(&wal)).unwrap_or_default());
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn items_in_store(server: &TestServer) -> i64 {
    let store = tonari::store::bots::BotStore::open(&server.data_dir.join("bots.sqlite3"))
        .await
        .expect("open the bots' store");
    let n = store.count_items().await.expect("count");
    store.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_results_over_mllp_reach_members_with_acks_notice_and_canary() {
    let dir = tmp();
    let root = dir.path();
    let mut w = world(root, ingest_config).await;
    let mllp = w.server.mllp.expect("MLLP listens");

    // A care manager in the room (result notices by default) with an address.
    let (cm, _) = invite_and_join(
        &w.server,
        &mut w.sink,
        root,
        &w.nurse,
        invitation("mika@care.example", Role::CareManager),
        "mika",
    )
    .await;
    w.nurse
        .invite(&w.room, "mika")
        .await
        .expect("add the care manager");
    sync_until(&cm, |ev| {
        ev.iter()
            .any(|e| matches!(e, Event::Joined { room_id } if *room_id == w.room))
    })
    .await;

    // The nurse adds both bots; the summary bot posts its card on joining.
    add_bot(&w.nurse, &w.room, "summary-bot").await;
    add_bot(&w.nurse, &w.room, "lab-bot").await;
    let seen = cards_until(&w.nurse, &w.room, |c| !summaries_of(c).is_empty()).await;
    let summary = summaries_of(&seen).remove(0);
    assert_eq!(summary.patient_network_id, super::care::NID);
    assert!(
        summary.care_team.iter().any(|m| m == "hana (nurse)"),
        "{summary:?}"
    );
    // The daughter joins with the patient's consent: the bots' clients
    // verify that commit like every member's and stay in the room.
    w.patient
        .sign_consent(&w.room, super::care::NID, "yuki", true)
        .await
        .expect("consent");
    w.nurse
        .invite(&w.room, "yuki")
        .await
        .expect("add the daughter");
    let room = w.nurse.room(&w.room).await.expect("room");
    assert!(
        room.members
            .iter()
            .any(|m| m.username == "lab-bot" && m.role == Some(Role::Bot)),
        "the lab bot is a visible member with role bot"
    );

    // Notices: care managers by default; the doctor turns them on.
    assert!(cm.notice_prefs().await.expect("prefs").effective);
    assert!(!w.nurse.notice_prefs().await.expect("prefs").effective);
    let p = w.doctor.set_result_notices(Some(true)).await.expect("on");
    assert_eq!((p.results, p.effective), (Some(true), true));

    // A second patient's room with the same care manager and the lab bot.
    let room2 = w
        .nurse
        .create_room_with(&RoomSettings::care_room(Some("P-778800".into())))
        .await
        .expect("second room");
    w.nurse
        .invite(&room2, "mika")
        .await
        .expect("add the care manager");
    add_bot(&w.nurse, &room2, "lab-bot").await;

    // A lab system sends an ORU^R01 over MLLP: AA, echoing the control id.
    let msg = fixture("hl7/oru_r01_labs_ja.hl7");
    let ack = mllp_send(mllp, &msg).await;
    let (code, ctl, _) = msa(&ack);
    assert_eq!((code.as_str(), ctl.as_str()), ("AA", "LAB-0001"), "{ack}");
    assert!(ack.starts_with("MSH|^~\\&|TONARI|TONARI|LABSYS|"), "{ack}");
    assert!(!ack.contains(KEY), "the ACK never echoes the key");

    // The care manager's SDK receives and decrypts the lab card.
    let seen = cards_until(&cm, &w.room, |c| !labs_of(c).is_empty()).await;
    let card = labs_of(&seen).remove(0);
    assert_eq!(card.patient_network_id, super::care::NID);
    assert_eq!(card.source_org, "MINAMI-LAB");
    assert_eq!(card.specimen_time.as_deref(), Some("20261120080000"));
    assert_eq!(card.results.len(), 5);
    let glu = &card.results[0];
    assert_eq!(glu.test_name, "血糖");
    assert_eq!(glu.loinc.as_deref(), Some("2345-7"));
    assert_eq!(glu.jlac10.as_deref(), Some("3D010000001926101"));
    assert_eq!(glu.value, "187.3");
    assert_eq!(glu.unit.as_deref(), Some("mg/dL"));
    assert_eq!(glu.reference_range.as_deref(), Some("70-109"));
    assert_eq!(glu.flag, Some(LabFlag::High));
    assert_eq!(glu.specimen_time.as_deref(), Some("20261120080000"));
    assert_eq!(card.results[1].flag, Some(LabFlag::High), "first of H~A");
    assert_eq!(card.results[2].flag, Some(LabFlag::Low));
    assert_eq!(card.results[3].value, "採血時刻 08&00 空腹時 | 再検予定");
    assert_eq!(card.results[4].flag, Some(LabFlag::CriticalHigh));
    let text = Content::Card {
        card: Card::LabResults(card.clone()),
    }
    .display_text()
    .to_string();
    assert!(text.contains("CRITICAL"), "{text}");
    assert!(
        text.contains("血糖 [LOINC 2345-7, JLAC10 3D010000001926101]: 187.3 mg/dL H (ref 70-109)"),
        "{text}"
    );

    // The same message again: AA (already accepted), no second card.
    let (code, ctl, text) = msa(&mllp_send(mllp, &msg).await);
    assert_eq!((code.as_str(), ctl.as_str()), ("AA", "LAB-0001"));
    assert!(text.contains("duplicate"), "{text}");
    // The next message's card arrives after it: the first came once.
    let ack = mllp_send(mllp, &fixture("hl7/oru_r01_creatinine.hl7")).await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let seen = cards_until(&cm, &w.room, |c| labs_of(c).len() >= 2).await;
    let labs = labs_of(&seen);
    assert_eq!(
        labs.len(),
        2,
        "one card per message, the duplicate made none"
    );
    assert_eq!(labs[1].results[0].value, "1.42");

    // The second patient's result goes to the second room only.
    let other = fixture("hl7/oru_r01_creatinine.hl7")
        .replace("P-778899", "P-778800")
        .replace("LAB-0002", "LAB-0010");
    assert_eq!(msa(&mllp_send(mllp, &other).await).0, "AA");
    let seen = cards_until(&cm, &room2, |c| !labs_of(c).is_empty()).await;
    assert_eq!(labs_of(&seen)[0].patient_network_id, "P-778800");
    assert_eq!(labs_of(&history_cards(&cm, &w.room).await).len(), 2);

    // Bad content: AE. Wrong key, not HL7, not ORU: AR. Nothing stored.
    let before = items_in_store(&w.server).await;
    let (code, ctl, _) = msa(&mllp_send(mllp, &fixture("hl7/oru_r01_no_network_id.hl7")).await);
    assert_eq!((code.as_str(), ctl.as_str()), ("AE", "LAB-0003"));
    let wrong_key = msg
        .replace(KEY, "tik_wrong")
        .replace("LAB-0001", "LAB-0004");
    let (code, ctl, _) = msa(&mllp_send(mllp, &wrong_key).await);
    assert_eq!((code.as_str(), ctl.as_str()), ("AR", "LAB-0004"));
    assert_eq!(
        msa(&mllp_send(mllp, "hello, this is not HL7").await).0,
        "AR"
    );
    let adt = msg
        .replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")
        .replace("LAB-0001", "LAB-0005");
    let (code, ctl, _) = msa(&mllp_send(mllp, &adt).await);
    assert_eq!((code.as_str(), ctl.as_str()), ("AR", "LAB-0005"));
    assert_eq!(items_in_store(&w.server).await, before);

    // The care manager gets one content-free notice for the batch: both
    // rooms, each linked once (per language), not one mail per result.
    // The doctor (notices on, only in the first room) gets one too.
    let mut mails = vec![w.sink.next_mail().await, w.sink.next_mail().await];
    mails.sort_by(|a, b| a.to.cmp(&b.to));
    assert_eq!(mails[0].to, vec!["ken@minami.example".to_string()]);
    assert_eq!(mails[1].to, vec!["mika@care.example".to_string()]);
    let link = |r: &str| format!("https://tonari.example/#/rooms/{r}");
    assert_eq!(mails[0].text.matches(&link(&w.room)).count(), 2);
    assert!(!mails[0].text.contains(&link(&room2)));
    let mail = mails.remove(1);
    for r in [&w.room, &room2] {
        assert_eq!(mail.text.matches(&link(r)).count(), 2, "{}", mail.text);
    }
    assert!(w.sink.is_empty(), "no mail for the nurse");
    for secret in [
        "187.3",
        "1.42",
        "血糖",
        "クレアチニン",
        "HbA1c",
        "mg/dL",
        super::care::NID,
        "山田",
        "MINAMI-LAB",
    ] {
        assert!(!mail.raw.contains(secret), "mail leaks {secret}");
        assert!(!mail.text.contains(secret), "mail leaks {secret}");
    }

    // Nothing is held for this source.
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/ingest/held", w.server.url),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["held"].as_array().map(Vec::len), Some(0), "{body}");

    // Canary: the delivery database holds ciphertext only; the values live
    // in the bots' store, and patient names are stored nowhere.
    let data_dir = w.server.data_dir.clone();
    let database = w.server.database.clone();
    w.server.stop().await;
    let main_db = database_bytes(&database);
    let bots_db = file_bytes(&data_dir.join("bots.sqlite3"));
    assert!(!main_db.is_empty() && !bots_db.is_empty());
    for canary in ["187.3", "再検予定", "クレアチニン", "2345-7", "mmol/L"] {
        assert!(!contains(&main_db, canary), "main database holds {canary}");
    }
    assert!(
        contains(&bots_db, "再検予定"),
        "the bots' store holds the results"
    );
    assert!(!contains(&bots_db, "山田"), "patient names are not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_results_are_idempotent_validated_held_and_summarised() {
    let dir = tmp();
    let root = dir.path();
    let server = TestServer::start_with(root, ingest_config).await;
    register(&server, "doc").await;
    let doc = login(&server, root, "doc", "phone").await;
    let room = doc
        .create_room_with(&RoomSettings::care_room(Some("P-2001".into())))
        .await
        .expect("room");
    add_bot(&doc, &room, "lab-bot").await;
    add_bot(&doc, &room, "summary-bot").await;

    // Authentication and validation.
    let glucose = fixture("fhir/observation-glucose.json");
    let (status, body) = post_fhir(&server, None, &glucose).await;
    assert_eq!(status, 401);
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(post_fhir(&server, Some("tik_wrong"), &glucose).await.0, 401);
    let (status, body) = post_fhir(
        &server,
        Some(KEY),
        r#"{"resourceType":"Encounter","id":"e1","status":"finished"}"#,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], "not-supported");
    assert!(diagnostics(&body).contains("Encounter"), "{body}");
    assert_eq!(post_fhir(&server, Some(KEY), "{not json").await.0, 400);
    let typed = reqwest::Client::new()
        .post(format!("{}/v1/ingest/fhir/Condition", server.url))
        .bearer_auth(KEY)
        .body(glucose.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(typed.status().as_u16(), 422, "type in the URL must match");
    let no_subject = glucose.replace("\"subject\"", "\"subjectX\"");
    let (status, body) = post_fhir(&server, Some(KEY), &no_subject).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(items_in_store(&server).await, 0);

    // An Observation, then a transaction Bundle with three results: two cards.
    let (status, body) = post_fhir(&server, Some(KEY), &glucose).await;
    assert_eq!(
        (status, diagnostics(&body)),
        (200, "stored 1, duplicates 0".into())
    );
    let (status, body) = post_fhir(&server, Some(KEY), &glucose).await;
    assert_eq!(
        (status, diagnostics(&body)),
        (200, "stored 0, duplicates 1".into())
    );
    let bundle = fixture("fhir/bundle-labs.json");
    let (status, body) = post_fhir(&server, Some(KEY), &bundle).await;
    assert_eq!(
        (status, diagnostics(&body)),
        (200, "stored 1, duplicates 0".into())
    );
    let (status, body) = post_fhir(&server, Some(KEY), &bundle).await;
    assert_eq!(
        (status, diagnostics(&body)),
        (200, "stored 0, duplicates 1".into())
    );

    let seen = cards_until(&doc, &room, |c| labs_of(c).len() >= 2).await;
    let labs = labs_of(&seen);
    let glu = &labs[0].results[0];
    assert_eq!(glu.loinc.as_deref(), Some("15074-8"));
    assert_eq!(
        (glu.value.as_str(), glu.unit.as_deref()),
        ("6.3", Some("mmol/l"))
    );
    assert_eq!(glu.reference_range.as_deref(), Some("3.1-6.2"));
    assert_eq!(glu.flag, Some(LabFlag::High));
    assert_eq!(labs[0].source_org, "A. Langeveld");
    let set = &labs[1];
    assert_eq!(set.results.len(), 3);
    assert_eq!(set.source_org, SOURCE);
    let hba1c = &set.results[0];
    assert_eq!(hba1c.test_name, "HbA1c");
    assert_eq!(hba1c.loinc.as_deref(), Some("4548-4"));
    assert_eq!(hba1c.jlac10.as_deref(), Some("3D046000001906202"));
    assert_eq!(hba1c.value, "7.9");
    assert_eq!(set.results[1].reference_range.as_deref(), Some(">=60"));
    assert_eq!(set.results[1].flag, Some(LabFlag::Low));
    assert_eq!(set.results[2].flag, Some(LabFlag::CriticalHigh));

    // Problems, medications and allergies; `/summary` in the room.
    let (status, body) = post_fhir(&server, Some(KEY), &fixture("fhir/bundle-summary.json")).await;
    assert_eq!(
        (status, diagnostics(&body)),
        (200, "stored 3, duplicates 0".into())
    );
    doc.send_text(&room, "/summary").await.expect("send");
    let seen = cards_until(&doc, &room, |c| {
        summaries_of(c).iter().any(|s| !s.problems.is_empty())
    })
    .await;
    let s = summaries_of(&seen)
        .into_iter()
        .find(|s| !s.problems.is_empty())
        .expect("summary");
    assert_eq!(s.problems, vec!["2型糖尿病".to_string()]);
    assert_eq!(
        s.medications,
        vec!["メトホルミン塩酸塩錠 250mg, 1回1錠 1日2回 朝夕食後".to_string()]
    );
    assert_eq!(
        s.allergies,
        vec!["ペニシリン (criticality high)".to_string()]
    );
    assert!(
        s.recent_labs
            .iter()
            .any(|r| r.test_name == "HbA1c" && r.value == "7.9")
    );
    assert!(s.care_team.iter().any(|m| m == "lab-bot (bot)"), "{s:?}");
    // Still two lab cards: the duplicates made none.
    let history = doc.history(&room).await.expect("history");
    let lab_count = history
        .iter()
        .filter(|m| matches!(m.content.card(), Some(Card::LabResults(_))))
        .count();
    assert_eq!(lab_count, 2);

    // A patient with no room: held and reported, then posted once a room of
    // that patient has the lab bot.
    let unknown = glucose
        .replace("P-2001", "P-3003")
        .replace("\"f001\"", "\"f002\"");
    assert_eq!(post_fhir(&server, Some(KEY), &unknown).await.0, 200);
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/ingest/held", server.url),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let held = body["held"].as_array().cloned().unwrap_or_default();
    assert_eq!(held.len(), 1, "{body}");
    assert_eq!(held[0]["patient_network_id"], "P-3003");
    assert!(held[0].get("value").is_none());
    let (status, _) = raw(
        reqwest::Method::GET,
        format!("{}/v1/ingest/held", server.url),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    let room2 = doc
        .create_room_with(&RoomSettings::care_room(Some("P-3003".into())))
        .await
        .expect("room");
    add_bot(&doc, &room2, "lab-bot").await;
    let seen = cards_until(&doc, &room2, |c| !labs_of(c).is_empty()).await;
    assert_eq!(labs_of(&seen)[0].patient_network_id, "P-3003");
    let data_dir = server.data_dir.clone();
    let database = server.database.clone();
    server.stop().await;
    // Canary: values only in the bots' store; names nowhere.
    let main_db = database_bytes(&database);
    let bots_db = file_bytes(&data_dir.join("bots.sqlite3"));
    for canary in ["mmol/l", "HbA1c", "メトホルミン", "ペニシリン", "15074-8"] {
        assert!(!contains(&main_db, canary), "main database holds {canary}");
    }
    assert!(contains(&bots_db, "メトホルミン"));
    for name in ["Heuvel", "鈴木", "花子", "Langeveld"] {
        assert!(!contains(&main_db, name), "main database holds a name");
    }
    assert!(!contains(&bots_db, "Heuvel") && !contains(&bots_db, "鈴木"));
}

/// A small deterministic generator (no extra dependency).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_truncated_input_is_refused_without_panic_or_storage() {
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| {
        ingest_config(c);
        c.mllp_max_frame_bytes = 64 * 1024;
    })
    .await;
    let mllp = server.mllp.expect("MLLP");
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let valid = fixture("hl7/oru_r01_labs_ja.hl7");
    let alphabet: Vec<char> = "MSHPIDOBXR|^~\\&\r\n0123456789ab 血糖.-".chars().collect();

    let mut inputs: Vec<Vec<u8>> = Vec::new();
    // Truncations at every 5th character (a control id per input, so an
    // accepted prefix is stored once).
    let chars: Vec<char> = valid.chars().collect();
    for (i, cut) in (0..chars.len()).step_by(5).enumerate() {
        let s: String = chars[..cut].iter().collect();
        inputs.push(s.replace("LAB-0001", &format!("CUT-{i}")).into_bytes());
    }
    // Random text from HL7's alphabet, random bytes, byte mutations.
    for _ in 0..150 {
        let len = rng.below(400);
        let s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        inputs.push(format!("MSH|^~\\&|{s}").into_bytes());
        let bytes: Vec<u8> = (0..rng.below(300))
            .map(|_| (rng.next() & 0xff) as u8)
            .filter(|b| *b != 0x0B && *b != 0x1C)
            .collect();
        inputs.push(bytes);
        let mut m = valid.clone().into_bytes();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(m.len());
            m[at] = match (rng.next() & 0xff) as u8 {
                0x0B | 0x1C => b'|',
                b => b,
            };
        }
        inputs.push(m);
    }

    let mut stream = TcpStream::connect(mllp).await.expect("connect");
    let mut accepted = 0;
    for input in &inputs {
        let before = items_in_store(&server).await;
        let ack = match mllp_exchange(&mut stream, input).await {
            Some(a) => a,
            None => panic!("the connection closed on input {input:?}"),
        };
        let (code, _, _) = msa(&ack);
        assert!(["AA", "AE", "AR"].contains(&code.as_str()), "{ack}");
        let after = items_in_store(&server).await;
        if code == "AA" {
            accepted += 1;
        } else {
            assert_eq!(after, before, "a refused message was stored: {ack}");
        }
    }
    assert!(accepted > 0 && accepted < inputs.len());

    // An oversized frame: AR, and the connection is closed.
    let mut s = TcpStream::connect(mllp).await.expect("connect");
    let mut big = vec![0x0Bu8];
    big.extend(std::iter::repeat_n(b'A', 70 * 1024));
    s.write_all(&big).await.expect("write");
    let mut buf = Vec::new();
    let ack = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("answered");
    assert!(ack.is_ok());
    let frame = tonari::ingest::mllp::take_frame(&mut buf).expect("an ACK frame");
    assert_eq!(msa(&String::from_utf8_lossy(&frame)).0, "AR");

    // FHIR: truncations and type confusions get 4xx and store nothing.
    let bundle = fixture("fhir/bundle-labs.json");
    let before = items_in_store(&server).await;
    for cut in (0..bundle.len()).step_by(97) {
        if !bundle.is_char_boundary(cut) {
            continue;
        }
        let (status, _) = post_fhir(&server, Some(KEY), &bundle[..cut]).await;
        assert_eq!(status, 400);
    }
    let v: Value = serde_json::from_str(&bundle).expect("json");
    let junk = [
        Value::Null,
        Value::from(7),
        Value::from("x"),
        Value::Array(vec![]),
        serde_json::json!({}),
    ];
    let paths: &[&[&str]] = &[
        &["type"],
        &["entry"],
        &["entry", "0", "resource"],
        &["entry", "1", "resource", "valueQuantity"],
        &["entry", "1", "resource", "code"],
        &["entry", "1", "resource", "subject"],
        &["entry", "2", "resource", "resourceType"],
        &["entry", "0", "resource", "identifier"],
    ];
    for p in paths {
        for j in &junk {
            let mut m = v.clone();
            let mut at = &mut m;
            for k in *p {
                at = match k.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*k],
                };
            }
            *at = j.clone();
            let (status, body) = post_fhir(&server, Some(KEY), &m.to_string()).await;
            assert!(
                status == 422
                    || status == 400
                    || (status == 200 && diagnostics(&body).starts_with("stored 0")),
                "{p:?} = {j}: {status} {body}"
            );
        }
    }
    assert_eq!(items_in_store(&server).await, before);
    let (status, _) = raw(
        reqwest::Method::GET,
        format!("{}{}", server.url, tonari_wire::paths::HEALTH),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Metrics count by protocol and outcome, nothing else.
    let metrics = reqwest::get(format!("{}{}", server.url, tonari_wire::paths::METRICS))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"tonari_ingest_total{protocol="hl7",outcome="AR"}"#,
        r#"tonari_ingest_total{protocol="fhir",outcome="400"}"#,
        r#"tonari_ingest_total{protocol="fhir",outcome="422"}"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(!metrics.contains("血糖") && !metrics.contains("P-778899"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_run_as_a_separate_process() {
    let dir = tmp();
    let root = dir.path();
    let server = TestServer::start_with(root, |c| {
        ingest_config(c);
        c.bots_enabled = false;
    })
    .await;
    register(&server, "doc").await;
    let doc = login(&server, root, "doc", "phone").await;
    let mut bots = tokio::process::Command::new(env!("CARGO_BIN_EXE_tonari"))
        .args(["bots", "--server", &server.url, "--poll-secs", "1"])
        .env("TONARI_DATA_DIR", &server.data_dir)
        .env(
            "TONARI_DATABASE_URL",
            match &server.database {
                tonari::store::Database::Postgres(u) => u.clone(),
                tonari::store::Database::Sqlite(_) => String::new(),
            },
        )
        .env("TONARI_LOG_FILTER", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tonari bots");
    let room = doc
        .create_room_with(&RoomSettings::care_room(Some("P-2001".into())))
        .await
        .expect("room");
    add_bot(&doc, &room, "lab-bot").await;
    let (status, _) = post_fhir(
        &server,
        Some(KEY),
        &fixture("fhir/observation-glucose.json"),
    )
    .await;
    assert_eq!(status, 200);
    let seen = cards_until(&doc, &room, |c| !labs_of(c).is_empty()).await;
    assert_eq!(labs_of(&seen)[0].results[0].value, "6.3");
    let room_info = doc.room(&room).await.expect("room");
    assert!(
        room_info
            .members
            .iter()
            .any(|m| m.username == "lab-bot" && m.role == Some(Role::Bot))
    );
    bots.kill().await.expect("stop the bots");
    server.stop().await;
}

/// `tonari demo` as a user runs it: the printed room holds the lab cards and
/// the summary for the care manager's device, and SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_command_sets_up_a_room_with_cards() {
    use tokio::io::AsyncBufReadExt;
    let dir = tmp();
    let data = dir.path().join("demo");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tonari"))
        .arg("demo")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
        .env_remove("TONARI_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tonari demo");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("HL7 v2.5 ORU^R01 over MLLP") {
                return;
            }
        }
        panic!("the demo exited: {printed}");
    })
    .await
    .expect("the demo starts in time");
    let url = printed
        .split_whitespace()
        .skip_while(|w| *w != "at")
        .nth(1)
        .expect("url")
        .to_string();
    let room = printed
        .split_whitespace()
        .skip_while(|w| *w != "room")
        .nth(1)
        .expect("room id")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{printed}");
    assert!(printed.contains("--device-dir"), "{printed}");
    assert!(printed.contains("tonari-demo-pass"), "{printed}");

    let cm = Client::open(&data.join("devices/cm-tanaka")).expect("the care manager's device");
    let cards = cards_until(&cm, &room, |c| {
        labs_of(c).len() >= 2 && !summaries_of(c).is_empty()
    })
    .await;
    let labs = labs_of(&cards);
    assert_eq!(labs[0].patient_network_id, tonari::demo::PATIENT_NID);
    let members = cm.room(&room).await.expect("room").members;
    for who in [
        "ns-suzuki",
        "dr-sato",
        "cm-tanaka",
        "ph-ito",
        "yamada-hanako",
        "lab-bot",
        "summary-bot",
    ] {
        assert!(
            members.iter().any(|m| m.username == who),
            "{who} in the room"
        );
    }
    drop(cm);
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the demo stops in time")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

/// The bots' store and device state lost (a fresh data_dir next to a kept
/// database): the server resets the bot accounts' passwords, the bots log in
/// again as new devices and work once added to the room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_recover_from_a_lost_bots_store() {
    let dir = tmp();
    let root = dir.path();
    let server = TestServer::start_with(root, ingest_config).await;
    register(&server, "doc").await;
    let doc = login(&server, root, "doc", "phone").await;
    let room = doc
        .create_room_with(&RoomSettings::care_room(Some("P-2001".into())))
        .await
        .expect("room");
    add_bot(&doc, &room, "lab-bot").await;
    let data_dir = server.data_dir.clone();
    let addr = server.addr;
    server.stop().await;
    for f in ["bots.sqlite3", "bots.sqlite3-wal", "bots.sqlite3-shm"] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }
    std::fs::remove_dir_all(data_dir.join("bots")).expect("remove the bots' devices");

    // start_with waits until both bots are logged in again.
    let server = TestServer::start_with(root, |c| {
        ingest_config(c);
        c.listen = addr;
    })
    .await;
    add_bot(&doc, &room, "lab-bot").await;
    let (status, _) = post_fhir(
        &server,
        Some(KEY),
        &fixture("fhir/observation-glucose.json"),
    )
    .await;
    assert_eq!(status, 200);
    let seen = cards_until(&doc, &room, |c| !labs_of(c).is_empty()).await;
    assert_eq!(labs_of(&seen)[0].results[0].value, "6.3");
    server.stop().await;
}
