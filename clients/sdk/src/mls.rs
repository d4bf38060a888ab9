//! OpenMLS helpers: configuration, parsing and inspection.

use crate::client::unhex;
use crate::error::{Result, SdkError};
use crate::store::Provider;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use tonari_wire::{DeviceIdentity, ROOM_SETTINGS_EXTENSION, RoomSettings};

/// The ciphersuite of every Tonari room.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// The signature scheme of device keys.
pub const SIG_SCHEME: SignatureScheme = SignatureScheme::ED25519;
/// How many past epochs' secrets are kept (late application messages).
pub const MAX_PAST_EPOCHS: usize = 5;

/// How far behind the newest generation of a sender a message may arrive
/// and still decrypt. One device may have many sends in flight (pipelined
/// WebSocket sends, retries after a reconnect), and the server stores them in
/// arrival order, so the window must exceed the in-flight depth (256 per
/// connection); the cost is at most this many skipped keys per sender.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 300;

fn ratchet_config() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, 1000)
}

/// Leaf capabilities of every Tonari device: the defaults plus the room
/// settings GroupContext extension (members must support every group
/// context extension).
pub fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        None,
        Some(&[ExtensionType::Unknown(ROOM_SETTINGS_EXTENSION)]),
        None,
        None,
    )
}

/// The room settings a group carries in its context.
pub fn room_settings(group: &MlsGroup) -> std::result::Result<RoomSettings, String> {
    let ext = group
        .extensions()
        .unknown(ROOM_SETTINGS_EXTENSION)
        .ok_or_else(|| "the room has no Tonari settings extension".to_string())?;
    RoomSettings::from_bytes(&ext.0)
}

pub fn create_config(settings: &RoomSettings) -> Result<MlsGroupCreateConfig> {
    let ext = Extensions::single(Extension::Unknown(
        ROOM_SETTINGS_EXTENSION,
        UnknownExtension(settings.to_bytes()),
    ))
    .map_err(SdkError::mls)?;
    Ok(MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .capabilities(capabilities())
        .with_group_context_extensions(ext)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(ratchet_config())
        .build())
}

pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(ratchet_config())
        .build()
}

pub fn group_id(room_id: &str) -> Result<GroupId> {
    unhex(room_id)
        .filter(|b| !b.is_empty())
        .map(|b| GroupId::from_slice(&b))
        .ok_or_else(|| SdkError::UnknownRoom(room_id.to_string()))
}

pub fn load_group_opt(p: &Provider<'_>, room_id: &str) -> Result<Option<MlsGroup>> {
    Ok(MlsGroup::load(&p.storage, &group_id(room_id)?)?)
}

pub fn load_group(p: &Provider<'_>, room_id: &str) -> Result<MlsGroup> {
    load_group_opt(p, room_id)?.ok_or_else(|| SdkError::UnknownRoom(room_id.to_string()))
}

/// The Tonari identity in a credential, if it is a well-formed basic credential.
pub fn identity_of(credential: &Credential) -> Option<DeviceIdentity> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    DeviceIdentity::parse(basic.identity())
}

/// Identities of the group's current members (unparsable ones are skipped).
pub fn member_identities(group: &MlsGroup) -> Vec<DeviceIdentity> {
    group
        .members()
        .filter_map(|m| identity_of(&m.credential))
        .collect()
}

/// Parse bytes of an `MlsMessageOut` carrying a Public or Private message.
pub fn parse_protocol(bytes: &[u8]) -> Result<ProtocolMessage> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(SdkError::mls)?;
    msg.try_into_protocol_message().map_err(SdkError::mls)
}

/// Parse and validate (signature, lifetime, ciphersuite) a key package.
pub fn parse_key_package(crypto: &RustCrypto, bytes: &[u8]) -> Result<KeyPackage> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(SdkError::mls)?;
    let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
        return Err(SdkError::Mls("not a key package".into()));
    };
    let kp = kp
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(SdkError::mls)?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(SdkError::Mls("key package has another ciphersuite".into()));
    }
    Ok(kp)
}

/// Stage a Welcome (ratchet tree from the extension).
pub fn stage_welcome(p: &Provider<'_>, bytes: &[u8]) -> Result<StagedWelcome> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(SdkError::mls)?;
    let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
        return Err(SdkError::Mls("not a welcome".into()));
    };
    StagedWelcome::build_from_welcome(p, &join_config(), welcome)
        .map_err(SdkError::mls)?
        .replace_old_group()
        .build()
        .map_err(SdkError::mls)
}

/// A commit ready to submit.
pub struct BuiltCommit {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
}

/// Build (and leave pending) a commit adding and/or removing members; pending
/// proposals in the store are included. `aad` carries the commit's grounds
/// (consents), authenticated and readable by the server and every member.
pub fn build_commit(
    p: &Provider<'_>,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    adds: Vec<KeyPackage>,
    removes: Vec<LeafNodeIndex>,
    aad: Vec<u8>,
) -> Result<BuiltCommit> {
    group.set_aad(aad);
    let bundle = group
        .commit_builder()
        .propose_adds(adds)
        .propose_removals(removes)
        .load_psks(&p.storage)
        .map_err(SdkError::mls)?
        .build(p.crypto, p.crypto, signer, |_| true)
        .map_err(SdkError::mls)?
        .stage_commit(p)
        .map_err(SdkError::mls);
    group.set_aad(Vec::new());
    let (commit, welcome, _) = bundle?.into_messages();
    Ok(BuiltCommit {
        commit: commit.to_bytes().map_err(SdkError::mls)?,
        welcome: welcome
            .map(|w| w.to_bytes())
            .transpose()
            .map_err(SdkError::mls)?,
    })
}

/// Every (credential, signature key) a staged commit brings into the group:
/// added key packages, updated leaves and the committer's path leaf.
pub fn commit_leaves_to_check(sc: &StagedCommit) -> Vec<(Credential, Vec<u8>)> {
    let mut out = Vec::new();
    for add in sc.add_proposals() {
        let leaf = add.add_proposal().key_package().leaf_node();
        out.push((
            leaf.credential().clone(),
            leaf.signature_key().as_slice().to_vec(),
        ));
    }
    for upd in sc.update_proposals() {
        let leaf = upd.update_proposal().leaf_node();
        out.push((
            leaf.credential().clone(),
            leaf.signature_key().as_slice().to_vec(),
        ));
    }
    if let Some(leaf) = sc.update_path_leaf_node() {
        out.push((
            leaf.credential().clone(),
            leaf.signature_key().as_slice().to_vec(),
        ));
    }
    out
}

/// The membership changes of a staged commit for the policy check: adds,
/// and removes with whether the removed device asked for it (a leave).
pub fn commit_review(
    group: &MlsGroup,
    sc: &StagedCommit,
) -> Vec<(tonari_wire::Action, DeviceIdentity, bool)> {
    let mut out = Vec::new();
    for a in sc.add_proposals() {
        if let Some(id) = identity_of(a.add_proposal().key_package().leaf_node().credential()) {
            out.push((tonari_wire::Action::Add, id, false));
        }
    }
    for r in sc.remove_proposals() {
        let idx = r.remove_proposal().removed();
        if let Some(id) = group.member(idx).and_then(identity_of) {
            let self_proposed = matches!(r.sender(), Sender::Member(s) if *s == idx);
            out.push((tonari_wire::Action::Remove, id, self_proposed));
        }
    }
    out
}

/// Identities added and removed by a staged commit (evaluated against the
/// group before merging).
pub fn commit_changes(
    group: &MlsGroup,
    sc: &StagedCommit,
) -> (Vec<DeviceIdentity>, Vec<DeviceIdentity>) {
    let added = sc
        .add_proposals()
        .filter_map(|a| identity_of(a.add_proposal().key_package().leaf_node().credential()))
        .collect();
    let removed = sc
        .remove_proposals()
        .filter_map(|r| {
            group
                .member(r.remove_proposal().removed())
                .and_then(identity_of)
        })
        .collect();
    (added, removed)
}
