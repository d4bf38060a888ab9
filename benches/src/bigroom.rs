//! Scenario (e): a room with many member devices, then one more member added
//! by a commit submitted over raw HTTP to read the server's validation time.

use crate::server::{Server, Usage};
use crate::setup::{self, LOGIN_CONCURRENCY, PASSWORD};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use std::path::Path;
use std::time::Instant;
use tonari_sdk::Client;
use tonari_wire::{Ack, B64, ErrorBody, SubmitRequest, paths};

pub struct Outcome {
    pub bulk_devices: usize,
    pub login_secs: f64,
    pub invite_secs: f64,
    pub invite_seq: u64,
    pub commit_bytes: usize,
    pub welcome_bytes: usize,
    pub craft_ms: f64,
    pub rtt_ms: f64,
    /// `validate;dur=` of the `Server-Timing` header, when the server sent it.
    pub validate_ms: Option<f64>,
    pub server_timing: Option<String>,
    pub ack_seq: u64,
    pub before: Usage,
    pub after: Usage,
}

pub async fn run(server: &Server, client_root: &Path, n: usize) -> Result<Outcome> {
    let url = server.url.as_str();
    let owner = setup::user_with_device(url, client_root, "owner00", "owner00").await?;
    Client::register(url, "bulk", PASSWORD)
        .await
        .map_err(|e| anyhow!("registering bulk: {e}"))?;
    let t0 = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let done = &done;
            async move {
                // The device (keys, key packages) stays on disk; the client
                // itself is not needed again.
                setup::device(url, client_root, "bulk", &format!("bulk{i:05}")).await?;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if d.is_multiple_of(100) {
                    eprintln!(
                        "  {d}/{n} bulk devices logged in ({:.0}s)",
                        t0.elapsed().as_secs_f64()
                    );
                }
                Ok(())
            }
        })
        .buffer_unordered(LOGIN_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let login_secs = t0.elapsed().as_secs_f64();
    eprintln!("  {n} bulk device logins in {login_secs:.1}s");
    setup::user_with_device(url, client_root, "extra00", "extra00").await?;

    let room = owner
        .client
        .create_room()
        .await
        .map_err(|e| anyhow!("creating the room: {e}"))?;
    let t1 = Instant::now();
    let invite = owner
        .client
        .invite(&room, "bulk")
        .await
        .map_err(|e| anyhow!("inviting {n} bulk devices: {e}"))?;
    let invite_secs = t1.elapsed().as_secs_f64();
    eprintln!(
        "  invite of {n} devices in one commit: {invite_secs:.1}s (seq {}, epoch {})",
        invite.seq, invite.epoch
    );

    let kps = owner
        .client
        .testing_claim("extra00")
        .await
        .map_err(|e| anyhow!("claiming extra00: {e}"))?;
    let (_, kp) = kps
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("extra00 has no key package"))?;
    let t2 = Instant::now();
    let (commit, welcome) = owner
        .client
        .craft_add_commit_unchecked(&room, &kp)
        .map_err(|e| anyhow!("building the add commit: {e}"))?;
    let craft_ms = t2.elapsed().as_secs_f64() * 1e3;
    let commit_bytes = commit.len();
    let welcome_bytes = welcome.len();
    let body = serde_json::to_vec(&SubmitRequest {
        txn_id: "bench-add-extra".into(),
        message: B64(commit),
        welcome: Some(B64(welcome)),
    })?;
    let http = reqwest::Client::new();
    let endpoint = format!(
        "{url}{}",
        paths::fill(paths::ROOM_MESSAGES, &[("room_id", &room)])
    );
    let before = server.usage()?;
    let t3 = Instant::now();
    let resp = http
        .post(&endpoint)
        .header(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", owner.token),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .context("submitting the add commit")?;
    let status = resp.status();
    let server_timing = resp
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.bytes().await.context("reading the submit answer")?;
    let rtt_ms = t3.elapsed().as_secs_f64() * 1e3;
    let after = server.usage()?;
    if !status.is_success() {
        let why = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        bail!("the add commit was refused ({status}): {why}");
    }
    let ack: Ack = serde_json::from_slice(&bytes).context("parsing the ack")?;
    let validate_ms = server_timing.as_deref().and_then(validate_dur);
    Ok(Outcome {
        bulk_devices: n,
        login_secs,
        invite_secs,
        invite_seq: invite.seq,
        commit_bytes,
        welcome_bytes,
        craft_ms,
        rtt_ms,
        validate_ms,
        server_timing,
        ack_seq: ack.seq,
        before,
        after,
    })
}

/// `dur` of the `validate` metric in a `Server-Timing` header value.
pub fn validate_dur(header: &str) -> Option<f64> {
    header.split(',').find_map(|metric| {
        let mut parts = metric.split(';').map(str::trim);
        if parts.next()? != "validate" {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("dur=")?.trim_matches('"').parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::validate_dur;

    #[test]
    fn server_timing() {
        assert_eq!(validate_dur("validate;dur=12.5"), Some(12.5));
        assert_eq!(
            validate_dur("db;dur=3, validate;desc=\"x\";dur=7"),
            Some(7.0)
        );
        assert_eq!(validate_dur("db;dur=3"), None);
    }
}
