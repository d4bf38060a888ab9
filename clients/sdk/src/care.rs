//! The care-team side of a device: organisations, invitations, the
//! directory search, the patient's consents, and this client's own check of
//! the room policy on every commit (the same rules the server applies, from
//! `tonari_wire::RoomSettings::check`, with consents verified against the
//! directory by this client).

use crate::client::{Client, hex};
use crate::error::{Result, SdkError};
use crate::mls;
use crate::store;
use std::collections::HashMap;
use tonari_wire::{
    Action, Change, CommitGrounds, Consent, ConsentList, CreateInvitation, CreateOrgRequest,
    DeviceIdentity, DirectoryEntry, DirectoryPage, Grounds, InvitationInfo, InvitationList,
    OrgInfo, OrgKind, OrgList, Party, Role, RoomSettings, SignedConsent, check_consent_parties,
    paths,
};

fn party(e: &DirectoryEntry) -> Party<'_> {
    Party {
        user_id: e.user_id,
        role: e.role,
        network_id: e.network_id.as_deref(),
        family_of: e.family_of.as_ref(),
    }
}

/// Percent-encode a query value.
fn q(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    // ------------------------------------------------------------ organisations

    /// Create an organisation (admins of the server operator).
    pub async fn create_org(&self, name: &str, kind: OrgKind) -> Result<OrgInfo> {
        self.post(
            paths::ORGS,
            &CreateOrgRequest {
                name: name.to_string(),
                kind,
            },
        )
        .await
    }

    pub async fn orgs(&self) -> Result<Vec<OrgInfo>> {
        Ok(self.get::<OrgList>(paths::ORGS).await?.orgs)
    }

    // ------------------------------------------------------------ invitations

    /// Invite someone by e-mail; the server sends them a one-time code.
    pub async fn invite_by_email(&self, req: &CreateInvitation) -> Result<InvitationInfo> {
        self.post(paths::INVITATIONS, req).await
    }

    /// The invitations this account sent (accepted ones name the new user).
    pub async fn invitations(&self) -> Result<Vec<InvitationInfo>> {
        Ok(self
            .get::<InvitationList>(paths::INVITATIONS)
            .await?
            .invitations)
    }

    /// Bring accepted invitees into the rooms they were invited to, once
    /// their devices have key packages. Returns the usernames added.
    pub async fn complete_invitations(&self) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for inv in self.invitations().await? {
            let (Some(room_id), Some(username)) = (&inv.room_id, &inv.username) else {
                continue;
            };
            let in_room = self
                .room(room_id)
                .await
                .map(|r| r.members.iter().any(|m| Some(m.user_id) == inv.user_id))
                .unwrap_or(true);
            if in_room {
                continue;
            }
            match self.invite(room_id, username).await {
                Ok(_) => added.push(username.clone()),
                // Not ready yet (no device / key package) or no consent yet: later.
                Err(SdkError::NoKeyPackages(_)) => {}
                Err(e) if e.is_code(tonari_wire::ErrorCode::PolicyViolation) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(added)
    }

    // ------------------------------------------------------------ directory

    /// Search the directory by name, role and organisation.
    pub async fn search_directory(
        &self,
        text: Option<&str>,
        role: Option<Role>,
        org_id: Option<i64>,
    ) -> Result<Vec<DirectoryEntry>> {
        let mut params = Vec::new();
        if let Some(t) = text {
            params.push(format!("q={}", q(t)));
        }
        if let Some(r) = role {
            params.push(format!("role={r}"));
        }
        if let Some(o) = org_id {
            params.push(format!("org_id={o}"));
        }
        let path = if params.is_empty() {
            paths::DIRECTORY.to_string()
        } else {
            format!("{}?{}", paths::DIRECTORY, params.join("&"))
        };
        Ok(self.get::<DirectoryPage>(&path).await?.users)
    }

    /// This user's e-mail notice preferences.
    pub async fn notice_prefs(&self) -> Result<tonari_wire::NoticePrefs> {
        self.get(tonari_wire::paths::NOTICES).await
    }

    /// Turn e-mail notices of new results on (`Some(true)`), off
    /// (`Some(false)`) or back to the role's default (`None`).
    pub async fn set_result_notices(&self, on: Option<bool>) -> Result<tonari_wire::NoticePrefs> {
        let req = tonari_wire::NoticePrefs {
            results: on,
            effective: false,
        };
        self.post(tonari_wire::paths::NOTICES, &req).await
    }

    /// The settings (patient, policy) of a room this device is in, from its
    /// own MLS group state.
    pub fn room_settings(&self, room_id: &str) -> Result<RoomSettings> {
        self.with_provider(|p, _| {
            let group = mls::load_group(p, room_id)?;
            mls::room_settings(&group).map_err(SdkError::Protocol)
        })
    }

    // ------------------------------------------------------------ consents

    /// Consents recorded for a room (members only).
    pub async fn consents(&self, room_id: &str) -> Result<Vec<SignedConsent>> {
        Ok(self
            .get::<ConsentList>(&paths::fill(paths::ROOM_CONSENTS, &[("room_id", room_id)]))
            .await?
            .consents)
    }

    /// Sign a consent with this device's key (the patient or a legal proxy)
    /// that `username` may (`granted`) or may no longer be in the room, and
    /// record it on the server. `patient_network_id` is the room's patient.
    pub async fn sign_consent(
        &self,
        room_id: &str,
        patient_network_id: &str,
        username: &str,
        granted: bool,
    ) -> Result<SignedConsent> {
        let subject = self.user_devices(username).await?;
        let me = self.identity();
        let consent = Consent {
            consent_id: hex(&self.random(16)?),
            room_id: room_id.to_string(),
            patient_network_id: patient_network_id.to_string(),
            subject_user_id: subject.user_id,
            granted,
            issued_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            signer_user_id: me.user_id,
            signer_device_id: me.device_id,
        };
        let json = serde_json::to_string(&consent).map_err(|e| SdkError::Invalid(e.to_string()))?;
        let signature = self.sign(&Consent::signing_input(&json))?;
        let signed = SignedConsent {
            consent: json,
            signature: signature.into(),
        };
        self.post_empty(
            &paths::fill(paths::ROOM_CONSENTS, &[("room_id", room_id)]),
            &signed,
        )
        .await?;
        Ok(signed)
    }

    /// Revoke consent for `username` and, when this device is in the room,
    /// remove their devices in the next epoch (with the revocation as
    /// grounds). Until someone removes them, the server refuses every other
    /// commit of the room.
    pub async fn revoke_consent(
        &self,
        room_id: &str,
        patient_network_id: &str,
        username: &str,
    ) -> Result<Option<tonari_wire::Ack>> {
        self.sign_consent(room_id, patient_network_id, username, false)
            .await?;
        let member = self
            .with_provider(|_, c| store::room(c, room_id))?
            .is_some_and(|r| r.status == store::status::ACTIVE);
        if !member {
            return Ok(None);
        }
        match self.remove(room_id, username).await {
            Ok(ack) => Ok(Some(ack)),
            Err(SdkError::NotInRoom(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The commit grounds (AAD) to add or remove `username`: for patients
    /// and family, the latest consent the server holds for them in the room
    /// (a grant to add, a revocation to remove).
    pub(crate) async fn grounds_for(
        &self,
        room_id: &str,
        username: &str,
        action: Action,
    ) -> Result<Vec<u8>> {
        let entry = self.user_devices(username).await?;
        if entry.role != Role::Patient && entry.role != Role::Family {
            return Ok(Vec::new());
        }
        let mut latest = None;
        for signed in self.consents(room_id).await? {
            if let Ok(c) = signed.parse()
                && c.subject_user_id == entry.user_id
            {
                latest = Some((c.granted, signed));
            }
        }
        Ok(match latest {
            Some((granted, signed)) if granted == (action == Action::Add) => CommitGrounds {
                consents: vec![signed],
            }
            .to_aad(),
            _ => Vec::new(),
        })
    }

    /// Verify a consent carried by a commit against the directory. The
    /// subject is looked up through `subject_device`, a device of theirs the
    /// commit adds or removes. `Ok(Err(reason))` when it does not verify.
    async fn verify_consent(
        &self,
        room_id: &str,
        settings: &RoomSettings,
        signed: &SignedConsent,
        subject_device: i64,
    ) -> Result<std::result::Result<Consent, String>> {
        let c = match signed.parse() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        if c.room_id != room_id
            || settings.patient_network_id.as_deref() != Some(&c.patient_network_id)
        {
            return Ok(Err("a consent is for another room or patient".into()));
        }
        let signer_device = match self.device_info(c.signer_device_id).await {
            Ok(d) => d,
            Err(e) if e.is_code(tonari_wire::ErrorCode::DeviceNotFound) => {
                return Ok(Err(
                    "a consent's signer device is not in the directory".into()
                ));
            }
            Err(e) => return Err(e),
        };
        if signer_device.user_id != c.signer_user_id {
            return Ok(Err(
                "a consent's signer device belongs to someone else".into()
            ));
        }
        if let Err(e) = signed.verify(&signer_device.signature_key.0) {
            return Ok(Err(e));
        }
        let signer = self.user_devices(&signer_device.username).await?;
        let subject_name = self.device_info(subject_device).await?.username;
        let subject = self.user_devices(&subject_name).await?;
        Ok(check_consent_parties(&c, party(&signer), party(&subject)).map(|()| c))
    }

    /// Decide every membership change of a commit by `actor` under the room
    /// settings. `Ok(Err(reason))` when the policy refuses it.
    pub(crate) async fn decide_commit(
        &self,
        room_id: &str,
        settings: &RoomSettings,
        actor: DeviceIdentity,
        aad: &[u8],
        changes: &[(Action, DeviceIdentity, bool)],
    ) -> Result<std::result::Result<Vec<(i64, Grounds)>, String>> {
        let grounds = match CommitGrounds::from_aad(aad) {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        let mut consents: HashMap<i64, Consent> = HashMap::new();
        for signed in &grounds.consents {
            let Ok(parsed) = signed.parse() else {
                return Ok(Err("a consent in the commit does not parse".into()));
            };
            let Some((_, target, _)) = changes
                .iter()
                .find(|(_, t, _)| t.user_id == parsed.subject_user_id)
            else {
                continue;
            };
            match self
                .verify_consent(room_id, settings, signed, target.device_id)
                .await?
            {
                Ok(c) => {
                    consents.insert(c.subject_user_id, c);
                }
                Err(reason) => return Ok(Err(reason)),
            }
        }
        let mut out = Vec::with_capacity(changes.len());
        for (action, target, self_proposed) in changes {
            let consent = consents
                .get(&target.user_id)
                .filter(|c| c.granted == (*action == Action::Add));
            match settings.check(&Change {
                actor,
                action: *action,
                target: *target,
                self_proposed: *self_proposed,
                consent,
            }) {
                Ok(g) => out.push((target.device_id, g)),
                Err(reason) => return Ok(Err(reason)),
            }
        }
        Ok(Ok(out))
    }
}
