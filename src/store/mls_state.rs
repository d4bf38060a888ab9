//! openmls' `PublicStorageProvider` over our own store.
//!
//! Each room's public group state (ratchet tree, group context, interim
//! transcript hash, confirmation tag, queued proposals) is a handful of
//! key/value rows in the `room_state` table. [`RoomStateKv`] holds those rows
//! for one room in memory and records every write openmls makes as a pending
//! change; the delivery service persists the pending changes in the same
//! database transaction as the message that caused them, so the group state
//! and the ciphertext log can never disagree after a crash. The same code
//! serves every SQL backend because it never touches SQL itself.

use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{CURRENT_VERSION, traits};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Mutex;

const TREE: &str = "tree";
const CONTEXT: &str = "context";
const INTERIM_TRANSCRIPT_HASH: &str = "interim_transcript_hash";
const CONFIRMATION_TAG: &str = "confirmation_tag";
const PROPOSAL_PREFIX: &str = "proposal/";

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("group state codec: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("group state lock poisoned")]
    Poisoned,
}

#[derive(Default)]
struct Inner {
    values: BTreeMap<String, Vec<u8>>,
    /// Key → new value (None = deleted) since the last [`RoomStateKv::take_changes`].
    changes: BTreeMap<String, Option<Vec<u8>>>,
    next_proposal: u64,
}

/// The public group state of one room, as key/value rows.
#[derive(Default)]
pub struct RoomStateKv {
    inner: Mutex<Inner>,
}

/// A pending change to one `room_state` row (`None` deletes it).
pub type StateChange = (String, Option<Vec<u8>>);

impl RoomStateKv {
    /// Rebuild from the rows stored for a room.
    pub fn from_rows(rows: Vec<(String, Vec<u8>)>) -> Self {
        let next_proposal = rows
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(PROPOSAL_PREFIX)?.parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1);
        RoomStateKv {
            inner: Mutex::new(Inner {
                values: rows.into_iter().collect(),
                changes: BTreeMap::new(),
                next_proposal,
            }),
        }
    }

    /// The writes made since the last call, to persist with the message.
    pub fn take_changes(&self) -> Result<Vec<StateChange>, KvError> {
        let mut inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
        Ok(std::mem::take(&mut inner.changes).into_iter().collect())
    }

    /// All rows (used when a room is created).
    pub fn rows(&self) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
        Ok(inner
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn put<V: Serialize>(&self, key: &str, value: &V) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(value)?;
        let mut inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
        inner.values.insert(key.to_string(), bytes.clone());
        inner.changes.insert(key.to_string(), Some(bytes));
        Ok(())
    }

    fn get<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>, KvError> {
        let inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
        match inner.values.get(key) {
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes)?)),
            None => Ok(None),
        }
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        let mut inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
        if inner.values.remove(key).is_some() || inner.changes.contains_key(key) {
            inner.changes.insert(key.to_string(), None);
        }
        Ok(())
    }

    fn proposal_keys(inner: &Inner) -> Vec<String> {
        inner
            .values
            .keys()
            .filter(|k| k.starts_with(PROPOSAL_PREFIX))
            .cloned()
            .collect()
    }
}

// The rows belong to one room, so the group id argument only has to match the
// room the delivery service loaded; it is not part of the key.
impl PublicStorageProvider<CURRENT_VERSION> for RoomStateKv {
    type PublicError = KvError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _group_id: &G,
        tree: &T,
    ) -> Result<(), KvError> {
        self.put(TREE, tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
        hash: &H,
    ) -> Result<(), KvError> {
        self.put(INTERIM_TRANSCRIPT_HASH, hash)
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
        context: &C,
    ) -> Result<(), KvError> {
        self.put(CONTEXT, context)
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
        tag: &T,
    ) -> Result<(), KvError> {
        self.put(CONFIRMATION_TAG, tag)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
        proposal_ref: &R,
        proposal: &P,
    ) -> Result<(), KvError> {
        let key = {
            let mut inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
            let n = inner.next_proposal;
            inner.next_proposal += 1;
            format!("{PROPOSAL_PREFIX}{n:020}")
        };
        self.put(&key, &(proposal_ref, proposal))
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
    ) -> Result<Vec<(R, P)>, KvError> {
        let inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
        let mut out = Vec::new();
        for key in Self::proposal_keys(&inner) {
            if let Some(bytes) = inner.values.get(&key) {
                out.push(serde_json::from_slice(bytes)?);
            }
        }
        Ok(out)
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _group_id: &G,
    ) -> Result<Option<T>, KvError> {
        self.get(TREE)
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
    ) -> Result<Option<C>, KvError> {
        self.get(CONTEXT)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
    ) -> Result<Option<H>, KvError> {
        self.get(INTERIM_TRANSCRIPT_HASH)
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
    ) -> Result<Option<T>, KvError> {
        self.get(CONFIRMATION_TAG)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, _g: &G) -> Result<(), KvError> {
        self.delete(TREE)
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _g: &G,
    ) -> Result<(), KvError> {
        self.delete(CONFIRMATION_TAG)
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, _g: &G) -> Result<(), KvError> {
        self.delete(CONTEXT)
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _g: &G,
    ) -> Result<(), KvError> {
        self.delete(INTERIM_TRANSCRIPT_HASH)
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
        proposal_ref: &R,
    ) -> Result<(), KvError> {
        let wanted = serde_json::to_value(proposal_ref)?;
        let victims: Vec<String> = {
            let inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
            let mut v = Vec::new();
            for key in Self::proposal_keys(&inner) {
                let Some(bytes) = inner.values.get(&key) else {
                    continue;
                };
                let (r, _): (serde_json::Value, serde_json::Value) = serde_json::from_slice(bytes)?;
                if r == wanted {
                    v.push(key);
                }
            }
            v
        };
        for key in victims {
            self.delete(&key)?;
        }
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
    ) -> Result<(), KvError> {
        let keys = {
            let inner = self.inner.lock().map_err(|_| KvError::Poisoned)?;
            Self::proposal_keys(&inner)
        };
        for key in keys {
            self.delete(&key)?;
        }
        Ok(())
    }
}
