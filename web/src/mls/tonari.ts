// Everything the web client knows about Tonari's formats lives here: the
// identity in a device's MLS credential, the capabilities and group-context
// extensions of rooms, the application payloads (text and bot cards), and the
// protocol constants shared with the server (clients/wire/src/lib.rs,
// src/web.rs). When a format changes on the server, this is the file to adapt.

/** RFC 9420 ciphersuite 0x0001, the only one Tonari rooms use. */
export const CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" as const;

/** WebSocket subprotocols: the server answers `tonari.v1`; the token rides
 * in a second offered subprotocol so it never appears in a URL. */
export const WS_PROTOCOL = "tonari.v1";
export const WS_TOKEN_PREFIX = "tonari-token.";

/** Key packages the client keeps on the server (the Rust SDK uses 20). */
export const KEY_PACKAGE_TARGET = 20;

/** Roles a credential may carry (issue 5). */
export const ROLES = [
  "doctor",
  "nurse",
  "care_manager",
  "pharmacist",
  "dentist",
  "therapist",
  "emergency",
  "admin",
  "patient",
  "family",
  "bot",
] as const;
export type Role = (typeof ROLES)[number];

/** A device's identity, as carried in its BasicCredential. */
export interface DeviceIdentity {
  userId: number;
  deviceId: number;
  /** Absent in the pre-role format `tonari:<user>:<device>`. */
  role?: Role;
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/** `tonari:<user_id>:<device_id>[:<role>]` as UTF-8 bytes. */
export function identityToBytes(id: DeviceIdentity): Uint8Array {
  const base = `tonari:${id.userId}:${id.deviceId}`;
  return enc.encode(id.role ? `${base}:${id.role}` : base);
}

function parseId(s: string | undefined): number | undefined {
  if (s === undefined || !/^-?\d+$/.test(s)) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Parse a credential identity; `undefined` for anything malformed. Accepts
 * both the current `tonari:<u>:<d>` and the role-bearing `tonari:<u>:<d>:<role>`. */
export function parseIdentity(bytes: Uint8Array): DeviceIdentity | undefined {
  let s: string;
  try {
    s = dec.decode(bytes);
  } catch {
    return undefined;
  }
  const parts = s.split(":");
  if (parts[0] !== "tonari" || parts.length < 3 || parts.length > 4) return undefined;
  const userId = parseId(parts[1]);
  const deviceId = parseId(parts[2]);
  if (userId === undefined || deviceId === undefined) return undefined;
  if (parts.length === 4) {
    const role = parts[3] as Role;
    if (!ROLES.includes(role)) return undefined;
    return { userId, deviceId, role };
  }
  return { userId, deviceId };
}

export function sameDevice(a: DeviceIdentity, b: DeviceIdentity): boolean {
  return a.userId === b.userId && a.deviceId === b.deviceId;
}

/** Custom extension "tonari room settings" in every room's GroupContext
 * (issue 5). Key packages advertise support for it in their capabilities. */
export const ROOM_SETTINGS_EXTENSION = 0xff00;

/** Extensions the client's key packages (leaf capabilities) list as supported. */
export const SUPPORTED_EXTENSIONS: number[] = [ROOM_SETTINGS_EXTENSION];

/** Room settings (wire type `RoomSettings`), kept opaque here except for the
 * fields the UI shows. */
export interface RoomSettings {
  patient_network_id?: string | null;
  [key: string]: unknown;
}

export interface PolicyRule {
  actor: Role;
  may_add: Role[];
  may_remove: Role[];
}

/** The default care-team policy (clients/wire `RoomPolicy::default_care_team`):
 * doctors, nurses and care managers manage the team; pharmacists, dentists
 * and therapists may bring in each other; the patient may bring in family;
 * an admin may remove professionals and bots. */
export function defaultCareTeamPolicy(): { rules: PolicyRule[]; allow_bots: boolean } {
  const team: Role[] = ["doctor", "nurse", "care_manager", "pharmacist", "dentist", "therapist", "patient", "family", "bot"];
  const allied: Role[] = ["pharmacist", "dentist", "therapist"];
  const lead = (actor: Role): PolicyRule => ({ actor, may_add: [...team], may_remove: [...team] });
  return {
    rules: [
      lead("doctor"),
      lead("nurse"),
      lead("care_manager"),
      { actor: "pharmacist", may_add: [...allied], may_remove: [] },
      { actor: "dentist", may_add: [...allied], may_remove: [] },
      { actor: "therapist", may_add: [...allied], may_remove: [] },
      { actor: "patient", may_add: ["family"], may_remove: ["family"] },
      {
        actor: "admin",
        may_add: [],
        may_remove: ["doctor", "nurse", "care_manager", "pharmacist", "dentist", "therapist", "emergency", "bot"],
      },
    ],
    allow_bots: true,
  };
}

/** Settings of a room the web client creates: the Rust SDK's default
 * (`RoomSettings::care_room`) when the server speaks the care-team format
 * (its login answers carry a role), none for a server from before it, which
 * does not know extension 0xff00 (and whose clients do not list it). */
export function defaultRoomSettings(serverHasRoles: boolean, patientNetworkId?: string): RoomSettings | undefined {
  if (!serverHasRoles) return undefined;
  return { patient_network_id: patientNetworkId ?? null, policy: defaultCareTeamPolicy() };
}

/** Group-context extensions for a new room. `undefined` settings: none (the
 * server before issue 5 does not ask for them). */
export function roomExtensions(settings: RoomSettings | undefined): { extensionType: number; extensionData: Uint8Array }[] {
  if (!settings) return [];
  return [{ extensionType: ROOM_SETTINGS_EXTENSION, extensionData: enc.encode(JSON.stringify(settings)) }];
}

/** The room settings carried in a group context's extensions, if any. */
export function readRoomSettings(
  extensions: { extensionType: number | string; extensionData: Uint8Array }[],
): RoomSettings | undefined {
  const ext = extensions.find((e) => e.extensionType === ROOM_SETTINGS_EXTENSION);
  if (!ext) return undefined;
  try {
    const v: unknown = JSON.parse(dec.decode(ext.extensionData));
    return v && typeof v === "object" && !Array.isArray(v) ? (v as RoomSettings) : undefined;
  } catch {
    return undefined;
  }
}

/** Commit "grounds" (consents) carried as JSON in a commit's authenticated
 * data: tolerated and shown as text; `undefined` when empty or not JSON. */
export function parseCommitGrounds(aad: Uint8Array): unknown {
  if (aad.length === 0) return undefined;
  try {
    return JSON.parse(dec.decode(aad));
  } catch {
    return undefined;
  }
}

// ------------------------------------------------------------ content

/** One lab result row of a lab card. `flag`: H (high), L (low), HH/LL or
 * "critical", absent when within range. */
export interface LabRow {
  name: string;
  code?: string;
  value: string;
  unit?: string;
  range?: string;
  flag?: string;
  time?: string;
}

export interface LabCard {
  kind: "labs";
  title?: string;
  source?: string;
  rows: LabRow[];
}

/** Which summary section (its heading is translated by the UI). */
export type SummarySection = "problems" | "medications" | "allergies" | "recent_labs" | "care_team";

export interface SummaryCard {
  kind: "summary";
  title?: string;
  sections: { heading: string; key?: SummarySection; items: string[] }[];
}

export type Card = LabCard | SummaryCard;

/** What an application message carries (JSON tagged by `type`). Text is
 * `{"type":"text","body":...}` as in the Rust SDK's `Content`. Cards are the
 * bots' payloads, `{"type":"card","card":{"kind":"lab_results"|"summary",...}}`
 * (tonari-wire `Card`), read into the shapes the UI renders. */
export type Content =
  | { type: "text"; body: string }
  | { type: "card"; card: Card }
  | { type: "unknown" };

export function textContent(body: string): Content {
  return { type: "text", body };
}

export function encodeContent(c: Content): Uint8Array {
  return enc.encode(JSON.stringify(c));
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : typeof v === "number" ? String(v) : undefined;
}

/** A wire lab flag (tonari_wire::LabFlag, snake_case) as the card shows it. */
function wireFlag(f: unknown): string | undefined {
  switch (f) {
    case "high":
      return "H";
    case "low":
      return "L";
    case "critical_high":
      return "HH";
    case "critical_low":
      return "LL";
    case "critical":
      return "critical";
    case "abnormal":
      return "A";
    default:
      return undefined;
  }
}

/** One wire LabResult as a row; `undefined` when name or value is missing. */
function labRow(r: unknown): LabRow | undefined {
  if (!r || typeof r !== "object") return undefined;
  const x = r as Record<string, unknown>;
  const name = str(x.test_name);
  const value = str(x.value);
  if (name === undefined || value === undefined) return undefined;
  const loinc = str(x.loinc);
  const jlac10 = str(x.jlac10);
  return {
    name,
    value,
    code: loinc ? `LOINC ${loinc}` : jlac10 ? `JLAC10 ${jlac10}` : undefined,
    unit: str(x.unit),
    range: str(x.reference_range),
    flag: wireFlag(x.flag),
    time: str(x.specimen_time),
  };
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.map(str).filter((i): i is string => i !== undefined) : [];
}

/** The bots' cards as defined in tonari-wire (`clients/wire/src/cards.rs`):
 * `{"kind":"lab_results",...}` and `{"kind":"summary",...}`. */
function parseCard(v: unknown): Card | undefined {
  if (!v || typeof v !== "object") return undefined;
  const o = v as Record<string, unknown>;
  if (o.kind === "lab_results" && Array.isArray(o.results)) {
    const rows = o.results.map(labRow).filter((r): r is LabRow => r !== undefined);
    return { kind: "labs", title: str(o.report), source: str(o.source_org), rows };
  }
  if (o.kind === "summary") {
    const labs = Array.isArray(o.recent_labs)
      ? o.recent_labs
          .map(labRow)
          .filter((r): r is LabRow => r !== undefined)
          .map((r) => `${r.name}: ${r.value}${r.unit ? ` ${r.unit}` : ""}${r.flag ? ` ${r.flag}` : ""}`)
      : [];
    return {
      kind: "summary",
      title: undefined,
      sections: [
        { heading: "Problems", key: "problems", items: strings(o.problems) },
        { heading: "Medications", key: "medications", items: strings(o.medications) },
        { heading: "Allergies", key: "allergies", items: strings(o.allergies) },
        { heading: "Recent labs", key: "recent_labs", items: labs },
        { heading: "Care team", key: "care_team", items: strings(o.care_team) },
      ],
    };
  }
  return undefined;
}

/** Decode an application payload; anything unexpected is `unknown`. */
export function decodeContent(bytes: Uint8Array): Content {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(bytes));
  } catch {
    return { type: "unknown" };
  }
  if (!v || typeof v !== "object") return { type: "unknown" };
  const o = v as Record<string, unknown>;
  if (o.type === "text" && typeof o.body === "string") return { type: "text", body: o.body };
  if (o.type === "card") {
    const card = parseCard(o.card);
    if (card) return { type: "card", card };
  }
  return { type: "unknown" };
}

/** A lab flag as shown: H/L (and HH/LL, critical) or nothing. */
export function labFlag(flag: string | undefined): "H" | "L" | "HH" | "LL" | "!" | "" {
  switch ((flag ?? "").toUpperCase()) {
    case "H":
    case "HIGH":
      return "H";
    case "L":
    case "LOW":
      return "L";
    case "HH":
      return "HH";
    case "LL":
      return "LL";
    case "CRITICAL":
    case "C":
    case "AA":
      return "!";
    default:
      return "";
  }
}

// ------------------------------------------------------------ room policy
// A port of clients/wire `RoomSettings::check`, `SignedConsent::parse` and
// `check_consent_parties`: clients check every commit again (issue 5).

export type Action = "add" | "remove";

/** Why a membership change was allowed (wire `Grounds`, tagged by kind). */
export type Grounds =
  | { kind: "rule"; actor_role: Role; action: Action; target_role: Role }
  | { kind: "own_device" }
  | { kind: "leave" }
  | { kind: "consent"; consent_id: string; signer_user_id: number }
  | { kind: "consent_revoked"; consent_id: string; signer_user_id: number };

export interface Consent {
  consent_id: string;
  room_id: string;
  patient_network_id: string;
  subject_user_id: number;
  granted: boolean;
  issued_ms: number;
  signer_user_id: number;
  signer_device_id: number;
}

export interface SignedConsent {
  /** JSON of a Consent, exactly as signed. */
  consent: string;
  /** Base64 Ed25519 signature over CONSENT_LABEL + consent. */
  signature: string;
}

export const CONSENT_LABEL = "tonari-consent-v1\n";

export function validNetworkId(id: string): boolean {
  return /^[A-Za-z0-9_-]{1,64}$/.test(id);
}

/** The consents a commit carries in its AAD (`CommitGrounds`). */
export function commitConsents(aad: Uint8Array): SignedConsent[] | undefined {
  if (aad.length === 0) return [];
  const v = parseCommitGrounds(aad) as { consents?: unknown } | undefined;
  if (!v || typeof v !== "object") return undefined;
  if (v.consents === undefined) return [];
  if (!Array.isArray(v.consents)) return undefined;
  const out: SignedConsent[] = [];
  for (const c of v.consents) {
    if (!c || typeof c.consent !== "string" || typeof c.signature !== "string") return undefined;
    out.push({ consent: c.consent, signature: c.signature });
  }
  return out;
}

/** Parse a consent and check its form (not its signature). */
export function parseConsent(s: SignedConsent): Consent | string {
  let c: Consent;
  try {
    c = JSON.parse(s.consent) as Consent;
  } catch {
    return "consent: not JSON";
  }
  const ints = [c.subject_user_id, c.issued_ms, c.signer_user_id, c.signer_device_id];
  if (
    typeof c.consent_id !== "string" ||
    typeof c.room_id !== "string" ||
    typeof c.patient_network_id !== "string" ||
    typeof c.granted !== "boolean" ||
    !ints.every((n) => Number.isSafeInteger(n))
  ) {
    return "consent: missing or mistyped fields";
  }
  if (!/^[0-9a-fA-F]{8,64}$/.test(c.consent_id)) return "consent_id must be 8-64 hex characters";
  if (!validNetworkId(c.patient_network_id)) return "consent names an invalid patient_network_id";
  return c;
}

/** Who someone is, as far as consent rules care (from the directory). */
export interface Party {
  user_id: number;
  role: Role;
  network_id?: string | null;
  family_of?: { patient_network_id: string; relationship?: string; legal_proxy?: boolean } | null;
}

export function checkConsentParties(c: Consent, signer: Party, subject: Party): string | undefined {
  const nid = c.patient_network_id;
  const isPatient = (p: Party) => p.role === "patient" && p.network_id === nid;
  const isFamily = (p: Party) => p.role === "family" && p.family_of?.patient_network_id === nid;
  if (signer.user_id !== c.signer_user_id || subject.user_id !== c.subject_user_id) {
    return "the consent names other users than its signer and subject";
  }
  const proxy = isFamily(signer) && !!signer.family_of?.legal_proxy;
  if (!isPatient(signer) && !proxy) return `user ${signer.user_id} is neither the patient nor a legal proxy, and may not consent`;
  if (!isPatient(subject) && !isFamily(subject)) return `user ${subject.user_id} is neither the patient nor their family`;
  return undefined;
}

export interface Change {
  actor: DeviceIdentity;
  action: Action;
  target: DeviceIdentity;
  /** The removal was proposed by the removed device itself (a leave request). */
  selfProposed: boolean;
  /** A verified consent for the target's user (grant for add, revocation for remove). */
  consent?: Consent;
}

interface Policy {
  rules: PolicyRule[];
  allow_bots?: boolean;
}

/** Room settings as the policy check needs them, or why they are unusable. */
export function policySettings(s: RoomSettings | undefined): { patient_network_id: string | null; policy: Policy } | string {
  if (!s) return "the room has no Tonari settings extension";
  const nid = s.patient_network_id ?? null;
  if (nid !== null && (typeof nid !== "string" || !validNetworkId(nid))) return "invalid patient_network_id";
  const p = s.policy as Policy | undefined;
  if (!p || !Array.isArray(p.rules)) return "room settings without a policy";
  return { patient_network_id: nid, policy: p };
}

/** May this change happen? Grounds, or the reason it may not. */
export function checkChange(settings: { patient_network_id: string | null; policy: Policy }, c: Change): Grounds | string {
  const { actor, target } = c;
  const rule = settings.policy.rules.find((r) => r.actor === actor.role);
  const allows = (action: Action) =>
    !!rule && !!target.role && (action === "add" ? rule.may_add : rule.may_remove).includes(target.role);
  const refuse = (why: string) =>
    `${actor.userId} (${actor.role}) may not ${c.action} device ${target.deviceId} of user ${target.userId} (${target.role}): ${why}`;
  const byRule = (): Grounds => ({ kind: "rule", actor_role: actor.role!, action: c.action, target_role: target.role! });
  if (!actor.role || !target.role) return refuse("a credential without a role");
  if (c.action === "remove") {
    if (target.deviceId === actor.deviceId || c.selfProposed) return { kind: "leave" };
    if (target.userId === actor.userId) return { kind: "own_device" };
    const k = c.consent;
    if (k && !k.granted && k.subject_user_id === target.userId && settings.patient_network_id === k.patient_network_id) {
      return { kind: "consent_revoked", consent_id: k.consent_id, signer_user_id: k.signer_user_id };
    }
    if (allows("remove")) return byRule();
    return refuse("the room policy does not allow it");
  }
  if (target.userId === actor.userId) return { kind: "own_device" };
  if (!allows("add")) return refuse("the room policy does not allow it");
  if (target.role === "bot" && !settings.policy.allow_bots) return refuse("this room does not allow bots");
  if (target.role === "patient" || target.role === "family") {
    const nid = settings.patient_network_id;
    if (!nid) return refuse("a team room has no patient or family members");
    const k = c.consent;
    if (k && k.granted && k.subject_user_id === target.userId && k.patient_network_id === nid) {
      return { kind: "consent", consent_id: k.consent_id, signer_user_id: k.signer_user_id };
    }
    return refuse("the patient's consent is missing");
  }
  return byRule();
}
