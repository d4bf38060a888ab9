import { describe, expect, it } from "vitest";
import * as mls from "../src/mls/engine";
import { decodeContent, encodeContent, textContent } from "../src/mls/tonari";

async function device(userId: number, deviceId: number) {
  const keys = await mls.newSignatureKeys();
  return { id: { userId, deviceId }, keys };
}

describe("ts-mls engine between two browsers' worth of state", () => {
  it("creates, invites, exchanges, persists and removes", async () => {
    const a = await device(1, 1);
    const b = await device(2, 2);
    const gid = crypto.getRandomValues(new Uint8Array(16));
    const room = await mls.createRoom(gid, a.id, a.keys, undefined);
    expect(room.groupInfo.length).toBeGreaterThan(0);
    expect(room.ratchetTree.length).toBeGreaterThan(0);
    let sa = room.state;

    const kp = await mls.newKeyPackage(b.id, b.keys);
    const claimed = mls.parseKeyPackage(kp.message);
    const c = await mls.buildCommit(sa, [claimed], []);
    expect(c.welcome).toBeDefined();
    expect(mls.decodeMessage(c.commit).wireformat).toBe("mls_public_message");
    sa = c.state;
    expect(mls.welcomeRefs(c.welcome!)).toEqual([kp.ref]);
    let sb = await mls.joinFromWelcome(c.welcome!, kp);
    expect(mls.roomIdOf(sb)).toBe(mls.hex(gid));
    expect(mls.members(sb).map((m) => m.identity)).toEqual([a.id, b.id]);

    // state survives a save/load round trip (IndexedDB)
    sb = mls.loadState(mls.saveState(sb));
    sa = mls.loadState(mls.saveState(sa));

    const e = await mls.encrypt(sa, encodeContent(textContent("こんにちは")));
    sa = e.state;
    const got = await mls.processIncoming(sb, e.message);
    expect(got.kind).toBe("application");
    if (got.kind !== "application") throw new Error();
    expect(got.sender).toEqual(a.id);
    expect(decodeContent(got.plaintext)).toEqual(textContent("こんにちは"));
    sb = got.state;

    const back = await mls.encrypt(sb, encodeContent(textContent("hi")));
    sb = back.state;
    const got2 = await mls.processIncoming(sa, back.message);
    expect(got2.kind === "application" && got2.sender).toEqual(b.id);
    sa = got2.state;

    // a removes b: b sees itself removed
    const rm = await mls.buildCommit(sa, [], [1]);
    const seen = await mls.processIncoming(sb, rm.commit);
    expect(seen.kind).toBe("commit");
    if (seen.kind !== "commit") throw new Error();
    expect(seen.selfRemoved).toBe(true);
    expect(seen.by).toEqual(a.id);
    expect(seen.removed).toEqual([b.id]);
    expect(mls.isActive(rm.state)).toBe(true);
    expect(mls.members(rm.state).length).toBe(1);
  }, 30_000);
});

describe("care-team rooms", () => {
  it("carry the settings extension, and joiners read it and the committer's policy inputs", async () => {
    const { defaultRoomSettings, readRoomSettings, ROOM_SETTINGS_EXTENSION } = await import("../src/mls/tonari");
    const a = { id: { userId: 1, deviceId: 1, role: "doctor" as const }, keys: await mls.newSignatureKeys() };
    const b = { id: { userId: 2, deviceId: 2, role: "nurse" as const }, keys: await mls.newSignatureKeys() };
    const settings = defaultRoomSettings(true, "NET-1")!;
    const room = await mls.createRoom(crypto.getRandomValues(new Uint8Array(16)), a.id, a.keys, settings);
    expect(room.state.groupContext.extensions.map((e) => e.extensionType)).toEqual([ROOM_SETTINGS_EXTENSION]);
    const kp = await mls.newKeyPackage(b.id, b.keys);
    expect(mls.parseKeyPackage(kp.message).leafNode.capabilities.extensions).toContain(ROOM_SETTINGS_EXTENSION);
    const c = await mls.buildCommit(room.state, [mls.parseKeyPackage(kp.message)], []);
    const sb = await mls.joinFromWelcome(c.welcome!, kp);
    expect(readRoomSettings(sb.groupContext.extensions)).toEqual(settings);
    expect(await mls.welcomeSigner(c.welcome!, kp)).toBe(0);
    // A third member's add, seen by b: the change list feeds the policy check.
    const x = { id: { userId: 3, deviceId: 3, role: "pharmacist" as const }, keys: await mls.newSignatureKeys() };
    const kx = await mls.newKeyPackage(x.id, x.keys);
    const c2 = await mls.buildCommit(c.state, [mls.parseKeyPackage(kx.message)], []);
    const seen = await mls.processIncoming(sb, c2.commit);
    if (seen.kind !== "commit") throw new Error(seen.kind);
    expect(seen.by).toEqual(a.id);
    expect(seen.changes).toEqual([{ action: "add", target: x.id, selfProposed: false }]);
    expect(seen.settingsBefore).toEqual(settings);
    expect(seen.newLeaves.map((m) => m.identity)).toContainEqual(x.id);
    expect(mls.commitRemovesSelf(sb, c2.commit)).toBe(false);
  }, 30_000);

  it("a commit that removes us and adds someone: ts-mls 1.6.4 throws, commitRemovesSelf sees it", async () => {
    const a = { id: { userId: 1, deviceId: 1 }, keys: await mls.newSignatureKeys() };
    const b = { id: { userId: 2, deviceId: 2 }, keys: await mls.newSignatureKeys() };
    const x = { id: { userId: 3, deviceId: 3 }, keys: await mls.newSignatureKeys() };
    const room = await mls.createRoom(crypto.getRandomValues(new Uint8Array(16)), a.id, a.keys, undefined);
    const kb = await mls.newKeyPackage(b.id, b.keys);
    const c = await mls.buildCommit(room.state, [mls.parseKeyPackage(kb.message)], []);
    const sb = await mls.joinFromWelcome(c.welcome!, kb);
    const kx = await mls.newKeyPackage(x.id, x.keys);
    // Remove b (leaf 1) and add x, who takes leaf 1.
    const c2 = await mls.buildCommit(c.state, [mls.parseKeyPackage(kx.message)], [1]);
    expect(mls.members(c2.state).find((m) => m.leafIndex === 1)?.identity).toEqual(x.id);
    await expect(mls.processIncoming(sb, c2.commit)).rejects.toThrow(/No overlap/);
    expect(mls.commitRemovesSelf(sb, c2.commit)).toBe(true);
  }, 30_000);
});
