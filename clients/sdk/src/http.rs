//! Thin JSON-over-HTTP layer: every call of the wire contract.

use crate::error::{Result, SdkError, ServerCode};
use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;
use tonari_wire::{ErrorBody, ErrorCode};

/// HTTP client bound to one server.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    pub fn new(server_url: &str) -> Result<Self> {
        let base = server_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(SdkError::Invalid(
                "server url must start with http:// or https://".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Http { client, base })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_json()?);
        }
        let resp = req.send().await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from_response(resp).await)
    }

    /// A JSON call returning a JSON body.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<T> {
        let resp = self.send(method, path, token, body).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SdkError::Protocol(format!("unexpected response body for {path}: {e}")))
    }

    /// A call whose response body is ignored (204).
    pub async fn empty(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<()> {
        self.send(method, path, token, body).await.map(|_| ())
    }
}

async fn error_from_response(resp: reqwest::Response) -> SdkError {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(eb) => SdkError::Server {
            code: match ErrorCode::parse(&eb.code) {
                Some(c) => ServerCode::Known(c),
                None => ServerCode::Unknown(eb.code),
            },
            status: status.as_u16(),
            message: eb.message,
        },
        Err(_) => SdkError::Server {
            code: ServerCode::Unknown(fallback_code(status)),
            status: status.as_u16(),
            message: status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_string(),
        },
    }
}

fn fallback_code(status: StatusCode) -> String {
    match status.as_u16() {
        401 => ErrorCode::Unauthenticated.as_str().into(),
        503 => ErrorCode::Unavailable.as_str().into(),
        500 => ErrorCode::Internal.as_str().into(),
        s => format!("http_{s}"),
    }
}

/// Object-safe "serialize to JSON" so bodies can be passed as `&dyn`.
pub mod erased {
    use super::*;

    pub trait Body {
        fn to_json(&self) -> Result<Vec<u8>>;
    }

    impl<T: Serialize> Body for T {
        fn to_json(&self) -> Result<Vec<u8>> {
            serde_json::to_vec(self).map_err(|e| SdkError::Invalid(e.to_string()))
        }
    }
}

/// Percent-encode a path segment (usernames, room ids).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn seg_escapes() {
        assert_eq!(super::seg("a b/c"), "a%20b%2Fc");
        assert_eq!(super::seg("alice-1_x.y~"), "alice-1_x.y~");
    }
}
