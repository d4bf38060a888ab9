//! The MLS Delivery Service: rooms, their public group state, ordering,
//! validation of every handshake, durable append and fan-out.
//!
//! Per room, one async lock serializes acceptance: under it the server
//! checks idempotency (txn id), validates the message against the room's
//! `PublicGroup`, appends it with the next seq and all state changes in ONE
//! durable transaction, and only then updates memory, publishes and acks.

use crate::accounts::{AuthDevice, now_ms};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::fanout::{Delivery, Hub};
use crate::mls::{self, CIPHERSUITE};
use crate::policy;
use crate::store::writer::{Completion, Job, Writer};
use crate::store::{Append, RoomStateKv, Store, StoredMessage};
use axum::extract::ws::Utf8Bytes;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonari_wire::{
    Ack, Action, B64, CreateRoomRequest, Envelope, ErrorCode, Grounds, MessageKind, MessagePage,
    RoomInfo, RoomSettings, ServerFrame, SubmitRequest, WelcomeEnvelope,
};

/// Largest history page.
pub const MAX_PAGE: u32 = 500;
/// Longest client transaction id.
const MAX_TXN_ID: usize = 128;

/// A room as the delivery service holds it in memory.
struct Room {
    id: String,
    group_id: GroupId,
    epoch: u64,
    last_seq: u64,
    members: HashSet<i64>,
    pg: PublicGroup,
    kv: RoomStateKv,
    /// Set when a queued write of this room failed: memory is ahead of disk.
    poisoned: Arc<AtomicBool>,
    /// Messages queued for the writer and not yet durable: while any are,
    /// memory is ahead of disk and the room must stay cached.
    pending: Arc<AtomicUsize>,
    /// Hashes of every (sender device, txn id) of the room, accepted or queued.
    txn_hashes: HashSet<u64>,
    /// Patient and policy, from the group context.
    settings: RoomSettings,
    /// Users whose consent was revoked: the next commit must remove them.
    revoked: HashSet<i64>,
}

type RoomSlot = Arc<tokio::sync::Mutex<Option<Room>>>;

#[derive(Default)]
struct CachedRoom {
    slot: RoomSlot,
    last_used: u64,
}

/// The rooms held in memory, with a use counter for eviction.
#[derive(Default)]
struct RoomCache {
    map: HashMap<String, CachedRoom>,
    tick: u64,
}

impl RoomCache {
    /// Drop least recently used rooms that nobody is using and that have
    /// nothing on its way to disk, until at most `keep` remain.
    fn evict_idle(&mut self, keep: usize) {
        let mut idle: Vec<(u64, String)> = self
            .map
            .iter()
            .filter(|(_, r)| {
                Arc::strong_count(&r.slot) == 1
                    && r.slot.try_lock().is_ok_and(|g| {
                        g.as_ref()
                            .is_none_or(|room| room.pending.load(Ordering::Acquire) == 0)
                    })
            })
            .map(|(k, r)| (r.last_used, k.clone()))
            .collect();
        idle.sort_unstable();
        let excess = self.map.len().saturating_sub(keep);
        for (_, room_id) in idle.into_iter().take(excess) {
            tracing::debug!(room_id, "room evicted from memory");
            self.map.remove(&room_id);
        }
    }
}

type InFlightKey = (String, i64, String);

/// A message queued for durability, for retries that arrive meanwhile.
#[derive(Clone)]
struct InFlight {
    digest: [u8; 32],
    result: watch::Receiver<Option<Result<Ack, String>>>,
}

pub struct DeliveryService {
    store: Store,
    hub: Arc<Hub>,
    writer: Writer,
    rooms: Mutex<RoomCache>,
    /// Most rooms kept in memory; idle ones beyond it are dropped (reloaded
    /// from the store on next use).
    room_cache_max: usize,
    inflight: Arc<Mutex<HashMap<InFlightKey, InFlight>>>,
    metrics: Arc<crate::metrics::Metrics>,
    cluster: Arc<crate::cluster::Cluster>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The audit entry of a commit that changes who is in the room.
fn membership_audit(auth: AuthDevice, room_id: &str, seq: u64, a: &Accepted) -> Vec<AuditEvent> {
    if a.kind != MessageKind::Commit || (a.added.is_empty() && a.removed.is_empty()) {
        return Vec::new();
    }
    vec![AuditEvent::new(
        "room_members_changed",
        Some((auth.user_id, auth.device_id)),
        format!("room:{room_id}"),
        serde_json::json!({
            "seq": seq,
            "epoch_after": a.epoch_after,
            "added_devices": a.added,
            "removed_devices": a.removed,
            "decision": "allowed",
            "grounds": a.grounds.iter().map(|(device, action, g)| serde_json::json!({
                "device": device, "action": action, "grounds": g,
            })).collect::<Vec<_>>(),
        }),
    )]
}

fn txn_hash(device_id: i64, txn_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    device_id.hash(&mut h);
    txn_id.hash(&mut h);
    h.finish()
}

fn txn_reused() -> Error {
    Error::new(
        ErrorCode::TxnIdReused,
        "this txn_id was already used for a different message",
    )
}

enum PendingState {
    Done(Ack),
    Waiting(watch::Receiver<Option<Result<Ack, String>>>),
}

/// A validated message on its way to disk.
pub struct Pending {
    state: PendingState,
    duplicate: bool,
    /// Time spent validating (under the room lock).
    pub validated: Duration,
    /// PostgreSQL shared by several processes: what to validate again if
    /// another process took this seq first.
    retry: Option<Box<(AuthDevice, String, SubmitRequest)>>,
}

/// How often a message is validated again after losing a seq race against
/// another server process.
const SEQ_RACE_RETRIES: usize = 8;

/// The writer's error when another process took the seq first.
fn is_seq_race(e: &str) -> bool {
    e.contains("room seq moved")
}

impl Pending {
    fn done(ack: Ack, started: Instant) -> Self {
        Pending {
            state: PendingState::Done(ack),
            duplicate: true,
            validated: started.elapsed(),
            retry: None,
        }
    }

    fn waiting(
        rx: watch::Receiver<Option<Result<Ack, String>>>,
        duplicate: bool,
        started: Instant,
    ) -> Self {
        Pending {
            state: PendingState::Waiting(rx),
            duplicate,
            validated: started.elapsed(),
            retry: None,
        }
    }

    /// Wait until the message is durable; the ack. If another server
    /// process sharing the database took the seq first, the message is
    /// validated again against the room as it is now (an application message
    /// then gets a later seq, a commit for a past epoch `epoch_conflict`).
    pub async fn durable(self, delivery: &DeliveryService) -> Result<Ack> {
        let mut pending = self;
        let mut races = 0;
        loop {
            let retry = pending.retry.take();
            match pending.wait().await {
                Outcome::Ack(ack) => return Ok(ack),
                Outcome::Failed(e) => return Err(e),
                Outcome::Race(e) => match retry {
                    Some(r) if races < SEQ_RACE_RETRIES => {
                        races += 1;
                        let (auth, room_id, req) = *r;
                        pending = delivery.enqueue(auth, &room_id, req).await?;
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    async fn wait(self) -> Outcome {
        let mut ack = match self.state {
            PendingState::Done(ack) => ack,
            PendingState::Waiting(mut rx) => {
                let outcome = match rx.wait_for(Option::is_some).await {
                    Ok(o) => o.clone(),
                    Err(_) => {
                        return Outcome::Failed(Error::internal("the writer dropped a message"));
                    }
                };
                match outcome {
                    Some(Ok(ack)) => ack,
                    Some(Err(e)) if is_seq_race(&e) => {
                        return Outcome::Race(Error::new(
                            ErrorCode::Unavailable,
                            "the room changed on another server meanwhile; retry with the same txn_id",
                        ));
                    }
                    Some(Err(e)) => return Outcome::Failed(Error::internal(e)),
                    None => return Outcome::Failed(Error::internal("no outcome")),
                }
            }
        };
        ack.duplicate = self.duplicate;
        Outcome::Ack(ack)
    }
}

enum Outcome {
    Ack(Ack),
    /// Another server process took the seq first.
    Race(Error),
    Failed(Error),
}

/// What a validated message changes, before it is made durable.
struct Accepted {
    kind: MessageKind,
    epoch: u64,
    epoch_after: u64,
    added: Vec<i64>,
    removed: Vec<i64>,
    welcome: Option<Vec<u8>>,
    /// Why each membership change was allowed.
    grounds: Vec<(i64, Action, Grounds)>,
}

impl Accepted {
    fn plain(kind: MessageKind, epoch: u64) -> Accepted {
        Accepted {
            kind,
            epoch,
            epoch_after: epoch,
            added: vec![],
            removed: vec![],
            welcome: None,
            grounds: vec![],
        }
    }
}

/// Users whose latest consent in the room is a revocation.
fn revoked_users(consents: &[crate::store::care::ConsentRow]) -> HashSet<i64> {
    let mut latest: HashMap<i64, bool> = HashMap::new();
    for c in consents {
        latest.insert(c.subject_user, c.granted);
    }
    latest
        .into_iter()
        .filter(|(_, granted)| !granted)
        .map(|(user, _)| user)
        .collect()
}

pub fn envelope_of(m: &StoredMessage) -> Envelope {
    Envelope {
        room_id: m.room_id.clone(),
        seq: m.seq,
        kind: m.kind,
        epoch: m.epoch,
        sender_device: m.sender_device,
        ts_ms: m.ts_ms,
        message: B64(m.data.clone()),
    }
}

pub fn frame_text(frame: &ServerFrame) -> Result<Utf8Bytes> {
    serde_json::to_string(frame)
        .map(Utf8Bytes::from)
        .map_err(Error::internal)
}

fn ack_of(m: &StoredMessage, duplicate: bool) -> Ack {
    Ack {
        room_id: m.room_id.clone(),
        seq: m.seq,
        epoch: if m.kind == MessageKind::Commit {
            m.epoch + 1
        } else {
            m.epoch
        },
        kind: m.kind,
        duplicate,
    }
}

fn room_not_found() -> Error {
    Error::new(ErrorCode::RoomNotFound, "no such room")
}

fn epoch_conflict(current: u64, got: u64) -> Error {
    Error::new(
        ErrorCode::EpochConflict,
        format!(
            "the room is at epoch {current}, the message is for epoch {got}: catch up and retry"
        ),
    )
}

impl DeliveryService {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        writer: Writer,
        room_cache_max: usize,
        metrics: Arc<crate::metrics::Metrics>,
        cluster: Arc<crate::cluster::Cluster>,
    ) -> Self {
        DeliveryService {
            cluster,
            store,
            hub,
            writer,
            metrics,
            rooms: Mutex::new(RoomCache::default()),
            room_cache_max: room_cache_max.max(1),
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn slot(&self, room_id: &str) -> RoomSlot {
        let mut cache = lock(&self.rooms);
        cache.tick += 1;
        let tick = cache.tick;
        let entry = cache.map.entry(room_id.to_string()).or_default();
        entry.last_used = tick;
        let slot = entry.slot.clone();
        if cache.map.len() > self.room_cache_max {
            cache.evict_idle(self.room_cache_max - self.room_cache_max / 10);
        }
        slot
    }

    fn forget(&self, room_id: &str) {
        lock(&self.rooms).map.remove(room_id);
    }

    async fn load(&self, room_id: &str) -> Result<Option<Room>> {
        let Some(row) = self.store.load_room(room_id).await? else {
            return Ok(None);
        };
        let group_id = GroupId::from_slice(
            &hex::decode(room_id).map_err(|_| Error::internal("stored room id is not hex"))?,
        );
        let kv = RoomStateKv::from_rows(row.state);
        let txn_hashes = self
            .store
            .txn_ids(room_id)
            .await?
            .iter()
            .map(|(device, txn)| txn_hash(*device, txn))
            .collect();
        let pg = PublicGroup::load(&kv, &group_id)
            .map_err(Error::internal)?
            .ok_or_else(|| Error::internal("room has no public group state"))?;
        let settings = policy::room_settings(&pg)?;
        let revoked = revoked_users(&self.store.consents(room_id).await?);
        Ok(Some(Room {
            settings,
            revoked,
            id: row.id,
            group_id,
            epoch: row.epoch,
            last_seq: row.last_seq,
            members: row.members.into_iter().collect(),
            pg,
            kv,
            poisoned: Arc::new(AtomicBool::new(false)),
            pending: Arc::new(AtomicUsize::new(0)),
            txn_hashes,
        }))
    }

    /// Create a room from the creator's GroupInfo and ratchet tree.
    pub async fn create_room(&self, auth: AuthDevice, req: CreateRoomRequest) -> Result<RoomInfo> {
        let MlsMessageBodyIn::GroupInfo(vgi) = mls::parse_message(&req.group_info.0)? else {
            return Err(Error::invalid_mls(
                "group_info must be a GroupInfo",
                "wire format",
            ));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(&req.ratchet_tree.0)
            .map_err(|e| Error::invalid_mls("ratchet_tree does not parse", e))?;
        let kv = RoomStateKv::default();
        let (pg, _group_info) =
            PublicGroup::from_external(mls::crypto(), &kv, tree, vgi, ProposalStore::new())
                .map_err(|e| Error::invalid_mls("the group state does not verify", e))?;
        if pg.ciphersuite() != CIPHERSUITE {
            return Err(Error::invalid_mls(
                "rooms must use ciphersuite 0x0001",
                "ciphersuite",
            ));
        }
        let members: Vec<Member> = pg.members().collect();
        let [creator] = members.as_slice() else {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "a new room must have exactly one member: the creating device",
            ));
        };
        let id = mls::identity_of(&creator.credential).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownDeviceKey,
                "the creator's credential is not a Tonari device identity",
            )
        })?;
        if id.device_id != auth.device_id || id.user_id != auth.user_id {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "the room's only member must be the creating device",
            ));
        }
        let device = self.store.device(auth.device_id).await?;
        mls::matches_directory(id, &creator.signature_key, device.as_ref())?;
        if !auth.role.is_clinical() {
            return Err(Error::new(
                ErrorCode::Forbidden,
                format!(
                    "the {} role may not create rooms (clinical roles do)",
                    auth.role
                ),
            ));
        }
        let settings = policy::room_settings(&pg)?;
        let room_id = hex::encode(pg.group_id().as_slice());
        if room_id.is_empty() || room_id.len() > 128 {
            return Err(Error::invalid_mls(
                "group id must be 1-64 bytes",
                "group id",
            ));
        }
        let epoch = pg.group_context().epoch().as_u64();
        let rows = kv.rows().map_err(Error::internal)?;
        let _ = kv.take_changes();
        if !self
            .store
            .create_room(
                &room_id,
                epoch,
                auth.device_id,
                now_ms(),
                settings.patient_network_id.as_deref(),
                &rows,
            )
            .await?
        {
            return Err(Error::new(
                ErrorCode::RoomExists,
                "a room with this id exists",
            ));
        }
        tracing::info!(room_id, device_id = auth.device_id, "room created");
        self.writer
            .audit(AuditEvent::new(
                "room_created",
                Some((auth.user_id, auth.device_id)),
                format!("room:{room_id}"),
                serde_json::json!({
                    "epoch": epoch,
                    "care_room": settings.patient_network_id.is_some(),
                }),
            ))
            .await;
        Ok(RoomInfo {
            room_id,
            epoch,
            last_seq: 0,
            member_devices: vec![auth.device_id],
            settings,
        })
    }

    /// A consent (grant or revocation) was recorded for `user_id`.
    pub async fn note_consent(&self, room_id: &str, user_id: i64, granted: bool) {
        let slot = self.slot(room_id);
        let mut guard = slot.lock().await;
        if let Some(room) = guard.as_mut() {
            if granted {
                room.revoked.remove(&user_id);
            } else {
                room.revoked.insert(user_id);
            }
        }
    }

    /// The settings of a room (the patient may consent without being a member).
    pub async fn room_settings_any(&self, room_id: &str) -> Result<RoomSettings> {
        let slot = self.slot(room_id);
        let mut guard = slot.lock().await;
        self.ensure_loaded(room_id, &mut guard).await?;
        let room = guard.as_ref().ok_or_else(room_not_found)?;
        Ok(room.settings.clone())
    }

    pub async fn room_info(&self, auth: AuthDevice, room_id: &str) -> Result<RoomInfo> {
        let slot = self.slot(room_id);
        let mut guard = slot.lock().await;
        self.ensure_fresh(room_id, &mut guard).await?;
        let room = guard.as_ref().ok_or_else(room_not_found)?;
        if !room.members.contains(&auth.device_id) {
            return Err(not_a_member());
        }
        let mut member_devices: Vec<i64> = room.members.iter().copied().collect();
        member_devices.sort_unstable();
        Ok(RoomInfo {
            room_id: room.id.clone(),
            epoch: room.epoch,
            last_seq: room.last_seq,
            member_devices,
            settings: room.settings.clone(),
        })
    }

    pub async fn rooms_of(&self, auth: AuthDevice) -> Result<Vec<RoomInfo>> {
        let mut out = Vec::new();
        for (room_id, _, _) in self.store.rooms_of_device(auth.device_id).await? {
            match self.room_info(auth, &room_id).await {
                Ok(info) => out.push(info),
                Err(e) if e.code == ErrorCode::NotAMember => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// [`Self::ensure_loaded`], and on PostgreSQL (which other server
    /// processes may share) reload the room if it moved on there. Two
    /// processes racing for the same seq are stopped by the writer's guard;
    /// the loser's senders get 503 and retry.
    async fn ensure_fresh(&self, room_id: &str, slot: &mut Option<Room>) -> Result<()> {
        self.ensure_loaded(room_id, slot).await?;
        if self.store.database().is_postgres()
            && let Some(room) = slot.as_ref()
            && room.pending.load(Ordering::Acquire) == 0
            && self.store.room_last_seq(room_id).await? != Some(room.last_seq)
        {
            *slot = None;
            self.ensure_loaded(room_id, slot).await?;
        }
        Ok(())
    }

    async fn ensure_loaded(&self, room_id: &str, slot: &mut Option<Room>) -> Result<()> {
        if slot.is_none() {
            match self.load(room_id).await? {
                Some(room) => *slot = Some(room),
                None => {
                    self.forget(room_id);
                    return Err(room_not_found());
                }
            }
        }
        Ok(())
    }

    /// Accept one MLS message for a room. Returns the ack once durable.
    pub async fn submit(&self, auth: AuthDevice, room_id: &str, req: SubmitRequest) -> Result<Ack> {
        self.enqueue(auth, room_id, req).await?.durable(self).await
    }

    /// Validate a message and queue it for the group-commit writer. Messages
    /// of one room are validated and queued in order under the room lock;
    /// the returned [`Pending`] resolves once the message is durable.
    pub async fn enqueue(
        &self,
        auth: AuthDevice,
        room_id: &str,
        req: SubmitRequest,
    ) -> Result<Pending> {
        let res = self.enqueue_inner(auth, room_id, req).await;
        if let Err(e) = &res {
            self.metrics.refused(e.code.as_str());
        }
        res
    }

    async fn enqueue_inner(
        &self,
        auth: AuthDevice,
        room_id: &str,
        req: SubmitRequest,
    ) -> Result<Pending> {
        if req.txn_id.is_empty() || req.txn_id.len() > MAX_TXN_ID {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "txn_id must be 1-128 bytes",
            ));
        }
        let started = Instant::now();
        let retry = self
            .store
            .database()
            .is_postgres()
            .then(|| Box::new((auth, room_id.to_string(), req.clone())));
        let key = (room_id.to_string(), auth.device_id, req.txn_id.clone());
        let slot = self.slot(room_id);
        let mut guard = slot.lock().await;
        if guard
            .as_ref()
            .is_some_and(|r| r.poisoned.load(Ordering::Acquire))
        {
            *guard = None;
        }
        self.ensure_fresh(room_id, &mut guard).await?;

        // Idempotency first: a retry of an accepted message gets its first
        // ack, even though the room has moved on since. The room keeps the
        // hashes of all its txn ids, so only a likely retry costs a lookup.
        let txn_hash = txn_hash(auth.device_id, &req.txn_id);
        let digest: [u8; 32] = Sha256::digest(&req.message.0).into();
        let seen = guard
            .as_ref()
            .is_some_and(|r| r.txn_hashes.contains(&txn_hash));
        if seen {
            let in_flight = lock(&self.inflight).get(&key).cloned();
            if let Some(entry) = in_flight {
                if entry.digest != digest {
                    return Err(txn_reused());
                }
                return Ok(Pending::waiting(entry.result, true, started));
            }
            // Not in flight any more, so it is on disk (or the hash collided).
            if let Some(prev) = self
                .store
                .find_txn(room_id, auth.device_id, &req.txn_id)
                .await?
            {
                if prev.data != req.message.0 {
                    return Err(txn_reused());
                }
                return Ok(Pending::done(ack_of(&prev, true), started));
            }
        }

        let room = guard.as_mut().ok_or_else(room_not_found)?;
        if !room.members.contains(&auth.device_id) {
            return Err(not_a_member());
        }
        let accepted = match self.validate(auth, room, &req).await {
            Ok(a) => a,
            Err(e) => {
                // Validation changes the group only through the KV; if it
                // did, drop the cached room so it reloads from disk.
                if room
                    .kv
                    .take_changes()
                    .map(|c| !c.is_empty())
                    .unwrap_or(true)
                {
                    *guard = None;
                }
                if e.code == ErrorCode::PolicyViolation {
                    self.writer
                        .audit(AuditEvent::new(
                            "room_commit_refused",
                            Some((auth.user_id, auth.device_id)),
                            format!("room:{room_id}"),
                            serde_json::json!({ "decision": "refused", "code": e.code.as_str() }),
                        ))
                        .await;
                }
                return Err(e);
            }
        };
        let state_changes = match room.kv.take_changes() {
            Ok(c) => c,
            Err(e) => {
                *guard = None;
                return Err(Error::internal(e));
            }
        };
        let seq = room.last_seq + 1;
        let audit = membership_audit(auth, &room.id, seq, &accepted);
        let message = StoredMessage {
            room_id: room.id.clone(),
            seq,
            kind: accepted.kind,
            epoch: accepted.epoch,
            sender_device: auth.device_id,
            txn_id: req.txn_id,
            ts_ms: now_ms(),
            data: req.message.0,
        };
        let ack = ack_of(&message, false);
        let frame = frame_text(&ServerFrame::Message {
            envelope: envelope_of(&message),
        })?;
        let append = Append {
            message,
            epoch_after: accepted.epoch_after,
            state_changes,
            added_devices: accepted.added.clone(),
            removed_devices: accepted.removed.clone(),
            audit,
            welcome: accepted.welcome.map(|w| (w, accepted.added.clone())),
        };
        // Memory moves ahead of disk now; if the write fails, `poisoned`
        // makes the next user reload the room from the store.
        room.last_seq = append.message.seq;
        room.epoch = append.epoch_after;
        for d in &append.removed_devices {
            room.members.remove(d);
        }
        room.members.extend(append.added_devices.iter().copied());

        let (result_tx, result_rx) = watch::channel(None);
        room.txn_hashes.insert(txn_hash);
        lock(&self.inflight).insert(
            key.clone(),
            InFlight {
                digest,
                result: result_rx.clone(),
            },
        );
        room.pending.fetch_add(1, Ordering::AcqRel);
        let done = self.completion(
            &append,
            ack,
            frame,
            (room.poisoned.clone(), room.pending.clone()),
            key,
            (result_tx, started),
        );
        let validated = started.elapsed();
        if let Err(stopped) = self.writer.submit(Job { append, done }).await {
            room.poisoned.store(true, Ordering::Release);
            if let Some(job) = stopped.0 {
                (job.done)(Err(Arc::new(crate::store::StoreError::Corrupt(
                    "the writer has stopped",
                ))));
            }
            return Err(Error::new(
                ErrorCode::Unavailable,
                "the server is shutting down; retry with the same txn_id",
            ));
        }
        drop(guard);
        Ok(Pending {
            state: PendingState::Waiting(result_rx),
            duplicate: false,
            validated,
            retry,
        })
    }

    /// What happens once the writer made a message durable (or failed):
    /// fan-out, welcome notices, the ack, in seq order.
    fn completion(
        &self,
        append: &Append,
        ack: Ack,
        frame: Utf8Bytes,
        (poisoned, pending): (Arc<AtomicBool>, Arc<AtomicUsize>),
        key: InFlightKey,
        (result, started): (watch::Sender<Option<Result<Ack, String>>>, Instant),
    ) -> Completion {
        let hub = self.hub.clone();
        let metrics = self.metrics.clone();
        let cluster = self.cluster.clone();
        let inflight = self.inflight.clone();
        let removed = append.removed_devices.clone();
        let welcome = append
            .welcome
            .as_ref()
            .map(|(data, devices)| (data.clone(), devices.clone()));
        let device_id = append.message.sender_device;
        Box::new(move |outcome| {
            match outcome {
                Ok(durable) => {
                    cluster.publish_room(&ack.room_id, ack.seq, &frame, &removed);
                    hub.publish(
                        &ack.room_id,
                        Delivery {
                            seq: ack.seq,
                            frame,
                            removed,
                        },
                    );
                    if let (Some((data, devices)), Some(welcome_id)) = (welcome, durable.welcome_id)
                    {
                        let frame = frame_text(&ServerFrame::Welcome {
                            welcome: WelcomeEnvelope {
                                welcome_id,
                                room_id: ack.room_id.clone(),
                                commit_seq: ack.seq,
                                welcome: B64(data),
                            },
                        });
                        if let Ok(frame) = frame {
                            for d in devices {
                                cluster.notify_device(d, &frame);
                                hub.notify_device(d, frame.clone());
                            }
                        }
                    }
                    tracing::debug!(
                        room_id = %ack.room_id,
                        seq = ack.seq,
                        kind = ?ack.kind,
                        device_id,
                        "message accepted"
                    );
                    let kind = crate::store::kind_str(ack.kind);
                    metrics
                        .accepted
                        .get_or_create(&crate::metrics::KindLabel { kind: kind.into() })
                        .inc();
                    if ack.kind == MessageKind::Commit {
                        metrics
                            .commit_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    let _ = result.send(Some(Ok(ack)));
                }
                Err(e) => {
                    poisoned.store(true, Ordering::Release);
                    let _ = result.send(Some(Err(e.to_string())));
                }
            }
            lock(&inflight).remove(&key);
            pending.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Validate a message against the room. Only the KV (pending changes)
    /// and `room.pg` may change here, and only for a valid message.
    async fn validate(
        &self,
        auth: AuthDevice,
        room: &mut Room,
        req: &SubmitRequest,
    ) -> Result<Accepted> {
        match mls::parse_message(&req.message.0)? {
            MlsMessageBodyIn::PrivateMessage(pm) => {
                if pm.content_type() != ContentType::Application {
                    return Err(Error::new(
                        ErrorCode::EncryptedHandshake,
                        "proposals and commits must be sent as PublicMessage",
                    ));
                }
                if pm.group_id() != &room.group_id {
                    return Err(Error::invalid_mls(
                        "the message belongs to another room",
                        "group id",
                    ));
                }
                let epoch = pm.epoch().as_u64();
                if epoch != room.epoch {
                    return Err(epoch_conflict(room.epoch, epoch));
                }
                if req.welcome.is_some() {
                    return Err(Error::new(
                        ErrorCode::WelcomeMismatch,
                        "only a commit that adds members carries a welcome",
                    ));
                }
                Ok(Accepted::plain(MessageKind::Application, epoch))
            }
            MlsMessageBodyIn::PublicMessage(pm) => {
                if pm.content_type() == ContentType::Application {
                    return Err(Error::invalid_mls(
                        "application messages must be encrypted (PrivateMessage)",
                        "content type",
                    ));
                }
                if pm.group_id() != &room.group_id {
                    return Err(Error::invalid_mls(
                        "the message belongs to another room",
                        "group id",
                    ));
                }
                let epoch = pm.epoch().as_u64();
                if epoch != room.epoch {
                    return Err(epoch_conflict(room.epoch, epoch));
                }
                let Sender::Member(leaf_index) = *pm.sender() else {
                    return Err(Error::new(
                        ErrorCode::Forbidden,
                        "only members may send proposals and commits",
                    ));
                };
                let sender_id = room
                    .pg
                    .leaf(leaf_index)
                    .and_then(|leaf| mls::identity_of(leaf.credential()));
                if sender_id != Some(auth.identity()) {
                    return Err(Error::new(
                        ErrorCode::NotAMember,
                        "the MLS sender is not this device",
                    ));
                }
                let processed = room
                    .pg
                    .process_message(mls::crypto(), ProtocolMessage::from(pm))
                    .map_err(|e| Error::invalid_mls("the handshake does not verify", e))?;
                let aad = processed.aad().to_vec();
                match processed.into_content() {
                    ProcessedMessageContent::ProposalMessage(q) => {
                        if req.welcome.is_some() {
                            return Err(Error::new(
                                ErrorCode::WelcomeMismatch,
                                "only a commit that adds members carries a welcome",
                            ));
                        }
                        self.check_proposal(&q, leaf_index).await?;
                        room.pg
                            .add_proposal(&room.kv, *q)
                            .map_err(Error::internal)?;
                        Ok(Accepted::plain(MessageKind::Proposal, epoch))
                    }
                    ProcessedMessageContent::StagedCommitMessage(staged) => {
                        let (added, added_refs) = self.check_commit_adds(&staged).await?;
                        if let Some(leaf) = staged.update_path_leaf_node() {
                            let (id, key) = mls::leaf_identity(leaf)?;
                            if id.device_id != auth.device_id {
                                return Err(Error::new(
                                    ErrorCode::Forbidden,
                                    "a commit may not change the committer's identity",
                                ));
                            }
                            let device = self.store.device(id.device_id).await?;
                            mls::matches_directory(id, &key, device.as_ref())?;
                        }
                        for update in staged.update_proposals() {
                            let (id, key) =
                                mls::leaf_identity(update.update_proposal().leaf_node())?;
                            let device = self.store.device(id.device_id).await?;
                            mls::matches_directory(id, &key, device.as_ref())?;
                        }
                        let proposed = policy::changes(&room.pg, &staged)?;
                        let grounds = policy::decide(
                            &self.store,
                            &room.id,
                            &room.settings,
                            auth.identity(),
                            &aad,
                            &proposed,
                        )
                        .await?;
                        let removed: Vec<i64> = proposed
                            .iter()
                            .filter(|p| p.action == Action::Remove)
                            .map(|p| p.target.device_id)
                            .collect();
                        // A revoked consent: the commit must take those people out.
                        // (Another server process may have recorded one.)
                        if self.store.database().is_postgres() {
                            room.revoked = revoked_users(&self.store.consents(&room.id).await?);
                        }
                        if let Some(stays) = room.pg.members().find_map(|m| {
                            mls::identity_of(&m.credential).filter(|id| {
                                room.revoked.contains(&id.user_id)
                                    && !removed.contains(&id.device_id)
                            })
                        }) {
                            return Err(policy::violation(format!(
                                "the consent for user {} was revoked: this commit must remove their devices",
                                stays.user_id
                            )));
                        }
                        let welcome = check_welcome(req.welcome.as_ref(), &added_refs)?;
                        room.pg
                            .merge_commit(&room.kv, *staged)
                            .map_err(Error::internal)?;
                        Ok(Accepted {
                            kind: MessageKind::Commit,
                            epoch,
                            epoch_after: epoch + 1,
                            added,
                            removed,
                            welcome,
                            grounds,
                        })
                    }
                    _ => Err(Error::invalid_mls(
                        "expected an application message, proposal or commit",
                        "content",
                    )),
                }
            }
            _ => Err(Error::invalid_mls(
                "expected a PublicMessage or PrivateMessage",
                "wire format",
            )),
        }
    }

    /// Standalone proposals: a member may ask to leave (remove itself) or
    /// update its own leaf. Adds and removes of others go in commits, where
    /// the committer answers for them under the room policy.
    async fn check_proposal(&self, q: &QueuedProposal, sender: LeafNodeIndex) -> Result<()> {
        match q.proposal() {
            Proposal::Update(update) => {
                let (id, key) = mls::leaf_identity(update.leaf_node())?;
                let device = self.store.device(id.device_id).await?;
                mls::matches_directory(id, &key, device.as_ref())
            }
            Proposal::Remove(r) if r.removed() == sender => Ok(()),
            _ => Err(policy::violation(
                "a standalone proposal may only remove or update the sender itself; add and remove others in a commit",
            )),
        }
    }

    /// Every added credential must be a registered device key of its user.
    async fn check_commit_adds(&self, staged: &StagedCommit) -> Result<(Vec<i64>, Vec<Vec<u8>>)> {
        let mut devices = Vec::new();
        let mut refs = Vec::new();
        for add in staged.add_proposals() {
            let kp = add.add_proposal().key_package();
            let (id, key) = mls::leaf_identity(kp.leaf_node())?;
            let device = self.store.device(id.device_id).await?;
            mls::matches_directory(id, &key, device.as_ref())?;
            devices.push(id.device_id);
            refs.push(
                kp.hash_ref(mls::crypto())
                    .map_err(Error::internal)?
                    .as_slice()
                    .to_vec(),
            );
        }
        if staged.psk_proposals().next().is_some() {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "PSK proposals are not allowed",
            ));
        }
        Ok((devices, refs))
    }

    /// History for a device: messages after `after` inside its membership.
    pub async fn history(
        &self,
        auth: AuthDevice,
        room_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<MessagePage> {
        let memberships = self.store.memberships(room_id, auth.device_id).await?;
        if memberships.is_empty() {
            return if self.store.load_room(room_id).await?.is_some() {
                Err(not_a_member())
            } else {
                Err(room_not_found())
            };
        }
        let Some((from, until)) = readable_window(&memberships, after) else {
            return Err(not_a_member());
        };
        let limit = limit.clamp(1, MAX_PAGE);
        let mut rows = self
            .store
            .messages_between(room_id, from, until, limit + 1)
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok(MessagePage {
            room_id: room_id.to_string(),
            messages: rows.iter().map(envelope_of).collect(),
            more,
        })
    }

    /// Welcomes waiting for the device.
    pub async fn welcomes(&self, auth: AuthDevice) -> Result<Vec<WelcomeEnvelope>> {
        Ok(self
            .store
            .welcomes_for(auth.device_id)
            .await?
            .into_iter()
            .map(|w| WelcomeEnvelope {
                welcome_id: w.id,
                room_id: w.room_id,
                commit_seq: w.commit_seq,
                welcome: B64(w.data),
            })
            .collect())
    }

    /// The device processed a welcome: stop offering it.
    pub async fn ack_welcome(&self, auth: AuthDevice, welcome_id: i64) -> Result<()> {
        if self
            .store
            .delete_welcome(welcome_id, auth.device_id)
            .await?
        {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::WelcomeNotFound,
                "no such welcome for this device",
            ))
        }
    }

    /// Whether the device is a member of the room now.
    pub async fn is_member(&self, device_id: i64, room_id: &str) -> Result<bool> {
        Ok(self
            .store
            .memberships(room_id, device_id)
            .await?
            .iter()
            .any(|m| m.left_at.is_none()))
    }
}

/// The seq range `(from, until]` a device may read after `after`: the latest
/// membership period that still has something after `after`.
pub fn readable_window(memberships: &[crate::store::Membership], after: u64) -> Option<(u64, u64)> {
    memberships
        .iter()
        .filter(|m| m.left_at.is_none_or(|left| left > after))
        .map(|m| {
            (
                after.max(m.joined_after),
                m.left_at.unwrap_or(u64::MAX >> 1),
            )
        })
        .next()
}

fn not_a_member() -> Error {
    Error::new(
        ErrorCode::NotAMember,
        "this device is not a member of the room",
    )
}

/// A commit that adds members must carry a Welcome for exactly those key packages.
fn check_welcome(welcome: Option<&B64>, added_refs: &[Vec<u8>]) -> Result<Option<Vec<u8>>> {
    let mismatch = |why: &str| Error::new(ErrorCode::WelcomeMismatch, why.to_string());
    match (welcome, added_refs.is_empty()) {
        (None, true) => Ok(None),
        (Some(_), true) => Err(mismatch(
            "this commit adds nobody, so it carries no welcome",
        )),
        (None, false) => Err(mismatch(
            "a commit that adds members must carry their welcome",
        )),
        (Some(bytes), false) => {
            let MlsMessageBodyIn::Welcome(w) = mls::parse_message(&bytes.0)? else {
                return Err(mismatch("welcome must be an MLS Welcome"));
            };
            let mut got: Vec<Vec<u8>> = w
                .secrets()
                .iter()
                .map(|s| s.new_member().as_slice().to_vec())
                .collect();
            let mut want = added_refs.to_vec();
            got.sort();
            want.sort();
            if got != want {
                return Err(mismatch(
                    "the welcome is not addressed to exactly the added key packages",
                ));
            }
            if w.ciphersuite() != CIPHERSUITE {
                return Err(mismatch("the welcome uses another ciphersuite"));
            }
            Ok(Some(bytes.0.clone()))
        }
    }
}
