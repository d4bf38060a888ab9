//! The care-team model end to end: the operator's console invitation,
//! organisations, e-mail invitations through a real SMTP server, the
//! directory, patient rooms, consent (grant, refusal without it,
//! revocation), TOTP required by role, and the audit entries of it all.

use super::common::*;
use std::path::Path;
use tonari_sdk::{Client, Event, SdkError};
use tonari_wire::{
    CreateInvitation, ErrorCode, Grounds, OrgKind, RegisterRequest, Role, RoomSettings,
};

/// The patient of the care room in these tests.
pub const NID: &str = "P-778899";

pub fn invitation(email: &str, role: Role) -> CreateInvitation {
    CreateInvitation {
        email: email.to_string(),
        role,
        org_id: None,
        patient_network_id: None,
        relationship: None,
        legal_proxy: false,
        room_id: None,
    }
}

/// Register with an invitation code.
pub async fn register_with_code(
    server: &TestServer,
    username: &str,
    display_name: &str,
    code: &str,
) -> Result<tonari_wire::RegisterResponse, SdkError> {
    Client::register_with(
        &server.url,
        &RegisterRequest {
            username: username.to_string(),
            password: PASSWORD.to_string(),
            invitation_code: Some(code.to_string()),
            display_name: Some(display_name.to_string()),
            role: None,
        },
    )
    .await
}

/// `inviter` invites by e-mail; the invitee registers with the mailed code
/// and logs in. Returns the new client and the mail.
pub async fn invite_and_join(
    server: &TestServer,
    sink: &mut SmtpSink,
    root: &Path,
    inviter: &Client,
    req: CreateInvitation,
    username: &str,
) -> (Client, Mail) {
    let to = req.email.clone();
    let role = req.role;
    inviter.invite_by_email(&req).await.expect("invite");
    let mail = sink.next_mail().await;
    assert_eq!(mail.to, vec![to]);
    let reg = register_with_code(server, username, username, &mail.code())
        .await
        .expect("register with the code");
    assert_eq!(reg.role, role);
    (login(server, root, username, "phone").await, mail)
}

/// The operator's first admin, from the server console.
pub async fn operator(server: &TestServer, root: &Path) -> Client {
    let config = tonari::Config {
        data_dir: server.data_dir.clone(),
        database_url: match &server.database {
            tonari::store::Database::Postgres(u) => u.clone(),
            tonari::store::Database::Sqlite(_) => String::new(),
        },
        ..tonari::Config::default()
    };
    let (org, code, _) =
        tonari::care::console_admin_invitation(&config, "Tonari Operator", OrgKind::Operator)
            .await
            .expect("console invitation");
    assert_eq!(org.kind, OrgKind::Operator);
    register_with_code(server, "operator", "Operator", &code)
        .await
        .expect("operator registers");
    login(server, root, "operator", "phone").await
}

/// A clinic with an admin, a nurse and a doctor; a care room for the
/// patient NID created by the nurse with the doctor in it; the patient and
/// their daughter registered (not in the room).
pub struct World {
    pub server: TestServer,
    pub sink: SmtpSink,
    pub op: Client,
    pub admin: Client,
    pub nurse: Client,
    pub doctor: Client,
    pub patient: Client,
    pub daughter: Client,
    pub room: String,
    pub org_id: i64,
}

pub async fn world(root: &Path, tweak: impl FnOnce(&mut tonari::Config)) -> World {
    let mut sink = SmtpSink::start().await;
    let smtp = sink.url.clone();
    let server = TestServer::start_care(root, |c| {
        c.smtp_url = smtp;
        c.public_url = "https://tonari.example".into();
        c.totp_required_roles.clear();
        tweak(c);
    })
    .await;
    let op = operator(&server, root).await;
    let org = op
        .create_org("Minami Clinic", OrgKind::Clinic)
        .await
        .expect("org");
    let mut req = invitation("admin@minami.example", Role::Admin);
    req.org_id = Some(org.org_id);
    let (admin, _) = invite_and_join(&server, &mut sink, root, &op, req, "minami-admin").await;
    let (nurse, _) = invite_and_join(
        &server,
        &mut sink,
        root,
        &admin,
        invitation("hana@minami.example", Role::Nurse),
        "hana",
    )
    .await;
    let (doctor, _) = invite_and_join(
        &server,
        &mut sink,
        root,
        &nurse,
        invitation("ken@minami.example", Role::Doctor),
        "ken",
    )
    .await;
    let room = nurse
        .create_room_with(&RoomSettings::care_room(Some(NID.into())))
        .await
        .expect("care room");
    nurse.invite(&room, "ken").await.expect("add doctor");
    sync_until(&doctor, |ev| {
        ev.iter().any(|e| matches!(e, Event::Joined { .. }))
    })
    .await;
    let mut req = invitation("tanaka@home.example", Role::Patient);
    req.patient_network_id = Some(NID.into());
    let (patient, _) = invite_and_join(&server, &mut sink, root, &nurse, req, "tanaka").await;
    let mut req = invitation("yuki@home.example", Role::Family);
    req.patient_network_id = Some(NID.into());
    req.relationship = Some("daughter".into());
    req.room_id = Some(room.clone());
    let (daughter, _) = invite_and_join(&server, &mut sink, root, &nurse, req, "yuki").await;
    World {
        server,
        sink,
        op,
        admin,
        nurse,
        doctor,
        patient,
        daughter,
        room,
        org_id: org.org_id,
    }
}

fn err_code(e: &SdkError) -> String {
    e.kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_are_mailed_single_use_and_carry_no_patient_data() {
    let dir = tmp();
    let mut w = world(dir.path(), |_| {}).await;

    // Registration is by invitation only.
    let err = Client::register(&w.server.url, "walk-in", PASSWORD)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::InvitationRequired), "{err}");

    // An invitation mail: code and link, nothing about the patient or room.
    let mut req = invitation("sora@home.example", Role::Family);
    req.patient_network_id = Some(NID.into());
    req.relationship = Some("grandson".into());
    req.room_id = Some(w.room.clone());
    w.nurse.invite_by_email(&req).await.expect("invite");
    let mail = w.sink.next_mail().await;
    let code = mail.code();
    assert!(mail.subject.contains("Tonari"), "{}", mail.subject);
    assert!(
        mail.text
            .contains("https://tonari.example/#/register?code=")
    );
    assert!(mail.text.contains("招待コード"));
    for secret in [
        NID,
        w.room.as_str(),
        "tanaka",
        "Tanaka",
        "grandson",
        "daughter",
    ] {
        assert!(!mail.raw.contains(secret), "mail leaks {secret}");
        assert!(!mail.text.contains(secret), "mail leaks {secret}");
    }
    // The code works once.
    register_with_code(&w.server, "sora", "Sora", &code)
        .await
        .expect("first use");
    let err = register_with_code(&w.server, "sora2", "Sora", &code)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::InvitationInvalid), "{err}");
    let err = register_with_code(&w.server, "guess", "G", "00112233445566778899aabbccddeeff")
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::InvitationInvalid), "{err}");

    // An expired code is refused (the invitation is aged in the database).
    w.nurse
        .invite_by_email(&invitation("late@minami.example", Role::Pharmacist))
        .await
        .expect("a nurse invites a pharmacist colleague");
    let late = w.sink.next_mail().await.code();
    exec_sql(
        &w.server.database,
        "UPDATE invitations SET expires_ms = 1 WHERE used_by IS NULL",
    )
    .await;
    let err = register_with_code(&w.server, "late", "Late", &late)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::InvitationInvalid), "{err}");

    // Who may invite whom.
    let refused = [
        (
            &w.nurse,
            invitation("x@x.example", Role::Admin),
            ErrorCode::Forbidden,
        ),
        (
            &w.nurse,
            invitation("x@x.example", Role::Bot),
            ErrorCode::Forbidden,
        ),
        (
            &w.nurse,
            invitation("x@x.example", Role::Emergency),
            ErrorCode::Forbidden,
        ),
        (
            &w.daughter,
            invitation("x@x.example", Role::Nurse),
            ErrorCode::Forbidden,
        ),
        (
            &w.nurse,
            invitation("not an address", Role::Nurse),
            ErrorCode::InvalidRequest,
        ),
        (
            &w.nurse,
            invitation("x@x.example", Role::Patient),
            ErrorCode::InvalidRequest,
        ),
    ];
    for (who, req, code) in refused {
        let err = who.invite_by_email(&req).await.unwrap_err();
        assert!(
            err.is_code(code),
            "{:?} inviting {:?}: {err}",
            who.username(),
            req.role
        );
    }
    let mut other_org = invitation("x@x.example", Role::Nurse);
    other_org.org_id = Some(1); // the operator's organisation
    let err = w.admin.invite_by_email(&other_org).await.unwrap_err();
    assert!(err.is_code(ErrorCode::Forbidden), "{err}");
    let err = w
        .admin
        .create_org("Kita Pharmacy", OrgKind::Pharmacy)
        .await
        .unwrap_err();
    assert!(
        err.is_code(ErrorCode::Forbidden),
        "only the operator creates orgs: {err}"
    );
    // A patient invites their own family (no e-mail was sent for refusals).
    assert!(w.sink.is_empty(), "refused invitations send no mail");
    let mut own = invitation("son@home.example", Role::Family);
    own.patient_network_id = Some(NID.into());
    own.relationship = Some("son".into());
    w.patient
        .invite_by_email(&own)
        .await
        .expect("patient invites family");
    w.sink.next_mail().await;
    let mut proxy = own.clone();
    proxy.legal_proxy = true;
    let err = w.patient.invite_by_email(&proxy).await.unwrap_err();
    assert!(err.is_code(ErrorCode::Forbidden), "{err}");

    let orgs = w.op.orgs().await.expect("orgs");
    assert_eq!(orgs.len(), 2);

    // The directory: people by name, role and organisation.
    let found = w
        .nurse
        .search_directory(Some("HANA"), None, None)
        .await
        .expect("search");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].role, Role::Nurse);
    assert_eq!(found[0].org.as_ref().map(|o| o.org_id), Some(w.org_id));
    assert_eq!(found[0].devices.len(), 1);
    let doctors = w
        .nurse
        .search_directory(None, Some(Role::Doctor), Some(w.org_id))
        .await
        .expect("search by role");
    let names: Vec<&str> = doctors.iter().map(|d| d.username.as_str()).collect();
    assert_eq!(names, ["ken"]);
    let err = w
        .daughter
        .search_directory(Some("a"), None, None)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::Forbidden), "{err}");
    let yuki = w.nurse.user_devices("yuki").await.expect("entry");
    assert_eq!(yuki.role, Role::Family);
    let link = yuki.family_of.expect("family link");
    assert_eq!(
        (
            link.patient_network_id.as_str(),
            link.relationship.as_str(),
            link.legal_proxy
        ),
        (NID, "daughter", false)
    );

    // Another patient's network id is hidden from this patient's family,
    // their own patient's is not (their clients verify consents with it).
    let mut other = invitation("other@home.example", Role::Patient);
    other.patient_network_id = Some("P-000111".into());
    w.nurse.invite_by_email(&other).await.expect("invite");
    let code = w.sink.next_mail().await.code();
    register_with_code(&w.server, "other-patient", "Other", &code)
        .await
        .expect("register");
    let seen = w
        .daughter
        .user_devices("other-patient")
        .await
        .expect("entry");
    assert_eq!((seen.role, seen.network_id), (Role::Patient, None));
    let own = w.daughter.user_devices("tanaka").await.expect("entry");
    assert_eq!(own.network_id.as_deref(), Some(NID));
    let by_nurse = w.nurse.user_devices("other-patient").await.expect("entry");
    assert_eq!(by_nurse.network_id.as_deref(), Some("P-000111"));

    // The nurse sees who accepted.
    let sent = w.nurse.invitations().await.expect("invitations");
    let accepted: Vec<_> = sent
        .iter()
        .filter(|i| i.status == "accepted")
        .filter_map(|i| i.username.clone())
        .collect();
    for name in ["ken", "tanaka", "yuki", "sora"] {
        assert!(accepted.iter().any(|a| a == name), "{name} in {accepted:?}");
    }
    assert!(sent.iter().any(|i| i.status == "expired"));

    // The audit log: the console invitation and every invitation, no
    // addresses, and the chain is intact.
    let db_path = w.server.database.clone();
    let entries = w.server.stop_and_read_audit().await;
    let count = |ev: &str| entries.iter().filter(|e| e.event.event == ev).count();
    assert_eq!(count("org_created"), 2);
    assert!(count("invitation_created") >= 8);
    assert!(count("invitation_accepted") >= 6);
    assert!(
        entries
            .iter()
            .all(|e| !e.event.details.contains('@') && !e.event.subject.contains('@')),
        "no e-mail addresses in the audit log"
    );
    let verified = tonari::audit::verify_database(&db_path)
        .await
        .expect("read");
    assert!(verified.is_ok(), "audit chain intact: {verified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_needs_the_patients_consent_and_revocation_removes_them() {
    let dir = tmp();
    let w = world(dir.path(), |_| {}).await;
    let epoch = w.nurse.epoch(&w.room).expect("epoch");

    // Without consent: the server refuses and nothing changes...
    let err = w.nurse.invite(&w.room, "yuki").await.unwrap_err();
    assert!(err.is_code(ErrorCode::PolicyViolation), "{err}");
    assert_eq!(w.nurse.epoch(&w.room).expect("epoch"), epoch);
    assert!(
        w.nurse
            .complete_invitations()
            .await
            .expect("complete")
            .is_empty()
    );
    // ...and so does every member's client, fed the same commit directly.
    let (commit, _) = w
        .nurse
        .testing_craft_commit(&w.room, Some("yuki"), None)
        .await
        .expect("craft");
    w.doctor.sync().await.expect("sync");
    let err = w
        .doctor
        .testing_review_commit(&w.room, &commit)
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::PolicyViolation { .. }), "{err}");
    w.nurse.clear_pending(&w.room).expect("clear");

    // Consent from someone who is not the patient is refused.
    let err = w
        .doctor
        .sign_consent(&w.room, NID, "yuki", true)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::ConsentInvalid), "{err}");

    // The patient consents from their own device; the daughter joins.
    w.patient
        .sign_consent(&w.room, NID, "yuki", true)
        .await
        .expect("consent");
    let added = w.nurse.complete_invitations().await.expect("complete");
    assert_eq!(added, ["yuki"]);
    sync_until(&w.daughter, |ev| {
        ev.iter().any(|e| matches!(e, Event::Joined { .. }))
    })
    .await;
    let seen = sync_until(&w.doctor, |ev| {
        ev.iter().any(|e| matches!(e, Event::MembersChanged { added, .. } if added.iter().any(|a| a.username == "yuki")))
    })
    .await;
    let grounds = seen
        .iter()
        .find_map(|e| match e {
            Event::MembersChanged { grounds, .. } if !grounds.is_empty() => Some(grounds.clone()),
            _ => None,
        })
        .expect("grounds");
    assert!(
        grounds.iter().all(|(_, g)| matches!(g, Grounds::Consent { signer_user_id, .. } if *signer_user_id == w.patient.user_id())),
        "the doctor sees the patient's consent as grounds: {grounds:?}"
    );
    w.nurse
        .send_text(&w.room, "Dad ate well today")
        .await
        .expect("send");
    sync_until(&w.daughter, |ev| {
        texts(ev, &w.room).contains(&"Dad ate well today".to_string())
    })
    .await;

    // The patient revokes: until the daughter is removed, no other commit
    // passes; any member may remove her on those grounds (here the doctor,
    // whose own rule would also allow it, is not needed: the nurse does).
    w.patient
        .revoke_consent(&w.room, NID, "yuki")
        .await
        .expect("revoke");
    let (commit, _) = w
        .doctor
        .testing_craft_commit(&w.room, None, Some("hana"))
        .await
        .expect("craft");
    let err = w
        .doctor
        .testing_submit(&w.room, "blocked", &commit, None)
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::PolicyViolation), "{err}");
    w.doctor.clear_pending(&w.room).expect("clear");
    w.nurse
        .remove(&w.room, "yuki")
        .await
        .expect("remove on revocation");
    let seen = sync_until(&w.doctor, |ev| {
        ev.iter()
            .any(|e| matches!(e, Event::MembersChanged { removed, .. } if !removed.is_empty()))
    })
    .await;
    assert!(seen.iter().any(|e| matches!(e,
        Event::MembersChanged { grounds, .. }
            if grounds.iter().any(|(_, g)| matches!(g, Grounds::ConsentRevoked { .. })))));
    sync_until(&w.daughter, |ev| {
        ev.iter().any(|e| matches!(e, Event::Removed { .. }))
    })
    .await;
    w.nurse
        .send_text(&w.room, "after the revocation")
        .await
        .expect("send");
    sync_until(&w.doctor, |ev| {
        texts(ev, &w.room).contains(&"after the revocation".to_string())
    })
    .await;
    w.daughter.sync().await.expect("sync");
    assert!(
        !history_texts(&w.daughter, &w.room)
            .await
            .contains(&"after the revocation".to_string()),
        "the daughter reads nothing after her removal"
    );
    assert_eq!(err_code(&err), "policy_violation");

    let entries = w.server.stop_and_read_audit().await;
    let events: Vec<&str> = entries.iter().map(|e| e.event.event.as_str()).collect();
    for ev in [
        "consent_granted",
        "consent_revoked",
        "room_commit_refused",
        "room_members_changed",
    ] {
        assert!(events.contains(&ev), "{ev} audited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nurse_must_enrol_totp_before_anything_else() {
    let dir = tmp();
    let mut sink = SmtpSink::start().await;
    let smtp = sink.url.clone();
    // Production defaults: TOTP required for every professional role.
    let server = TestServer::start_care(dir.path(), |c| c.smtp_url = smtp).await;
    let op = operator(&server, dir.path()).await;
    assert!(op.needs_totp_enrollment());
    let err = op.orgs().await.unwrap_err();
    assert!(err.is_code(ErrorCode::TotpEnrollmentRequired), "{err}");
    let secret = op.totp_enroll().await.expect("enrol").secret_base32;
    op.totp_confirm(&totp_code(&secret, 0))
        .await
        .expect("confirm");
    assert!(!op.needs_totp_enrollment());
    let org = op
        .create_org("Higashi Home Care", OrgKind::HomeCareAgency)
        .await
        .expect("org");
    // The operator brings in the agency's admin, who enrols TOTP too and
    // invites a nurse.
    let mut req = invitation("boss@higashi.example", Role::Admin);
    req.org_id = Some(org.org_id);
    op.invite_by_email(&req).await.expect("op invites an admin");
    let code = sink.next_mail().await.code();
    register_with_code(&server, "higashi-admin", "Boss", &code)
        .await
        .expect("register");
    let admin = login(&server, dir.path(), "higashi-admin", "phone").await;
    let secret = admin.totp_enroll().await.expect("enrol").secret_base32;
    admin
        .totp_confirm(&totp_code(&secret, 0))
        .await
        .expect("confirm");
    admin
        .invite_by_email(&invitation("mai@higashi.example", Role::Nurse))
        .await
        .expect("admin invites a nurse");
    let code = sink.next_mail().await.code();
    register_with_code(&server, "mai", "Mai", &code)
        .await
        .expect("register");

    let nurse = login(&server, dir.path(), "mai", "phone").await;
    assert!(nurse.needs_totp_enrollment());
    for err in [
        nurse.server_rooms().await.unwrap_err(),
        nurse.create_room().await.unwrap_err(),
        nurse.key_package_count().await.unwrap_err(),
    ] {
        assert!(err.is_code(ErrorCode::TotpEnrollmentRequired), "{err}");
    }
    let (status, _) = raw(
        reqwest::Method::GET,
        format!("{}/v1/ws", server.url),
        Some(&nurse.testing_token()),
        None,
    )
    .await;
    assert_eq!(status, 403, "no WebSocket before TOTP");
    let secret = nurse.totp_enroll().await.expect("enrol").secret_base32;
    let now = totp_code(&secret, 0);
    let err = nurse.totp_confirm(&wrong_code(&now)).await.unwrap_err();
    assert!(err.is_code(ErrorCode::TotpInvalid), "{err}");
    nurse.totp_confirm(&now).await.expect("confirm");
    assert!(!nurse.needs_totp_enrollment());
    assert_eq!(
        nurse.key_package_count().await.expect("count").available,
        tonari_sdk::KEY_PACKAGE_TARGET,
        "key packages went up once TOTP was on"
    );
    nurse.create_room().await.expect("now the nurse works");

    // Later logins need a fresh code.
    let laptop = dir.path().join("mai-laptop");
    let err = Client::login(&server.url, &laptop, "mai", PASSWORD, "laptop")
        .await
        .unwrap_err();
    assert!(err.is_code(ErrorCode::TotpRequired), "{err}");
    let next = totp_code(&secret, 30);
    let err = Client::login_with_totp(
        &server.url,
        &laptop,
        "mai",
        PASSWORD,
        "laptop",
        Some(&wrong_code(&next)),
    )
    .await
    .unwrap_err();
    assert!(err.is_code(ErrorCode::TotpInvalid), "{err}");
    let laptop =
        Client::login_with_totp(&server.url, &laptop, "mai", PASSWORD, "laptop", Some(&next))
            .await
            .expect("login with a code");
    assert!(!laptop.needs_totp_enrollment());
    server.stop().await;
}
