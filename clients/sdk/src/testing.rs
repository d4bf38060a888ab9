//! Low-level helpers for tests. Not part of the stable API.

use crate::Content;
use crate::client::{Client, Event};
use crate::error::{Result, SdkError};
use crate::mls::{self, CIPHERSUITE};
use crate::store::Provider;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use tonari_wire::{B64, DeviceIdentity, Envelope, MessageKind};

impl Client {
    /// Try to decrypt a raw application message against the current local
    /// group state. Nothing is kept (the transaction is rolled back), so a
    /// failure cannot advance or corrupt state.
    #[doc(hidden)]
    pub fn decrypt_raw(&self, room_id: &str, message: &[u8]) -> Result<Content> {
        self.with_rollback(|p, _| {
            let mut group = mls::load_group(p, room_id)?;
            let msg = mls::parse_protocol(message)?;
            let pm = group.process_message(p, msg).map_err(SdkError::mls)?;
            match pm.into_content() {
                ProcessedMessageContent::ApplicationMessage(app) => {
                    Ok(Content::from_bytes(&app.into_bytes()).unwrap_or(Content::Unknown))
                }
                _ => Err(SdkError::Mls("not an application message".into())),
            }
        })
    }

    /// Feed a raw MLS message as if the server had delivered it (the
    /// membership check applies; the cursor is not touched).
    #[doc(hidden)]
    pub async fn process_raw(&self, room_id: &str, message: &[u8]) -> Result<Vec<Event>> {
        let _g = self.inner.proc_lock.lock().await;
        let kind = match mls::parse_protocol(message)?.content_type() {
            ContentType::Application => MessageKind::Application,
            ContentType::Proposal => MessageKind::Proposal,
            ContentType::Commit => MessageKind::Commit,
        };
        let env = Envelope {
            room_id: room_id.to_string(),
            seq: 0,
            kind,
            epoch: 0,
            sender_device: -1,
            ts_ms: 0,
            message: B64(message.to_vec()),
        };
        self.check_commit(room_id, message).await?;
        let raws = self.apply_envelope(&env, false)?;
        Ok(self.finish(raws).await)
    }

    /// Build a commit adding `key_package` (bytes of an `MlsMessageOut` key
    /// package) WITHOUT the directory check and without submitting it. The
    /// commit stays pending; see [`Client::clear_pending`].
    #[doc(hidden)]
    pub fn craft_add_commit_unchecked(
        &self,
        room_id: &str,
        key_package: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        self.with_tx(|p, _| {
            let kp = mls::parse_key_package(p.crypto, key_package)?;
            let mut group = mls::load_group(p, room_id)?;
            let built =
                mls::build_commit(p, &mut group, &self.inner.signer, vec![kp], vec![], vec![])?;
            let welcome = built
                .welcome
                .ok_or_else(|| SdkError::Mls("no welcome".into()))?;
            Ok((built.commit, welcome))
        })
    }

    /// Drop this device's pending commit in the room.
    #[doc(hidden)]
    pub fn clear_pending(&self, room_id: &str) -> Result<()> {
        self.with_tx(|p, _| {
            let mut group = mls::load_group(p, room_id)?;
            group.clear_pending_commit(&p.storage)?;
            Ok(())
        })
    }

    /// A key package claiming `identity` but signed with a FRESH signature
    /// key (one that is not in the directory). Returns `MlsMessageOut` bytes.
    #[doc(hidden)]
    pub fn forge_key_package(identity: DeviceIdentity) -> Result<Vec<u8>> {
        forge_key_package(identity)
    }

    /// The MLS epoch of the local group of a room.
    #[doc(hidden)]
    pub fn epoch(&self, room_id: &str) -> Result<u64> {
        self.with_provider(|p, _| Ok(mls::load_group(p, room_id)?.epoch().as_u64()))
    }
}

/// See [`Client::forge_key_package`].
#[doc(hidden)]
pub fn forge_key_package(identity: DeviceIdentity) -> Result<Vec<u8>> {
    let conn = rusqlite::Connection::open_in_memory()?;
    let mut conn = conn;
    {
        let mut storage = openmls_sqlite_storage::SqliteStorageProvider::<
            crate::store::JsonCodec,
            &mut rusqlite::Connection,
        >::new(&mut conn);
        storage
            .run_migrations()
            .map_err(|e| SdkError::Storage(e.to_string()))?;
    }
    let crypto = RustCrypto::default();
    let p = Provider::new(&crypto, &conn);
    let signer = SignatureKeyPair::new(mls::SIG_SCHEME).map_err(SdkError::mls)?;
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(identity.to_bytes()).into(),
        signature_key: signer.public().to_vec().into(),
    };
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(mls::capabilities())
        .build(CIPHERSUITE, &p, &signer, cwk)
        .map_err(SdkError::mls)?;
    MlsMessageOut::from(bundle.key_package().clone())
        .to_bytes()
        .map_err(SdkError::mls)
}

impl Client {
    /// Raw envelopes of a room after `after` (one page), as the server stores
    /// them. For tests that replay ciphertext.
    #[doc(hidden)]
    pub async fn fetch_envelopes(&self, room_id: &str, after: u64) -> Result<Vec<Envelope>> {
        let path = format!(
            "{}?after={after}&limit=500",
            tonari_wire::paths::fill(tonari_wire::paths::ROOM_HISTORY, &[("room_id", room_id)])
        );
        let page: tonari_wire::MessagePage = self.get(&path).await?;
        Ok(page.messages)
    }

    /// The session token (tests that talk to the server directly).
    #[doc(hidden)]
    pub fn session_token(&self) -> Result<String> {
        self.token()
    }
}
