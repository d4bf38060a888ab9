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
