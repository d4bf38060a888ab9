//! The care-team model on the wire: roles, organisations, room settings and
//! policy, consent objects, invitations and the directory.
//!
//! The policy check ([`RoomSettings::check`]) lives here so the server and
//! every client run exactly the same rules on every commit.

use crate::{B64, DeviceIdentity};
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $var,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s,)* }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$var),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::parse(s).ok_or_else(|| {
                    let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    format!("unknown {} `{s}` (one of: {})", stringify!($name), all.join(", "))
                })
            }
        }
    };
}

string_enum! {
    /// What a user is in the care network. Professional roles belong to an
    /// organisation; patients and family do not; bots are MLS members run by
    /// the server's EHR gateway.
    pub enum Role {
        Doctor = "doctor",
        Nurse = "nurse",
        CareManager = "care_manager",
        Pharmacist = "pharmacist",
        Dentist = "dentist",
        Therapist = "therapist",
        Emergency = "emergency",
        Admin = "admin",
        Patient = "patient",
        Family = "family",
        Bot = "bot",
    }
}

impl Role {
    /// Roles that work for an organisation (and need one).
    pub fn is_professional(self) -> bool {
        !matches!(self, Role::Patient | Role::Family | Role::Bot)
    }

    /// Roles that take part in care (may create care rooms).
    pub fn is_clinical(self) -> bool {
        matches!(
            self,
            Role::Doctor
                | Role::Nurse
                | Role::CareManager
                | Role::Pharmacist
                | Role::Dentist
                | Role::Therapist
        )
    }
}

string_enum! {
    /// Kinds of organisation in a care network.
    pub enum OrgKind {
        Clinic = "clinic",
        Hospital = "hospital",
        HomeCareAgency = "home_care_agency",
        Pharmacy = "pharmacy",
        DentalClinic = "dental_clinic",
        CareManagementOffice = "care_management_office",
        Municipality = "municipality",
        /// The operator of the Tonari server itself (its admins create organisations).
        Operator = "operator",
    }
}

// ---------------------------------------------------------------- room settings

/// The MLS GroupContext extension type that carries a room's
/// [`RoomSettings`] (UTF-8 JSON). It is part of the group context, so every
/// member agrees on it cryptographically and the server reads the same bytes.
pub const ROOM_SETTINGS_EXTENSION: u16 = 0xff00;

/// Longest network id (a region's shared EHR patient id).
pub const MAX_NETWORK_ID: usize = 64;

/// What a room is about and who may change its membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// The patient this care room is for (the network id, e.g. the region's
    /// shared EHR id). `None` for a team room (professionals only).
    #[serde(default)]
    pub patient_network_id: Option<String>,
    pub policy: RoomPolicy,
}

/// Who may add and remove whom. Some rules are fixed and not listed here:
/// a device may always leave, a member may add and remove their own other
/// devices, patients and family are added only with a valid consent signed
/// by the patient (or a legal proxy), a removal carrying the patient's
/// revocation is allowed to any member, and bots only if `allow_bots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPolicy {
    pub rules: Vec<PolicyRule>,
    #[serde(default)]
    pub allow_bots: bool,
}

/// What members with the `actor` role may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub actor: Role,
    #[serde(default)]
    pub may_add: Vec<Role>,
    #[serde(default)]
    pub may_remove: Vec<Role>,
}

/// Add or remove a member device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Add,
    Remove,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Add => "add",
            Action::Remove => "remove",
        })
    }
}

/// Why a membership change was allowed (shown to every member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Grounds {
    /// The room policy lets `actor_role` add/remove `target_role`.
    Rule {
        actor_role: Role,
        action: Action,
        target_role: Role,
    },
    /// A member added or removed another device of their own.
    OwnDevice,
    /// The device left (removed itself, or its leave request was committed).
    Leave,
    /// A consent signed by the patient or a legal proxy.
    Consent {
        consent_id: String,
        signer_user_id: i64,
    },
    /// The patient (or a legal proxy) revoked their consent.
    ConsentRevoked {
        consent_id: String,
        signer_user_id: i64,
    },
}

impl fmt::Display for Grounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grounds::Rule {
                actor_role,
                action,
                target_role,
            } => write!(f, "room policy: {actor_role} may {action} {target_role}"),
            Grounds::OwnDevice => f.write_str("own device"),
            Grounds::Leave => f.write_str("left"),
            Grounds::Consent {
                consent_id,
                signer_user_id,
            } => write!(f, "consent {consent_id} signed by user {signer_user_id}"),
            Grounds::ConsentRevoked {
                consent_id,
                signer_user_id,
            } => write!(
                f,
                "consent revoked ({consent_id}, signed by user {signer_user_id})"
            ),
        }
    }
}

/// One membership change of a commit, as checked by [`RoomSettings::check`].
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The committer (for adds and removes by value) .
    pub actor: DeviceIdentity,
    pub action: Action,
    pub target: DeviceIdentity,
    /// The removal was proposed by the removed device itself (a leave request).
    pub self_proposed: bool,
    /// A consent for the target's user carried by the commit whose signature
    /// and signer the caller has verified (grant for an add, revocation for a
    /// remove).
    pub consent: Option<&'a Consent>,
}

impl RoomSettings {
    /// The settings every new room gets unless the creator says otherwise: a
    /// care room for `patient_network_id` (or a team room without one).
    pub fn care_room(patient_network_id: Option<String>) -> RoomSettings {
        RoomSettings {
            patient_network_id,
            policy: RoomPolicy::default_care_team(),
        }
    }

    /// Check the settings themselves (when a room is created).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.patient_network_id
            && !valid_network_id(id)
        {
            return Err(format!(
                "patient_network_id must be 1-{MAX_NETWORK_ID} letters, digits, '-' or '_'"
            ));
        }
        if self.policy.rules.len() > Role::ALL.len() {
            return Err("at most one policy rule per role".into());
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.policy.rules {
            if !seen.insert(r.actor) {
                return Err(format!("two policy rules for role {}", r.actor));
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data to JSON cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<RoomSettings, String> {
        let s: RoomSettings =
            serde_json::from_slice(bytes).map_err(|e| format!("room settings: {e}"))?;
        s.validate()?;
        Ok(s)
    }

    fn rule(&self, role: Role) -> Option<&PolicyRule> {
        self.policy.rules.iter().find(|r| r.actor == role)
    }

    fn rule_allows(&self, actor: Role, action: Action, target: Role) -> bool {
        self.rule(actor).is_some_and(|r| match action {
            Action::Add => r.may_add.contains(&target),
            Action::Remove => r.may_remove.contains(&target),
        })
    }

    /// May this change happen? `Ok` carries the grounds to show members;
    /// `Err` a reason fit for an error message (ids and roles only).
    pub fn check(&self, c: &Change<'_>) -> Result<Grounds, String> {
        let (actor, target) = (c.actor, c.target);
        let refuse = |why: &str| {
            Err(format!(
                "{} ({}) may not {} device {} of user {} ({}): {why}",
                actor.user_id, actor.role, c.action, target.device_id, target.user_id, target.role
            ))
        };
        let rule = || Grounds::Rule {
            actor_role: actor.role,
            action: c.action,
            target_role: target.role,
        };
        match c.action {
            Action::Remove => {
                if target.device_id == actor.device_id || c.self_proposed {
                    return Ok(Grounds::Leave);
                }
                if target.user_id == actor.user_id {
                    return Ok(Grounds::OwnDevice);
                }
                if let Some(consent) = c.consent
                    && !consent.granted
                    && consent.subject_user_id == target.user_id
                    && self.patient_network_id.as_deref() == Some(&consent.patient_network_id)
                {
                    return Ok(Grounds::ConsentRevoked {
                        consent_id: consent.consent_id.clone(),
                        signer_user_id: consent.signer_user_id,
                    });
                }
                if self.rule_allows(actor.role, Action::Remove, target.role) {
                    return Ok(rule());
                }
                refuse("the room policy does not allow it")
            }
            Action::Add => {
                if target.user_id == actor.user_id {
                    return Ok(Grounds::OwnDevice);
                }
                if !self.rule_allows(actor.role, Action::Add, target.role) {
                    return refuse("the room policy does not allow it");
                }
                match target.role {
                    Role::Bot if !self.policy.allow_bots => refuse("this room does not allow bots"),
                    Role::Patient | Role::Family => {
                        let Some(network_id) = &self.patient_network_id else {
                            return refuse("a team room has no patient or family members");
                        };
                        match c.consent {
                            Some(consent)
                                if consent.granted
                                    && consent.subject_user_id == target.user_id
                                    && &consent.patient_network_id == network_id =>
                            {
                                Ok(Grounds::Consent {
                                    consent_id: consent.consent_id.clone(),
                                    signer_user_id: consent.signer_user_id,
                                })
                            }
                            _ => refuse("the patient's consent is missing"),
                        }
                    }
                    _ => Ok(rule()),
                }
            }
        }
    }
}

impl RoomPolicy {
    /// The default care-team policy: doctors, nurses and care managers
    /// manage the team (including the patient and family, with consent, and
    /// bots where allowed); pharmacists, dentists and therapists may bring
    /// in each other; the patient may bring in family (with consent); an
    /// admin may remove professionals and bots (off-boarding).
    pub fn default_care_team() -> RoomPolicy {
        use Role::*;
        let team = vec![
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
        let allied = vec![Pharmacist, Dentist, Therapist];
        let lead = |actor| PolicyRule {
            actor,
            may_add: team.clone(),
            may_remove: team.clone(),
        };
        RoomPolicy {
            rules: vec![
                lead(Doctor),
                lead(Nurse),
                lead(CareManager),
                PolicyRule {
                    actor: Pharmacist,
                    may_add: allied.clone(),
                    may_remove: vec![],
                },
                PolicyRule {
                    actor: Dentist,
                    may_add: allied.clone(),
                    may_remove: vec![],
                },
                PolicyRule {
                    actor: Therapist,
                    may_add: allied,
                    may_remove: vec![],
                },
                PolicyRule {
                    actor: Patient,
                    may_add: vec![Family],
                    may_remove: vec![Family],
                },
                PolicyRule {
                    actor: Admin,
                    may_add: vec![],
                    may_remove: vec![
                        Doctor,
                        Nurse,
                        CareManager,
                        Pharmacist,
                        Dentist,
                        Therapist,
                        Emergency,
                        Bot,
                    ],
                },
            ],
            allow_bots: true,
        }
    }
}

/// Network ids: 1-64 ASCII letters, digits, `-` or `_`.
pub fn valid_network_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NETWORK_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------- consent

/// The patient's (or a legal proxy's) decision that `subject_user_id` may
/// (`granted`) or may no longer (`!granted`) be a member of `room_id`.
/// Signed with the signer device's MLS signature key (Ed25519) over
/// [`Consent::SIGNING_LABEL`] followed by the exact JSON bytes in
/// [`SignedConsent::consent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Random id chosen by the signer (hex, 8-64 chars).
    pub consent_id: String,
    pub room_id: String,
    pub patient_network_id: String,
    pub subject_user_id: i64,
    pub granted: bool,
    pub issued_ms: i64,
    pub signer_user_id: i64,
    pub signer_device_id: i64,
}

impl Consent {
    pub const SIGNING_LABEL: &'static [u8] = b"tonari-consent-v1\n";

    /// The bytes the signer signs.
    pub fn signing_input(consent_json: &str) -> Vec<u8> {
        let mut v = Self::SIGNING_LABEL.to_vec();
        v.extend_from_slice(consent_json.as_bytes());
        v
    }
}

/// A consent as it travels: the signed JSON text and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedConsent {
    /// JSON of [`Consent`], exactly as signed.
    pub consent: String,
    /// Ed25519 signature (64 bytes) over [`Consent::signing_input`].
    pub signature: B64,
}

impl SignedConsent {
    /// Parse the consent and check its form (not the signature).
    pub fn parse(&self) -> Result<Consent, String> {
        let c: Consent =
            serde_json::from_str(&self.consent).map_err(|e| format!("consent: {e}"))?;
        let id_ok = (8..=64).contains(&c.consent_id.len())
            && c.consent_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok {
            return Err("consent_id must be 8-64 hex characters".into());
        }
        if !valid_network_id(&c.patient_network_id) {
            return Err("consent names an invalid patient_network_id".into());
        }
        Ok(c)
    }

    /// Parse and verify the signature with the signer device's Ed25519
    /// public key (raw 32 bytes, from the directory).
    pub fn verify(&self, signer_key: &[u8]) -> Result<Consent, String> {
        let c = self.parse()?;
        let key: [u8; 32] = signer_key
            .try_into()
            .map_err(|_| "the signer key is not an Ed25519 key".to_string())?;
        let sig: [u8; 64] =
            self.signature.0.as_slice().try_into().map_err(|_| {
                "the consent signature is not a 64-byte Ed25519 signature".to_string()
            })?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|_| "the signer key is not an Ed25519 key".to_string())?;
        vk.verify_strict(
            &Consent::signing_input(&self.consent),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| "the consent signature does not verify".to_string())?;
        Ok(c)
    }
}

/// Who someone is, as far as consent rules care (from the directory).
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    pub user_id: i64,
    pub role: Role,
    /// Patients: their network id.
    pub network_id: Option<&'a str>,
    pub family_of: Option<&'a FamilyLink>,
}

impl Party<'_> {
    fn is_patient(&self, network_id: &str) -> bool {
        self.role == Role::Patient && self.network_id == Some(network_id)
    }

    fn is_family_of(&self, network_id: &str) -> bool {
        self.role == Role::Family
            && self
                .family_of
                .is_some_and(|f| f.patient_network_id == network_id)
    }
}

/// May `signer` give (or revoke) this consent for `subject`? The signer must
/// be the patient or a legal proxy of the patient; the subject must be the
/// patient or their family. (The signature is checked by
/// [`SignedConsent::verify`].)
pub fn check_consent_parties(
    c: &Consent,
    signer: Party<'_>,
    subject: Party<'_>,
) -> Result<(), String> {
    let nid = c.patient_network_id.as_str();
    if signer.user_id != c.signer_user_id || subject.user_id != c.subject_user_id {
        return Err("the consent names other users than its signer and subject".into());
    }
    let proxy = signer.is_family_of(nid) && signer.family_of.is_some_and(|f| f.legal_proxy);
    if !signer.is_patient(nid) && !proxy {
        return Err(format!(
            "user {} is neither the patient nor a legal proxy, and may not consent",
            signer.user_id
        ));
    }
    if !subject.is_patient(nid) && !subject.is_family_of(nid) {
        return Err(format!(
            "user {} is neither the patient nor their family",
            subject.user_id
        ));
    }
    Ok(())
}

/// What a commit carries in its authenticated data (AAD, UTF-8 JSON): the
/// consents that justify adding or removing patients and family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitGrounds {
    #[serde(default)]
    pub consents: Vec<SignedConsent>,
}

impl CommitGrounds {
    /// Empty AAD means no grounds.
    pub fn from_aad(aad: &[u8]) -> Result<CommitGrounds, String> {
        if aad.is_empty() {
            return Ok(CommitGrounds::default());
        }
        serde_json::from_slice(aad).map_err(|e| format!("commit grounds: {e}"))
    }

    pub fn to_aad(&self) -> Vec<u8> {
        if self.consents.is_empty() {
            return Vec::new();
        }
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The link of a family account to a patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyLink {
    pub patient_network_id: String,
    /// e.g. "daughter", "spouse".
    pub relationship: String,
    /// A legal proxy may consent on the patient's behalf.
    #[serde(default)]
    pub legal_proxy: bool,
}

// ---------------------------------------------------------------- organisations

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateOrgRequest {
    pub name: String,
    pub kind: OrgKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgInfo {
    pub org_id: i64,
    pub name: String,
    pub kind: OrgKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgList {
    pub orgs: Vec<OrgInfo>,
}

// ---------------------------------------------------------------- invitations

/// Invite someone by e-mail. The e-mail carries a one-time code and no
/// clinical content or patient name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateInvitation {
    pub email: String,
    pub role: Role,
    /// The organisation for professional roles (default: the inviter's).
    #[serde(default)]
    pub org_id: Option<i64>,
    /// For a patient: their network id. For family: the patient's.
    #[serde(default)]
    pub patient_network_id: Option<String>,
    /// For family: the relationship to the patient.
    #[serde(default)]
    pub relationship: Option<String>,
    /// For family: may consent on the patient's behalf.
    #[serde(default)]
    pub legal_proxy: bool,
    /// A room the invitee joins once registered (the inviter's device adds them).
    #[serde(default)]
    pub room_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationInfo {
    pub invitation_id: i64,
    pub role: Role,
    pub org_id: Option<i64>,
    pub room_id: Option<String>,
    /// `pending`, `accepted` or `expired`.
    pub status: String,
    pub expires_ms: i64,
    /// Set once accepted.
    pub user_id: Option<i64>,
    pub username: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationList {
    pub invitations: Vec<InvitationInfo>,
}

// ---------------------------------------------------------------- directory

/// A directory entry: who someone is and their devices' keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub user_id: i64,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub org: Option<OrgInfo>,
    /// Patients only.
    #[serde(default)]
    pub network_id: Option<String>,
    /// Family only.
    #[serde(default)]
    pub family_of: Option<FamilyLink>,
    pub devices: Vec<crate::DeviceInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectoryPage {
    pub users: Vec<DirectoryEntry>,
}

/// Consents recorded for a room (newest last).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsentList {
    pub consents: Vec<SignedConsent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user_id: i64, device_id: i64, role: Role) -> DeviceIdentity {
        DeviceIdentity {
            user_id,
            device_id,
            role,
        }
    }

    fn consent(subject: i64, granted: bool) -> Consent {
        Consent {
            consent_id: "00112233".into(),
            room_id: "ab".into(),
            patient_network_id: "P-1".into(),
            subject_user_id: subject,
            granted,
            issued_ms: 1,
            signer_user_id: 9,
            signer_device_id: 90,
        }
    }

    fn change<'a>(
        actor: DeviceIdentity,
        action: Action,
        target: DeviceIdentity,
        consent: Option<&'a Consent>,
    ) -> Change<'a> {
        Change {
            actor,
            action,
            target,
            self_proposed: false,
            consent,
        }
    }

    #[test]
    fn default_policy_decisions() {
        let s = RoomSettings::care_room(Some("P-1".into()));
        let nurse = id(1, 10, Role::Nurse);
        let pharm = id(2, 20, Role::Pharmacist);
        let fam = id(3, 30, Role::Family);
        let ok = |c: Change<'_>| s.check(&c).is_ok();
        assert!(ok(change(nurse, Action::Add, pharm, None)));
        assert!(!ok(change(pharm, Action::Add, nurse, None)));
        assert!(!ok(change(pharm, Action::Remove, nurse, None)));
        assert!(!ok(change(nurse, Action::Add, fam, None)));
        let grant = consent(3, true);
        assert!(matches!(
            s.check(&change(nurse, Action::Add, fam, Some(&grant))),
            Ok(Grounds::Consent { .. })
        ));
        // A consent for someone else does not count.
        let other = consent(4, true);
        assert!(!ok(change(nurse, Action::Add, fam, Some(&other))));
        // A revocation lets any member remove the family member.
        let revoke = consent(3, false);
        assert!(matches!(
            s.check(&change(pharm, Action::Remove, fam, Some(&revoke))),
            Ok(Grounds::ConsentRevoked { .. })
        ));
        assert!(!ok(change(pharm, Action::Remove, fam, None)));
        // Leaving and own devices are always allowed.
        assert_eq!(
            s.check(&change(fam, Action::Remove, fam, None)),
            Ok(Grounds::Leave)
        );
        assert_eq!(
            s.check(&change(
                pharm,
                Action::Add,
                id(2, 21, Role::Pharmacist),
                None
            )),
            Ok(Grounds::OwnDevice)
        );
        // A team room has no family.
        let team = RoomSettings::care_room(None);
        assert!(
            team.check(&change(nurse, Action::Add, fam, Some(&grant)))
                .is_err()
        );
        // Bots only where allowed.
        let mut no_bots = s.clone();
        no_bots.policy.allow_bots = false;
        let bot = id(5, 50, Role::Bot);
        assert!(ok(change(nurse, Action::Add, bot, None)));
        assert!(
            no_bots
                .check(&change(nurse, Action::Add, bot, None))
                .is_err()
        );
    }

    #[test]
    fn settings_roundtrip_and_validation() {
        let s = RoomSettings::care_room(Some("P-1".into()));
        assert_eq!(RoomSettings::from_bytes(&s.to_bytes()), Ok(s));
        assert!(RoomSettings::from_bytes(b"{}").is_err());
        let bad = RoomSettings::care_room(Some("no spaces".into()));
        assert!(RoomSettings::from_bytes(&bad.to_bytes()).is_err());
    }

    #[test]
    fn role_strings() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(*r));
            assert_eq!(
                serde_json::to_string(r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("surgeon".parse::<Role>().is_err());
    }
}
