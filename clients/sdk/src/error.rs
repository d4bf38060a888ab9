//! The SDK's error type.

use std::fmt;
use tonari_wire::ErrorCode;

/// The `code` of a server error: a known [`ErrorCode`] or a code this SDK
/// version does not know yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCode {
    Known(ErrorCode),
    Unknown(String),
}

impl fmt::Display for ServerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerCode::Known(c) => f.write_str(c.as_str()),
            ServerCode::Unknown(s) => f.write_str(s),
        }
    }
}

/// Every error the SDK returns. Messages never contain message content,
/// tokens or key material.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The server answered with an error body.
    #[error("server error {code} (HTTP {status}): {message}")]
    Server {
        code: ServerCode,
        status: u16,
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("network error: {0}")]
    Network(String),
    /// The server answered something this SDK does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An MLS operation failed.
    #[error("MLS error: {0}")]
    Mls(String),
    /// The local store failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A member (or a device about to be added) does not match the directory:
    /// its credential identity or signature key is not a registered device
    /// key. `device_id` is -1 when the identity could not even be parsed.
    #[error("room {room_id}: device {device_id} does not match the directory; refusing it")]
    UntrustedMember { room_id: String, device_id: i64 },
    /// Another member's commit does not pass MLS verification here (the
    /// server cannot check everything): the new epoch is refused and the room
    /// is marked `untrusted`.
    #[error("room {room_id}: the commit at seq {seq} does not verify; refusing the new epoch")]
    UntrustedCommit { room_id: String, seq: u64 },
    /// A commit breaks the room's policy as this client checks it (who may
    /// add or remove whom, consent, bots): the epoch is refused and the room
    /// is marked `untrusted`.
    #[error("room {room_id}: a commit breaks the room policy: {reason}")]
    PolicyViolation { room_id: String, reason: String },
    /// The device directory holds no logged-in device.
    #[error("not logged in")]
    NotLoggedIn,
    /// The room is not known locally.
    #[error("unknown room {0}")]
    UnknownRoom(String),
    /// The room is known but not usable (left, removed or untrusted).
    #[error("room {room_id} is {status}")]
    RoomNotActive { room_id: String, status: String },
    /// None of the user's devices could be added (no key packages left).
    #[error("user {0} has no device that can be added")]
    NoKeyPackages(String),
    /// The user has no device in the room.
    #[error("user {0} is not a member of the room")]
    NotInRoom(String),
    /// Gave up after too many epoch conflicts.
    #[error("gave up after {0} epoch conflicts")]
    TooManyConflicts(u32),
    /// Invalid argument or local state.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl SdkError {
    /// The server error code, when this is a server error with a known code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            SdkError::Server {
                code: ServerCode::Known(c),
                ..
            } => Some(*c),
            _ => None,
        }
    }

    /// True when this is a server error with exactly this code.
    pub fn is_code(&self, code: ErrorCode) -> bool {
        self.code() == Some(code)
    }

    /// A short stable string for the error kind (the server code for server errors).
    pub fn kind(&self) -> String {
        match self {
            SdkError::Server { code, .. } => code.to_string(),
            SdkError::Network(_) => "network".into(),
            SdkError::Protocol(_) => "protocol".into(),
            SdkError::Mls(_) => "mls".into(),
            SdkError::Storage(_) => "storage".into(),
            SdkError::UntrustedMember { .. } => "untrusted_member".into(),
            SdkError::UntrustedCommit { .. } => "untrusted_commit".into(),
            SdkError::PolicyViolation { .. } => "policy_violation".into(),
            SdkError::NotLoggedIn => "not_logged_in".into(),
            SdkError::UnknownRoom(_) => "unknown_room".into(),
            SdkError::RoomNotActive { .. } => "room_not_active".into(),
            SdkError::NoKeyPackages(_) => "no_key_packages".into(),
            SdkError::NotInRoom(_) => "not_in_room".into(),
            SdkError::TooManyConflicts(_) => "too_many_conflicts".into(),
            SdkError::Invalid(_) => "invalid".into(),
        }
    }

    pub(crate) fn mls(e: impl fmt::Debug) -> Self {
        SdkError::Mls(format!("{e:?}"))
    }

    /// Network errors are worth retrying with the same transaction id.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, SdkError::Network(_))
            || self.is_code(ErrorCode::Unavailable)
            || self.is_code(ErrorCode::Internal)
    }
}

impl From<rusqlite::Error> for SdkError {
    fn from(e: rusqlite::Error) -> Self {
        SdkError::Storage(e.to_string())
    }
}

impl From<reqwest::Error> for SdkError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest errors may contain the URL, never bodies or headers.
        SdkError::Network(e.without_url().to_string())
    }
}

/// Result alias of the SDK.
pub type Result<T, E = SdkError> = std::result::Result<T, E>;
