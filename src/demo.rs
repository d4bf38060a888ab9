//! `tonari demo`: one command that starts a server on SQLite with a demo
//! organisation, a patient's care room with a doctor, a nurse, a care
//! manager, a pharmacist and a family member, the bots, and sample lab
//! results flowing in (HL7 v2.5 through the MLLP path, FHIR R4 through the
//! ingestion path), then prints how to log in with the CLI.
//!
//! Demo accounts are created directly in the store (no invitation e-mails),
//! TOTP is off and every demo password is [`PASSWORD`]: a local demo only.

use crate::bots;
use crate::config::Config;
use crate::store::care::{CreateUserError, NewUser};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tonari_sdk::Client;
use tonari_wire::{FamilyLink, OrgKind, Role, RoomSettings};

pub const PASSWORD: &str = "tonari-demo-pass";
pub const PATIENT_NID: &str = "P-DEMO-0001";
const WAIT: Duration = Duration::from_secs(60);

/// (username, display name, role)
const PEOPLE: &[(&str, &str, Role)] = &[
    ("ns-suzuki", "Suzuki Hana (nurse)", Role::Nurse),
    ("dr-sato", "Dr Sato Ken", Role::Doctor),
    ("cm-tanaka", "Tanaka Mika (care manager)", Role::CareManager),
    ("ph-ito", "Ito Jun (pharmacist)", Role::Pharmacist),
    ("yamada-taro", "Yamada Taro", Role::Patient),
    ("yamada-hanako", "Yamada Hanako (daughter)", Role::Family),
];

fn sample_hl7(key: &str) -> String {
    [
        format!("MSH|^~\\&|LABSYS|MINAMI-LAB^1.2.392.100495.20.3^ISO|TONARI|NET|20261120083000|{key}|ORU^R01^ORU_R01|DEMO-LAB-0001|P|2.5||||||UNICODE UTF-8"),
        format!("PID|1||12345^^^MINAMI-HOSP^MR~{PATIENT_NID}^^^TONARI^NI||山田^太郎||19450312|M"),
        "OBR|1|ORD-1|FIL-1|BLOOD^血液検査^L|||20261120080000".into(),
        "OBX|1|NM|2345-7^血糖^LN^3D010000001926101^グルコース^JC10||187|mg/dL|70-109|H|||F".into(),
        "OBX|2|NM|4548-4^HbA1c (NGSP)^LN^3D046000001906202^HbA1c^JC10||8.1|%|4.6-6.2|H|||F".into(),
        "OBX|3|NM|33914-3^eGFR^LN||42|mL/min/1.73m2|>=60|L|||F".into(),
        "OBX|4|NM|2823-3^カリウム^LN||6.1|mmol/L|3.5-5.0|HH|||F".into(),
    ]
    .join("\r")
        + "\r"
}

fn sample_fhir() -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:demo-patient", "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:tonari:network-id", "value": PATIENT_NID}]}},
            {"resource": {"resourceType": "Condition", "id": "demo-cond-1",
                "code": {"text": "2型糖尿病 (type 2 diabetes)"},
                "subject": {"reference": "urn:uuid:demo-patient"}}},
            {"resource": {"resourceType": "Condition", "id": "demo-cond-2",
                "code": {"text": "慢性腎臓病 G3b (CKD stage G3b)"},
                "subject": {"reference": "urn:uuid:demo-patient"}}},
            {"resource": {"resourceType": "MedicationStatement", "id": "demo-med-1", "status": "active",
                "medicationCodeableConcept": {"text": "メトホルミン塩酸塩錠 250mg"},
                "dosage": [{"text": "1回1錠 1日2回 朝夕食後"}],
                "subject": {"reference": "urn:uuid:demo-patient"}}},
            {"resource": {"resourceType": "AllergyIntolerance", "id": "demo-alg-1",
                "code": {"text": "ペニシリン (penicillin)"}, "criticality": "high",
                "patient": {"reference": "urn:uuid:demo-patient"}}},
            {"resource": {"resourceType": "Observation", "id": "demo-cre-1", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}], "text": "クレアチニン (creatinine)"},
                "subject": {"reference": "urn:uuid:demo-patient"},
                "effectiveDateTime": "2026-11-20T08:00:00+09:00",
                "valueQuantity": {"value": 1.42, "unit": "mg/dL"},
                "interpretation": [{"coding": [{"code": "H"}]}],
                "referenceRange": [{"low": {"value": 0.46}, "high": {"value": 0.79}}]}}
        ]
    })
}

async fn hash(password: &str) -> Result<String, String> {
    let p = password.to_string();
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::PasswordHasher as _;
        argon2::Argon2::default()
            .hash_password(p.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Run the demo until `shutdown` resolves.
pub async fn run(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let marker = config.data_dir.join("demo.json");
    let fresh = !marker.exists();
    let (key, entry) = match std::fs::read_to_string(&marker)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        Some(v) => (
            v["key"].as_str().unwrap_or_default().to_string(),
            crate::ingest::key_entry("demo-lab", v["key"].as_str().unwrap_or_default()),
        ),
        None => crate::ingest::new_key("demo-lab"),
    };
    config.ingest_api_keys.push(entry);
    config.bots_enabled = true;
    config.totp_required_roles.clear();
    let data_dir = config.data_dir.clone();
    let app = crate::App::build(config).await.map_err(|e| e.to_string())?;
    let state = app.state();
    let url = format!("http://{}", app.local_addr());
    let mllp = app.mllp_addr();
    let mut ready = app.bots_ready();

    if fresh {
        let org_id = state
            .store
            .create_org(
                "Minami Clinic (demo)",
                OrgKind::Clinic,
                crate::accounts::now_ms(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let hashed = hash(PASSWORD).await?;
        for (username, display, role) in PEOPLE {
            let user = NewUser {
                username,
                password_hash: &hashed,
                display_name: display,
                role: *role,
                org_id: role.is_professional().then_some(org_id).flatten(),
                network_id: (*role == Role::Patient).then(|| PATIENT_NID.to_string()),
                family: (*role == Role::Family).then(|| FamilyLink {
                    patient_network_id: PATIENT_NID.to_string(),
                    relationship: "daughter".into(),
                    legal_proxy: false,
                }),
            };
            match state
                .store
                .create_user(user, None, crate::accounts::now_ms())
                .await
            {
                Ok(_) | Err(CreateUserError::UsernameTaken) => {}
                Err(e) => return Err(format!("cannot create demo user {username}: {e:?}")),
            }
        }
    }

    let server = tokio::spawn(app.run_until_stopped(shutdown));
    tokio::time::timeout(WAIT, ready.wait_for(|n| *n >= 2))
        .await
        .map_err(|_| "the bots did not start in time".to_string())?
        .map_err(|_| "the server stopped".to_string())?;

    let devices = data_dir.join("devices");
    let room = if fresh {
        let room = setup_room(&url, &devices).await?;
        // Sample results: HL7 through the MLLP path, FHIR through ingestion.
        let ack =
            crate::ingest::mllp::handle_frame(&state.ingest, sample_hl7(&key).as_bytes()).await;
        if !ack.contains("MSA|AA|") {
            return Err("the sample HL7 message was not accepted".into());
        }
        let items =
            crate::ingest::fhir::items(&sample_fhir(), &state.ingest.network_id_system, "demo-lab")
                .map_err(|e| e.diagnostics)?;
        state
            .ingest
            .store("demo-lab", &items)
            .await
            .map_err(|e| e.to_string())?;
        wait_for_lab_cards(&devices.join("ns-suzuki"), &room, 2).await?;
        let marker_json = serde_json::json!({ "key": key, "room": room });
        std::fs::write(&marker, marker_json.to_string()).map_err(|e| e.to_string())?;
        room
    } else {
        std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["room"].as_str().map(String::from))
            .unwrap_or_default()
    };
    print_instructions(&url, mllp, &data_dir, &room, &key);
    match server.await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn login(url: &str, devices: &Path, username: &str) -> Result<Client, String> {
    Client::login(url, &devices.join(username), username, PASSWORD, "demo")
        .await
        .map_err(|e| format!("{username} cannot log in: {e}"))
}

async fn setup_room(url: &str, devices: &Path) -> Result<String, String> {
    let nurse = login(url, devices, "ns-suzuki").await?;
    for (u, _, _) in &PEOPLE[1..] {
        login(url, devices, u).await?;
    }
    let room = nurse
        .create_room_with(&RoomSettings::care_room(Some(PATIENT_NID.into())))
        .await
        .map_err(|e| format!("cannot create the room: {e}"))?;
    for who in [
        "dr-sato",
        "cm-tanaka",
        "ph-ito",
        bots::SUMMARY_BOT,
        bots::LAB_BOT,
    ] {
        nurse
            .invite(&room, who)
            .await
            .map_err(|e| format!("cannot add {who}: {e}"))?;
    }
    // The patient consents to their daughter joining; the nurse adds her.
    let patient = Client::open(&devices.join("yamada-taro")).map_err(|e| e.to_string())?;
    patient
        .sign_consent(&room, PATIENT_NID, "yamada-hanako", true)
        .await
        .map_err(|e| format!("consent failed: {e}"))?;
    nurse
        .invite(&room, "yamada-hanako")
        .await
        .map_err(|e| format!("cannot add the family member: {e}"))?;
    Ok(room)
}

async fn wait_for_lab_cards(dir: &Path, room: &str, n: usize) -> Result<(), String> {
    let nurse = Client::open(dir).map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tokio::time::timeout(WAIT, async {
        loop {
            tick.tick().await;
            let _ = nurse.sync().await;
            let count = nurse
                .history(room)
                .await
                .map(|h| {
                    h.iter()
                        .filter(|m| {
                            matches!(m.content.card(), Some(tonari_wire::Card::LabResults(_)))
                        })
                        .count()
                })
                .unwrap_or(0);
            if count >= n {
                return;
            }
        }
    })
    .await
    .map_err(|_| "the lab cards did not arrive in time".to_string())
}

fn print_instructions(
    url: &str,
    mllp: Option<std::net::SocketAddr>,
    data_dir: &Path,
    room: &str,
    key: &str,
) {
    let d = data_dir.display();
    println!(
        "\nTonari demo running at {url} (data in {d}/; Ctrl-C stops it)\n\
         \n\
         Care room {room} for patient {PATIENT_NID}:\n\
         \x20 ns-suzuki (nurse), dr-sato (doctor), cm-tanaka (care manager), ph-ito (pharmacist),\n\
         \x20 yamada-hanako (family, with the patient's consent), summary-bot, lab-bot (bots)\n\
         Sample lab results came in over HL7 v2 (MLLP) and FHIR R4; the lab bot posted them as cards.\n\
         \n\
         Read the room with the CLI (every demo password is {PASSWORD}):\n\
         \x20 tonari-cli --server {url} --device-dir {d}/devices/ns-suzuki sync\n\
         \x20 tonari-cli --server {url} --device-dir {d}/devices/ns-suzuki history {room}\n\
         \x20 tonari-cli --server {url} --device-dir {d}/devices/ns-suzuki send {room} /summary\n\
         \x20 tonari-cli --server {url} --device-dir {d}/devices/ns-suzuki follow {room}\n\
         (the same with devices/dr-sato, devices/cm-tanaka, devices/ph-ito or devices/yamada-hanako)\n\
         \n\
         Send more results (source demo-lab, API key {key}):\n\
         \x20 curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/fhir+json' \\\n\
         \x20      --data @tests/fixtures/fhir/observation-glucose.json {url}/v1/ingest/fhir\n\
         \x20 (that sample is for patient P-2001, who has no room: it is held, see {url}/v1/ingest/held)\n\
         \x20 HL7 v2.5 ORU^R01 over MLLP: {} with the key in MSH-8 and PID-3 ...^^^TONARI\n",
        mllp.map(|a| a.to_string())
            .unwrap_or_else(|| "(off: set mllp_listen)".into())
    );
}
