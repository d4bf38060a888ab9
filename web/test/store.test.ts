import "fake-indexeddb/auto";
import { describe, expect, it } from "vitest";
import { Store, type RoomRecord } from "../src/store";

const room = (cursor: number): RoomRecord => ({
  roomId: "ab",
  state: new Uint8Array([1, 2, 3]),
  cursor,
  status: "active",
  lastRead: 0,
  notes: {},
});

describe("IndexedDB store", () => {
  it("keeps a room, its messages, key packages and the device across reopen", async () => {
    const s = await Store.open("t1");
    await s.saveDevice({ serverOrigin: "x", username: "u", deviceName: "d", signaturePublic: new Uint8Array([1]), signaturePrivate: new Uint8Array([2]), token: "t" });
    await s.addKeyPackages([{ ref: "r1", publicPackage: new Uint8Array([9]), privatePackage: { initPrivateKey: new Uint8Array(), hpkePrivateKey: new Uint8Array(), signaturePrivateKey: new Uint8Array() } }]);
    await s.saveRoom(room(3), {
      messages: [{ roomId: "ab", seq: 3, sender: { userId: 1, deviceId: 2 }, content: { type: "text", body: "hi" }, ts: 1 }],
      usedKeyPackage: "r1",
      outbox: [{ txnId: "x", roomId: "ab", message: new Uint8Array([5]), content: { type: "text", body: "hi" } }],
    });
    s.close();
    const again = await Store.open("t1");
    expect((await again.device())?.token).toBe("t");
    expect(await again.keyPackage("r1")).toBeUndefined();
    expect((await again.room("ab"))?.cursor).toBe(3);
    expect((await again.room("ab"))?.state).toEqual(new Uint8Array([1, 2, 3]));
    expect((await again.messages("ab")).map((m) => m.seq)).toEqual([3]);
    expect((await again.outbox("ab")).length).toBe(1);
    await again.saveRoom(room(4), { outboxDone: ["x"] });
    expect((await again.outbox("ab")).length).toBe(0);
    await again.wipe();
    expect(await again.device()).toBeUndefined();
    expect(await again.rooms()).toEqual([]);
  });
  it("messages of one room only, in seq order", async () => {
    const s = await Store.open("t2");
    const msg = (roomId: string, seq: number) => ({ roomId, seq, sender: null, content: { type: "text" as const, body: String(seq) }, ts: 0 });
    await s.saveRoom({ ...room(10), roomId: "aa" }, { messages: [msg("aa", 10), msg("aa", 2)] });
    await s.saveRoom({ ...room(10), roomId: "ab" }, { messages: [msg("ab", 1)] });
    expect((await s.messages("aa")).map((m) => m.seq)).toEqual([2, 10]);
  });
});
