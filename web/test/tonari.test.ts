import { describe, expect, it } from "vitest";
import {
  ROOM_SETTINGS_EXTENSION,
  decodeContent,
  defaultRoomSettings,
  encodeContent,
  identityToBytes,
  labFlag,
  parseCommitGrounds,
  parseIdentity,
  readRoomSettings,
  roomExtensions,
  textContent,
} from "../src/mls/tonari";

const enc = new TextEncoder();

describe("credential identity", () => {
  it("round-trips the current and the role-bearing format", () => {
    expect(parseIdentity(identityToBytes({ userId: 7, deviceId: 42 }))).toEqual({ userId: 7, deviceId: 42 });
    expect(new TextDecoder().decode(identityToBytes({ userId: 7, deviceId: 42, role: "nurse" }))).toBe("tonari:7:42:nurse");
    expect(parseIdentity(enc.encode("tonari:7:42:care_manager"))).toEqual({ userId: 7, deviceId: 42, role: "care_manager" });
  });
  it("rejects what the Rust wire crate rejects", () => {
    for (const bad of ["tonari:1", "x:1:2", "tonari:a:2", "tonari:1:2:wizard", "tonari:1:2:nurse:x", "tonari:1.5:2", ""]) {
      expect(parseIdentity(enc.encode(bad))).toBeUndefined();
    }
    expect(parseIdentity(new Uint8Array([0xff]))).toBeUndefined();
  });
});

describe("content", () => {
  it("text matches the Rust SDK's wire format", () => {
    expect(new TextDecoder().decode(encodeContent(textContent("hi")))).toBe('{"type":"text","body":"hi"}');
    expect(decodeContent(enc.encode('{"type":"text","body":"<b>x</b>"}'))).toEqual(textContent("<b>x</b>"));
  });
  it("reads the bots' lab and summary cards (tonari-wire format), drops malformed rows", () => {
    const labs = decodeContent(
      enc.encode(
        JSON.stringify({
          type: "card",
          card: {
            kind: "lab_results",
            patient_network_id: "P-1",
            source_org: "Minami Hospital lab",
            report: "Labs",
            results: [
              { test_name: "HbA1c", loinc: "4548-4", value: 8.1, unit: "%", reference_range: "4.6-6.2", flag: "high" },
              { test_name: "no value" },
              "junk",
            ],
          },
        }),
      ),
    );
    expect(labs).toEqual({
      type: "card",
      card: {
        kind: "labs",
        title: "Labs",
        source: "Minami Hospital lab",
        rows: [{ name: "HbA1c", code: "LOINC 4548-4", value: "8.1", unit: "%", range: "4.6-6.2", flag: "H", time: undefined }],
      },
    });
    const summary = decodeContent(
      enc.encode(JSON.stringify({ type: "card", card: { kind: "summary", patient_network_id: "P-1", allergies: ["penicillin", 3, {}] } })),
    );
    expect(summary.type).toBe("card");
    const card = (summary as { card: { kind: string; sections: { heading: string; items: string[] }[] } }).card;
    expect(card.kind).toBe("summary");
    expect(card.sections.find((s) => s.heading === "Allergies")?.items).toEqual(["penicillin", "3"]);
    expect(card.sections.find((s) => s.heading === "Problems")?.items).toEqual([]);
  });
  it("anything else is unknown", () => {
    for (const s of ["not json", "null", "[]", '{"type":"card","card":{"kind":"x"}}', '{"type":"text","body":1}', '{"type":"image"}']) {
      expect(decodeContent(enc.encode(s))).toEqual({ type: "unknown" });
    }
  });
  it("lab flags", () => {
    expect(["H", "high", "L", "low", "HH", "LL", "critical", "", undefined, "N"].map(labFlag)).toEqual(["H", "H", "L", "L", "HH", "LL", "!", "", "", ""]);
  });
});

describe("room settings and commit grounds", () => {
  it("room settings ride in extension 0xff00 as JSON", () => {
    const ext = roomExtensions({ patient_network_id: "P-1", policy: { x: 1 } });
    expect(ext[0].extensionType).toBe(ROOM_SETTINGS_EXTENSION);
    expect(readRoomSettings(ext)).toEqual({ patient_network_id: "P-1", policy: { x: 1 } });
    expect(roomExtensions(undefined)).toEqual([]);
    expect(readRoomSettings([{ extensionType: ROOM_SETTINGS_EXTENSION, extensionData: enc.encode("[1]") }])).toBeUndefined();
  });
  it("new rooms carry the Rust SDK's default settings only on a care-team server", () => {
    expect(defaultRoomSettings(false)).toBeUndefined();
    const s = defaultRoomSettings(true)!;
    expect(s.patient_network_id).toBeNull();
    const json = JSON.parse(new TextDecoder().decode(roomExtensions(s)[0].extensionData));
    expect(Object.keys(json)).toEqual(["patient_network_id", "policy"]);
    expect(json.policy.allow_bots).toBe(true);
    expect(json.policy.rules.map((r: { actor: string }) => r.actor)).toEqual([
      "doctor", "nurse", "care_manager", "pharmacist", "dentist", "therapist", "patient", "admin",
    ]);
    expect(json.policy.rules[6]).toEqual({ actor: "patient", may_add: ["family"], may_remove: ["family"] });
    expect(defaultRoomSettings(true, "P-9")!.patient_network_id).toBe("P-9");
  });
  it("grounds are JSON or nothing", () => {
    expect(parseCommitGrounds(new Uint8Array())).toBeUndefined();
    expect(parseCommitGrounds(enc.encode('{"consent":1}'))).toEqual({ consent: 1 });
    expect(parseCommitGrounds(enc.encode("{oops"))).toBeUndefined();
  });
});
