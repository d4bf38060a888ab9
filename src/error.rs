//! The error every domain service returns, with a user-facing message (sent to
//! the client) and an optional log detail (logged, never sent). Neither ever
//! contains message content: only ids, codes and library error kinds.

use crate::store::StoreError;
use tonari_wire::ErrorCode;

#[derive(Debug)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<String>,
    /// For 429: seconds until a retry can succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            detail: None,
            retry_after: None,
        }
    }

    /// Attach a detail for the log (e.g. the openmls error kind).
    pub fn with_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error::new(
            ErrorCode::Internal,
            "the server failed to handle the request; nothing was changed",
        )
        .with_detail(detail)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Error::new(
            ErrorCode::RateLimited,
            format!("too many login attempts; try again in {retry_after_secs} s"),
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    pub fn unauthenticated() -> Self {
        Error::new(
            ErrorCode::Unauthenticated,
            "a valid session token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn invalid_mls(what: &str, detail: impl std::fmt::Display) -> Self {
        Error::new(
            ErrorCode::InvalidMlsMessage,
            format!("invalid MLS message: {what}"),
        )
        .with_detail(detail)
    }

    /// Log this error at a level that fits its class.
    pub fn log(&self, context: &str) {
        let detail = self.detail.as_deref().unwrap_or("-");
        if self.code == ErrorCode::Internal {
            tracing::error!(code = %self.code, detail, "{context} failed");
        } else {
            tracing::info!(code = %self.code, detail, "{context} refused");
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::internal(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
