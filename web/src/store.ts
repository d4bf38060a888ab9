// IndexedDB persistence of one device (this browser profile): its keys and
// session token, unused key packages, each room's MLS state with its cursor,
// the decrypted history, and the outbox of own messages. Writes that belong
// together (new group state + cursor + message) go into one transaction, so
// a reload never sees a state without its cursor.

import type { PrivateKeyPackage } from "ts-mls";
import type { Content, DeviceIdentity, Grounds, Role } from "./mls/tonari.js";

export interface DeviceRecord {
  serverOrigin: string;
  username: string;
  deviceName: string;
  userId?: number;
  deviceId?: number;
  role?: Role;
  signaturePublic: Uint8Array;
  signaturePrivate: Uint8Array;
  /** Session token; absent after logout. Never in a cookie or URL. */
  token?: string;
}

export type RoomStatus = "active" | "removed" | "untrusted";

export interface MemberNote {
  /** Who added this device (undefined: before this device joined). */
  by?: DeviceIdentity;
  seq: number;
  /** Why the room policy allowed it. */
  grounds?: Grounds;
}

export interface RoomRecord {
  roomId: string;
  /** Serialised ts-mls group state (null once removed). */
  state: Uint8Array | null;
  /** Last processed seq. */
  cursor: number;
  status: RoomStatus;
  /** Own commit waiting to come back from the room: its bytes and the
   * next epoch's state to adopt then. */
  pending?: { commit: Uint8Array; state: Uint8Array };
  /** Seq up to which the user has seen the room. */
  lastRead: number;
  /** Who added whom, by "userId:deviceId". */
  notes: Record<string, MemberNote>;
}

export interface MessageRecord {
  roomId: string;
  seq: number;
  sender: DeviceIdentity | null;
  content: Content | { type: "event"; event: RoomEvent };
  ts: number;
}

export type RoomEvent =
  | {
      kind: "members";
      by?: DeviceIdentity;
      added: DeviceIdentity[];
      removed: DeviceIdentity[];
      /** Per "userId:deviceId": why the room policy allowed the change. */
      grounds?: Record<string, Grounds>;
    }
  | { kind: "joined" }
  | { kind: "removed" }
  | { kind: "undecryptable" };

export interface OutboxRecord {
  txnId: string;
  roomId: string;
  message: Uint8Array;
  content: Content;
}

export interface StoredKeyPackage {
  ref: string;
  publicPackage: Uint8Array;
  privatePackage: PrivateKeyPackage;
}

const STORES = ["device", "keyPackages", "rooms", "messages", "outbox"] as const;
type StoreName = (typeof STORES)[number];

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export class Store {
  private constructor(private db: IDBDatabase) {}

  static async open(name = "tonari"): Promise<Store> {
    const open = indexedDB.open(name, 1);
    open.onupgradeneeded = () => {
      const db = open.result;
      db.createObjectStore("device");
      db.createObjectStore("keyPackages", { keyPath: "ref" });
      db.createObjectStore("rooms", { keyPath: "roomId" });
      db.createObjectStore("messages", { keyPath: ["roomId", "seq"] });
      db.createObjectStore("outbox", { keyPath: "txnId" });
    };
    return new Store(await req(open));
  }

  close(): void {
    this.db.close();
  }

  /** Run `fn` in one transaction over `stores`; resolves when it commits. */
  private tx<T>(stores: StoreName[], mode: IDBTransactionMode, fn: (t: IDBTransaction) => Promise<T> | T): Promise<T> {
    const t = this.db.transaction(stores, mode);
    const done = new Promise<void>((resolve, reject) => {
      t.oncomplete = () => resolve();
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error ?? new Error("transaction aborted"));
    });
    return Promise.resolve(fn(t)).then(
      async (v) => {
        await done;
        return v;
      },
      (e) => {
        try {
          t.abort();
        } catch {
          /* already finished */
        }
        throw e;
      },
    );
  }

  device(): Promise<DeviceRecord | undefined> {
    return this.tx(["device"], "readonly", (t) => req(t.objectStore("device").get("self")));
  }

  saveDevice(d: DeviceRecord): Promise<void> {
    return this.tx(["device"], "readwrite", async (t) => {
      await req(t.objectStore("device").put(d, "self"));
    });
  }

  /** Forget everything this browser holds for the device. */
  async wipe(): Promise<void> {
    await this.tx([...STORES], "readwrite", async (t) => {
      for (const s of STORES) await req(t.objectStore(s).clear());
    });
  }

  addKeyPackages(kps: StoredKeyPackage[]): Promise<void> {
    return this.tx(["keyPackages"], "readwrite", async (t) => {
      for (const kp of kps) await req(t.objectStore("keyPackages").put(kp));
    });
  }

  keyPackage(ref: string): Promise<StoredKeyPackage | undefined> {
    return this.tx(["keyPackages"], "readonly", (t) => req(t.objectStore("keyPackages").get(ref)));
  }

  rooms(): Promise<RoomRecord[]> {
    return this.tx(["rooms"], "readonly", (t) => req(t.objectStore("rooms").getAll()));
  }

  room(roomId: string): Promise<RoomRecord | undefined> {
    return this.tx(["rooms"], "readonly", (t) => req(t.objectStore("rooms").get(roomId)));
  }

  /** Save a room, and optionally in the same transaction: add messages,
   * delete a used key package, put or delete outbox rows. */
  saveRoom(
    room: RoomRecord,
    extra: { messages?: MessageRecord[]; usedKeyPackage?: string; outbox?: OutboxRecord[]; outboxDone?: string[] } = {},
  ): Promise<void> {
    return this.tx(["rooms", "messages", "keyPackages", "outbox"], "readwrite", async (t) => {
      await req(t.objectStore("rooms").put(room));
      for (const m of extra.messages ?? []) await req(t.objectStore("messages").put(m));
      if (extra.usedKeyPackage) await req(t.objectStore("keyPackages").delete(extra.usedKeyPackage));
      for (const o of extra.outbox ?? []) await req(t.objectStore("outbox").put(o));
      for (const id of extra.outboxDone ?? []) await req(t.objectStore("outbox").delete(id));
    });
  }

  messages(roomId: string): Promise<MessageRecord[]> {
    return this.tx(["messages"], "readonly", (t) =>
      req(t.objectStore("messages").getAll(IDBKeyRange.bound([roomId, 0], [roomId, Number.MAX_SAFE_INTEGER]))),
    );
  }

  /** Own messages waiting for their echo, by room. */
  outbox(roomId: string): Promise<OutboxRecord[]> {
    return this.tx(["outbox"], "readonly", async (t) =>
      (await req(t.objectStore("outbox").getAll())).filter((o: OutboxRecord) => o.roomId === roomId),
    );
  }
}
