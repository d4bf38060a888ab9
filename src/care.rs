//! The care-team service: organisations, e-mail invitations, the directory
//! search and the patients' consents. Who may do what is decided here; the
//! room policy on commits is in [`crate::policy`].

use crate::accounts::{AuthDevice, directory_entry, hash_token, now_ms};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::mailer::{Mailer, parse_address};
use crate::store::Store;
use crate::store::care::{DirectoryQuery, InvitationRow};
use crate::store::writer::Writer;
use rand::RngCore;
use serde_json::json;
use tonari_wire::{
    Consent, CreateInvitation, CreateOrgRequest, DirectoryPage, ErrorCode, InvitationInfo, OrgInfo,
    OrgKind, Role, RoomSettings, SignedConsent,
};

/// Most directory results per search.
pub const MAX_SEARCH: u32 = 50;

pub struct CareService {
    store: Store,
    writer: Writer,
    mailer: Mailer,
    invitation_ttl_ms: i64,
}

fn forbidden(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::Forbidden, message)
}

/// "a nurse", "an admin".
fn a(role: Role) -> String {
    let article = if role.as_str().starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {role}")
}

fn invitation_info(row: InvitationRow, now: i64) -> InvitationInfo {
    let status = if row.used_by.is_some() {
        "accepted"
    } else if row.expires_ms <= now {
        "expired"
    } else {
        "pending"
    };
    InvitationInfo {
        invitation_id: row.id,
        role: row.role,
        org_id: row.org_id,
        room_id: row.room_id,
        status: status.to_string(),
        expires_ms: row.expires_ms,
        user_id: row.used_by.as_ref().map(|u| u.0),
        username: row.used_by.map(|u| u.1),
    }
}

/// A fresh one-time code: 128 random bits as 32 hex characters.
pub fn new_code() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

impl CareService {
    pub fn new(store: Store, writer: Writer, mailer: Mailer, config: &crate::Config) -> Self {
        CareService {
            store,
            writer,
            mailer,
            invitation_ttl_ms: i64::try_from(config.invitation_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }

    async fn audit(
        &self,
        event: &str,
        auth: Option<AuthDevice>,
        subject: String,
        details: serde_json::Value,
    ) {
        let actor = auth.map(|a| (a.user_id, a.device_id));
        if !self
            .writer
            .audit(AuditEvent::new(event, actor, subject, details))
            .await
        {
            tracing::error!(event, "audit entry not recorded");
        }
    }

    /// The caller's organisation (professionals).
    async fn org_of(&self, auth: AuthDevice) -> Result<Option<OrgInfo>> {
        Ok(self.store.profile(auth.user_id).await?.and_then(|p| p.org))
    }

    async fn is_operator(&self, auth: AuthDevice) -> Result<bool> {
        Ok(auth.role == Role::Admin
            && self
                .org_of(auth)
                .await?
                .is_some_and(|o| o.kind == OrgKind::Operator))
    }

    // ------------------------------------------------------------ organisations

    /// Operator admins create organisations.
    pub async fn create_org(&self, auth: AuthDevice, req: CreateOrgRequest) -> Result<OrgInfo> {
        if !self.is_operator(auth).await? {
            return Err(forbidden(
                "only an admin of the server operator creates organisations",
            ));
        }
        let org = create_org_checked(&self.store, &req).await?;
        tracing::info!(org_id = org.org_id, "organisation created");
        self.audit(
            "org_created",
            Some(auth),
            format!("org:{}", org.org_id),
            json!({ "kind": org.kind }),
        )
        .await;
        Ok(org)
    }

    pub async fn orgs(&self, auth: AuthDevice) -> Result<Vec<OrgInfo>> {
        if !auth.role.is_professional() {
            return Err(forbidden("patients and family cannot list organisations"));
        }
        Ok(self.store.orgs().await?)
    }

    // ------------------------------------------------------------ invitations

    /// Check who may invite whom; returns the organisation the account joins.
    async fn check_invitation(
        &self,
        auth: AuthDevice,
        req: &CreateInvitation,
    ) -> Result<Option<i64>> {
        let own_org = self.org_of(auth).await?;
        let operator = self.is_operator(auth).await?;
        let target = req.role;
        let nid = req.patient_network_id.as_deref();
        let patient_for_family = auth.role == Role::Patient && target == Role::Family;
        if !(auth.role.is_professional() || patient_for_family) {
            return Err(forbidden(format!(
                "{} may not invite {}",
                a(auth.role),
                a(target)
            )));
        }
        if !target.is_professional() && req.org_id.is_some() {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "patients and family do not belong to an organisation",
            ));
        }
        match target {
            Role::Bot => Err(forbidden(
                "bots are set up by the server operator, not invited",
            )),
            Role::Patient | Role::Family => {
                let Some(nid) = nid.filter(|n| tonari_wire::care::valid_network_id(n)) else {
                    return Err(Error::new(
                        ErrorCode::InvalidRequest,
                        "patient and family invitations need the patient's patient_network_id",
                    ));
                };
                let own_patient = auth.role == Role::Patient
                    && self
                        .store
                        .profile(auth.user_id)
                        .await?
                        .is_some_and(|p| p.network_id.as_deref() == Some(nid));
                let may = auth.role.is_clinical() || (own_patient && target == Role::Family);
                if !may {
                    return Err(forbidden(format!(
                        "{} may not invite {}",
                        a(auth.role),
                        a(target)
                    )));
                }
                if target == Role::Family {
                    let rel = req.relationship.as_deref().unwrap_or("").trim();
                    if rel.is_empty() || rel.len() > 64 || rel.chars().any(char::is_control) {
                        return Err(Error::new(
                            ErrorCode::InvalidRequest,
                            "a family invitation needs a relationship (1-64 bytes), e.g. daughter",
                        ));
                    }
                    if req.legal_proxy && !auth.role.is_clinical() {
                        return Err(forbidden("only a clinician records a legal proxy"));
                    }
                } else {
                    if req.legal_proxy || req.relationship.is_some() {
                        return Err(Error::new(
                            ErrorCode::InvalidRequest,
                            "relationship and legal_proxy are for family invitations",
                        ));
                    }
                    if self.store.patient_user(nid).await?.is_some() {
                        return Err(forbidden(
                            "a patient account for this network id exists already",
                        ));
                    }
                }
                Ok(None)
            }
            _ => {
                if nid.is_some() || req.relationship.is_some() || req.legal_proxy {
                    return Err(Error::new(
                        ErrorCode::InvalidRequest,
                        "patient_network_id, relationship and legal_proxy are for patient and family invitations",
                    ));
                }
                let org_id = match (req.org_id, &own_org) {
                    (Some(id), _) => id,
                    (None, Some(o)) => o.org_id,
                    (None, None) => {
                        return Err(Error::new(
                            ErrorCode::InvalidRequest,
                            "say which organisation (org_id) the new account joins",
                        ));
                    }
                };
                let org =
                    self.store.org(org_id).await?.ok_or_else(|| {
                        Error::new(ErrorCode::OrgNotFound, "no such organisation")
                    })?;
                let same_org = own_org.as_ref().is_some_and(|o| o.org_id == org.org_id);
                let may = if operator {
                    // The operator sets up organisations through their admins.
                    target == Role::Admin || same_org
                } else if auth.role == Role::Admin {
                    same_org
                } else {
                    // Clinicians bring in colleagues of their own organisation.
                    auth.role.is_clinical()
                        && same_org
                        && target != Role::Admin
                        && target != Role::Emergency
                };
                if !may {
                    return Err(forbidden(format!(
                        "{} may not invite {} to organisation {}",
                        a(auth.role),
                        a(target),
                        org.org_id
                    )));
                }
                Ok(Some(org.org_id))
            }
        }
    }

    /// Create an invitation and e-mail its one-time code. If the e-mail
    /// cannot be sent, the invitation is taken back (503).
    pub async fn invite(&self, auth: AuthDevice, req: CreateInvitation) -> Result<InvitationInfo> {
        self.mailer.check_configured()?;
        let to = parse_address(&req.email)?;
        let org_id = self.check_invitation(auth, &req).await?;
        let code = new_code();
        let now = now_ms();
        let expires = now.saturating_add(self.invitation_ttl_ms);
        let id = self
            .store
            .create_invitation(
                Some(to.email.as_ref()),
                &hash_token(&code),
                Some(auth.user_id),
                req.role,
                org_id,
                req.patient_network_id.as_deref(),
                req.relationship.as_deref().map(str::trim),
                req.legal_proxy,
                req.room_id.as_deref(),
                now,
                expires,
            )
            .await?;
        if let Err(e) = self.mailer.send_invitation(to, &code, expires).await {
            self.store.delete_invitation(id).await?;
            return Err(e);
        }
        tracing::info!(invitation_id = id, role = %req.role, "invitation sent");
        self.audit(
            "invitation_created",
            Some(auth),
            format!("invitation:{id}"),
            json!({ "role": req.role, "org": org_id, "room": req.room_id, "legal_proxy": req.legal_proxy }),
        )
        .await;
        Ok(InvitationInfo {
            invitation_id: id,
            role: req.role,
            org_id,
            room_id: req.room_id,
            status: "pending".into(),
            expires_ms: expires,
            user_id: None,
            username: None,
        })
    }

    pub async fn invitations(&self, auth: AuthDevice) -> Result<Vec<InvitationInfo>> {
        let now = now_ms();
        Ok(self
            .store
            .invitations_by(auth.user_id)
            .await?
            .into_iter()
            .map(|r| invitation_info(r, now))
            .collect())
    }

    // ------------------------------------------------------------ directory

    /// Search people by name, role and organisation (professionals only).
    pub async fn search(
        &self,
        auth: AuthDevice,
        text: Option<String>,
        role: Option<Role>,
        org_id: Option<i64>,
    ) -> Result<DirectoryPage> {
        if !auth.role.is_professional() {
            return Err(forbidden("patients and family cannot search the directory"));
        }
        if text.as_ref().is_some_and(|t| t.len() > 128) {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "q is at most 128 bytes",
            ));
        }
        let q = DirectoryQuery {
            text: text.filter(|t| !t.trim().is_empty()),
            role,
            org_id,
            limit: MAX_SEARCH,
        };
        let mut users = Vec::new();
        for p in self.store.search_directory(&q).await? {
            let devices = self.store.devices_of_user(p.id).await?;
            users.push(directory_entry(p, &devices));
        }
        Ok(DirectoryPage { users })
    }

    // ------------------------------------------------------------ consents

    /// Record a consent signed by the caller's device (the patient or a legal
    /// proxy). The caller gets back the parsed consent.
    pub async fn post_consent(
        &self,
        auth: AuthDevice,
        room_id: &str,
        settings: &RoomSettings,
        signed: SignedConsent,
    ) -> Result<Consent> {
        if signed.consent.len() > 4096 {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                "the consent is too large",
            ));
        }
        let c = crate::policy::verify_consent(&self.store, room_id, settings, &signed).await?;
        if c.signer_device_id != auth.device_id {
            return Err(Error::new(
                ErrorCode::ConsentInvalid,
                "post consents from the device that signed them",
            ));
        }
        if !self
            .store
            .insert_consent(
                &c.consent_id,
                room_id,
                c.subject_user_id,
                c.granted,
                c.signer_device_id,
                &signed.consent,
                &signed.signature.0,
                now_ms(),
            )
            .await?
        {
            return Err(Error::new(
                ErrorCode::ConsentInvalid,
                "a consent with this consent_id is recorded already",
            ));
        }
        let event = if c.granted {
            "consent_granted"
        } else {
            "consent_revoked"
        };
        tracing::info!(
            room_id,
            subject = c.subject_user_id,
            event,
            "consent recorded"
        );
        self.audit(
            event,
            Some(auth),
            format!("room:{room_id}"),
            json!({ "consent_id": c.consent_id, "subject_user": c.subject_user_id }),
        )
        .await;
        Ok(c)
    }

    pub async fn consents(&self, room_id: &str) -> Result<Vec<SignedConsent>> {
        Ok(self
            .store
            .consents(room_id)
            .await?
            .into_iter()
            .map(|r| SignedConsent {
                consent: r.consent,
                signature: tonari_wire::B64(r.signature),
            })
            .collect())
    }
}

/// Validate and create an organisation (also used by `tonari admin-invite`).
pub async fn create_org_checked(store: &Store, req: &CreateOrgRequest) -> Result<OrgInfo> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorCode::InvalidRequest,
            "an organisation name is 1-128 bytes without control characters",
        ));
    }
    let org_id = store
        .create_org(name, req.kind, now_ms())
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidRequest,
                "an organisation with this name exists",
            )
        })?;
    Ok(OrgInfo {
        org_id,
        name: name.to_string(),
        kind: req.kind,
    })
}

/// `tonari admin-invite`: from the server's console, create (if needed) an
/// organisation and a one-time invitation for an admin of it, returned
/// instead of e-mailed. Safe next to a running server (same database).
pub async fn console_admin_invitation(
    config: &crate::Config,
    org_name: &str,
    kind: OrgKind,
) -> std::result::Result<(OrgInfo, String, i64), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| e.to_string())?;
    let store = Store::open(&config.database()?)
        .await
        .map_err(|e| e.to_string())?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let (writer, task) =
        crate::store::writer::spawn(&store, 16, 16, metrics).map_err(|e| e.to_string())?;
    let result = async {
        let existing = store
            .orgs()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|o| o.name == org_name.trim());
        let org = match existing {
            Some(o) if o.kind == kind => o,
            Some(o) => {
                return Err(format!(
                    "organisation {:?} exists with kind {}, not {kind}",
                    o.name, o.kind
                ));
            }
            None => {
                let req = CreateOrgRequest {
                    name: org_name.to_string(),
                    kind,
                };
                let org = create_org_checked(&store, &req)
                    .await
                    .map_err(|e| e.message)?;
                writer
                    .audit(AuditEvent::new(
                        "org_created",
                        None,
                        format!("org:{}", org.org_id),
                        json!({ "kind": org.kind, "by": "console" }),
                    ))
                    .await;
                org
            }
        };
        let code = new_code();
        let now = now_ms();
        let expires = now.saturating_add(
            i64::try_from(config.invitation_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        );
        let id = store
            .create_invitation(
                None,
                &hash_token(&code),
                None,
                Role::Admin,
                Some(org.org_id),
                None,
                None,
                false,
                None,
                now,
                expires,
            )
            .await
            .map_err(|e| e.to_string())?;
        if !writer
            .audit(AuditEvent::new(
                "invitation_created",
                None,
                format!("invitation:{id}"),
                json!({ "role": Role::Admin, "org": org.org_id, "by": "console" }),
            ))
            .await
        {
            return Err("the audit entry could not be written".to_string());
        }
        Ok((org, code, expires))
    }
    .await;
    writer.stop().await;
    let _ = task.await;
    store.close().await;
    result
}
