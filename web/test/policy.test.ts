// The web client's port of the room policy (clients/wire care.rs), checked
// on the same kinds of cases as the Rust policy matrix.
import { describe, expect, it } from "vitest";
import {
  checkChange,
  checkConsentParties,
  commitConsents,
  defaultRoomSettings,
  parseConsent,
  policySettings,
  type Consent,
  type DeviceIdentity,
  type Role,
} from "../src/mls/tonari";

const id = (userId: number, deviceId: number, role: Role): DeviceIdentity => ({ userId, deviceId, role });
const settings = (nid: string | null = "P-1") => {
  const s = policySettings(defaultRoomSettings(true, nid ?? undefined));
  if (typeof s === "string") throw new Error(s);
  return s;
};
const consent = (over: Partial<Consent> = {}): Consent => ({
  consent_id: "abcdef0123",
  room_id: "aa",
  patient_network_id: "P-1",
  subject_user_id: 9,
  granted: true,
  issued_ms: 1,
  signer_user_id: 5,
  signer_device_id: 6,
  ...over,
});

describe("room policy", () => {
  const doctor = id(1, 1, "doctor");
  it("professional rules", () => {
    expect(checkChange(settings(), { actor: doctor, action: "add", target: id(2, 2, "nurse"), selfProposed: false })).toEqual({
      kind: "rule",
      actor_role: "doctor",
      action: "add",
      target_role: "nurse",
    });
    expect(typeof checkChange(settings(), { actor: id(3, 3, "pharmacist"), action: "add", target: id(2, 2, "nurse"), selfProposed: false })).toBe("string");
    expect(checkChange(settings(), { actor: id(3, 3, "pharmacist"), action: "add", target: id(4, 4, "dentist"), selfProposed: false })).toMatchObject({ kind: "rule" });
    expect(typeof checkChange(settings(), { actor: id(3, 3, "pharmacist"), action: "remove", target: id(4, 4, "dentist"), selfProposed: false })).toBe("string");
    expect(checkChange(settings(), { actor: id(7, 7, "admin"), action: "remove", target: doctor, selfProposed: false })).toMatchObject({ kind: "rule" });
    expect(typeof checkChange(settings(), { actor: id(7, 7, "admin"), action: "add", target: doctor, selfProposed: false })).toBe("string");
  });
  it("leave and own devices are always allowed", () => {
    const pharm = id(3, 3, "pharmacist");
    expect(checkChange(settings(), { actor: pharm, action: "remove", target: pharm, selfProposed: false })).toEqual({ kind: "leave" });
    expect(checkChange(settings(), { actor: doctor, action: "remove", target: pharm, selfProposed: true })).toEqual({ kind: "leave" });
    expect(checkChange(settings(), { actor: pharm, action: "add", target: id(3, 8, "pharmacist"), selfProposed: false })).toEqual({ kind: "own_device" });
  });
  it("patients and family need the patient's consent, and a patient room", () => {
    const family = id(9, 9, "family");
    expect(typeof checkChange(settings(), { actor: doctor, action: "add", target: family, selfProposed: false })).toBe("string");
    expect(checkChange(settings(), { actor: doctor, action: "add", target: family, selfProposed: false, consent: consent() })).toEqual({
      kind: "consent",
      consent_id: "abcdef0123",
      signer_user_id: 5,
    });
    expect(typeof checkChange(settings(), { actor: doctor, action: "add", target: family, selfProposed: false, consent: consent({ patient_network_id: "P-2" }) })).toBe("string");
    expect(typeof checkChange(settings(null), { actor: doctor, action: "add", target: family, selfProposed: false, consent: consent() })).toBe("string");
    // A revocation lets any member remove.
    expect(checkChange(settings(), { actor: id(3, 3, "pharmacist"), action: "remove", target: family, selfProposed: false, consent: consent({ granted: false }) })).toMatchObject({ kind: "consent_revoked" });
  });
  it("bots only where allowed; no role, no change", () => {
    const s = settings();
    expect(checkChange(s, { actor: doctor, action: "add", target: id(8, 8, "bot"), selfProposed: false })).toMatchObject({ kind: "rule" });
    s.policy.allow_bots = false;
    expect(typeof checkChange(s, { actor: doctor, action: "add", target: id(8, 8, "bot"), selfProposed: false })).toBe("string");
    expect(typeof checkChange(settings(), { actor: { userId: 1, deviceId: 1 }, action: "add", target: id(2, 2, "nurse"), selfProposed: false })).toBe("string");
  });
  it("rooms without settings are refused on a care-team server", () => {
    expect(typeof policySettings(undefined)).toBe("string");
    expect(typeof policySettings({ patient_network_id: "bad id!", policy: { rules: [] } })).toBe("string");
  });
});

describe("consents", () => {
  it("parse checks the form", () => {
    expect(parseConsent({ consent: JSON.stringify(consent()), signature: "" })).toEqual(consent());
    expect(typeof parseConsent({ consent: JSON.stringify(consent({ consent_id: "xyz" })), signature: "" })).toBe("string");
    expect(typeof parseConsent({ consent: "{", signature: "" })).toBe("string");
    expect(typeof parseConsent({ consent: JSON.stringify({ ...consent(), granted: "yes" }), signature: "" })).toBe("string");
  });
  it("only the patient or a legal proxy may consent, only for the patient or family", () => {
    const c = consent();
    const patient = { user_id: 5, role: "patient" as const, network_id: "P-1" };
    const daughter = { user_id: 9, role: "family" as const, family_of: { patient_network_id: "P-1", legal_proxy: false } };
    expect(checkConsentParties(c, patient, daughter)).toBeUndefined();
    expect(checkConsentParties(c, { ...patient, network_id: "P-2" }, daughter)).toBeTruthy();
    expect(checkConsentParties(c, { user_id: 5, role: "family", family_of: { patient_network_id: "P-1", legal_proxy: true } }, daughter)).toBeUndefined();
    expect(checkConsentParties(c, { user_id: 5, role: "family", family_of: { patient_network_id: "P-1", legal_proxy: false } }, daughter)).toBeTruthy();
    expect(checkConsentParties(c, patient, { user_id: 9, role: "nurse" })).toBeTruthy();
  });
  it("commit grounds carry consents or nothing", () => {
    const enc = new TextEncoder();
    expect(commitConsents(new Uint8Array())).toEqual([]);
    expect(commitConsents(enc.encode('{"consents":[{"consent":"{}","signature":"AA=="}]}'))).toEqual([{ consent: "{}", signature: "AA==" }]);
    expect(commitConsents(enc.encode('{"consents":[1]}'))).toBeUndefined();
    expect(commitConsents(enc.encode("nope"))).toBeUndefined();
  });
});
