//! The audit chain: security events (logins, devices, rooms and their
//! membership changes) as an append-only, hash-chained log that anyone with
//! the log can verify (`tonari audit verify`). Entries carry ids and event
//! types, never message content.
//!
//! `hash(n) = SHA-256("tonari-audit-v1" ‖ prev_hash ‖ seq ‖ ts_ms ‖ event ‖
//! actor_user ‖ actor_device ‖ subject ‖ details)`, every field length- or
//! width-prefixed, with `prev_hash(1)` = 32 zero bytes. Editing, deleting or
//! reordering any entry breaks the chain at that entry. (Cutting entries off
//! the end cannot be seen from the log alone; keep the printed head hash
//! somewhere else to detect that.)

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A security event before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Stable snake_case type, e.g. `login`, `room_members_changed`.
    pub event: String,
    pub actor_user: Option<i64>,
    pub actor_device: Option<i64>,
    /// What it is about, as ids: `user:3`, `device:7`, `room:ab12…`.
    pub subject: String,
    /// More ids and codes as compact JSON (never content).
    pub details: String,
}

impl AuditEvent {
    pub fn new(
        event: &str,
        actor: Option<(i64, i64)>,
        subject: String,
        details: serde_json::Value,
    ) -> Self {
        AuditEvent {
            event: event.to_string(),
            actor_user: actor.map(|a| a.0),
            actor_device: actor.map(|a| a.1),
            subject,
            details: details.to_string(),
        }
    }
}

/// A chained entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    pub ts_ms: i64,
    pub event: AuditEvent,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

pub const GENESIS: [u8; 32] = [0u8; 32];

/// The hash of an entry given its predecessor's hash.
pub fn entry_hash(prev_hash: &[u8], seq: u64, ts_ms: i64, e: &AuditEvent) -> [u8; 32] {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    fn opt(h: &mut Sha256, v: Option<i64>) {
        match v {
            Some(v) => {
                h.update([1u8]);
                h.update(v.to_be_bytes());
            }
            None => h.update([0u8]),
        }
    }
    let mut h = Sha256::new();
    h.update(b"tonari-audit-v1");
    field(&mut h, prev_hash);
    h.update(seq.to_be_bytes());
    h.update(ts_ms.to_be_bytes());
    field(&mut h, e.event.as_bytes());
    opt(&mut h, e.actor_user);
    opt(&mut h, e.actor_device);
    field(&mut h, e.subject.as_bytes());
    field(&mut h, e.details.as_bytes());
    h.finalize().into()
}

/// Why the chain does not verify, naming the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "audit entry {expected} is missing (found entry {found} in its place): an entry was deleted or reordered"
    )]
    Missing { expected: u64, found: u64 },
    #[error(
        "audit entry {seq} does not follow entry {prev}: its link to the previous entry is wrong (deleted or reordered entries)"
    )]
    BadLink { seq: u64, prev: u64 },
    #[error("audit entry {seq} was changed: its hash does not match its content")]
    BadHash { seq: u64 },
}

impl ChainError {
    /// The first entry that fails.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Missing { expected, .. } => *expected,
            ChainError::BadLink { seq, .. } | ChainError::BadHash { seq } => *seq,
        }
    }
}

/// Verify the audit log of a database (opened read-only).
pub async fn verify_database(
    db: &crate::store::Database,
) -> Result<Result<(usize, [u8; 32]), ChainError>, crate::store::StoreError> {
    let store = crate::store::Store::open_read_only(db).await?;
    let entries = store.audit_entries().await;
    store.close().await;
    let entries = entries?;
    Ok(verify(&entries).map(|head| (entries.len(), head)))
}

/// Verify entries given in stored order (by seq). Returns the head hash.
pub fn verify(entries: &[AuditEntry]) -> Result<[u8; 32], ChainError> {
    let mut prev: [u8; 32] = GENESIS;
    for (i, e) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        if e.seq != expected {
            return Err(ChainError::Missing {
                expected,
                found: e.seq,
            });
        }
        if e.prev_hash != prev {
            return Err(ChainError::BadLink {
                seq: e.seq,
                prev: expected - 1,
            });
        }
        let h = entry_hash(&prev, e.seq, e.ts_ms, &e.event);
        if e.hash != h {
            return Err(ChainError::BadHash { seq: e.seq });
        }
        prev = h;
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|seq| {
                let event = AuditEvent::new(
                    "login",
                    Some((1, seq as i64)),
                    format!("user:{seq}"),
                    serde_json::json!({}),
                );
                let hash = entry_hash(&prev, seq, 1000 + seq as i64, &event).to_vec();
                let e = AuditEntry {
                    seq,
                    ts_ms: 1000 + seq as i64,
                    event,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies_and_tampering_names_the_first_bad_entry() {
        let c = chain(5);
        assert!(verify(&c).is_ok());
        let mut edited = c.clone();
        edited[2].event.subject = "user:99".into();
        assert_eq!(verify(&edited).unwrap_err(), ChainError::BadHash { seq: 3 });
        let mut deleted = c.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted).unwrap_err().seq(), 2);
        let mut swapped = c.clone();
        swapped.swap(1, 2);
        assert_eq!(verify(&swapped).unwrap_err().seq(), 2);
        // Renumbering after a deletion still breaks the link.
        let mut renumbered = c;
        renumbered.remove(1);
        for (i, e) in renumbered.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        assert_eq!(
            verify(&renumbered).unwrap_err(),
            ChainError::BadLink { seq: 2, prev: 1 }
        );
    }
}
