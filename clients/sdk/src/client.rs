//! The [`Client`]: one Tonari device.

use crate::content::Content;
use crate::error::{Result, SdkError};
use crate::http::{Http, seg};
use crate::mls::{self, CIPHERSUITE};
use crate::store::{self, DeviceRow, OutboxRow, Provider, outbox_state, status};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use reqwest::Method;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tonari_wire::{
    Ack, ClaimedKeyPackages, CreateRoomRequest, DeviceIdentity, DeviceInfo, Envelope, ErrorCode,
    KeyPackageCount, KeyPackageUpload, LoginRequest, LoginResponse, MessageKind, MessagePage,
    RegisterRequest, RegisterResponse, Role, RoomInfo, RoomList, RoomSettings, SubmitRequest,
    WelcomeList, paths,
};

/// How many key packages the SDK keeps on the server.
pub const KEY_PACKAGE_TARGET: u32 = 20;
/// How often an operation is retried after a 409 epoch_conflict.
pub const MAX_CONFLICT_RETRIES: u32 = 10;
/// Page size used when fetching room history.
const PAGE_LIMIT: u32 = 500;
/// Retries (same txn id, same bytes) after a network error on submit.
const SUBMIT_NETWORK_RETRIES: u32 = 3;

/// Who sent something: a device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sender {
    pub user_id: i64,
    pub device_id: i64,
    /// Resolved through the directory; `user<ID>` when it could not be looked up.
    pub username: String,
    /// The user's role, from the directory (`None` when it could not be looked up).
    pub role: Option<Role>,
}

/// (user id, device id) of a sender before the directory lookup.
pub(crate) type Who = (i64, i64);

/// Something that happened, produced while processing welcomes and room
/// messages (by [`Client::sync`], a [`crate::Subscription`] or an operation
/// catching up). Events are delivered in room order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This device joined a room from a Welcome.
    Joined { room_id: String },
    /// An application message (including this device's own messages).
    Message {
        room_id: String,
        seq: u64,
        sender: Sender,
        content: Content,
        ts_ms: i64,
    },
    /// A commit added and/or removed members. `by` is the committer;
    /// `grounds` says, per added/removed device, why the room policy allowed
    /// it (checked by this client).
    MembersChanged {
        room_id: String,
        seq: u64,
        /// The epoch after the commit.
        epoch: u64,
        by: Sender,
        added: Vec<Sender>,
        removed: Vec<Sender>,
        grounds: Vec<(i64, tonari_wire::Grounds)>,
    },
    /// Another member removed this device from the room (seq of that commit).
    Removed { room_id: String, seq: u64 },
    /// This device's leave request was committed (seq of that commit).
    Left { room_id: String, seq: u64 },
    /// A message could not be processed and was skipped.
    Undecryptable {
        room_id: String,
        seq: u64,
        reason: String,
    },
}

impl Event {
    /// The room the event belongs to.
    pub fn room_id(&self) -> &str {
        match self {
            Event::Joined { room_id }
            | Event::Message { room_id, .. }
            | Event::MembersChanged { room_id, .. }
            | Event::Removed { room_id, .. }
            | Event::Left { room_id, .. }
            | Event::Undecryptable { room_id, .. } => room_id,
        }
    }
}

/// What a commit changes, for [`Client::check_commit`].
struct CommitReview {
    leaves: Vec<(Credential, Vec<u8>)>,
    actor: Option<DeviceIdentity>,
    aad: Vec<u8>,
    changes: Vec<(tonari_wire::Action, DeviceIdentity, bool)>,
    settings: std::result::Result<RoomSettings, String>,
}

/// A room as known locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRoom {
    pub room_id: String,
    /// Seq of the last processed message.
    pub last_seq: u64,
    /// `active`, `leaving`, `left`, `removed` or `untrusted`.
    pub status: String,
    /// Current members (empty when this device is no longer a member).
    pub members: Vec<Sender>,
}

/// A message from the local history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub room_id: String,
    pub seq: u64,
    pub sender: Sender,
    pub content: Content,
    pub ts_ms: i64,
}

/// Events before usernames are resolved.
#[derive(Debug, Clone)]
pub(crate) enum Raw {
    Joined {
        room_id: String,
    },
    Message {
        room_id: String,
        seq: u64,
        sender: Who,
        content: Content,
        ts_ms: i64,
    },
    MembersChanged {
        room_id: String,
        seq: u64,
        epoch: u64,
        by: DeviceIdentity,
        added: Vec<DeviceIdentity>,
        removed: Vec<DeviceIdentity>,
        grounds: Vec<(i64, tonari_wire::Grounds)>,
    },
    Removed {
        room_id: String,
        seq: u64,
    },
    Left {
        room_id: String,
        seq: u64,
    },
    Undecryptable {
        room_id: String,
        seq: u64,
        reason: String,
    },
}

pub(crate) struct Inner {
    pub(crate) db: Mutex<Connection>,
    pub(crate) crypto: RustCrypto,
    pub(crate) http: Http,
    pub(crate) username: String,
    pub(crate) identity: DeviceIdentity,
    pub(crate) signer: SignatureKeyPair,
    pub(crate) token: Mutex<Option<String>>,
    /// Serializes everything that processes envelopes or sends handshakes.
    pub(crate) proc_lock: tokio::sync::Mutex<()>,
    pub(crate) subscribers: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
    /// The session may only enrol TOTP (the role requires it).
    pub(crate) totp_pending: AtomicBool,
    #[allow(dead_code)]
    pub(crate) dir: PathBuf,
}

/// One Tonari device: its MLS state, local store and server session.
///
/// `Client` is cheap to clone (it is an `Arc`) and `Send + Sync`. Operations
/// that process messages or change a room are serialized internally.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("username", &self.inner.username)
            .field("user_id", &self.inner.identity.user_id)
            .field("device_id", &self.inner.identity.device_id)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| SdkError::Storage("state lock poisoned".into()))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Client {
    // ------------------------------------------------------------ accounts

    /// Register a new account (no device is created).
    pub async fn register(
        server_url: &str,
        username: &str,
        password: &str,
    ) -> Result<RegisterResponse> {
        Self::register_with(
            server_url,
            &RegisterRequest {
                username: username.to_string(),
                password: password.to_string(),
                invitation_code: None,
                display_name: None,
                role: None,
            },
        )
        .await
    }

    /// Register with every option: an invitation code (required unless the
    /// server runs open registration), a display name, a role (open
    /// registration only).
    pub async fn register_with(
        server_url: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse> {
        let http = Http::new(server_url)?;
        http.json(Method::POST, paths::REGISTER, None, Some(req))
            .await
    }

    /// Log in. If `device_dir` already holds a device of `username`, the same
    /// device (id and signature key) logs in again; otherwise a new signature
    /// key pair is created and a new device is registered. Key packages are
    /// uploaded / topped up to [`KEY_PACKAGE_TARGET`].
    pub async fn login(
        server_url: &str,
        device_dir: &Path,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Client> {
        Self::login_with_totp(
            server_url,
            device_dir,
            username,
            password,
            device_name,
            None,
        )
        .await
    }

    /// [`Client::login`] with the current TOTP code, for accounts that turned
    /// TOTP on (the server answers `totp_required` without it).
    pub async fn login_with_totp(
        server_url: &str,
        device_dir: &Path,
        username: &str,
        password: &str,
        device_name: &str,
        totp_code: Option<&str>,
    ) -> Result<Client> {
        let http = Http::new(server_url)?;
        let crypto = RustCrypto::default();
        let conn = store::open_db(device_dir)?;
        let existing = store::load_device(&conn)?;
        let (signer, device_id, device_name) = match existing {
            Some(d) if d.username == username => {
                let p = Provider::new(&crypto, &conn);
                let signer =
                    SignatureKeyPair::read(&p.storage, &d.signature_public, mls::SIG_SCHEME)
                        .ok_or_else(|| SdkError::Storage("device signature key missing".into()))?;
                (signer, d.device_id, d.device_name)
            }
            Some(_) => {
                return Err(SdkError::Invalid(
                    "the device directory belongs to another user".into(),
                ));
            }
            None => {
                let signer = SignatureKeyPair::new(mls::SIG_SCHEME).map_err(SdkError::mls)?;
                {
                    let p = Provider::new(&crypto, &conn);
                    signer.store(&p.storage)?;
                }
                store::save_device(
                    &conn,
                    &DeviceRow {
                        server_url: http.base().to_string(),
                        username: username.to_string(),
                        device_name: device_name.to_string(),
                        user_id: None,
                        device_id: None,
                        token: None,
                        signature_public: signer.public().to_vec(),
                        role: None,
                    },
                )?;
                (signer, None, device_name.to_string())
            }
        };
        let req = LoginRequest {
            username: username.to_string(),
            password: password.to_string(),
            device_id,
            device_name: device_name.clone(),
            signature_key: signer.public().to_vec().into(),
            totp_code: totp_code.map(str::to_string),
        };
        let resp: LoginResponse = http
            .json(Method::POST, paths::LOGIN, None, Some(&req))
            .await?;
        if let Some(old) = device_id
            && old != resp.device_id
        {
            return Err(SdkError::Protocol(
                "server returned another device id on re-login".into(),
            ));
        }
        store::save_device(
            &conn,
            &DeviceRow {
                server_url: http.base().to_string(),
                username: username.to_string(),
                device_name,
                user_id: Some(resp.user_id),
                device_id: Some(resp.device_id),
                token: Some(resp.token.clone()),
                signature_public: signer.public().to_vec(),
                role: Some(resp.role),
            },
        )?;
        let client = Client::from_parts(
            conn,
            crypto,
            http,
            username.to_string(),
            DeviceIdentity {
                user_id: resp.user_id,
                device_id: resp.device_id,
                role: resp.role,
            },
            signer,
            Some(resp.token),
            device_dir.to_path_buf(),
        );
        if resp.totp_enrollment_required {
            // Key packages go up once TOTP is confirmed.
            client.inner.totp_pending.store(true, Ordering::Release);
        } else {
            client.top_up_key_packages().await?;
        }
        Ok(client)
    }

    /// Open the device stored in `device_dir` (after a restart). Needs no
    /// network. Fails with [`SdkError::NotLoggedIn`] when the directory holds
    /// no registered device. After [`Client::logout`], network calls fail with
    /// `NotLoggedIn` until the next [`Client::login`].
    pub fn open(device_dir: &Path) -> Result<Client> {
        if !device_dir.join(store::DB_FILE).exists() {
            return Err(SdkError::NotLoggedIn);
        }
        let conn = store::open_db(device_dir)?;
        let d = store::load_device(&conn)?.ok_or(SdkError::NotLoggedIn)?;
        let (Some(user_id), Some(device_id), Some(role)) = (d.user_id, d.device_id, d.role) else {
            return Err(SdkError::NotLoggedIn);
        };
        let http = Http::new(&d.server_url)?;
        let crypto = RustCrypto::default();
        let signer = {
            let p = Provider::new(&crypto, &conn);
            SignatureKeyPair::read(&p.storage, &d.signature_public, mls::SIG_SCHEME)
                .ok_or_else(|| SdkError::Storage("device signature key missing".into()))?
        };
        Ok(Client::from_parts(
            conn,
            crypto,
            http,
            d.username,
            DeviceIdentity {
                user_id,
                device_id,
                role,
            },
            signer,
            d.token,
            device_dir.to_path_buf(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        conn: Connection,
        crypto: RustCrypto,
        http: Http,
        username: String,
        identity: DeviceIdentity,
        signer: SignatureKeyPair,
        token: Option<String>,
        dir: PathBuf,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                db: Mutex::new(conn),
                crypto,
                http,
                username,
                identity,
                signer,
                token: Mutex::new(token),
                proc_lock: tokio::sync::Mutex::new(()),
                subscribers: Mutex::new(Vec::new()),
                totp_pending: AtomicBool::new(false),
                dir,
            }),
        }
    }

    /// Revoke the session on the server and forget the token locally. The
    /// device (keys, rooms, history) stays; `login` with the same directory
    /// re-attaches it.
    pub async fn logout(&self) -> Result<()> {
        let token = self.token()?;
        match self
            .inner
            .http
            .empty(Method::POST, paths::LOGOUT, Some(&token), None)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_code(ErrorCode::Unauthenticated) => {}
            Err(e) => return Err(e),
        }
        *lock(&self.inner.token)? = None;
        let conn = lock(&self.inner.db)?;
        store::set_token(&conn, None)
    }

    /// The account's user id.
    pub fn user_id(&self) -> i64 {
        self.inner.identity.user_id
    }

    /// This device's id.
    pub fn device_id(&self) -> i64 {
        self.inner.identity.device_id
    }

    /// The account's username.
    pub fn username(&self) -> &str {
        &self.inner.username
    }

    /// The identity in this device's MLS credential.
    pub fn identity(&self) -> DeviceIdentity {
        self.inner.identity
    }

    /// The server URL.
    pub fn server_url(&self) -> &str {
        self.inner.http.base()
    }

    /// This device's Ed25519 signature public key.
    pub fn signature_public_key(&self) -> &[u8] {
        self.inner.signer.public()
    }

    /// True while a session token is stored.
    pub fn is_logged_in(&self) -> bool {
        lock(&self.inner.token)
            .map(|t| t.is_some())
            .unwrap_or(false)
    }

    /// Start TOTP enrolment for this account: put the secret (or the
    /// `otpauth://` URI) into an authenticator app, then [`Client::totp_confirm`].
    pub async fn totp_enroll(&self) -> Result<tonari_wire::TotpEnrollment> {
        self.post(paths::TOTP_ENROLL, &serde_json::json!({})).await
    }

    /// Turn TOTP on with a current code; later logins need a code. A
    /// session that was restricted for lack of TOTP becomes a full one (and
    /// the device's key packages go up).
    pub async fn totp_confirm(&self, code: &str) -> Result<()> {
        let body = tonari_wire::TotpConfirm {
            code: code.to_string(),
        };
        self.post_empty(paths::TOTP_CONFIRM, &body).await?;
        if self.inner.totp_pending.swap(false, Ordering::AcqRel) {
            self.top_up_key_packages().await?;
        }
        Ok(())
    }

    /// True when the account's role requires TOTP and it is not set up yet:
    /// only [`Client::totp_enroll`], [`Client::totp_confirm`] and logout work.
    pub fn needs_totp_enrollment(&self) -> bool {
        self.inner.totp_pending.load(Ordering::Acquire)
    }

    /// Sign bytes with this device's MLS signature key (Ed25519).
    pub(crate) fn sign(&self, payload: &[u8]) -> Result<Vec<u8>> {
        openmls_traits::signatures::Signer::sign(&self.inner.signer, payload).map_err(SdkError::mls)
    }

    pub(crate) async fn post_empty<B: serde::Serialize + Sync>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<()> {
        let token = self.token()?;
        self.inner
            .http
            .empty(Method::POST, path, Some(&token), Some(body))
            .await
    }

    pub(crate) fn token(&self) -> Result<String> {
        lock(&self.inner.token)?
            .clone()
            .ok_or(SdkError::NotLoggedIn)
    }

    // ------------------------------------------------------------ plumbing

    pub(crate) async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let token = self.token()?;
        self.inner
            .http
            .json(Method::GET, path, Some(&token), None)
            .await
    }

    pub(crate) async fn post<T: serde::de::DeserializeOwned, B: serde::Serialize + Sync>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let token = self.token()?;
        self.inner
            .http
            .json(Method::POST, path, Some(&token), Some(body))
            .await
    }

    /// Run `f` with a provider, outside of any transaction.
    pub(crate) fn with_provider<T>(
        &self,
        f: impl FnOnce(&Provider<'_>, &Connection) -> Result<T>,
    ) -> Result<T> {
        let conn = lock(&self.inner.db)?;
        let p = Provider::new(&self.inner.crypto, &conn);
        f(&p, &conn)
    }

    /// Run `f` in one SQLite transaction: committed when `f` succeeds, rolled
    /// back (openmls state included) when it fails.
    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&Provider<'_>, &Connection) -> Result<T>,
    ) -> Result<T> {
        let conn = lock(&self.inner.db)?;
        // IMMEDIATE: take the write lock up front, so another process using
        // the same device directory waits (busy timeout) instead of failing
        // on a read-to-write lock upgrade.
        let tx =
            rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)?;
        let out = {
            let p = Provider::new(&self.inner.crypto, &tx);
            f(&p, &tx)?
        };
        tx.commit()?;
        Ok(out)
    }

    /// Run `f` in a transaction that is always rolled back.
    pub(crate) fn with_rollback<T>(
        &self,
        f: impl FnOnce(&Provider<'_>, &Connection) -> Result<T>,
    ) -> Result<T> {
        let conn = lock(&self.inner.db)?;
        let tx = conn.unchecked_transaction()?;
        let out = {
            let p = Provider::new(&self.inner.crypto, &tx);
            f(&p, &tx)
        };
        tx.rollback()?;
        out
    }

    pub(crate) fn new_txn_id(&self) -> Result<String> {
        Ok(hex(&self.random(16)?))
    }

    pub(crate) fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.inner
            .crypto
            .random_vec(len)
            .map_err(|e| SdkError::Mls(format!("randomness: {e:?}")))
    }

    fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.inner.identity.to_bytes()).into(),
            signature_key: self.inner.signer.public().to_vec().into(),
        }
    }

    pub(crate) fn register_subscriber(&self) -> Result<mpsc::UnboundedReceiver<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.subscribers)?.push(tx);
        Ok(rx)
    }

    fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if let Ok(mut subs) = self.inner.subscribers.lock() {
            subs.retain(|s| events.iter().all(|e| s.send(e.clone()).is_ok()));
        }
    }

    // ------------------------------------------------------------ directory

    /// Directory entry of a device (cached locally; device keys never change).
    pub async fn device_info(&self, device_id: i64) -> Result<DeviceInfo> {
        if let Some(d) = self.with_provider(|_, c| store::cached_device(c, device_id))? {
            return Ok(d);
        }
        let info: DeviceInfo = self
            .get(&paths::fill(
                paths::DEVICE,
                &[("device_id", &device_id.to_string())],
            ))
            .await?;
        if info.device_id != device_id {
            return Err(SdkError::Protocol(
                "directory returned another device".into(),
            ));
        }
        self.with_provider(|_, c| store::cache_device(c, &info))?;
        Ok(info)
    }

    /// The directory entry of a user and all their devices.
    pub async fn user_devices(&self, username: &str) -> Result<tonari_wire::DirectoryEntry> {
        let ud: tonari_wire::DirectoryEntry = self
            .get(&paths::fill(paths::USER, &[("username", &seg(username))]))
            .await?;
        for d in &ud.devices {
            if d.user_id == ud.user_id {
                self.with_provider(|_, c| store::cache_device(c, d))?;
            }
        }
        Ok(ud)
    }

    /// Check that a credential + signature key is a registered device key of
    /// the user named in the credential.
    pub(crate) async fn verify_member(
        &self,
        room_id: &str,
        credential: &Credential,
        signature_key: &[u8],
    ) -> Result<DeviceIdentity> {
        let untrusted = |device_id| SdkError::UntrustedMember {
            room_id: room_id.to_string(),
            device_id,
        };
        let id = mls::identity_of(credential).ok_or_else(|| untrusted(-1))?;
        if id == self.inner.identity {
            return if signature_key == self.inner.signer.public() {
                Ok(id)
            } else {
                Err(untrusted(id.device_id))
            };
        }
        let info = match self.device_info(id.device_id).await {
            Ok(i) => i,
            Err(e) if e.is_code(ErrorCode::DeviceNotFound) => {
                return Err(untrusted(id.device_id));
            }
            Err(e) => return Err(e),
        };
        if info.user_id != id.user_id
            || info.role != id.role
            || info.signature_key.0 != signature_key
        {
            return Err(untrusted(id.device_id));
        }
        Ok(id)
    }

    async fn sender_of(&self, (user_id, device_id): Who) -> Sender {
        let me = self.inner.identity;
        let (username, role) = if (user_id, device_id) == (me.user_id, me.device_id) {
            (self.inner.username.clone(), Some(me.role))
        } else {
            match self.device_info(device_id).await {
                Ok(info) if info.user_id == user_id => (info.username, Some(info.role)),
                _ => (format!("user{user_id}"), None),
            }
        };
        Sender {
            user_id,
            device_id,
            username,
            role,
        }
    }

    async fn senders_of(&self, ids: Vec<DeviceIdentity>) -> Vec<Sender> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.sender_of((id.user_id, id.device_id)).await);
        }
        out
    }

    /// Resolve usernames, publish to subscriptions and return the events.
    pub(crate) async fn finish(&self, raws: Vec<Raw>) -> Vec<Event> {
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            out.push(match raw {
                Raw::Joined { room_id } => Event::Joined { room_id },
                Raw::Message {
                    room_id,
                    seq,
                    sender,
                    content,
                    ts_ms,
                } => Event::Message {
                    room_id,
                    seq,
                    sender: self.sender_of(sender).await,
                    content,
                    ts_ms,
                },
                Raw::MembersChanged {
                    room_id,
                    seq,
                    epoch,
                    by,
                    added,
                    removed,
                    grounds,
                } => Event::MembersChanged {
                    room_id,
                    seq,
                    epoch,
                    by: self.sender_of((by.user_id, by.device_id)).await,
                    added: self.senders_of(added).await,
                    removed: self.senders_of(removed).await,
                    grounds,
                },
                Raw::Removed { room_id, seq } => Event::Removed { room_id, seq },
                Raw::Left { room_id, seq } => Event::Left { room_id, seq },
                Raw::Undecryptable {
                    room_id,
                    seq,
                    reason,
                } => Event::Undecryptable {
                    room_id,
                    seq,
                    reason,
                },
            });
        }
        self.publish(&out);
        out
    }

    // ------------------------------------------------------------ key packages

    /// Upload key packages until the server holds [`KEY_PACKAGE_TARGET`].
    pub async fn top_up_key_packages(&self) -> Result<KeyPackageCount> {
        let count: KeyPackageCount = self.get(paths::OWN_KEY_PACKAGES).await?;
        if count.available >= KEY_PACKAGE_TARGET {
            return Ok(count);
        }
        let n = (KEY_PACKAGE_TARGET - count.available) as usize;
        let cwk = self.credential_with_key();
        let kps = self.with_tx(|p, _| {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let bundle = KeyPackage::builder()
                    .leaf_node_capabilities(mls::capabilities())
                    .build(CIPHERSUITE, p, &self.inner.signer, cwk.clone())
                    .map_err(SdkError::mls)?;
                let bytes = MlsMessageOut::from(bundle.key_package().clone())
                    .to_bytes()
                    .map_err(SdkError::mls)?;
                out.push(tonari_wire::B64(bytes));
            }
            Ok(out)
        })?;
        self.post(
            paths::OWN_KEY_PACKAGES,
            &KeyPackageUpload { key_packages: kps },
        )
        .await
    }

    /// How many key packages the server holds for this device.
    pub async fn key_package_count(&self) -> Result<KeyPackageCount> {
        self.get(paths::OWN_KEY_PACKAGES).await
    }

    // ------------------------------------------------------------ rooms

    /// Create a team room (professionals only, the default care-team
    /// policy). Returns the room id (hex of the group id).
    pub async fn create_room(&self) -> Result<String> {
        self.create_room_with(&RoomSettings::care_room(None)).await
    }

    /// Create a room (an MLS group with only this device) with these
    /// settings in its group context (patient network id, policy) and
    /// register it with the server. Returns the room id.
    pub async fn create_room_with(&self, settings: &RoomSettings) -> Result<String> {
        settings.validate().map_err(SdkError::Invalid)?;
        let _g = self.inner.proc_lock.lock().await;
        let gid = self.random(16)?;
        let room_id = hex(&gid);
        let cwk = self.credential_with_key();
        let (group_info, ratchet_tree) = self.with_tx(|p, _| {
            let group = MlsGroup::new_with_group_id(
                p,
                &self.inner.signer,
                &mls::create_config(settings)?,
                GroupId::from_slice(&gid),
                cwk,
            )
            .map_err(SdkError::mls)?;
            let gi = group
                .export_group_info(p.crypto, &self.inner.signer, true)
                .map_err(SdkError::mls)?
                .to_bytes()
                .map_err(SdkError::mls)?;
            let tree = group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .map_err(SdkError::mls)?;
            Ok((gi, tree))
        })?;
        let req = CreateRoomRequest {
            group_info: group_info.into(),
            ratchet_tree: ratchet_tree.into(),
        };
        match self.post::<RoomInfo, _>(paths::ROOMS, &req).await {
            Ok(info) => {
                if info.room_id != room_id {
                    return Err(SdkError::Protocol("server returned another room id".into()));
                }
                self.with_provider(|_, c| {
                    store::insert_room(c, &room_id, info.last_seq, status::ACTIVE)
                })?;
                Ok(room_id)
            }
            Err(e) => {
                let _ = self.with_tx(|p, _| {
                    if let Some(mut g) = mls::load_group_opt(p, &room_id)? {
                        g.delete(&p.storage)?;
                    }
                    Ok(())
                });
                Err(e)
            }
        }
    }

    /// Rooms the server says this device is a member of.
    pub async fn server_rooms(&self) -> Result<Vec<RoomInfo>> {
        let list: RoomList = self.get(paths::ROOMS).await?;
        Ok(list.rooms)
    }

    /// Rooms from local state, with their current members.
    pub async fn rooms(&self) -> Result<Vec<LocalRoom>> {
        let rows = self.with_provider(|p, c| {
            let mut out = Vec::new();
            for r in store::rooms(c)? {
                let members = match mls::load_group_opt(p, &r.room_id)? {
                    Some(g) if g.is_active() => mls::member_identities(&g),
                    _ => Vec::new(),
                };
                out.push((r, members));
            }
            Ok(out)
        })?;
        let mut rooms = Vec::with_capacity(rows.len());
        for (r, members) in rows {
            rooms.push(LocalRoom {
                room_id: r.room_id,
                last_seq: r.last_seq,
                status: r.status,
                members: self.senders_of(members).await,
            });
        }
        Ok(rooms)
    }

    /// One room from local state.
    pub async fn room(&self, room_id: &str) -> Result<LocalRoom> {
        self.rooms()
            .await?
            .into_iter()
            .find(|r| r.room_id == room_id)
            .ok_or_else(|| SdkError::UnknownRoom(room_id.to_string()))
    }

    /// The local message history of a room, oldest first.
    pub async fn history(&self, room_id: &str) -> Result<Vec<StoredMessage>> {
        let rows = self.with_provider(|_, c| {
            if store::room(c, room_id)?.is_none() {
                return Err(SdkError::UnknownRoom(room_id.to_string()));
            }
            store::messages(c, room_id)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, user_id, device_id, username, content, ts_ms) in rows {
            let mut sender = self.sender_of((user_id, device_id)).await;
            if let Some(u) = username {
                sender.username = u;
            }
            out.push(StoredMessage {
                room_id: room_id.to_string(),
                seq,
                sender,
                content: serde_json::from_str(&content).unwrap_or(Content::Unknown),
                ts_ms,
            });
        }
        Ok(out)
    }

    fn room_row(&self, room_id: &str) -> Result<store::RoomRow> {
        self.with_provider(|_, c| store::room(c, room_id))?
            .ok_or_else(|| SdkError::UnknownRoom(room_id.to_string()))
    }

    fn ensure_active(&self, room_id: &str) -> Result<store::RoomRow> {
        let row = self.room_row(room_id)?;
        if row.status != status::ACTIVE {
            return Err(SdkError::RoomNotActive {
                room_id: room_id.to_string(),
                status: row.status,
            });
        }
        Ok(row)
    }

    // ------------------------------------------------------------ sending

    /// Submit an outbox row; network errors are retried with the same txn id
    /// and bytes.
    async fn submit_row(&self, row: &OutboxRow) -> Result<Ack> {
        let req = SubmitRequest {
            txn_id: row.txn_id.clone(),
            message: row.message.clone().into(),
            welcome: row.welcome.clone().map(Into::into),
        };
        let path = paths::fill(paths::ROOM_MESSAGES, &[("room_id", &row.room_id)]);
        let mut attempt = 0;
        loop {
            match self.post::<Ack, _>(&path, &req).await {
                Ok(ack) => return Ok(ack),
                Err(e) if e.is_retryable() && attempt < SUBMIT_NETWORK_RETRIES => {
                    attempt += 1;
                    tracing::debug!(room_id = %row.room_id, attempt, "submit failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200 * 3u64.pow(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn mark_outbox(&self, txn_id: &str, state: &str, seq: Option<u64>) -> Result<()> {
        self.with_provider(|_, c| store::set_outbox_state(c, txn_id, state, seq))
    }

    /// Drop the own pending commit (the server did not take it).
    fn abandon_pending_commit(&self, room_id: &str, txn_id: Option<&str>) -> Result<()> {
        self.with_tx(|p, c| {
            if let Some(mut g) = mls::load_group_opt(p, room_id)? {
                g.clear_pending_commit(&p.storage)?;
            }
            if let Some(t) = txn_id {
                store::set_outbox_state(c, t, outbox_state::FAILED, None)?;
            }
            Ok(())
        })
    }

    /// Catch up after an acknowledged send; failures are only logged (the
    /// message is durable, the next sync finishes the job).
    async fn catch_up_after_ack(&self, room_id: &str) {
        if let Err(e) = self.catch_up_room(room_id).await {
            tracing::warn!(room_id, "catch-up after send failed: {e}");
        }
    }

    /// Resolve a pending commit left by an interrupted operation: resubmit it
    /// (same txn id and bytes), merge it if the server took it, drop it if not.
    pub(crate) async fn resolve_pending_commit(&self, room_id: &str) -> Result<()> {
        let (pending, row) = self.with_provider(|p, c| {
            let pending = mls::load_group_opt(p, room_id)?
                .map(|g| g.pending_commit().is_some())
                .unwrap_or(false);
            Ok((pending, store::latest_open_handshake(c, room_id, "commit")?))
        })?;
        if !pending {
            return Ok(());
        }
        match row {
            None => self.abandon_pending_commit(room_id, None),
            Some(row) if row.state == outbox_state::ACKED => {
                self.catch_up_room(room_id).await?;
                Ok(())
            }
            Some(row) => match self.submit_row(&row).await {
                Ok(ack) => {
                    self.mark_outbox(&row.txn_id, outbox_state::ACKED, Some(ack.seq))?;
                    self.catch_up_room(room_id).await?;
                    Ok(())
                }
                Err(e) if e.is_retryable() => Err(e),
                Err(e) => {
                    tracing::debug!(room_id, "dropping pending commit: {e}");
                    self.abandon_pending_commit(room_id, Some(&row.txn_id))?;
                    if e.is_code(ErrorCode::EpochConflict) {
                        self.catch_up_room(room_id).await?;
                    }
                    Ok(())
                }
            },
        }
    }

    /// Build a commit with `build`, submit it, and handle epoch conflicts by
    /// catching up and rebuilding. `build` returns `None` when there is
    /// nothing to commit (any more).
    async fn commit_with_retry<F>(&self, room_id: &str, build: F) -> Result<Option<Ack>>
    where
        F: Fn(&Provider<'_>, &mut MlsGroup, &SignatureKeyPair) -> Result<Option<mls::BuiltCommit>>
            + Sync,
    {
        for _ in 0..MAX_CONFLICT_RETRIES {
            self.resolve_pending_commit(room_id).await?;
            self.ensure_active(room_id)?;
            let row = self.with_tx(|p, c| {
                let mut group = mls::load_group(p, room_id)?;
                let epoch = group.epoch().as_u64();
                let Some(built) = build(p, &mut group, &self.inner.signer)? else {
                    return Ok(None);
                };
                let row = OutboxRow {
                    txn_id: self.new_txn_id()?,
                    room_id: room_id.to_string(),
                    kind: "commit".into(),
                    message: built.commit,
                    welcome: built.welcome,
                    content: None,
                    state: outbox_state::PENDING.into(),
                    seq: None,
                    epoch,
                };
                store::insert_outbox(c, &row)?;
                Ok(Some(row))
            })?;
            let Some(row) = row else { return Ok(None) };
            match self.submit_row(&row).await {
                Ok(ack) => {
                    self.mark_outbox(&row.txn_id, outbox_state::ACKED, Some(ack.seq))?;
                    // Processing our own commit from the room merges it.
                    self.catch_up_after_ack(room_id).await;
                    return Ok(Some(ack));
                }
                Err(e) if e.is_code(ErrorCode::EpochConflict) => {
                    self.abandon_pending_commit(room_id, Some(&row.txn_id))?;
                    self.catch_up_room(room_id).await?;
                }
                // Unknown outcome: keep the pending commit, it is resolved
                // (resubmitted with the same txn id) by the next operation.
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    self.abandon_pending_commit(room_id, Some(&row.txn_id))?;
                    return Err(e);
                }
            }
        }
        Err(SdkError::TooManyConflicts(MAX_CONFLICT_RETRIES))
    }

    /// Claim and verify key packages of all devices of `username`.
    pub(crate) async fn claim_verified(
        &self,
        room_id: &str,
        username: &str,
    ) -> Result<Vec<KeyPackage>> {
        let dir = self.user_devices(username).await?;
        let claimed: ClaimedKeyPackages = self
            .post(
                &paths::fill(paths::CLAIM_KEY_PACKAGES, &[("username", &seg(username))]),
                &serde_json::json!({}),
            )
            .await?;
        if claimed.user_id != dir.user_id {
            return Err(SdkError::Protocol(
                "claimed key packages belong to another user".into(),
            ));
        }
        let mut out = Vec::new();
        for ckp in claimed.key_packages {
            let untrusted = SdkError::UntrustedMember {
                room_id: room_id.to_string(),
                device_id: ckp.device_id,
            };
            let kp = mls::parse_key_package(&self.inner.crypto, &ckp.key_package.0)
                .map_err(|_| untrusted)?;
            let untrusted = || SdkError::UntrustedMember {
                room_id: room_id.to_string(),
                device_id: ckp.device_id,
            };
            let id = mls::identity_of(kp.leaf_node().credential()).ok_or_else(untrusted)?;
            let device = dir
                .devices
                .iter()
                .find(|d| d.device_id == ckp.device_id)
                .ok_or_else(untrusted)?;
            if id.user_id != dir.user_id
                || id.device_id != ckp.device_id
                || device.user_id != dir.user_id
                || device.signature_key.0 != kp.leaf_node().signature_key().as_slice()
            {
                return Err(untrusted());
            }
            out.push(kp);
        }
        Ok(out)
    }

    /// Add all devices of `username` to the room in one commit (with the
    /// Welcome). Key packages of every device are claimed, checked against the
    /// directory, and reused across epoch-conflict retries. Devices already in
    /// the room are skipped. On success the commit is merged locally.
    pub async fn invite(&self, room_id: &str, username: &str) -> Result<Ack> {
        let _g = self.inner.proc_lock.lock().await;
        self.ensure_active(room_id)?;
        self.catch_up_room(room_id).await?;
        let kps = self.claim_verified(room_id, username).await?;
        if kps.is_empty() {
            return Err(SdkError::NoKeyPackages(username.to_string()));
        }
        let aad = self
            .grounds_for(room_id, username, tonari_wire::Action::Add)
            .await?;
        let ack = self
            .commit_with_retry(room_id, |p, group, signer| {
                let present: HashSet<DeviceIdentity> =
                    mls::member_identities(group).into_iter().collect();
                let adds: Vec<KeyPackage> = kps
                    .iter()
                    .filter(|kp| {
                        mls::identity_of(kp.leaf_node().credential())
                            .is_some_and(|id| !present.contains(&id))
                    })
                    .cloned()
                    .collect();
                if adds.is_empty() {
                    return Ok(None);
                }
                mls::build_commit(p, group, signer, adds, Vec::new(), aad.clone()).map(Some)
            })
            .await?;
        ack.ok_or_else(|| SdkError::Invalid(format!("{username} is already in the room")))
    }

    /// Remove all devices of `username` from the room in one commit.
    pub async fn remove(&self, room_id: &str, username: &str) -> Result<Ack> {
        let _g = self.inner.proc_lock.lock().await;
        self.ensure_active(room_id)?;
        let dir = self.user_devices(username).await?;
        self.catch_up_room(room_id).await?;
        let aad = self
            .grounds_for(room_id, username, tonari_wire::Action::Remove)
            .await?;
        let own = self.inner.identity;
        let ack = self
            .commit_with_retry(room_id, |p, group, signer| {
                let leaves: Vec<LeafNodeIndex> = group
                    .members()
                    .filter(|m| {
                        mls::identity_of(&m.credential)
                            .is_some_and(|id| id.user_id == dir.user_id && id != own)
                    })
                    .map(|m| m.index)
                    .collect();
                if leaves.is_empty() {
                    return Ok(None);
                }
                mls::build_commit(p, group, signer, Vec::new(), leaves, aad.clone()).map(Some)
            })
            .await?;
        ack.ok_or_else(|| SdkError::NotInRoom(username.to_string()))
    }

    /// Commit pending (leave) proposals of other members. `Ok(None)` when
    /// there was nothing to commit or someone else committed them first.
    async fn commit_pending_proposals(&self, room_id: &str) -> Result<Option<Ack>> {
        self.commit_with_retry(room_id, |p, group, signer| {
            if !group.has_pending_proposals() {
                return Ok(None);
            }
            let (commit, welcome, _) = group
                .commit_to_pending_proposals(p, signer)
                .map_err(SdkError::mls)?;
            Ok(Some(mls::BuiltCommit {
                commit: commit.to_bytes().map_err(SdkError::mls)?,
                welcome: welcome
                    .map(|w| w.to_bytes())
                    .transpose()
                    .map_err(SdkError::mls)?,
            }))
        })
        .await
    }

    /// Ask to leave the room: sends a self-Remove proposal that another
    /// member's SDK commits. The room becomes `leaving`, then `left` when the
    /// commit removing this device is processed ([`Event::Left`]).
    pub async fn leave(&self, room_id: &str) -> Result<Ack> {
        let _g = self.inner.proc_lock.lock().await;
        let row = self.room_row(room_id)?;
        if row.status != status::ACTIVE && row.status != status::LEAVING {
            return Err(SdkError::RoomNotActive {
                room_id: room_id.to_string(),
                status: row.status,
            });
        }
        self.leave_inner(room_id).await
    }

    async fn leave_inner(&self, room_id: &str) -> Result<Ack> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            self.resolve_pending_commit(room_id).await?;
            let row = self.with_tx(|p, c| {
                let mut group = mls::load_group(p, room_id)?;
                let epoch = group.epoch().as_u64();
                let msg = group
                    .leave_group(p, &self.inner.signer)
                    .map_err(SdkError::mls)?
                    .to_bytes()
                    .map_err(SdkError::mls)?;
                let row = OutboxRow {
                    txn_id: self.new_txn_id()?,
                    room_id: room_id.to_string(),
                    kind: "proposal".into(),
                    message: msg,
                    welcome: None,
                    content: None,
                    state: outbox_state::PENDING.into(),
                    seq: None,
                    epoch,
                };
                store::insert_outbox(c, &row)?;
                store::set_leaving(c, room_id, epoch)?;
                Ok(row)
            })?;
            if let Some(ack) = self.submit_outbox(&row).await? {
                return Ok(ack);
            }
            // Our own stale proposal must not block anything.
            self.with_tx(|p, _| {
                let mut g = mls::load_group(p, room_id)?;
                g.clear_pending_proposals(&p.storage)?;
                Ok(())
            })?;
        }
        Err(SdkError::TooManyConflicts(MAX_CONFLICT_RETRIES))
    }

    /// Send a text message.
    pub async fn send_text(&self, room_id: &str, text: &str) -> Result<Ack> {
        self.send_content(room_id, &Content::text(text)).await
    }

    /// Send any [`Content`] as an application message. On 409 epoch_conflict
    /// the SDK catches up, re-encrypts and retries; network errors are
    /// retried with the same txn id and bytes.
    pub async fn send_content(&self, room_id: &str, content: &Content) -> Result<Ack> {
        let _g = self.inner.proc_lock.lock().await;
        let payload = content.to_bytes()?;
        let content_json = String::from_utf8_lossy(&payload).into_owned();
        for _ in 0..MAX_CONFLICT_RETRIES {
            self.resolve_pending_commit(room_id).await?;
            self.ensure_active(room_id)?;
            let has_proposals = self
                .with_provider(|p, _| Ok(mls::load_group(p, room_id)?.has_pending_proposals()))?;
            if has_proposals {
                self.commit_pending_proposals(room_id).await?;
                self.ensure_active(room_id)?;
            }
            let row = self.with_tx(|p, c| {
                let mut group = mls::load_group(p, room_id)?;
                let epoch = group.epoch().as_u64();
                let msg = group
                    .create_message(p, &self.inner.signer, &payload)
                    .map_err(SdkError::mls)?
                    .to_bytes()
                    .map_err(SdkError::mls)?;
                let row = OutboxRow {
                    txn_id: self.new_txn_id()?,
                    room_id: room_id.to_string(),
                    kind: "application".into(),
                    message: msg,
                    welcome: None,
                    content: Some(content_json.clone()),
                    state: outbox_state::PENDING.into(),
                    seq: None,
                    epoch,
                };
                store::insert_outbox(c, &row)?;
                Ok(row)
            })?;
            if let Some(ack) = self.submit_outbox(&row).await? {
                return Ok(ack);
            }
        }
        Err(SdkError::TooManyConflicts(MAX_CONFLICT_RETRIES))
    }

    /// Submit an outbox row (an application message or proposal). `Ok(None)`
    /// on 409 epoch_conflict, after catching up: the caller rebuilds and
    /// retries. After a network error the outcome is unknown: the row stays
    /// so its echo is still recognised.
    async fn submit_outbox(&self, row: &OutboxRow) -> Result<Option<Ack>> {
        match self.submit_row(row).await {
            Ok(ack) => {
                self.mark_outbox(&row.txn_id, outbox_state::ACKED, Some(ack.seq))?;
                self.catch_up_after_ack(&row.room_id).await;
                Ok(Some(ack))
            }
            Err(e) if e.is_code(ErrorCode::EpochConflict) => {
                self.mark_outbox(&row.txn_id, outbox_state::FAILED, None)?;
                self.catch_up_room(&row.room_id).await?;
                Ok(None)
            }
            Err(e) => {
                if !e.is_retryable() {
                    self.mark_outbox(&row.txn_id, outbox_state::FAILED, None)?;
                }
                Err(e)
            }
        }
    }

    // ------------------------------------------------------------ receiving

    /// Accept pending welcomes, then fetch and process every room's new
    /// messages; commits pending leave proposals of others. Returns the
    /// events in order (they also go to open subscriptions). If a room fails
    /// (e.g. [`SdkError::UntrustedMember`]) the other rooms are still
    /// processed and the first error is returned at the end.
    pub async fn sync(&self) -> Result<Vec<Event>> {
        let _g = self.inner.proc_lock.lock().await;
        // Every event produced while we hold the lock (including those of
        // commits we make for others' leave requests) is published; collect
        // them through a private subscriber.
        let mut rx = self.register_subscriber()?;
        let mut first_err: Option<SdkError> = None;
        if let Err(e) = self.accept_welcomes().await {
            first_err.get_or_insert(e);
        }
        let rooms = self.with_provider(|_, c| store::rooms(c))?;
        for r in rooms {
            if r.status != status::ACTIVE && r.status != status::LEAVING {
                continue;
            }
            if let Err(e) = self.catch_up_room(&r.room_id).await {
                first_err.get_or_insert(e);
                continue;
            }
            if let Err(e) = self.after_processing(&r.room_id).await {
                first_err.get_or_insert(e);
            }
        }
        match self.key_package_count().await {
            Ok(c) if c.low || c.available < KEY_PACKAGE_TARGET / 2 => {
                if let Err(e) = self.top_up_key_packages().await {
                    tracing::warn!("key package top-up failed: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("key package count failed: {e}"),
        }
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        drop(rx);
        match first_err {
            Some(e) => Err(e),
            None => Ok(events),
        }
    }

    /// Housekeeping after processing a room: commit others' pending leave
    /// proposals; re-send our own leave request if a commit dropped it.
    pub(crate) async fn after_processing(&self, room_id: &str) -> Result<()> {
        let row = self.room_row(room_id)?;
        let (active, has_props, epoch) = self.with_provider(|p, _| {
            Ok(match mls::load_group_opt(p, room_id)? {
                Some(g) => (g.is_active(), g.has_pending_proposals(), g.epoch().as_u64()),
                None => (false, false, 0),
            })
        })?;
        if !active {
            return Ok(());
        }
        if row.status == status::ACTIVE && has_props {
            self.commit_pending_proposals(room_id).await?;
        } else if row.status == status::LEAVING
            && row.leave_epoch.is_some_and(|e| epoch > e)
            && !has_props
        {
            self.leave_inner(room_id).await?;
        }
        Ok(())
    }

    /// Fetch and join every pending Welcome. Returns the events and the
    /// joined rooms with their cursors.
    pub(crate) async fn accept_welcomes(&self) -> Result<(Vec<Event>, Vec<(String, u64)>)> {
        let list: WelcomeList = self.get(paths::WELCOMES).await?;
        let mut raws = Vec::new();
        let mut joined = Vec::new();
        let mut first_err = None;
        for w in list.welcomes {
            match self.accept_welcome(&w).await {
                Ok(true) => {
                    raws.push(Raw::Joined {
                        room_id: w.room_id.clone(),
                    });
                    joined.push((w.room_id.clone(), w.commit_seq));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(room_id = %w.room_id, "welcome refused: {e}");
                    if e.is_retryable() || matches!(e, SdkError::NotLoggedIn) {
                        // Keep it for the next attempt.
                        first_err.get_or_insert(e);
                        continue;
                    }
                    // A useless welcome (e.g. its key package is gone) is
                    // only logged; a refused member is reported.
                    if matches!(e, SdkError::UntrustedMember { .. }) {
                        first_err.get_or_insert(e);
                    }
                }
            }
            // Processed (joined, refused or useless): remove it.
            let path = paths::fill(paths::WELCOME, &[("welcome_id", &w.welcome_id.to_string())]);
            let token = self.token()?;
            match self
                .inner
                .http
                .empty(Method::DELETE, &path, Some(&token), None)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_code(ErrorCode::WelcomeNotFound) => {}
                Err(e) => tracing::warn!("could not delete welcome: {e}"),
            }
        }
        // Joined events are published even when another welcome failed.
        let events = self.finish(raws).await;
        match first_err {
            Some(e) => Err(e),
            None => Ok((events, joined)),
        }
    }

    /// Join one welcome; `Ok(false)` when it is stale (room already joined).
    async fn accept_welcome(&self, w: &tonari_wire::WelcomeEnvelope) -> Result<bool> {
        if let Some(r) = self.with_provider(|_, c| store::room(c, &w.room_id))?
            && (r.status == status::ACTIVE || r.status == status::LEAVING)
        {
            return Ok(false);
        }
        // Phase 1: stage without keeping anything, to learn the members.
        let members = self.with_rollback(|p, _| {
            let staged = mls::stage_welcome(p, &w.welcome.0)?;
            if hex(staged.group_context().group_id().as_slice()) != w.room_id {
                return Err(SdkError::Protocol("welcome is for another room".into()));
            }
            let settings = staged
                .group_context()
                .extensions()
                .unknown(tonari_wire::ROOM_SETTINGS_EXTENSION)
                .map(|e| RoomSettings::from_bytes(&e.0));
            Ok((
                staged
                    .members()
                    .map(|m| (m.credential, m.signature_key))
                    .collect::<Vec<_>>(),
                settings,
            ))
        })?;
        let (members, settings) = members;
        if let Err(reason) = settings.unwrap_or_else(|| Err("no room settings".into())) {
            self.with_provider(|_, c| {
                store::insert_room(c, &w.room_id, w.commit_seq, status::UNTRUSTED)
            })?;
            return Err(SdkError::PolicyViolation {
                room_id: w.room_id.clone(),
                reason,
            });
        }
        // Phase 2: every member must match the directory.
        for (cred, key) in &members {
            if let Err(e) = self.verify_member(&w.room_id, cred, key).await {
                if matches!(e, SdkError::UntrustedMember { .. }) {
                    self.with_provider(|_, c| {
                        store::insert_room(c, &w.room_id, w.commit_seq, status::UNTRUSTED)
                    })?;
                }
                return Err(e);
            }
        }
        // Phase 3: join for real.
        self.with_tx(|p, c| {
            let staged = mls::stage_welcome(p, &w.welcome.0)?;
            staged.into_group(p).map_err(SdkError::mls)?;
            store::insert_room(c, &w.room_id, w.commit_seq, status::ACTIVE)
        })?;
        Ok(true)
    }

    /// Fetch and process everything after the room's cursor.
    pub(crate) async fn catch_up_room(&self, room_id: &str) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            let row = self.room_row(room_id)?;
            if row.status != status::ACTIVE && row.status != status::LEAVING {
                break;
            }
            let mut cursor = row.last_seq;
            let path = format!(
                "{}?after={}&limit={}",
                paths::fill(paths::ROOM_HISTORY, &[("room_id", room_id)]),
                cursor,
                PAGE_LIMIT
            );
            let page: MessagePage = self.get(&path).await?;
            let n = page.messages.len();
            for env in page.messages {
                if env.seq <= cursor {
                    continue;
                }
                if env.seq != cursor + 1 || env.room_id != room_id {
                    return Err(SdkError::Protocol(format!(
                        "room history has a gap after seq {cursor}"
                    )));
                }
                events.extend(self.process_envelope(&env).await?);
                cursor = env.seq;
                let st = self.room_row(room_id)?.status;
                if st != status::ACTIVE && st != status::LEAVING {
                    return Ok(events);
                }
            }
            if !page.more || n == 0 {
                break;
            }
        }
        Ok(events)
    }

    /// Process one envelope (in order) and advance the cursor atomically.
    pub(crate) async fn process_envelope(&self, env: &Envelope) -> Result<Vec<Event>> {
        let grounds = self.check_commit(&env.room_id, &env.message.0).await?;
        let mut raws = self.apply_envelope(env, true)?;
        for raw in &mut raws {
            if let Raw::MembersChanged { grounds: g, .. } = raw {
                *g = grounds.clone();
            }
        }
        Ok(self.finish(raws).await)
    }

    /// Membership and policy check of a commit before it may be merged:
    /// every added member, updated leaf and the committer's new leaf must
    /// match the directory, and every add/remove must be allowed by the
    /// room's policy (with consents verified against the directory). On
    /// failure the room is marked untrusted. Returns the grounds of each
    /// membership change.
    pub(crate) async fn check_commit(
        &self,
        room_id: &str,
        bytes: &[u8],
    ) -> Result<Vec<(i64, tonari_wire::Grounds)>> {
        self.check_commit_with(room_id, bytes, true).await
    }

    /// [`Client::check_commit`]; `mark` says whether a refusal marks the
    /// room untrusted (tests review commits without freezing the room).
    pub(crate) async fn check_commit_with(
        &self,
        room_id: &str,
        bytes: &[u8],
        mark: bool,
    ) -> Result<Vec<(i64, tonari_wire::Grounds)>> {
        let me = self.inner.identity;
        let review = self.with_rollback(|p, _| {
            let Ok(msg) = mls::parse_protocol(bytes) else {
                return Ok(None);
            };
            if msg.content_type() != ContentType::Commit {
                return Ok(None);
            }
            let Some(mut group) = mls::load_group_opt(p, room_id)? else {
                return Ok(None);
            };
            let settings = mls::room_settings(&group);
            match group.process_message(p, msg) {
                Ok(pm) => {
                    let actor = mls::identity_of(pm.credential());
                    let aad = pm.aad().to_vec();
                    Ok(match pm.into_content() {
                        ProcessedMessageContent::StagedCommitMessage(sc) => Some(CommitReview {
                            leaves: mls::commit_leaves_to_check(&sc),
                            actor,
                            aad,
                            changes: mls::commit_review(&group, &sc),
                            settings,
                        }),
                        ProcessedMessageContent::OwnPendingCommit => {
                            group.pending_commit().map(|sc| CommitReview {
                                leaves: Vec::new(),
                                actor: Some(me),
                                aad,
                                changes: mls::commit_review(&group, sc),
                                settings,
                            })
                        }
                        _ => None,
                    })
                }
                // Reported (and skipped) by the real processing.
                Err(_) => Ok(None),
            }
        })?;
        let Some(review) = review else {
            return Ok(Vec::new());
        };
        for (cred, key) in &review.leaves {
            if let Err(e) = self.verify_member(room_id, cred, key).await {
                if mark && matches!(e, SdkError::UntrustedMember { .. }) {
                    self.with_provider(|_, c| store::set_status(c, room_id, status::UNTRUSTED))?;
                }
                return Err(e);
            }
        }
        let decided = match (review.settings, review.actor) {
            (Ok(settings), Some(actor)) => {
                self.decide_commit(room_id, &settings, actor, &review.aad, &review.changes)
                    .await?
            }
            (Err(reason), _) => Err(reason),
            (_, None) => Err("the committer has no Tonari identity".to_string()),
        };
        match decided {
            Ok(grounds) => Ok(grounds),
            Err(reason) => {
                tracing::warn!(
                    room_id,
                    "refusing a commit that breaks the room policy: {reason}"
                );
                if mark {
                    self.with_provider(|_, c| store::set_status(c, room_id, status::UNTRUSTED))?;
                }
                Err(SdkError::PolicyViolation {
                    room_id: room_id.to_string(),
                    reason,
                })
            }
        }
    }

    /// The message at `seq` from the local history, as an event (for
    /// messages another process on this device directory processed).
    pub(crate) fn stored_message_raw(&self, room_id: &str, seq: u64) -> Result<Option<Raw>> {
        self.with_provider(|_, c| stored_message_raw(c, room_id, seq))
    }

    /// Apply an envelope in one transaction. An application message or
    /// proposal that fails MLS processing is skipped (the cursor still
    /// advances) with an [`Event::Undecryptable`]. Another member's commit
    /// that fails MLS verification (e.g. a bad confirmation tag the server
    /// cannot check) is refused: the room is marked `untrusted`, the cursor
    /// stays, and [`SdkError::UntrustedCommit`] is returned.
    pub(crate) fn apply_envelope(&self, env: &Envelope, advance: bool) -> Result<Vec<Raw>> {
        let res = self.with_tx(|p, c| {
            if advance {
                // Another process on this device directory may have processed
                // it already: show it from the local history, never twice.
                let room = store::room(c, &env.room_id)?;
                if room.is_some_and(|r| r.last_seq >= env.seq) {
                    return Ok(stored_message_raw(c, &env.room_id, env.seq)?
                        .into_iter()
                        .collect());
                }
            }
            let raws = self.apply_in_tx(p, c, env)?;
            if advance {
                store::set_cursor(c, &env.room_id, env.seq)?;
            }
            Ok(raws)
        });
        match res {
            Err(SdkError::Mls(reason))
                if env.kind == MessageKind::Commit
                    && env.sender_device != self.inner.identity.device_id =>
            {
                tracing::warn!(room_id = %env.room_id, seq = env.seq, "refusing a commit that does not verify: {reason}");
                self.with_provider(|_, c| store::set_status(c, &env.room_id, status::UNTRUSTED))?;
                Err(SdkError::UntrustedCommit {
                    room_id: env.room_id.clone(),
                    seq: env.seq,
                })
            }
            Err(SdkError::Mls(reason)) => {
                tracing::warn!(room_id = %env.room_id, seq = env.seq, "skipping message: {reason}");
                if advance {
                    self.with_provider(|_, c| store::set_cursor(c, &env.room_id, env.seq))?;
                }
                Ok(vec![Raw::Undecryptable {
                    room_id: env.room_id.clone(),
                    seq: env.seq,
                    reason: "message could not be processed".into(),
                }])
            }
            other => other,
        }
    }

    fn apply_in_tx(&self, p: &Provider<'_>, c: &Connection, env: &Envelope) -> Result<Vec<Raw>> {
        let room_id = env.room_id.as_str();
        let room = store::room(c, room_id)?.ok_or_else(|| SdkError::UnknownRoom(room_id.into()))?;
        let mut group = mls::load_group(p, room_id)?;
        if !group.is_active() {
            return Ok(Vec::new());
        }
        // Our own leave proposal is already in our proposal store.
        if env.kind == MessageKind::Proposal && env.sender_device == self.inner.identity.device_id {
            return Ok(Vec::new());
        }
        let msg = mls::parse_protocol(&env.message.0)?;
        let pm = group.process_message(p, msg).map_err(SdkError::mls)?;
        let sender = mls::identity_of(pm.credential());
        let sender_leaf = match pm.sender() {
            openmls::prelude::Sender::Member(i) => Some(*i),
            _ => None,
        };
        let mut out = Vec::new();
        match pm.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let sender =
                    sender.ok_or_else(|| SdkError::Mls("sender has no Tonari identity".into()))?;
                let bytes = app.into_bytes();
                let content = Content::from_bytes(&bytes).unwrap_or(Content::Unknown);
                let json = serde_json::to_string(&content)
                    .map_err(|e| SdkError::Storage(e.to_string()))?;
                store::insert_message(
                    c,
                    room_id,
                    env.seq,
                    sender.user_id,
                    sender.device_id,
                    &json,
                    env.ts_ms,
                )?;
                out.push(Raw::Message {
                    room_id: room_id.into(),
                    seq: env.seq,
                    sender: (sender.user_id, sender.device_id),
                    content,
                    ts_ms: env.ts_ms,
                });
            }
            ProcessedMessageContent::OwnPrivateMessage => {
                if let Some(o) = store::outbox_by_message(c, room_id, &env.message.0)?
                    && let Some(json) = o.content
                {
                    let content = serde_json::from_str(&json).unwrap_or(Content::Unknown);
                    let me = self.inner.identity;
                    store::insert_message(
                        c,
                        room_id,
                        env.seq,
                        me.user_id,
                        me.device_id,
                        &json,
                        env.ts_ms,
                    )?;
                    store::set_outbox_state(c, &o.txn_id, outbox_state::ACKED, Some(env.seq))?;
                    out.push(Raw::Message {
                        room_id: room_id.into(),
                        seq: env.seq,
                        sender: (me.user_id, me.device_id),
                        content,
                        ts_ms: env.ts_ms,
                    });
                }
            }
            ProcessedMessageContent::ProposalMessage(qp) => {
                // Only self-removals (leave requests) are accepted; other
                // proposals would bypass the membership check.
                let is_self_remove = match (qp.proposal(), sender_leaf) {
                    (Proposal::Remove(r), Some(leaf)) => r.removed() == leaf,
                    _ => false,
                };
                if is_self_remove {
                    group.store_pending_proposal(&p.storage, *qp)?;
                }
            }
            ProcessedMessageContent::StagedCommitMessage(sc) => {
                let by = sender.ok_or_else(|| SdkError::Mls("committer has no identity".into()))?;
                let (added, removed) = mls::commit_changes(&group, &sc);
                let self_removed = sc.self_removed();
                group.merge_staged_commit(p, *sc).map_err(SdkError::mls)?;
                let epoch = group.epoch().as_u64();
                if !added.is_empty() || !removed.is_empty() {
                    out.push(Raw::MembersChanged {
                        room_id: room_id.into(),
                        seq: env.seq,
                        epoch,
                        by,
                        added,
                        removed,
                        grounds: Vec::new(),
                    });
                }
                if self_removed {
                    if room.status == status::LEAVING {
                        store::set_status(c, room_id, status::LEFT)?;
                        out.push(Raw::Left {
                            room_id: room_id.into(),
                            seq: env.seq,
                        });
                    } else {
                        store::set_status(c, room_id, status::REMOVED)?;
                        out.push(Raw::Removed {
                            room_id: room_id.into(),
                            seq: env.seq,
                        });
                    }
                }
            }
            ProcessedMessageContent::OwnPendingCommit => {
                let (added, removed) = match group.pending_commit() {
                    Some(sc) => mls::commit_changes(&group, sc),
                    None => return Err(SdkError::Mls("own commit without pending commit".into())),
                };
                group.merge_pending_commit(p).map_err(SdkError::mls)?;
                if let Some(o) = store::latest_open_handshake(c, room_id, "commit")? {
                    store::set_outbox_state(c, &o.txn_id, outbox_state::ACKED, Some(env.seq))?;
                }
                if !added.is_empty() || !removed.is_empty() {
                    out.push(Raw::MembersChanged {
                        room_id: room_id.into(),
                        seq: env.seq,
                        epoch: group.epoch().as_u64(),
                        by: self.inner.identity,
                        added,
                        removed,
                        grounds: Vec::new(),
                    });
                }
            }
            _ => {}
        }
        Ok(out)
    }

    /// Cursors of the rooms this device follows (for a WebSocket Resume).
    pub(crate) fn cursors(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .with_provider(|_, c| store::rooms(c))?
            .into_iter()
            .filter(|r| r.status == status::ACTIVE || r.status == status::LEAVING)
            .map(|r| (r.room_id, r.last_seq))
            .collect())
    }
}

fn stored_message_raw(c: &Connection, room_id: &str, seq: u64) -> Result<Option<Raw>> {
    Ok(
        store::message_at(c, room_id, seq)?.map(|(sender, content, ts_ms)| Raw::Message {
            room_id: room_id.to_string(),
            seq,
            sender,
            content: Content::from_bytes(content.as_bytes()).unwrap_or(Content::Unknown),
            ts_ms,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip() {
        let b = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex("0001abff"), Some(b));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn client_is_send_sync() {
        assert_send_sync::<Client>();
    }
}
