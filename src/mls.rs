//! Server-side MLS helpers: parsing, identity extraction and key-package
//! validation. The server never holds a key that decrypts room content; it
//! only reads what MLS leaves public (framing, PublicMessages, the tree).

use crate::error::{Error, Result};
use crate::store::DeviceRow;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use std::sync::OnceLock;
use tonari_wire::{DeviceIdentity, ErrorCode};

/// The one ciphersuite Tonari rooms use.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The crypto provider (stateless for the operations the server uses).
pub fn crypto() -> &'static RustCrypto {
    static CRYPTO: OnceLock<RustCrypto> = OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}

/// Parse bytes as an `MlsMessageIn` (exactly, no trailing bytes).
pub fn parse_message(bytes: &[u8]) -> Result<MlsMessageBodyIn> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| Error::invalid_mls("the bytes are not an MLS message", e))?;
    if msg.wire_format() != WireFormat::PublicMessage
        && msg.wire_format() != WireFormat::PrivateMessage
        && msg.wire_format() != WireFormat::Welcome
        && msg.wire_format() != WireFormat::GroupInfo
        && msg.wire_format() != WireFormat::KeyPackage
    {
        return Err(Error::invalid_mls("unsupported wire format", "wire format"));
    }
    Ok(msg.extract())
}

/// The Tonari identity in a credential, if it is a well-formed basic credential.
pub fn identity_of(credential: &Credential) -> Option<DeviceIdentity> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    DeviceIdentity::parse(basic.identity())
}

/// A leaf's claimed identity and signature key.
pub fn leaf_identity(leaf: &LeafNode) -> Result<(DeviceIdentity, Vec<u8>)> {
    let id = identity_of(leaf.credential()).ok_or_else(|| {
        Error::new(
            ErrorCode::UnknownDeviceKey,
            "a member credential is not a Tonari device identity",
        )
    })?;
    Ok((id, leaf.signature_key().as_slice().to_vec()))
}

/// Check a claimed identity + key against the directory row of that device.
pub fn matches_directory(id: DeviceIdentity, key: &[u8], device: Option<&DeviceRow>) -> Result<()> {
    match device {
        Some(d) if d.user_id == id.user_id && d.role == id.role && d.signature_key == key => Ok(()),
        _ => Err(Error::new(
            ErrorCode::UnknownDeviceKey,
            format!(
                "device {} of user {} ({}) with this signature key is not in the directory",
                id.device_id, id.user_id, id.role
            ),
        )),
    }
}

/// Validate an uploaded key package of `device`; returns its hash reference.
pub fn validate_key_package(bytes: &[u8], device: &DeviceRow) -> Result<Vec<u8>> {
    let MlsMessageBodyIn::KeyPackage(kp_in) = parse_message(bytes)? else {
        return Err(Error::invalid_mls("expected a KeyPackage", "wire format"));
    };
    let kp = kp_in
        .validate(crypto(), ProtocolVersion::Mls10)
        .map_err(|e| Error::invalid_mls("the key package does not verify", e))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(Error::invalid_mls(
            "key packages must use ciphersuite 0x0001",
            "ciphersuite",
        ));
    }
    let (id, key) = leaf_identity(kp.leaf_node())?;
    if id.device_id != device.id {
        return Err(Error::new(
            ErrorCode::UnknownDeviceKey,
            "the key package belongs to another device",
        ));
    }
    matches_directory(id, &key, Some(device))?;
    let hash_ref = kp.hash_ref(crypto()).map_err(Error::internal)?;
    Ok(hash_ref.as_slice().to_vec())
}
