// The web client's engine: one device (this browser profile) talking to the
// server, MLS in the page. Mirrors the Rust SDK (clients/sdk): key packages
// topped up after login, rooms created from GroupInfo + ratchet tree,
// Welcomes from /v1/welcomes, every room processed strictly in seq order,
// own commits adopted when they come back from the room, every added member
// checked against the directory. All MLS work runs under one lock.

import type { KeyPackage } from "ts-mls";
import { Api, ApiError, b64, unb64, type DeviceInfo, type Envelope, type ServerFrame, type UserDevices } from "./api.js";
import * as mls from "./mls/engine.js";
import {
  CONSENT_LABEL,
  KEY_PACKAGE_TARGET,
  checkChange,
  checkConsentParties,
  commitConsents,
  parseConsent,
  policySettings,
  decodeContent,
  defaultRoomSettings,
  encodeContent,
  parseIdentity,
  readRoomSettings,
  sameDevice,
  textContent,
  type Consent,
  type Content,
  type DeviceIdentity,
  type Grounds,
  type Party,
  type RoomSettings,
} from "./mls/tonari.js";
import type { DeviceRecord, MessageRecord, OutboxRecord, RoomEvent, RoomRecord, Store } from "./store.js";

export type ClientEvent =
  | { type: "rooms" }
  | { type: "room"; roomId: string }
  | { type: "connection"; online: boolean }
  | { type: "logged_out" };

export interface MemberView {
  identity: DeviceIdentity;
  username: string;
  deviceName: string;
  addedBy?: DeviceIdentity;
  addedByName?: string;
  grounds?: Grounds;
  self: boolean;
}

export interface RoomView {
  roomId: string;
  status: RoomRecord["status"];
  unread: number;
  memberCount: number;
  lastSeq: number;
  settings?: RoomSettings;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function newTxnId(): string {
  return mls.hex(crypto.getRandomValues(new Uint8Array(16)));
}

const idKey = (id: DeviceIdentity) => `${id.userId}:${id.deviceId}`;

export class Client {
  private listeners = new Set<(e: ClientEvent) => void>();
  private chain: Promise<unknown> = Promise.resolve();
  private directory = new Map<number, Promise<DeviceInfo>>();
  private socket: WebSocket | undefined;
  private reconnectDelay = 1000;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  online = false;

  private constructor(
    private store: Store,
    public api: Api,
    public device: DeviceRecord | undefined,
  ) {
    if (device?.token) api.token = device.token;
  }

  static async open(store: Store, api = new Api()): Promise<Client> {
    return new Client(store, api, await store.device());
  }

  get loggedIn(): boolean {
    return !!this.device?.token && this.device.deviceId !== undefined;
  }

  get identity(): DeviceIdentity {
    const d = this.device;
    if (!d || d.userId === undefined || d.deviceId === undefined) throw new Error("not logged in");
    return { userId: d.userId, deviceId: d.deviceId, ...(d.role ? { role: d.role } : {}) };
  }

  private get keys(): mls.SignatureKeys {
    const d = this.device!;
    return { publicKey: d.signaturePublic, signKey: d.signaturePrivate };
  }

  on(f: (e: ClientEvent) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private emit(e: ClientEvent): void {
    for (const f of this.listeners) f(e);
  }

  /** Run MLS work one piece at a time (like the SDK's process lock), also
   * across tabs of this browser profile (Web Locks), since they share the
   * IndexedDB state. Every piece reloads what it needs from IndexedDB. */
  private locked<T>(f: () => Promise<T>): Promise<T> {
    const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
    const g = locks ? () => locks.request("tonari-mls", f) as Promise<T> : f;
    const run = this.chain.then(g, g);
    this.chain = run.catch(() => undefined);
    return run;
  }

  // ------------------------------------------------------------ accounts

  async register(username: string, password: string, invitationCode?: string): Promise<void> {
    await this.api.register(username, password, invitationCode);
  }

  /** Log in; re-attaches this browser's device if it belongs to `username`,
   * else registers a new device. Then uploads key packages. */
  async login(username: string, password: string, deviceName: string, totpCode?: string): Promise<{ totpEnrollmentRequired: boolean }> {
    let d = this.device;
    if (d && d.username !== username) {
      throw new ApiError(0, "other_device", "this browser holds another user's device");
    }
    if (!d) {
      const keys = await mls.newSignatureKeys();
      d = {
        serverOrigin: location.origin,
        username,
        deviceName,
        signaturePublic: keys.publicKey,
        signaturePrivate: keys.signKey,
      };
      await this.store.saveDevice(d);
    }
    const resp = await this.api.login({
      username,
      password,
      device_id: d.deviceId,
      device_name: d.deviceName,
      signature_key: b64(d.signaturePublic),
      totp_code: totpCode || undefined,
    });
    if (d.deviceId !== undefined && d.deviceId !== resp.device_id) {
      throw new ApiError(0, "protocol", "the server returned another device id");
    }
    d = { ...d, userId: resp.user_id, deviceId: resp.device_id, role: resp.role, token: resp.token };
    await this.store.saveDevice(d);
    this.device = d;
    this.api.token = resp.token;
    if (resp.totp_enrollment_required) return { totpEnrollmentRequired: true };
    await this.topUpKeyPackages();
    return { totpEnrollmentRequired: false };
  }

  async logout(): Promise<void> {
    this.disconnect();
    try {
      await this.api.logout();
    } catch {
      /* the token is dropped locally either way */
    }
    if (this.device) {
      const { token: _t, ...rest } = this.device;
      this.device = rest;
      await this.store.saveDevice(rest);
    }
    this.api.token = undefined;
    this.emit({ type: "logged_out" });
  }

  /** Forget this browser's device entirely (keys, rooms, history). */
  async forgetDevice(): Promise<void> {
    this.disconnect();
    await this.store.wipe();
    this.device = undefined;
    this.api.token = undefined;
  }

  // ------------------------------------------------------------ key packages

  topUpKeyPackages(): Promise<void> {
    return this.locked(async () => {
      const count = await this.api.keyPackageCount();
      const n = KEY_PACKAGE_TARGET - count.available;
      if (n <= 0) return;
      const kps = [];
      for (let i = 0; i < n; i++) kps.push(await mls.newKeyPackage(this.identity, this.keys));
      // Private parts are stored before the public ones leave the page.
      await this.store.addKeyPackages(kps.map((k) => ({ ref: k.ref, publicPackage: k.publicPackage, privatePackage: k.privatePackage })));
      await this.api.uploadKeyPackages(kps.map((k) => k.message));
    });
  }

  // ------------------------------------------------------------ directory

  deviceInfo(deviceId: number): Promise<DeviceInfo> {
    let p = this.directory.get(deviceId);
    if (!p) {
      p = this.api.device(deviceId);
      this.directory.set(deviceId, p);
      p.catch(() => this.directory.delete(deviceId));
    }
    return p;
  }

  async nameOf(id: DeviceIdentity | undefined | null): Promise<string> {
    if (!id) return "?";
    try {
      return (await this.deviceInfo(id.deviceId)).username;
    } catch {
      return `#${id.userId}`;
    }
  }

  ownDevices(): Promise<UserDevices> {
    return this.api.user(this.device!.username);
  }

  /** A member's credential and key must be a registered device key of the
   * user it names (the server checks too; the client does not trust it). */
  private async verifyMember(m: mls.Member): Promise<boolean> {
    if (!m.identity) return false;
    try {
      const info = await this.deviceInfo(m.identity.deviceId);
      return (
        info.user_id === m.identity.userId &&
        info.signature_key === b64(m.signatureKey) &&
        // A directory that names roles (care-team format) must agree with the credential's.
        (info.role === undefined || info.role === m.identity.role)
      );
    } catch (e) {
      if (e instanceof ApiError && (e.code === "device_not_found" || e.status === 404)) return false;
      throw e;
    }
  }

  // ------------------------------------------------------------ rooms

  async rooms(): Promise<RoomView[]> {
    const rooms = await this.store.rooms();
    const out: RoomView[] = [];
    for (const r of rooms) {
      const msgs = await this.store.messages(r.roomId);
      const me = this.identity;
      const unread = msgs.filter(
        (m) => m.seq > r.lastRead && m.content.type !== "event" && !(m.sender && sameDevice(m.sender, me)),
      ).length;
      const state = r.state ? mls.loadState(r.state) : undefined;
      out.push({
        roomId: r.roomId,
        status: r.status,
        unread,
        memberCount: state ? mls.members(state).length : 0,
        lastSeq: r.cursor,
        settings: state ? readRoomSettings(state.groupContext.extensions) : undefined,
      });
    }
    return out;
  }

  async history(roomId: string): Promise<MessageRecord[]> {
    return (await this.store.messages(roomId)).sort((a, b) => a.seq - b.seq);
  }

  async markRead(roomId: string): Promise<void> {
    await this.locked(async () => {
      const r = await this.store.room(roomId);
      if (r && r.lastRead < r.cursor) await this.store.saveRoom({ ...r, lastRead: r.cursor });
    });
    this.emit({ type: "rooms" });
  }

  async members(roomId: string): Promise<MemberView[]> {
    const r = await this.store.room(roomId);
    if (!r?.state) return [];
    const state = mls.loadState(r.state);
    const me = this.identity;
    const out: MemberView[] = [];
    for (const m of mls.members(state)) {
      if (!m.identity) continue;
      let username = `#${m.identity.userId}`;
      let deviceName = "";
      try {
        const info = await this.deviceInfo(m.identity.deviceId);
        username = info.username;
        deviceName = info.device_name;
      } catch {
        /* shown by id */
      }
      const note = r.notes[idKey(m.identity)];
      out.push({
        identity: m.identity,
        username,
        deviceName,
        addedBy: note?.by,
        addedByName: note?.by ? await this.nameOf(note.by) : undefined,
        grounds: note?.grounds,
        self: sameDevice(m.identity, me),
      });
    }
    return out;
  }

  /** Create a room with only this device; returns its id. */
  createRoom(settings: RoomSettings | undefined = defaultRoomSettings(this.device?.role !== undefined)): Promise<string> {
    return this.locked(async () => {
      const gid = crypto.getRandomValues(new Uint8Array(16));
      const { state, groupInfo, ratchetTree } = await mls.createRoom(gid, this.identity, this.keys, settings);
      const info = await this.api.createRoom(groupInfo, ratchetTree);
      const roomId = mls.hex(gid);
      if (info.room_id !== roomId) throw new ApiError(0, "protocol", "the server returned another room id");
      await this.store.saveRoom({
        roomId,
        state: mls.saveState(state),
        cursor: info.last_seq,
        status: "active",
        lastRead: info.last_seq,
        notes: { [idKey(this.identity)]: { by: this.identity, seq: 0 } },
      });
      this.resume({ [roomId]: info.last_seq });
      this.emit({ type: "rooms" });
      return roomId;
    });
  }

  private async activeRoom(roomId: string): Promise<RoomRecord> {
    const r = await this.store.room(roomId);
    if (!r || r.status !== "active" || !r.state) throw new ApiError(0, "room_not_active", "this room is not active");
    return r;
  }

  /** Claim a key package of every device of `username`, each checked
   * against the directory (identity and signature key). */
  private async claimVerified(username: string): Promise<KeyPackage[]> {
    const dir = await this.api.user(username);
    const claimed = await this.api.claim(username);
    if (claimed.user_id !== dir.user_id) throw new ApiError(0, "untrusted_member", "claimed key packages of another user");
    const out: KeyPackage[] = [];
    for (const c of claimed.key_packages) {
      const kp = mls.parseKeyPackage(unb64(c.key_package));
      const cred = kp.leafNode.credential;
      const id = cred.credentialType === "basic" ? parseIdentity(cred.identity) : undefined;
      const dev = dir.devices.find((d) => d.device_id === c.device_id);
      if (
        !id ||
        !dev ||
        id.userId !== dir.user_id ||
        id.deviceId !== c.device_id ||
        (dir.role !== undefined && id.role !== dir.role) ||
        dev.signature_key !== b64(kp.leafNode.signaturePublicKey)
      ) {
        throw new ApiError(0, "untrusted_member", `device ${c.device_id} does not match the directory`);
      }
      out.push(kp);
    }
    return out;
  }

  /** Add every device of `username` (one commit with its Welcome). */
  invite(roomId: string, username: string): Promise<void> {
    return this.locked(async () => {
      await this.catchUp(roomId);
      const kps = await this.claimVerified(username);
      if (kps.length === 0) throw new ApiError(0, "no_key_packages", `${username} has no key packages`);
      await this.commit(roomId, (state) => {
        const present = new Set(mls.members(state).map((m) => (m.identity ? idKey(m.identity) : "")));
        const adds = kps.filter((kp) => {
          const cred = kp.leafNode.credential;
          if (cred.credentialType !== "basic") return false;
          const dev = parseIdentity(cred.identity);
          return dev !== undefined && !present.has(idKey(dev));
        });
        return adds.length ? { adds, removes: [] } : undefined;
      });
    });
  }

  /** Remove every device of `username` from the room. */
  remove(roomId: string, username: string): Promise<void> {
    return this.locked(async () => {
      const dir = await this.api.user(username);
      await this.catchUp(roomId);
      const me = this.identity;
      await this.commit(roomId, (state) => {
        const removes = mls
          .members(state)
          .filter((m) => m.identity && m.identity.userId === dir.user_id && !sameDevice(m.identity, me))
          .map((m) => m.leafIndex);
        return removes.length ? { adds: [], removes } : undefined;
      });
    });
  }

  /** Build, submit and (on its echo) adopt a commit; retried after an
   * epoch conflict. Must run under the lock. */
  private async commit(
    roomId: string,
    build: (state: ReturnType<typeof mls.loadState>) => { adds: KeyPackage[]; removes: number[] } | undefined,
  ): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const r = await this.activeRoom(roomId);
      const state = mls.loadState(r.state!);
      const what = build(state);
      if (!what) throw new ApiError(0, "nothing_to_do", "nothing to change");
      const built = await mls.buildCommit(state, what.adds, what.removes);
      await this.store.saveRoom({ ...r, pending: { commit: built.commit, state: mls.saveState(built.state) } });
      try {
        await this.api.submit(roomId, newTxnId(), built.commit, built.welcome);
      } catch (e) {
        if (e instanceof ApiError && e.status !== 0 && e.status < 500) {
          const now = await this.store.room(roomId);
          if (now) await this.store.saveRoom({ ...now, pending: undefined });
          if (e.code === "epoch_conflict") {
            await this.catchUp(roomId);
            continue;
          }
        }
        throw e;
      }
      // Our commit comes back from the room: processing it adopts the new epoch.
      await this.catchUp(roomId);
      return;
    }
    throw new ApiError(0, "too_many_conflicts", "too many epoch conflicts");
  }

  /** Send a text message. */
  send(roomId: string, text: string): Promise<void> {
    return this.sendContent(roomId, textContent(text));
  }

  sendContent(roomId: string, content: Content): Promise<void> {
    return this.locked(async () => {
      for (let attempt = 0; attempt < 5; attempt++) {
        await this.catchUp(roomId);
        const r = await this.activeRoom(roomId);
        const enc = await mls.encrypt(mls.loadState(r.state!), encodeContent(content));
        const row: OutboxRecord = { txnId: newTxnId(), roomId, message: enc.message, content };
        // The ratchet moved: keep the new state whatever happens to the send.
        await this.store.saveRoom({ ...r, state: mls.saveState(enc.state) }, { outbox: [row] });
        try {
          await this.api.submit(roomId, row.txnId, enc.message);
        } catch (e) {
          if (e instanceof ApiError && e.code === "epoch_conflict") {
            const now = await this.store.room(roomId);
            if (now) await this.store.saveRoom(now, { outboxDone: [row.txnId] });
            continue;
          }
          throw e;
        }
        await this.catchUp(roomId);
        return;
      }
      throw new ApiError(0, "too_many_conflicts", "too many epoch conflicts");
    });
  }

  // ------------------------------------------------------------ receiving

  /** Accept waiting Welcomes, then fetch everything new in every room. */
  sync(): Promise<void> {
    return this.locked(async () => {
      await this.acceptWelcomes();
      for (const r of await this.store.rooms()) if (r.status === "active") await this.catchUp(r.roomId);
    });
  }

  private async acceptWelcomes(): Promise<string[]> {
    const { welcomes } = await this.api.welcomes();
    const joined: string[] = [];
    for (const w of welcomes) {
      const existing = await this.store.room(w.room_id);
      if (existing && existing.status === "active") {
        await this.api.deleteWelcome(w.welcome_id);
        continue;
      }
      const bytes = unb64(w.welcome);
      let kp;
      for (const ref of mls.welcomeRefs(bytes)) {
        kp = await this.store.keyPackage(ref);
        if (kp) break;
      }
      if (!kp) {
        // Not for a key package of this browser (or already used): drop it.
        await this.api.deleteWelcome(w.welcome_id);
        continue;
      }
      const state = await mls.joinFromWelcome(bytes, kp);
      const signer = await mls.welcomeSigner(bytes, kp).catch(() => undefined);
      const adder = mls.members(state).find((m) => m.leafIndex === signer)?.identity;
      if (mls.roomIdOf(state) !== w.room_id) throw new ApiError(0, "protocol", "welcome for another room");
      let trusted = true;
      for (const m of mls.members(state)) if (!(await this.verifyMember(m))) trusted = false;
      if (this.careTeam && typeof policySettings(readRoomSettings(state.groupContext.extensions)) === "string") {
        console.warn("refusing a room without valid settings", w.room_id);
        trusted = false;
      }
      const record: RoomRecord = {
        roomId: w.room_id,
        state: trusted ? mls.saveState(state) : null,
        cursor: w.commit_seq,
        status: trusted ? "active" : "untrusted",
        lastRead: w.commit_seq,
        notes: adder ? { [idKey(this.identity)]: { by: adder, seq: w.commit_seq, grounds: this.ownJoinGrounds(state, adder) } } : {},
      };
      const event: MessageRecord = {
        roomId: w.room_id,
        seq: w.commit_seq,
        sender: null,
        content: { type: "event", event: { kind: "joined" } },
        ts: Date.now(),
      };
      await this.store.saveRoom(record, { messages: [event], usedKeyPackage: kp.ref });
      await this.api.deleteWelcome(w.welcome_id);
      if (trusted) joined.push(w.room_id);
    }
    if (welcomes.length) {
      this.emit({ type: "rooms" });
      // Welcomes used key packages up.
      const count = await this.api.keyPackageCount();
      if (count.available < KEY_PACKAGE_TARGET) void this.topUpKeyPackages();
    }
    return joined;
  }

  /** Fetch and process a room after its cursor. Must run under the lock. */
  private async catchUp(roomId: string): Promise<void> {
    for (;;) {
      const r = await this.store.room(roomId);
      if (!r || r.status !== "active") return;
      const page = await this.api.history(roomId, r.cursor);
      for (const env of page.messages) {
        const ok = await this.applyEnvelope(env);
        if (!ok) return;
      }
      if (!page.more || page.messages.length === 0) return;
    }
  }

  /** Process one envelope in order. `false` when the room stopped (removed,
   * untrusted) or the envelope is not the next one. */
  private async applyEnvelope(env: Envelope): Promise<boolean> {
    const r = await this.store.room(env.room_id);
    if (!r || r.status !== "active" || !r.state) return false;
    if (env.seq <= r.cursor) return true;
    if (env.seq !== r.cursor + 1) return false;
    const me = this.identity;
    const bytes = unb64(env.message);
    const messages: MessageRecord[] = [];
    const outboxDone: string[] = [];
    const next: RoomRecord = { ...r, cursor: env.seq, notes: { ...r.notes } };
    const event = (e: RoomEvent, sender: DeviceIdentity | null = null) =>
      messages.push({ roomId: r.roomId, seq: env.seq, sender, content: { type: "event", event: e }, ts: env.ts_ms });
    const own = env.sender_device === me.deviceId;

    if (own && env.kind === "commit" && r.pending && bytesEqual(r.pending.commit, bytes)) {
      const before = mls.loadState(r.state);
      const after = mls.loadState(r.pending.state);
      const beforeKeys = new Set(mls.members(before).map((m) => mls.hex(m.signatureKey)));
      const afterKeys = new Set(mls.members(after).map((m) => mls.hex(m.signatureKey)));
      const added = mls.members(after).filter((m) => !beforeKeys.has(mls.hex(m.signatureKey)) && m.identity);
      const removed = mls.members(before).filter((m) => !afterKeys.has(mls.hex(m.signatureKey)) && m.identity);
      const ps = policySettings(readRoomSettings(before.groupContext.extensions));
      const grounds: Record<string, Grounds> = {};
      const changes = [
        ...added.map((m) => ({ action: "add" as const, target: m.identity! })),
        ...removed.map((m) => ({ action: "remove" as const, target: m.identity! })),
      ];
      for (const c of changes) {
        const g = typeof ps === "string" ? undefined : checkChange(ps, { ...c, actor: me, selfProposed: false });
        if (g && typeof g !== "string") grounds[idKey(c.target)] = g;
      }
      for (const m of added) next.notes[idKey(m.identity!)] = { by: me, seq: env.seq, grounds: grounds[idKey(m.identity!)] };
      next.state = r.pending.state;
      next.pending = undefined;
      event({ kind: "members", by: me, added: added.map((m) => m.identity!), removed: removed.map((m) => m.identity!), grounds }, me);
    } else if (own && env.kind === "application") {
      // Own messages cannot be decrypted by their sender: take the outbox copy.
      const row = (await this.store.outbox(r.roomId)).find((o) => bytesEqual(o.message, bytes));
      if (row) {
        messages.push({ roomId: r.roomId, seq: env.seq, sender: me, content: row.content, ts: env.ts_ms });
        outboxDone.push(row.txnId);
      } else {
        event({ kind: "undecryptable" });
      }
    } else if (own && env.kind === "proposal") {
      // nothing: own proposals are in our state already
    } else {
      if (env.kind === "commit" && r.pending) next.pending = undefined; // someone else's commit won
      try {
        const res = await mls.processIncoming(mls.loadState(r.state), bytes);
        next.state = mls.saveState(res.state);
        if (res.kind === "application") {
          messages.push({ roomId: r.roomId, seq: env.seq, sender: res.sender ?? null, content: decodeContent(res.plaintext), ts: env.ts_ms });
        } else if (res.kind === "commit") {
          const untrusted = async (why: string) => {
            console.warn("refusing a commit:", why, r.roomId, env.seq);
            await this.store.saveRoom({ ...r, status: "untrusted" });
            this.emit({ type: "room", roomId: r.roomId });
            return false;
          };
          for (const m of res.newLeaves) {
            if (!(await this.verifyMember(m))) return untrusted("a member key not in the directory");
          }
          let grounds: Record<string, Grounds> = {};
          if (this.careTeam) {
            const decided = await this.decideCommit(r.roomId, res.settingsBefore, res.by, res.aad, res.changes);
            if (typeof decided === "string") return untrusted(decided);
            grounds = decided;
          }
          for (const m of res.added) next.notes[idKey(m.identity!)] = { by: res.by, seq: env.seq, grounds: grounds[idKey(m.identity!)] };
          event({ kind: "members", by: res.by, added: res.added.map((m) => m.identity!), removed: res.removed, grounds }, res.by ?? null);
          if (res.selfRemoved) {
            next.status = "removed";
            next.state = null;
            event({ kind: "removed" });
            messages.pop();
            messages.push({ roomId: r.roomId, seq: env.seq, sender: res.by ?? null, content: { type: "event", event: { kind: "removed" } }, ts: env.ts_ms });
          }
        }
      } catch (e) {
        if (env.kind === "commit" && mls.commitRemovesSelf(mls.loadState(r.state), bytes)) {
          // ts-mls cannot process a commit that removes us and re-fills our
          // leaf with an add (see commitRemovesSelf). The server validated
          // its signature; being removed needs nothing from the next epoch.
          await this.store.saveRoom(
            { ...r, cursor: env.seq, status: "removed", state: null, pending: undefined },
            {
              messages: [
                { roomId: r.roomId, seq: env.seq, sender: null, content: { type: "event", event: { kind: "removed" } }, ts: env.ts_ms },
              ],
            },
          );
          this.emit({ type: "room", roomId: r.roomId });
          this.emit({ type: "rooms" });
          return false;
        }
        if (env.kind === "commit") {
          // A commit that does not verify: the room can no longer be trusted.
          console.warn("refusing a commit that does not verify", env.room_id, env.seq);
          await this.store.saveRoom({ ...r, status: "untrusted" });
          this.emit({ type: "room", roomId: r.roomId });
          return false;
        }
        event({ kind: "undecryptable" });
      }
    }
    await this.store.saveRoom(next, { messages, outboxDone });
    this.emit({ type: "room", roomId: r.roomId });
    this.emit({ type: "rooms" });
    return next.status === "active";
  }

  // ------------------------------------------------------------ policy

  /** A server with the care-team model (its logins carry a role): rooms
   * have settings and every commit is checked against the room policy. */
  get careTeam(): boolean {
    return this.device?.role !== undefined;
  }

  /** Why the room policy let `adder` add this device (shown, not enforced:
   * the Welcome's epoch is already agreed by the other members). */
  private ownJoinGrounds(state: ReturnType<typeof mls.loadState>, adder: DeviceIdentity): Grounds | undefined {
    const ps = policySettings(readRoomSettings(state.groupContext.extensions));
    if (typeof ps === "string") return undefined;
    const g = checkChange(ps, { actor: adder, action: "add", target: this.identity, selfProposed: false });
    return typeof g === "string" ? undefined : g;
  }

  /** Decide every membership change of another member's commit under the
   * room's settings (as the Rust SDK does): grounds per device, or why the
   * commit breaks the policy. */
  private async decideCommit(
    roomId: string,
    settings: RoomSettings | undefined,
    actor: DeviceIdentity | undefined,
    aad: Uint8Array,
    changes: { action: "add" | "remove"; target: DeviceIdentity; selfProposed: boolean }[],
  ): Promise<Record<string, Grounds> | string> {
    const ps = policySettings(settings);
    if (typeof ps === "string") return ps;
    if (!actor) return "the committer has no Tonari identity";
    const consents = commitConsents(aad);
    if (!consents) return "the commit grounds do not parse";
    const verified = new Map<number, Consent>();
    for (const signed of consents) {
      const c = parseConsent(signed);
      if (typeof c === "string") return c;
      const change = changes.find((x) => x.target.userId === c.subject_user_id);
      if (!change) continue;
      const bad = await this.verifyConsent(roomId, ps.patient_network_id, signed.consent, signed.signature, c, change.target.deviceId);
      if (bad) return bad;
      verified.set(c.subject_user_id, c);
    }
    const out: Record<string, Grounds> = {};
    for (const ch of changes) {
      const consent = verified.get(ch.target.userId);
      const g = checkChange(ps, {
        actor,
        action: ch.action,
        target: ch.target,
        selfProposed: ch.selfProposed,
        consent: consent && consent.granted === (ch.action === "add") ? consent : undefined,
      });
      if (typeof g === "string") return g;
      out[idKey(ch.target)] = g;
    }
    return out;
  }

  private async verifyConsent(
    roomId: string,
    networkId: string | null,
    json: string,
    signature: string,
    c: Consent,
    subjectDevice: number,
  ): Promise<string | undefined> {
    if (c.room_id !== roomId || networkId !== c.patient_network_id) return "a consent is for another room or patient";
    let signerDevice: DeviceInfo;
    try {
      signerDevice = await this.deviceInfo(c.signer_device_id);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return "a consent's signer device is not in the directory";
      throw e;
    }
    if (signerDevice.user_id !== c.signer_user_id) return "a consent's signer device belongs to someone else";
    const ok = await mls.verifySignature(
      unb64(signerDevice.signature_key),
      new TextEncoder().encode(CONSENT_LABEL + json),
      unb64(signature),
    );
    if (!ok) return "the consent signature does not verify";
    const party = (u: UserDevices): Party => ({ user_id: u.user_id, role: u.role!, network_id: u.network_id, family_of: u.family_of });
    const signer = await this.api.user(signerDevice.username);
    const subject = await this.api.user((await this.deviceInfo(subjectDevice)).username);
    return checkConsentParties(c, party(signer), party(subject));
  }

  // ------------------------------------------------------------ live

  /** Connect the WebSocket (reconnects by itself until logout). */
  connect(): void {
    if (this.socket || !this.loggedIn) return;
    const ws = this.api.openSocket();
    this.socket = ws;
    ws.onopen = () => {
      this.reconnectDelay = 1000;
      this.online = true;
      this.emit({ type: "connection", online: true });
      void this.sync()
        .then(async () => {
          const cursors: Record<string, number> = {};
          for (const r of await this.store.rooms()) if (r.status === "active") cursors[r.roomId] = r.cursor;
          this.resume(cursors);
        })
        .catch((e) => console.warn("sync failed", e));
    };
    ws.onmessage = (ev) => {
      let frame: ServerFrame;
      try {
        frame = JSON.parse(String(ev.data)) as ServerFrame;
      } catch {
        return;
      }
      void this.onFrame(frame).catch((e) => console.warn("frame failed", e));
    };
    ws.onclose = () => {
      if (this.socket !== ws) return;
      if (!this.online) void this.checkSession();
      this.socket = undefined;
      this.online = false;
      this.emit({ type: "connection", online: false });
      if (this.loggedIn) {
        this.reconnectTimer = setTimeout(() => this.connect(), this.reconnectDelay);
        this.reconnectDelay = Math.min(this.reconnectDelay * 2, 30_000);
      }
    };
  }

  /** The socket could not open: a revoked or expired session logs out
   * instead of retrying forever. */
  private async checkSession(): Promise<void> {
    try {
      await this.api.keyPackageCount();
    } catch (e) {
      if (e instanceof ApiError && e.code === "unauthenticated") await this.logout();
    }
  }

  disconnect(): void {
    clearTimeout(this.reconnectTimer);
    const ws = this.socket;
    this.socket = undefined;
    this.online = false;
    ws?.close();
  }

  private resume(rooms: Record<string, number>): void {
    if (this.socket?.readyState === WebSocket.OPEN && Object.keys(rooms).length) {
      this.socket.send(JSON.stringify({ type: "resume", rooms }));
    }
  }

  private async onFrame(frame: ServerFrame): Promise<void> {
    switch (frame.type) {
      case "message":
        await this.locked(async () => {
          const env = frame.envelope;
          const ok = await this.applyEnvelope(env);
          // Out of order (a gap): fetch what is missing from history.
          if (!ok) await this.catchUp(env.room_id);
        });
        break;
      case "welcome": {
        const joined = await this.locked(async () => {
          const ids = await this.acceptWelcomes();
          for (const id of ids) await this.catchUp(id);
          return ids;
        });
        const cursors: Record<string, number> = {};
        for (const id of joined) {
          const r = await this.store.room(id);
          if (r) cursors[id] = r.cursor;
        }
        this.resume(cursors);
        break;
      }
      case "key_packages_low":
        await this.topUpKeyPackages();
        break;
      default:
        break;
    }
  }
}
