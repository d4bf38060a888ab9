//! Room policy on the server: the room's settings from its MLS group
//! context, the consents a commit carries, and the decision on every
//! membership change (the rules themselves are [`RoomSettings::check`], the
//! same code every client runs).

use crate::error::{Error, Result};
use crate::mls;
use crate::store::Store;
use crate::store::care::Profile;
use openmls::prelude::*;
use std::collections::HashMap;
use tonari_wire::{
    Action, Change, CommitGrounds, Consent, DeviceIdentity, ErrorCode, Grounds, Party,
    ROOM_SETTINGS_EXTENSION, RoomSettings, check_consent_parties,
};

pub fn violation(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::PolicyViolation, message)
}

/// The settings a room carries in its group context.
pub fn room_settings(pg: &PublicGroup) -> Result<RoomSettings> {
    let ext = pg
        .group_context()
        .extensions()
        .unknown(ROOM_SETTINGS_EXTENSION)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidRoomSettings,
                "the group context has no Tonari room settings extension (0xff00)",
            )
        })?;
    RoomSettings::from_bytes(&ext.0).map_err(|e| Error::new(ErrorCode::InvalidRoomSettings, e))
}

fn party(p: &Profile) -> Party<'_> {
    Party {
        user_id: p.id,
        role: p.role,
        network_id: p.network_id.as_deref(),
        family_of: p.family_of.as_ref(),
    }
}

/// Verify a consent against the directory: signature by the signer device,
/// signer may consent, subject is the patient or family, and it is for this
/// room and patient.
pub async fn verify_consent(
    store: &Store,
    room_id: &str,
    settings: &RoomSettings,
    signed: &tonari_wire::SignedConsent,
) -> Result<Consent> {
    let invalid = |m: String| Error::new(ErrorCode::ConsentInvalid, m);
    let c = signed.parse().map_err(invalid)?;
    if c.room_id != room_id || settings.patient_network_id.as_deref() != Some(&c.patient_network_id)
    {
        return Err(invalid(
            "the consent is for another room or patient".to_string(),
        ));
    }
    let device = store
        .device(c.signer_device_id)
        .await?
        .filter(|d| d.user_id == c.signer_user_id)
        .ok_or_else(|| invalid("the consent's signer device is not in the directory".into()))?;
    signed.verify(&device.signature_key).map_err(invalid)?;
    let signer = store
        .profile(c.signer_user_id)
        .await?
        .ok_or_else(|| invalid("unknown signer".into()))?;
    let subject = store
        .profile(c.subject_user_id)
        .await?
        .ok_or_else(|| invalid("unknown subject".into()))?;
    check_consent_parties(&c, party(&signer), party(&subject)).map_err(invalid)?;
    Ok(c)
}

/// One membership change of a commit, before the decision.
pub struct Proposed {
    pub action: Action,
    pub target: DeviceIdentity,
    pub self_proposed: bool,
}

/// The membership changes of a staged commit (adds by value, removes by
/// value or by a member's own leave request).
pub fn changes(pg: &PublicGroup, staged: &StagedCommit) -> Result<Vec<Proposed>> {
    let mut out = Vec::new();
    for add in staged.add_proposals() {
        let (id, _) = mls::leaf_identity(add.add_proposal().key_package().leaf_node())?;
        out.push(Proposed {
            action: Action::Add,
            target: id,
            self_proposed: false,
        });
    }
    for r in staged.remove_proposals() {
        let idx = r.remove_proposal().removed();
        let Some(id) = pg.leaf(idx).and_then(|l| mls::identity_of(l.credential())) else {
            return Err(Error::invalid_mls(
                "the commit removes a leaf without a Tonari identity",
                "remove",
            ));
        };
        let self_proposed = matches!(r.sender(), Sender::Member(s) if *s == idx);
        out.push(Proposed {
            action: Action::Remove,
            target: id,
            self_proposed,
        });
    }
    for q in staged.queued_proposals() {
        match q.proposal() {
            Proposal::Add(_) | Proposal::Remove(_) | Proposal::Update(_) => {}
            Proposal::GroupContextExtensions(_) => {
                return Err(violation("a room's settings cannot be changed"));
            }
            _ => {
                return Err(violation(
                    "only add, remove and update proposals are allowed",
                ));
            }
        }
    }
    Ok(out)
}

/// Decide every change of a commit by `actor`. Consents come from the
/// commit's authenticated data; a grant must also be the latest consent the
/// server recorded for that person in this room (so a revoked one cannot be
/// replayed). Returns the grounds of each change, for the audit log.
pub async fn decide(
    store: &Store,
    room_id: &str,
    settings: &RoomSettings,
    actor: DeviceIdentity,
    aad: &[u8],
    proposed: &[Proposed],
) -> Result<Vec<(i64, Action, Grounds)>> {
    let grounds = CommitGrounds::from_aad(aad).map_err(violation)?;
    let mut consents: HashMap<i64, Consent> = HashMap::new();
    if !grounds.consents.is_empty() {
        let recorded = store.consents(room_id).await?;
        for signed in &grounds.consents {
            let c = verify_consent(store, room_id, settings, signed).await?;
            if c.granted {
                let latest = recorded
                    .iter()
                    .rev()
                    .find(|r| r.subject_user == c.subject_user_id);
                if !latest.is_some_and(|l| l.granted && l.consent_id == c.consent_id) {
                    return Err(violation(format!(
                        "consent {} is not the current consent for user {} (post it first, or it was revoked)",
                        c.consent_id, c.subject_user_id
                    )));
                }
            }
            consents.insert(c.subject_user_id, c);
        }
    }
    let mut out = Vec::with_capacity(proposed.len());
    for p in proposed {
        let consent = consents
            .get(&p.target.user_id)
            .filter(|c| c.granted == (p.action == Action::Add));
        let g = settings
            .check(&Change {
                actor,
                action: p.action,
                target: p.target,
                self_proposed: p.self_proposed,
                consent,
            })
            .map_err(violation)?;
        out.push((p.target.device_id, p.action, g));
    }
    Ok(out)
}
