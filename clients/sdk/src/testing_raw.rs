//! Raw protocol access for integration tests (bad input, idempotency and
//! racing commits). Not part of the stable API.

use crate::Content;
use crate::client::Client;
use crate::error::{Result, SdkError};
use crate::mls;
use tonari_wire::{
    Ack, B64, ClaimedKeyPackages, KeyPackageCount, KeyPackageUpload, SubmitRequest, paths,
};

impl Client {
    /// The session token (tests use it for raw HTTP calls).
    #[doc(hidden)]
    pub fn testing_token(&self) -> String {
        self.token().unwrap_or_default()
    }

    /// Encrypt a text message for the room's current epoch without sending it.
    #[doc(hidden)]
    pub fn testing_encrypt(&self, room_id: &str, text: &str) -> Result<Vec<u8>> {
        let payload = Content::text(text).to_bytes()?;
        self.with_tx(|p, _| {
            let mut group = mls::load_group(p, room_id)?;
            group
                .create_message(p, &self.inner.signer, &payload)
                .map_err(SdkError::mls)?
                .to_bytes()
                .map_err(SdkError::mls)
        })
    }

    /// Submit raw MLS bytes with a chosen txn id; local state is untouched.
    #[doc(hidden)]
    pub async fn testing_submit(
        &self,
        room_id: &str,
        txn_id: &str,
        message: &[u8],
        welcome: Option<&[u8]>,
    ) -> Result<Ack> {
        let req = SubmitRequest {
            txn_id: txn_id.to_string(),
            message: B64(message.to_vec()),
            welcome: welcome.map(|w| B64(w.to_vec())),
        };
        self.post(
            &paths::fill(paths::ROOM_MESSAGES, &[("room_id", room_id)]),
            &req,
        )
        .await
    }

    /// Submit this device's pending commit (from
    /// [`Client::craft_add_commit_unchecked`]); when the server accepts it,
    /// catch up so the commit is merged. On error the commit stays pending.
    #[doc(hidden)]
    pub async fn testing_submit_pending_commit(
        &self,
        room_id: &str,
        txn_id: &str,
        commit: &[u8],
        welcome: Option<&[u8]>,
    ) -> Result<Ack> {
        let ack = self
            .testing_submit(room_id, txn_id, commit, welcome)
            .await?;
        self.catch_up_room(room_id).await?;
        Ok(ack)
    }

    /// Claim key packages of a user without any check: (device id, bytes).
    #[doc(hidden)]
    pub async fn testing_claim(&self, username: &str) -> Result<Vec<(i64, Vec<u8>)>> {
        let claimed: ClaimedKeyPackages = self
            .post(
                &paths::fill(paths::CLAIM_KEY_PACKAGES, &[("username", username)]),
                &serde_json::json!({}),
            )
            .await?;
        Ok(claimed
            .key_packages
            .into_iter()
            .map(|k| (k.device_id, k.key_package.0))
            .collect())
    }

    /// Upload raw key-package bytes for this device.
    #[doc(hidden)]
    pub async fn testing_upload_key_package(&self, key_package: &[u8]) -> Result<KeyPackageCount> {
        let req = KeyPackageUpload {
            key_packages: vec![B64(key_package.to_vec())],
        };
        self.post(paths::OWN_KEY_PACKAGES, &req).await
    }

    /// Build (and leave pending, not submitted) the commit this device would
    /// make to add and/or remove all devices of these users, with the same
    /// grounds (consents) as [`Client::invite`] / [`Client::remove`] but
    /// WITHOUT any local policy check. Returns (commit, welcome).
    #[doc(hidden)]
    pub async fn testing_craft_commit(
        &self,
        room_id: &str,
        add: Option<&str>,
        remove: Option<&str>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let _g = self.inner.proc_lock.lock().await;
        self.catch_up_room(room_id).await?;
        let mut aad = Vec::new();
        let mut kps = Vec::new();
        if let Some(u) = add {
            kps = self.claim_verified(room_id, u).await?;
            aad = self
                .grounds_for(room_id, u, tonari_wire::Action::Add)
                .await?;
        }
        let mut remove_user = None;
        if let Some(u) = remove {
            remove_user = Some(self.user_devices(u).await?.user_id);
            aad = self
                .grounds_for(room_id, u, tonari_wire::Action::Remove)
                .await?;
        }
        let me = self.identity();
        self.with_tx(|p, _| {
            let mut group = mls::load_group(p, room_id)?;
            let leaves = group
                .members()
                .filter(|m| {
                    mls::identity_of(&m.credential)
                        .is_some_and(|id| Some(id.user_id) == remove_user && id != me)
                })
                .map(|m| m.index)
                .collect::<Vec<_>>();
            if let Some(u) = remove
                && leaves.is_empty()
            {
                return Err(SdkError::NotInRoom(u.to_string()));
            }
            if let Some(u) = add
                && kps.is_empty()
            {
                return Err(SdkError::NoKeyPackages(u.to_string()));
            }
            let built = mls::build_commit(p, &mut group, &self.inner.signer, kps, leaves, aad)?;
            Ok((built.commit, built.welcome))
        })
    }

    /// Run this client's membership and policy check on a commit for the
    /// room's current epoch, without applying it or marking the room
    /// untrusted: the grounds of each change, or the refusal.
    #[doc(hidden)]
    pub async fn testing_review_commit(
        &self,
        room_id: &str,
        commit: &[u8],
    ) -> Result<Vec<(i64, tonari_wire::Grounds)>> {
        let _g = self.inner.proc_lock.lock().await;
        self.check_commit_with(room_id, commit, false).await
    }
}
