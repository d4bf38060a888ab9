//! Wire types shared by the Tonari server and its clients.
//!
//! Everything that crosses the network as JSON is defined here: request and
//! response bodies of the HTTP API, WebSocket frames, error codes and the
//! format of the identity carried in a device's MLS credential. MLS bytes
//! travel inside these envelopes as standard base64 ([`B64`]).
#![forbid(unsafe_code)]

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub mod cards;
pub use cards::{Card, LabCard, LabFlag, LabResult, NoticePrefs, SummaryCard};
pub mod care;
pub use care::{
    Action, Change, CommitGrounds, Consent, ConsentList, CreateInvitation, CreateOrgRequest,
    DirectoryEntry, DirectoryPage, FamilyLink, Grounds, InvitationInfo, InvitationList, OrgInfo,
    OrgKind, OrgList, Party, PolicyRule, ROOM_SETTINGS_EXTENSION, Role, RoomPolicy, RoomSettings,
    SignedConsent, check_consent_parties,
};

/// The MLS ciphersuite every Tonari room uses (RFC 9420 ciphersuite 0x0001).
pub const CIPHERSUITE_ID: u16 = 0x0001;

/// HTTP paths of the API (all JSON unless stated).
pub mod paths {
    /// POST [`crate::RegisterRequest`] → [`crate::RegisterResponse`].
    pub const REGISTER: &str = "/v1/register";
    /// POST [`crate::LoginRequest`] → [`crate::LoginResponse`].
    pub const LOGIN: &str = "/v1/login";
    /// POST (authenticated) → 204; revokes the session token.
    pub const LOGOUT: &str = "/v1/logout";
    /// POST [`crate::KeyPackageUpload`] → [`crate::KeyPackageCount`]; GET → [`crate::KeyPackageCount`].
    pub const OWN_KEY_PACKAGES: &str = "/v1/devices/me/key_packages";
    /// GET `/v1/users/{username}` → [`crate::DirectoryEntry`] (the directory).
    pub const USER: &str = "/v1/users/{username}";
    /// POST `/v1/users/{username}/key_packages/claim` → [`crate::ClaimedKeyPackages`].
    pub const CLAIM_KEY_PACKAGES: &str = "/v1/users/{username}/key_packages/claim";
    /// GET `/v1/devices/{device_id}` → [`crate::DeviceInfo`] (the directory, by device).
    pub const DEVICE: &str = "/v1/devices/{device_id}";
    /// POST [`crate::CreateRoomRequest`] → [`crate::RoomInfo`]; GET → [`crate::RoomList`].
    pub const ROOMS: &str = "/v1/rooms";
    /// GET `/v1/rooms/{room_id}` → [`crate::RoomInfo`].
    pub const ROOM: &str = "/v1/rooms/{room_id}";
    /// POST [`crate::SubmitRequest`] → [`crate::Ack`]: an application message,
    /// a proposal or a commit (with its welcome) for the room.
    pub const ROOM_MESSAGES: &str = "/v1/rooms/{room_id}/messages";
    /// GET `?after=N&limit=M` → [`crate::MessagePage`].
    pub const ROOM_HISTORY: &str = "/v1/rooms/{room_id}/messages";
    /// GET → [`crate::WelcomeList`] (welcomes waiting for this device).
    pub const WELCOMES: &str = "/v1/welcomes";
    /// DELETE `/v1/welcomes/{welcome_id}` → 204 (the device processed it).
    pub const WELCOME: &str = "/v1/welcomes/{welcome_id}";
    /// POST (authenticated, `{}`) → [`crate::TotpEnrollment`]: start TOTP enrolment.
    pub const TOTP_ENROLL: &str = "/v1/totp/enroll";
    /// POST [`crate::TotpConfirm`] → 204: the first valid code turns TOTP on.
    pub const TOTP_CONFIRM: &str = "/v1/totp/confirm";
    /// GET `?q=&role=&org_id=` → [`crate::DirectoryPage`]: search the directory.
    pub const DIRECTORY: &str = "/v1/directory";
    /// POST [`crate::CreateOrgRequest`] → [`crate::OrgInfo`] (operator admins); GET → [`crate::OrgList`].
    pub const ORGS: &str = "/v1/orgs";
    /// POST [`crate::CreateInvitation`] → [`crate::InvitationInfo`] (sends the e-mail);
    /// GET → [`crate::InvitationList`] (the caller's invitations).
    pub const INVITATIONS: &str = "/v1/invitations";
    /// POST [`crate::SignedConsent`] → 204 (the patient or a legal proxy);
    /// GET → [`crate::ConsentList`] (members).
    pub const ROOM_CONSENTS: &str = "/v1/rooms/{room_id}/consents";
    /// GET → WebSocket upgrade (Authorization: Bearer token).
    pub const WS: &str = "/v1/ws";
    /// GET → `ok` (liveness).
    pub const HEALTH: &str = "/health";
    /// GET → [`crate::NoticePrefs`]; POST [`crate::NoticePrefs`] → [`crate::NoticePrefs`]: e-mail notices.
    pub const NOTICES: &str = "/v1/me/notices";
    /// GET → 200 `{"status":"ready",…}` when the database answers, else 503.
    pub const READY: &str = "/ready";
    /// GET → Prometheus metrics (text format), when `metrics_enabled`.
    pub const METRICS: &str = "/metrics";

    /// Fill `{name}` placeholders of a path template.
    pub fn fill(template: &str, args: &[(&str, &str)]) -> String {
        let mut out = template.to_string();
        for (name, value) in args {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }
}

/// Standard-base64 bytes in JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl fmt::Debug for B64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the bytes: they may be ciphertext or key material.
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|_| serde::de::Error::custom("invalid base64"))
    }
}

impl From<Vec<u8>> for B64 {
    fn from(v: Vec<u8>) -> Self {
        B64(v)
    }
}

/// Stable, machine-readable error codes. The HTTP status goes with the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the JSON body does not parse or misses a field.
    InvalidRequest,
    /// 400: the bytes are not a valid MLS message of the expected kind.
    InvalidMlsMessage,
    /// 400: a handshake message was sent encrypted (PrivateMessage); only PublicMessage handshakes are accepted.
    EncryptedHandshake,
    /// 400: the welcome does not match the members the commit adds.
    WelcomeMismatch,
    /// 400: username or password does not meet the rules.
    InvalidCredentials,
    /// 401: missing, unknown or expired session token.
    Unauthenticated,
    /// 401: wrong username or password.
    LoginFailed,
    /// 401: this account has TOTP on: send `totp_code` with the login.
    TotpRequired,
    /// 401: the TOTP code is wrong, expired or already used.
    TotpInvalid,
    /// 403: the device is not a member of the room, or the MLS sender is not this device.
    NotAMember,
    /// 403: a credential added to the room is not a registered device key of the claimed user.
    UnknownDeviceKey,
    /// 403: the action is not allowed for this account.
    Forbidden,
    /// 403: the commit breaks the room's policy (who may add or remove whom, consent, bots).
    PolicyViolation,
    /// 403: this account's role requires TOTP: enrol (`/v1/totp/enroll`, `/v1/totp/confirm`) first.
    TotpEnrollmentRequired,
    /// 403: registration needs an invitation code.
    InvitationRequired,
    /// 400: the invitation code is unknown, expired or already used.
    InvitationInvalid,
    /// 400: the consent does not verify or its signer may not consent for this patient.
    ConsentInvalid,
    /// 400: the room settings (GroupContext extension) are missing or invalid.
    InvalidRoomSettings,
    /// 404: no such organisation.
    OrgNotFound,
    /// 404: no such room.
    RoomNotFound,
    /// 404: no such user.
    UserNotFound,
    /// 404: no such device.
    DeviceNotFound,
    /// 404: no such welcome.
    WelcomeNotFound,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint exists but not with this HTTP method.
    MethodNotAllowed,
    /// 409: the message is for another epoch than the room's current one.
    EpochConflict,
    /// 409: the room already exists.
    RoomExists,
    /// 409: the username is taken.
    UsernameTaken,
    /// 409: a device of the user has no key package left.
    NoKeyPackage,
    /// 409: the transaction id was already used for a different message.
    TxnIdReused,
    /// 409: TOTP is already on for this account.
    TotpAlreadyEnabled,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 429: too many attempts; retry after the `Retry-After` seconds.
    RateLimited,
    /// 500: something broke on the server; nothing was changed.
    Internal,
    /// 503: the server is shutting down or overloaded; retry.
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 35] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidMlsMessage,
        ErrorCode::EncryptedHandshake,
        ErrorCode::WelcomeMismatch,
        ErrorCode::InvalidCredentials,
        ErrorCode::Unauthenticated,
        ErrorCode::LoginFailed,
        ErrorCode::TotpRequired,
        ErrorCode::TotpInvalid,
        ErrorCode::NotAMember,
        ErrorCode::UnknownDeviceKey,
        ErrorCode::Forbidden,
        ErrorCode::PolicyViolation,
        ErrorCode::TotpEnrollmentRequired,
        ErrorCode::InvitationRequired,
        ErrorCode::InvitationInvalid,
        ErrorCode::ConsentInvalid,
        ErrorCode::InvalidRoomSettings,
        ErrorCode::OrgNotFound,
        ErrorCode::RoomNotFound,
        ErrorCode::UserNotFound,
        ErrorCode::DeviceNotFound,
        ErrorCode::WelcomeNotFound,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::EpochConflict,
        ErrorCode::RoomExists,
        ErrorCode::UsernameTaken,
        ErrorCode::NoKeyPackage,
        ErrorCode::TxnIdReused,
        ErrorCode::TotpAlreadyEnabled,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidMlsMessage => "invalid_mls_message",
            ErrorCode::EncryptedHandshake => "encrypted_handshake",
            ErrorCode::WelcomeMismatch => "welcome_mismatch",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::LoginFailed => "login_failed",
            ErrorCode::TotpRequired => "totp_required",
            ErrorCode::TotpInvalid => "totp_invalid",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::UnknownDeviceKey => "unknown_device_key",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PolicyViolation => "policy_violation",
            ErrorCode::TotpEnrollmentRequired => "totp_enrollment_required",
            ErrorCode::InvitationRequired => "invitation_required",
            ErrorCode::InvitationInvalid => "invitation_invalid",
            ErrorCode::ConsentInvalid => "consent_invalid",
            ErrorCode::InvalidRoomSettings => "invalid_room_settings",
            ErrorCode::OrgNotFound => "org_not_found",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::DeviceNotFound => "device_not_found",
            ErrorCode::WelcomeNotFound => "welcome_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::EpochConflict => "epoch_conflict",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::NoKeyPackage => "no_key_package",
            ErrorCode::TxnIdReused => "txn_id_reused",
            ErrorCode::TotpAlreadyEnabled => "totp_already_enabled",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidMlsMessage
            | ErrorCode::EncryptedHandshake
            | ErrorCode::WelcomeMismatch
            | ErrorCode::InvalidCredentials
            | ErrorCode::InvitationInvalid
            | ErrorCode::ConsentInvalid
            | ErrorCode::InvalidRoomSettings => 400,
            ErrorCode::Unauthenticated
            | ErrorCode::LoginFailed
            | ErrorCode::TotpRequired
            | ErrorCode::TotpInvalid => 401,
            ErrorCode::NotAMember
            | ErrorCode::UnknownDeviceKey
            | ErrorCode::Forbidden
            | ErrorCode::PolicyViolation
            | ErrorCode::TotpEnrollmentRequired
            | ErrorCode::InvitationRequired => 403,
            ErrorCode::RoomNotFound
            | ErrorCode::UserNotFound
            | ErrorCode::DeviceNotFound
            | ErrorCode::WelcomeNotFound
            | ErrorCode::OrgNotFound
            | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::EpochConflict
            | ErrorCode::RoomExists
            | ErrorCode::UsernameTaken
            | ErrorCode::NoKeyPackage
            | ErrorCode::TxnIdReused
            | ErrorCode::TotpAlreadyEnabled => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable snake_case code, see [`ErrorCode`].
    pub code: String,
    /// A human-readable explanation; never contains message content.
    pub message: String,
}

// ---------------------------------------------------------------- accounts

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    /// The one-time code from an invitation e-mail; it fixes the role,
    /// organisation and patient link. Required unless the server runs with
    /// open registration.
    #[serde(default)]
    pub invitation_code: Option<String>,
    /// The name others see (default: the username).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Open registration only (development): the role to take (default doctor).
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
}

/// A login registers (or re-attaches) a device with its Ed25519 signature key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// A device id returned by an earlier login of this account; `None` registers a new device.
    #[serde(default)]
    pub device_id: Option<i64>,
    /// A label for the device ("alice-laptop").
    pub device_name: String,
    /// The device's Ed25519 signature public key (raw 32 bytes).
    pub signature_key: B64,
    /// The current TOTP code, for accounts with TOTP on.
    #[serde(default)]
    pub totp_code: Option<String>,
}

/// A TOTP secret to put into an authenticator app (RFC 6238: SHA-1, 6 digits,
/// 30 s). It is active only after [`TotpConfirm`] with a valid code.
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpEnrollment {
    pub secret_base32: String,
    pub otpauth_uri: String,
}

impl fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpEnrollment(..)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpConfirm {
    pub code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub user_id: i64,
    pub device_id: i64,
    /// The account's role; the device puts it into its MLS credential.
    pub role: Role,
    /// The role requires TOTP and the account has none yet: this session may
    /// only enrol and confirm TOTP (everything else answers 403
    /// `totp_enrollment_required`).
    #[serde(default)]
    pub totp_enrollment_required: bool,
}

/// A device as the directory shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device_id: i64,
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    pub device_name: String,
    pub signature_key: B64,
}

// ---------------------------------------------------------------- key packages

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyPackageUpload {
    /// TLS-serialized MLS KeyPackages (as `MlsMessageOut` of a key package).
    pub key_packages: Vec<B64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyPackageCount {
    pub available: u32,
    /// True when `available` is below the server's low-water mark: upload more.
    pub low: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    pub device_id: i64,
    pub key_package: B64,
}

/// One key package for each device of the user (each consumed exactly once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimedKeyPackages {
    pub user_id: i64,
    pub key_packages: Vec<ClaimedKeyPackage>,
    /// Devices of the user that had no key package left.
    pub exhausted_devices: Vec<i64>,
}

// ---------------------------------------------------------------- rooms

/// Start a room: the server follows it from the creator's public group state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRoomRequest {
    /// TLS-serialized `MlsMessageOut` carrying the GroupInfo (epoch 0).
    pub group_info: B64,
    /// TLS-serialized ratchet tree (`RatchetTree`).
    pub ratchet_tree: B64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomInfo {
    /// Hex of the MLS group id.
    pub room_id: String,
    pub epoch: u64,
    /// Seq of the last accepted message (0 when none).
    pub last_seq: u64,
    /// Device ids that are members now.
    pub member_devices: Vec<i64>,
    /// The room's settings from its GroupContext (patient, policy).
    pub settings: RoomSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomList {
    pub rooms: Vec<RoomInfo>,
}

/// What kind of MLS message an envelope holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Application,
    Proposal,
    Commit,
}

/// Submit an MLS message to a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// Client transaction id: a retry with the same id returns the first ack.
    pub txn_id: String,
    /// TLS-serialized `MlsMessageOut` (PrivateMessage for application data,
    /// PublicMessage for proposals and commits).
    pub message: B64,
    /// TLS-serialized `MlsMessageOut` Welcome, required when a commit adds members.
    #[serde(default)]
    pub welcome: Option<B64>,
}

/// The server's acknowledgement: the message is durable and has this seq.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    pub room_id: String,
    pub seq: u64,
    /// The room's epoch after this message.
    pub epoch: u64,
    pub kind: MessageKind,
    /// True when this ack repeats an earlier one for the same txn id.
    pub duplicate: bool,
}

/// One stored message of a room, as delivered to members.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    pub room_id: String,
    pub seq: u64,
    pub kind: MessageKind,
    /// The epoch the message was sent in.
    pub epoch: u64,
    pub sender_device: i64,
    /// Milliseconds since the Unix epoch when the server accepted it.
    pub ts_ms: i64,
    pub message: B64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagePage {
    pub room_id: String,
    pub messages: Vec<Envelope>,
    /// True when more messages follow the last one returned.
    pub more: bool,
}

/// A Welcome waiting for a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WelcomeEnvelope {
    pub welcome_id: i64,
    pub room_id: String,
    /// Seq of the commit that added the device; read the room from `seq + 1`.
    pub commit_seq: u64,
    pub welcome: B64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WelcomeList {
    pub welcomes: Vec<WelcomeEnvelope>,
}

// ---------------------------------------------------------------- WebSocket

/// Frames a client sends on the WebSocket (JSON text frames).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Deliver every message after `after` for each listed room, then live
    /// ones. Only listed rooms are delivered; send it again at any time (e.g.
    /// after joining a room) to add rooms or restart one from a cursor.
    Resume { rooms: BTreeMap<String, u64> },
    /// Keep-alive; answered with [`ServerFrame::Pong`].
    Ping { nonce: u64 },
    /// Submit an MLS message (same rules as POST `ROOM_MESSAGES`). Sends on
    /// one connection are validated in order; each is answered, once durable,
    /// with [`ServerFrame::Ack`] or [`ServerFrame::SendError`] carrying the
    /// same `txn_id`, in the order the sends arrived. Several may be in flight.
    Send {
        room_id: String,
        txn_id: String,
        message: B64,
        #[serde(default)]
        welcome: Option<B64>,
    },
}

/// Frames the server pushes on the WebSocket (JSON text frames).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Message {
        envelope: Envelope,
    },
    Welcome {
        welcome: WelcomeEnvelope,
    },
    /// The device runs low on key packages: upload more.
    KeyPackagesLow {
        available: u32,
    },
    Pong {
        nonce: u64,
    },
    Error {
        code: String,
        message: String,
    },
    /// A [`ClientFrame::Send`] is durable.
    Ack {
        txn_id: String,
        ack: Ack,
    },
    /// A [`ClientFrame::Send`] was refused; nothing was stored.
    SendError {
        room_id: String,
        txn_id: String,
        code: String,
        message: String,
    },
}

/// WebSocket close codes the server uses.
pub mod close_codes {
    /// The device's outbound queue overflowed: reconnect and resume from your last seq.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The session is not valid any more.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// A frame could not be understood.
    pub const INVALID_FRAME: u16 = 1003;
    /// A frame was larger than allowed.
    pub const TOO_BIG: u16 = 1009;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

// ---------------------------------------------------------------- identity

/// The identity a Tonari device puts in its MLS BasicCredential:
/// `tonari:<user_id>:<device_id>:<role>` (UTF-8). Server and clients check
/// all three against the directory before trusting a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    pub user_id: i64,
    pub device_id: i64,
    pub role: Role,
}

impl DeviceIdentity {
    pub fn to_bytes(self) -> Vec<u8> {
        format!("tonari:{}:{}:{}", self.user_id, self.device_id, self.role).into_bytes()
    }

    pub fn parse(bytes: &[u8]) -> Option<DeviceIdentity> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut parts = s.split(':');
        if parts.next()? != "tonari" {
            return None;
        }
        let user_id = parts.next()?.parse().ok()?;
        let device_id = parts.next()?.parse().ok()?;
        let role = Role::parse(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(DeviceIdentity {
            user_id,
            device_id,
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_roundtrip_and_rejects_garbage() {
        let id = DeviceIdentity {
            user_id: 7,
            device_id: 42,
            role: Role::CareManager,
        };
        assert_eq!(id.to_bytes(), b"tonari:7:42:care_manager");
        assert_eq!(DeviceIdentity::parse(&id.to_bytes()), Some(id));
        for bad in [
            &b"tonari:1"[..],
            b"x:1:2:nurse",
            b"tonari:1:2",
            b"tonari:1:2:surgeon",
            b"tonari:1:2:nurse:3",
            b"tonari:a:2",
            b"\xff",
        ] {
            assert_eq!(DeviceIdentity::parse(bad), None);
        }
    }

    #[test]
    fn error_codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert!(
                c.as_str()
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_')
            );
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
    }

    #[test]
    fn b64_roundtrip() {
        let v = B64(vec![0, 1, 2, 255]);
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<B64>(&s).unwrap(), v);
        assert!(serde_json::from_str::<B64>("\"!!\"").is_err());
    }

    #[test]
    fn path_fill() {
        assert_eq!(
            paths::fill(paths::ROOM_MESSAGES, &[("room_id", "ab")]),
            "/v1/rooms/ab/messages"
        );
    }
}
