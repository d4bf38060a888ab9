//! The web client (`web/`, built by Vite into `web/dist/`) served at `/`,
//! and the browser side of the WebSocket upgrade (token in the subprotocol,
//! Origin check).
//!
//! Release builds embed `web/dist/` into the binary (rust-embed), so one
//! binary is still the whole install. Debug builds read the files from
//! `web/dist/` at run time. `allow_missing` lets the crate build without a
//! web build: the server then answers `/` with 404 `not_found` and a hint.
//! Paths under `/v1/` never reach this module: unknown API paths keep their
//! JSON 404.

use crate::app::AppState;
use crate::error::Error;
use crate::http::ApiError;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tonari_wire::ErrorCode;

#[derive(rust_embed::Embed)]
#[folder = "web/dist/"]
#[allow_missing = true]
struct Assets;

/// The subprotocol a browser offers (and the server answers) on `/v1/ws`.
pub const WS_PROTOCOL: &str = "tonari.v1";
/// A browser cannot set `Authorization` on a WebSocket: it offers its token
/// as a second subprotocol `tonari-token.<token>` (never in the URL, which
/// proxies and servers log). The server never echoes it back.
pub const WS_TOKEN_PREFIX: &str = "tonari-token.";

/// The session token offered in `Sec-WebSocket-Protocol`, if any.
pub fn ws_protocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(WS_TOKEN_PREFIX))
        .filter(|t| !t.is_empty())
}

/// The `host[:port]` part of an origin (`scheme://host[:port]`).
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/'))
}

/// A WebSocket upgrade may proceed: no `Origin` (native clients), or an
/// `Origin` whose host equals the request's `Host` (the page came from this
/// server), or one listed in `allowed_origins`.
pub fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_authority(origin), host) {
        (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// The Content-Security-Policy of every page: scripts, styles and
/// connections only from this server, nothing inline, no framing.
pub fn content_security_policy(host: Option<&str>) -> String {
    // Older browsers do not let 'self' cover ws:/wss:; name the host, but
    // only if it is a plain host[:port] (it comes from the request).
    let ws = host
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{ws}; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") | Some("webmanifest") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("wasm") => "application/wasm",
        Some("map") => "application/json",
        _ => "application/octet-stream",
    }
}

fn not_found() -> Response {
    ApiError(Error::new(ErrorCode::NotFound, "no such endpoint")).into_response()
}

/// The router's fallback: API paths get JSON 404, other GETs the web client.
pub async fn fallback(
    State(_s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    if path == "/v1" || path.starts_with("/v1/") {
        return not_found();
    }
    if method != Method::GET && method != Method::HEAD {
        return not_found();
    }
    let file = match path.trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    let Some(asset) = Assets::get(file) else {
        if file == "index.html" {
            return ApiError(Error::new(
                ErrorCode::NotFound,
                "the web client is not built: run `npm ci && npm run build` in web/",
            ))
            .into_response();
        }
        return not_found();
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let csp = content_security_policy(host);
    // Hashed bundle names never change content; the page itself is revalidated.
    let cache = if file.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut resp = (StatusCode::OK, asset.data.into_owned()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(file)),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origin_rules() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(&none, &headers(&[("host", "a:1")])));
        assert!(origin_allowed(
            &none,
            &headers(&[("host", "a:1"), ("origin", "http://a:1")])
        ));
        assert!(!origin_allowed(
            &none,
            &headers(&[("host", "a:1"), ("origin", "http://evil:1")])
        ));
        assert!(!origin_allowed(
            &none,
            &headers(&[("host", "a:1"), ("origin", "null")])
        ));
        let allowed = vec!["https://care.example".to_string()];
        assert!(origin_allowed(
            &allowed,
            &headers(&[("host", "a:1"), ("origin", "https://care.example")])
        ));
    }

    #[test]
    fn token_from_subprotocol() {
        let h = headers(&[("sec-websocket-protocol", "tonari.v1, tonari-token.abc")]);
        assert_eq!(ws_protocol_token(&h), Some("abc"));
        assert_eq!(ws_protocol_token(&headers(&[])), None);
    }

    #[test]
    fn csp_ignores_odd_hosts() {
        assert!(content_security_policy(Some("a:1")).contains("ws://a:1"));
        assert!(!content_security_policy(Some("a; script-src *")).contains("script-src *"));
    }
}
