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

export interface SummaryCard {
  kind: "summary";
  title?: string;
  sections: { heading: string; items: string[] }[];
}

export type Card = LabCard | SummaryCard;

/** What an application message carries (JSON tagged by `type`). Text is
 * `{"type":"text","body":...}` as in the Rust SDK's `Content`. Cards are the
 * web client's reading of the bot payloads (issue 6, provisional):
 * `{"type":"card","card":{"kind":"labs"|"summary",...}}`. */
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

function parseCard(v: unknown): Card | undefined {
  if (!v || typeof v !== "object") return undefined;
  const o = v as Record<string, unknown>;
  if (o.kind === "labs" && Array.isArray(o.rows)) {
    const rows: LabRow[] = [];
    for (const r of o.rows) {
      if (!r || typeof r !== "object") continue;
      const x = r as Record<string, unknown>;
      const name = str(x.name);
      const value = str(x.value);
      if (name === undefined || value === undefined) continue;
      rows.push({
        name,
        value,
        code: str(x.code),
        unit: str(x.unit),
        range: str(x.range),
        flag: str(x.flag),
        time: str(x.time),
      });
    }
    return { kind: "labs", title: str(o.title), source: str(o.source), rows };
  }
  if (o.kind === "summary" && Array.isArray(o.sections)) {
    const sections = o.sections
      .filter((s): s is Record<string, unknown> => !!s && typeof s === "object")
      .map((s) => ({
        heading: str(s.heading) ?? "",
        items: Array.isArray(s.items) ? s.items.map(str).filter((i): i is string => i !== undefined) : [],
      }));
    return { kind: "summary", title: str(o.title), sections };
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
