// MLS in the page, on ts-mls: key packages, room creation, joining from a
// Welcome, commits (add/remove), application messages, and (de)serialising
// the group state for IndexedDB. Tonari specifics come from ./tonari.ts.

import {
  acceptAll,
  bytesToBase64,
  createApplicationMessage,
  createCommit,
  createGroup,
  decodeGroupState,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeGroupState,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  joinGroup,
  nobleCryptoProvider,
  processMessage,
  type CiphersuiteImpl,
  type ClientState,
  type IncomingMessageCallback,
  type KeyPackage,
  type MLSMessage,
  type PrivateKeyPackage,
  type Proposal,
} from "ts-mls";
import { defaultClientConfig } from "ts-mls/clientConfig.js";
import { createGroupInfoWithRatchetTree } from "ts-mls/createCommit.js";
import { decodeKeyPackage, encodeKeyPackage, makeKeyPackageRef } from "ts-mls/keyPackage.js";
import { unprotectPrivateMessage } from "ts-mls/messageProtection.js";
import { decryptGroupInfo, decryptGroupSecrets } from "ts-mls/welcome.js";
import { encodeRatchetTree } from "ts-mls/ratchetTree.js";
import {
  CIPHERSUITE,
  SUPPORTED_EXTENSIONS,
  identityToBytes,
  parseCommitGrounds,
  parseIdentity,
  readRoomSettings,
  roomExtensions,
  type DeviceIdentity,
  type RoomSettings,
} from "./tonari.js";

let suitePromise: Promise<CiphersuiteImpl> | undefined;

/** The ciphersuite implementation (noble: pure JS, fast enough for big rooms). */
export function suite(): Promise<CiphersuiteImpl> {
  suitePromise ??= nobleCryptoProvider.getCiphersuiteImpl(getCiphersuiteFromName(CIPHERSUITE));
  return suitePromise;
}

export interface SignatureKeys {
  publicKey: Uint8Array;
  signKey: Uint8Array;
}

export async function newSignatureKeys(): Promise<SignatureKeys> {
  const cs = await suite();
  const k = await cs.signature.keygen();
  return { publicKey: k.publicKey, signKey: k.signKey };
}

export function hex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

export function unhex(s: string): Uint8Array {
  if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) throw new Error("invalid hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function capabilities() {
  const caps = defaultCapabilities();
  for (const e of SUPPORTED_EXTENSIONS) if (!caps.extensions.includes(e)) caps.extensions.push(e);
  return caps;
}

/** A fresh key package, with what must be kept to join from a Welcome. */
export interface NewKeyPackage {
  /** `MLSMessage` bytes to upload. */
  message: Uint8Array;
  /** KeyPackageRef (hex): the Welcome names the key package by it. */
  ref: string;
  /** TLS bytes of the public key package (for storage). */
  publicPackage: Uint8Array;
  privatePackage: PrivateKeyPackage;
}

export async function newKeyPackage(id: DeviceIdentity, keys: SignatureKeys): Promise<NewKeyPackage> {
  const cs = await suite();
  const { publicPackage, privatePackage } = await generateKeyPackageWithKey(
    { credentialType: "basic", identity: identityToBytes(id) },
    capabilities(),
    defaultLifetime,
    [],
    keys,
    cs,
  );
  const ref = hex(await makeKeyPackageRef(publicPackage, cs.hash));
  return {
    message: encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: publicPackage }),
    ref,
    publicPackage: encodeKeyPackage(publicPackage),
    privatePackage,
  };
}

/** Parse a key package from its `MLSMessage` bytes (as claimed from the server). */
export function parseKeyPackage(bytes: Uint8Array): KeyPackage {
  const m = decodeMlsMessage(bytes, 0)?.[0];
  if (!m || m.wireformat !== "mls_key_package") throw new Error("not a key package");
  return m.keyPackage;
}

function decodeStoredKeyPackage(bytes: Uint8Array): KeyPackage {
  const kp = decodeKeyPackage(bytes, 0)?.[0];
  if (!kp) throw new Error("stored key package does not decode");
  return kp;
}

/** Group state as bytes for IndexedDB (the client config is not stored). */
export function saveState(state: ClientState): Uint8Array {
  return encodeGroupState(state);
}

export function loadState(bytes: Uint8Array): ClientState {
  const gs = decodeGroupState(bytes, 0)?.[0];
  if (!gs) throw new Error("stored group state does not decode");
  return { ...gs, clientConfig: defaultClientConfig };
}

export function roomIdOf(state: ClientState): string {
  return hex(state.groupContext.groupId);
}

export function epochOf(state: ClientState): bigint {
  return state.groupContext.epoch;
}

export function isActive(state: ClientState): boolean {
  return state.groupActiveState.kind === "active";
}

export interface Member {
  leafIndex: number;
  identity: DeviceIdentity | undefined;
  signatureKey: Uint8Array;
}

export function members(state: ClientState): Member[] {
  const out: Member[] = [];
  state.ratchetTree.forEach((node, i) => {
    if (i % 2 !== 0 || node?.nodeType !== "leaf") return;
    const cred = node.leaf.credential;
    out.push({
      leafIndex: i / 2,
      identity: cred.credentialType === "basic" ? parseIdentity(cred.identity) : undefined,
      signatureKey: node.leaf.signaturePublicKey,
    });
  });
  return out;
}

export function ownLeafIndex(state: ClientState): number {
  return state.privatePath.leafIndex;
}

/** A new room: the group with only this device, plus what the server needs
 * to follow it (GroupInfo as MLSMessage bytes and the ratchet tree). */
export async function createRoom(
  groupId: Uint8Array,
  id: DeviceIdentity,
  keys: SignatureKeys,
  settings: RoomSettings | undefined,
): Promise<{ state: ClientState; groupInfo: Uint8Array; ratchetTree: Uint8Array }> {
  const cs = await suite();
  const kp = await newKeyPackage(id, keys);
  const state = await createGroup(
    groupId,
    decodeStoredKeyPackage(kp.publicPackage),
    kp.privatePackage,
    roomExtensions(settings),
    cs,
  );
  const gi = await createGroupInfoWithRatchetTree(
    state.groupContext,
    state.confirmationTag,
    state,
    state.ratchetTree,
    [],
    cs,
  );
  return {
    state,
    groupInfo: encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo: gi }),
    ratchetTree: encodeRatchetTree(state.ratchetTree),
  };
}

/** The KeyPackageRefs (hex) a Welcome is addressed to. */
export function welcomeRefs(welcomeBytes: Uint8Array): string[] {
  const m = decodeMlsMessage(welcomeBytes, 0)?.[0];
  if (!m || m.wireformat !== "mls_welcome") throw new Error("not a welcome");
  return m.welcome.secrets.map((s) => hex(s.newMember));
}

/** Join a room from a Welcome with the stored key package it names. */
export async function joinFromWelcome(
  welcomeBytes: Uint8Array,
  keyPackage: { publicPackage: Uint8Array; privatePackage: PrivateKeyPackage },
): Promise<ClientState> {
  const cs = await suite();
  const m = decodeMlsMessage(welcomeBytes, 0)?.[0];
  if (!m || m.wireformat !== "mls_welcome") throw new Error("not a welcome");
  return joinGroup(
    m.welcome,
    decodeStoredKeyPackage(keyPackage.publicPackage),
    keyPackage.privatePackage,
    emptyPskIndex,
    cs,
  );
}

/** The leaf index of the member who signed the Welcome's GroupInfo, i.e.
 * who added us (joinGroup verifies that signature but does not return the
 * signer). Tonari rooms use no PSKs, so the PSK secret is all zeroes. */
export async function welcomeSigner(
  welcomeBytes: Uint8Array,
  keyPackage: { publicPackage: Uint8Array; privatePackage: PrivateKeyPackage },
): Promise<number | undefined> {
  const cs = await suite();
  const m = decodeMlsMessage(welcomeBytes, 0)?.[0];
  if (!m || m.wireformat !== "mls_welcome") return undefined;
  const kp = decodeStoredKeyPackage(keyPackage.publicPackage);
  const ref = await makeKeyPackageRef(kp, cs.hash);
  const priv = await cs.hpke.importPrivateKey(keyPackage.privatePackage.initPrivateKey);
  const secrets = await decryptGroupSecrets(priv, ref, m.welcome, cs.hpke);
  if (!secrets || secrets.psks.length > 0) return undefined;
  const gi = await decryptGroupInfo(m.welcome, secrets.joinerSecret, new Uint8Array(cs.kdf.size), cs);
  return gi?.signer;
}

/** Encrypt an application message (a PrivateMessage). The returned state
 * must be kept even if the send fails: the ratchet has moved on. */
export async function encrypt(state: ClientState, plaintext: Uint8Array): Promise<{ state: ClientState; message: Uint8Array }> {
  const cs = await suite();
  const r = await createApplicationMessage(state, plaintext, cs);
  return {
    state: r.newState,
    message: encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage: r.privateMessage }),
  };
}

/** A commit adding key packages and/or removing leaves, as a PublicMessage
 * (the server validates every handshake), with the Welcome for the added
 * ones (ratchet tree in its GroupInfo extension). The returned state is the
 * next epoch's: adopt it only when the commit comes back from the room. */
export async function buildCommit(
  state: ClientState,
  adds: KeyPackage[],
  removes: number[],
): Promise<{ state: ClientState; commit: Uint8Array; welcome: Uint8Array | undefined }> {
  const cs = await suite();
  const extraProposals: Proposal[] = [
    ...adds.map((keyPackage): Proposal => ({ proposalType: "add", add: { keyPackage } })),
    ...removes.map((removed): Proposal => ({ proposalType: "remove", remove: { removed } })),
  ];
  const r = await createCommit({ state, cipherSuite: cs }, { wireAsPublicMessage: true, ratchetTreeExtension: true, extraProposals });
  return {
    state: r.newState,
    commit: encodeMlsMessage(r.commit),
    welcome: r.welcome ? encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: r.welcome }) : undefined,
  };
}

export type Incoming =
  | { kind: "application"; state: ClientState; plaintext: Uint8Array; sender: DeviceIdentity | undefined }
  | {
      kind: "commit";
      state: ClientState;
      by: DeviceIdentity | undefined;
      /** Members brought in by Add proposals. */
      added: Member[];
      removed: DeviceIdentity[];
      /** Every add/remove, for the room policy (remove: was it the removed
       * device's own leave request?). */
      changes: { action: "add" | "remove"; target: DeviceIdentity; selfProposed: boolean }[];
      /** Every leaf whose key is new in this epoch (adds, updates, the
       * committer's new path leaf): each must match the directory. */
      newLeaves: Member[];
      /** The room settings before the commit (the policy that applies). */
      settingsBefore: RoomSettings | undefined;
      selfRemoved: boolean;
      /** The commit's authenticated data (commit grounds: consents). */
      aad: Uint8Array;
      grounds: unknown;
    }
  | { kind: "proposal"; state: ClientState }
  | { kind: "other"; state: ClientState };

export function decodeMessage(bytes: Uint8Array): MLSMessage {
  const m = decodeMlsMessage(bytes, 0)?.[0];
  if (!m) throw new Error("not an MLS message");
  return m;
}

/** Process another member's message in order. Throws when it does not verify. */
export async function processIncoming(state: ClientState, bytes: Uint8Array): Promise<Incoming> {
  const cs = await suite();
  const m = decodeMessage(bytes);
  if (m.wireformat !== "mls_public_message" && m.wireformat !== "mls_private_message") {
    throw new Error(`unexpected ${m.wireformat} in a room`);
  }
  if (m.wireformat === "mls_private_message") {
    const app = await decryptApplication(state, m.privateMessage, cs);
    if (app) return app;
  }
  const before = members(state);
  const byLeaf = new Map(before.map((x) => [x.leafIndex, x]));
  let committer: number | undefined;
  let removedLeaves: { removed: number; sender: number | undefined }[] = [];
  let addedKeyPackages: KeyPackage[] = [];
  let isCommit = false;
  // Only self-removals may come as standalone proposals (leave requests);
  // anything else is refused, as in the Rust SDK.
  const policy: IncomingMessageCallback = (incoming) => {
    if (incoming.kind === "commit") {
      isCommit = true;
      committer = incoming.senderLeafIndex;
      removedLeaves = incoming.proposals
        .filter((p) => p.proposal.proposalType === "remove")
        .map((p) => ({ removed: (p.proposal as { remove: { removed: number } }).remove.removed, sender: p.senderLeafIndex }));
      addedKeyPackages = incoming.proposals
        .filter((p) => p.proposal.proposalType === "add")
        .map((p) => (p.proposal as { add: { keyPackage: KeyPackage } }).add.keyPackage);
      return acceptAll(incoming);
    }
    const p = incoming.proposal;
    return p.proposal.proposalType === "remove" &&
      (p.proposal as { remove: { removed: number } }).remove.removed === p.senderLeafIndex
      ? "accept"
      : "reject";
  };
  const r = await processMessage(m, state, emptyPskIndex, policy, cs);
  if (r.kind === "applicationMessage") {
    return { kind: "application", state: r.newState, plaintext: r.message, sender: undefined };
  }
  if (isCommit) {
    const beforeKeys = new Set(before.map((x) => hex(x.signatureKey)));
    const after = members(r.newState);
    const newLeaves = after.filter((x) => !beforeKeys.has(hex(x.signatureKey)));
    const addedKeys = new Set(addedKeyPackages.map((kp) => hex(kp.leafNode.signaturePublicKey)));
    const added = newLeaves.filter((x) => addedKeys.has(hex(x.signatureKey)));
    const changes: { action: "add" | "remove"; target: DeviceIdentity; selfProposed: boolean }[] = [];
    for (const kp of addedKeyPackages) {
      const cred = kp.leafNode.credential;
      const id = cred.credentialType === "basic" ? parseIdentity(cred.identity) : undefined;
      if (id) changes.push({ action: "add", target: id, selfProposed: false });
    }
    const removed: DeviceIdentity[] = [];
    for (const l of removedLeaves) {
      const id = byLeaf.get(l.removed)?.identity;
      if (!id) continue;
      removed.push(id);
      changes.push({ action: "remove", target: id, selfProposed: l.sender === l.removed });
    }
    const aad = m.wireformat === "mls_public_message" ? m.publicMessage.content.authenticatedData : new Uint8Array();
    return {
      kind: "commit",
      state: r.newState,
      by: committer === undefined ? undefined : byLeaf.get(committer)?.identity,
      added,
      removed,
      changes,
      newLeaves,
      settingsBefore: readRoomSettings(state.groupContext.extensions),
      selfRemoved: r.newState.groupActiveState.kind === "removedFromGroup",
      aad,
      grounds: parseCommitGrounds(aad),
    };
  }
  return { kind: r.actionTaken === "accept" ? "proposal" : "other", state: r.newState };
}

type PrivateMessageOf<M> = M extends { wireformat: "mls_private_message"; privateMessage: infer P } ? P : never;

/** An application message, decrypted as ts-mls' processPrivateMessage does
 * (current or retained past epoch), but keeping the sender's leaf, which
 * processMessage does not return. `undefined` for handshakes. */
async function decryptApplication(
  state: ClientState,
  pm: PrivateMessageOf<MLSMessage>,
  cs: CiphersuiteImpl,
): Promise<Incoming | undefined> {
  if (pm.contentType !== "application") return undefined;
  const current = pm.epoch === state.groupContext.epoch;
  const past = current ? undefined : state.historicalReceiverData.get(pm.epoch);
  if (!current && !past) throw new Error("message from an epoch whose keys are gone");
  const src = past ?? {
    senderDataSecret: state.keySchedule.senderDataSecret,
    secretTree: state.secretTree,
    ratchetTree: state.ratchetTree,
    groupContext: state.groupContext,
  };
  const r = await unprotectPrivateMessage(
    src.senderDataSecret,
    pm,
    src.secretTree,
    src.ratchetTree,
    src.groupContext,
    state.clientConfig.keyRetentionConfig,
    cs,
  );
  const content = r.content.content;
  if (content.contentType !== "application") throw new Error("not an application message");
  const leaf = content.sender.senderType === "member" ? content.sender.leafIndex : undefined;
  const node = leaf === undefined ? undefined : src.ratchetTree[leaf * 2];
  const sender =
    node?.nodeType === "leaf" && node.leaf.credential.credentialType === "basic"
      ? parseIdentity(node.leaf.credential.identity)
      : undefined;
  const newState: ClientState = past
    ? { ...state, historicalReceiverData: new Map(state.historicalReceiverData).set(pm.epoch, { ...past, secretTree: r.tree }) }
    : { ...state, secretTree: r.tree };
  return { kind: "application", state: newState, plaintext: content.applicationData, sender };
}

/** Verify an Ed25519 signature (consents are signed with a device's MLS
 * signature key). */
export async function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean> {
  const cs = await suite();
  try {
    return await cs.signature.verify(publicKey, message, signature);
  } catch {
    return false;
  }
}

/** Does this commit (a PublicMessage) remove this device's leaf, by value or
 * by reference to a stored proposal? Needed because ts-mls 1.6.4 cannot
 * process a commit that removes us and also adds someone: applyProposals
 * (clientState.js) decides "self removed" by whether our leaf is blank after
 * all proposals, but RFC 9420 applies removes before adds and an add takes
 * the leftmost blank leaf, i.e. ours. ts-mls then tries to decrypt the
 * UpdatePath with keys that are no longer on it and throws
 * "No overlap between provided private keys and update path". */
export function commitRemovesSelf(state: ClientState, bytes: Uint8Array): boolean {
  let m: MLSMessage;
  try {
    m = decodeMessage(bytes);
  } catch {
    return false;
  }
  if (m.wireformat !== "mls_public_message") return false;
  const content = m.publicMessage.content;
  if (content.contentType !== "commit") return false;
  const me = ownLeafIndex(state);
  for (const p of content.commit.proposals) {
    const proposal =
      p.proposalOrRefType === "proposal" ? p.proposal : state.unappliedProposals[bytesToBase64(p.reference)]?.proposal;
    if (proposal?.proposalType === "remove" && (proposal as { remove: { removed: number } }).remove.removed === me) return true;
  }
  return false;
}
