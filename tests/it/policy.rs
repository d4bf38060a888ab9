//! The policy matrix of a care room under the default care-team policy:
//! for every acting role and every target role, adding and removing, the
//! server's decision and a member client's decision (the same commit fed
//! to it directly) both match the table below; and who may sign consents.

use super::care::{NID, invitation, register_with_code};
use super::common::*;
use std::path::Path;
use tonari_sdk::{Client, SdkError};
use tonari_wire::{Action, ErrorCode, Role, RoomSettings};

/// The default policy, written out independently of the code under test.
fn expected(actor: Role, action: Action, target: Role) -> bool {
    use Role::*;
    let leads = [Doctor, Nurse, CareManager];
    let team = [
        Doctor,
        Nurse,
        CareManager,
        Pharmacist,
        Dentist,
        Therapist,
        Patient,
        Family,
        Bot,
    ];
    let allied = [Pharmacist, Dentist, Therapist];
    if leads.contains(&actor) {
        // Family and patients are added with the patient's consent, which
        // this matrix grants beforehand.
        return team.contains(&target);
    }
    if allied.contains(&actor) {
        return action == Action::Add && allied.contains(&target);
    }
    actor == Patient && target == Family
}

async fn open_user(server: &TestServer, root: &Path, name: &str, role: Role) -> Client {
    Client::register_with(
        &server.url,
        &tonari_wire::RegisterRequest {
            username: name.to_string(),
            password: PASSWORD.to_string(),
            invitation_code: None,
            display_name: None,
            role: Some(role),
        },
    )
    .await
    .expect("register");
    login(server, root, name, "phone").await
}

async fn invited(
    server: &TestServer,
    sink: &mut SmtpSink,
    root: &Path,
    inviter: &Client,
    name: &str,
    role: Role,
    legal_proxy: bool,
) -> Client {
    let mut req = invitation(&format!("{name}@home.example"), role);
    req.patient_network_id = Some(NID.into());
    if role == Role::Family {
        req.relationship = Some("relative".into());
        req.legal_proxy = legal_proxy;
    }
    inviter.invite_by_email(&req).await.expect("invite");
    let code = sink.next_mail().await.code();
    register_with_code(server, name, name, &code)
        .await
        .expect("register");
    login(server, root, name, "phone").await
}

/// Ok(true) accepted, Ok(false) refused as a policy violation.
fn decision<T>(r: Result<T, SdkError>, what: &str) -> bool {
    match r {
        Ok(_) => true,
        Err(e) if e.is_code(ErrorCode::PolicyViolation) => false,
        Err(SdkError::PolicyViolation { .. }) => false,
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_pair_add_and_remove_on_server_and_client() {
    use Role::*;
    let dir = tmp();
    let root = dir.path();
    let mut sink = SmtpSink::start().await;
    let smtp = sink.url.clone();
    let server = TestServer::start_care(root, |c| {
        c.smtp_url = smtp;
        c.registration = tonari::config::Registration::Open;
        c.totp_required_roles.clear();
    })
    .await;

    // The observer: a doctor who reviews every commit and resets the room.
    let obs = open_user(&server, root, "observer", Doctor).await;
    let room = obs
        .create_room_with(&RoomSettings::care_room(Some(NID.into())))
        .await
        .expect("room");

    // One acting user per role that can be in a care room, all members.
    let mut actors: Vec<(Role, Client)> = Vec::new();
    for role in [
        Doctor,
        Nurse,
        CareManager,
        Pharmacist,
        Dentist,
        Therapist,
        Bot,
    ] {
        let c = open_user(&server, root, &format!("actor-{role}"), role).await;
        actors.push((role, c));
    }
    let patient = invited(&server, &mut sink, root, &obs, "patient", Patient, false).await;
    let family = invited(
        &server,
        &mut sink,
        root,
        &obs,
        "actor-family",
        Family,
        false,
    )
    .await;
    // One target user per role (not the same users as the actors).
    let mut targets: Vec<(Role, Client)> = Vec::new();
    for role in [
        Doctor,
        Nurse,
        CareManager,
        Pharmacist,
        Dentist,
        Therapist,
        Bot,
        Emergency,
        Admin,
    ] {
        let c = open_user(&server, root, &format!("target-{role}"), role).await;
        targets.push((role, c));
    }
    let target_family = invited(
        &server,
        &mut sink,
        root,
        &obs,
        "target-family",
        Family,
        false,
    )
    .await;
    targets.push((Family, target_family));
    // The patient consents to themselves and both family members.
    for who in ["patient", "actor-family", "target-family"] {
        patient
            .sign_consent(&room, NID, who, true)
            .await
            .expect("consent");
    }
    actors.push((Patient, patient));
    actors.push((Family, family));
    for (_, a) in &actors {
        obs.invite(&room, a.username())
            .await
            .expect("baseline member");
    }
    for (_, a) in &actors {
        sync_until(a, |ev| {
            ev.iter()
                .any(|e| matches!(e, tonari_sdk::Event::Joined { .. }))
        })
        .await;
    }

    let mut checked = 0;
    let mut mismatches = Vec::new();
    // Target by target: first every actor tries to add it (it is out of the
    // room), then every actor tries to remove it (the observer puts it back
    // after each accepted removal).
    for (t_role, target) in &targets {
        let t = target.username();
        let mut in_room = false;
        for action in [Action::Add, Action::Remove] {
            if action == Action::Remove && !expected(Doctor, Action::Add, *t_role) {
                continue; // never in the room: nothing to remove
            }
            for (a_role, actor) in &actors {
                target.top_up_key_packages().await.expect("top up");
                if action == Action::Remove && !in_room {
                    obs.invite(&room, t)
                        .await
                        .expect("observer adds the target");
                    in_room = true;
                }
                let (add, remove) = match action {
                    Action::Add => (Some(t), None),
                    Action::Remove => (None, Some(t)),
                };
                let (commit, welcome) = actor
                    .testing_craft_commit(&room, add, remove)
                    .await
                    .unwrap_or_else(|e| panic!("{a_role} crafting {action} {t_role}: {e}"));
                obs.sync().await.expect("observer catches up");
                let what = format!("{a_role} {action} {t_role}");
                let client = decision(obs.testing_review_commit(&room, &commit).await, &what);
                let txn = format!("m-{checked}");
                let server_said = decision(
                    actor
                        .testing_submit_pending_commit(&room, &txn, &commit, welcome.as_deref())
                        .await,
                    &what,
                );
                if !server_said {
                    actor.clear_pending(&room).expect("clear");
                }
                let want = expected(*a_role, action, *t_role);
                if client != want || server_said != want {
                    mismatches.push(format!(
                        "{what}: expected {want}, server {server_said}, client {client}"
                    ));
                }
                checked += 1;
                if server_said {
                    in_room = action == Action::Add;
                }
                if action == Action::Add && in_room {
                    obs.remove(&room, t).await.expect("observer resets");
                    in_room = false;
                }
            }
        }
        if in_room {
            obs.remove(&room, t).await.expect("observer resets");
        }
    }
    assert!(
        mismatches.is_empty(),
        "policy mismatches:\n{}",
        mismatches.join("\n")
    );
    // 9 actors x (10 adds + 8 removes).
    assert_eq!(checked, 9 * 18);

    // Consent: only the patient or a legal proxy may sign one.
    let proxy = invited(&server, &mut sink, root, &obs, "proxy", Family, true).await;
    let grants: Vec<(&str, &Client, bool)> = actors
        .iter()
        .map(|(r, c)| (r.as_str(), c, *r == Patient))
        .chain(std::iter::once(("legal proxy", &proxy, true)))
        .collect();
    for (who, signer, want) in grants {
        let got = match signer.sign_consent(&room, NID, "target-family", true).await {
            Ok(_) => true,
            Err(e) if e.is_code(ErrorCode::ConsentInvalid) => false,
            Err(e) => panic!("{who} consenting: {e}"),
        };
        assert_eq!(got, want, "{who} signing a consent");
    }
    server.stop().await;
}
