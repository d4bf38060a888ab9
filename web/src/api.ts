// The server's HTTP API and WebSocket (types mirror clients/wire/src/lib.rs).
// The session token travels only in `Authorization: Bearer` (HTTP) and in
// the offered WebSocket subprotocol; never in a URL or a cookie, so a page
// of another site cannot use it (no ambient credential: no CSRF).

import { WS_PROTOCOL, WS_TOKEN_PREFIX, type Role } from "./mls/tonari.js";

export interface LoginResponse {
  token: string;
  user_id: number;
  device_id: number;
  role?: Role;
  totp_enrollment_required?: boolean;
}
export interface DeviceInfo {
  device_id: number;
  user_id: number;
  username: string;
  device_name: string;
  signature_key: string;
  role?: Role;
}
/** `UserDevices` before the care-team format, `DirectoryEntry` after it
 * (which adds role, display name, organisation). */
export interface UserDevices {
  user_id: number;
  username: string;
  devices: DeviceInfo[];
  role?: Role;
  display_name?: string;
  network_id?: string | null;
  family_of?: { patient_network_id: string; relationship?: string; legal_proxy?: boolean } | null;
}
export interface KeyPackageCount {
  available: number;
  low: boolean;
}
export interface ClaimedKeyPackages {
  user_id: number;
  key_packages: { device_id: number; key_package: string }[];
  exhausted_devices: number[];
}
export interface RoomInfo {
  room_id: string;
  epoch: number;
  last_seq: number;
  member_devices: number[];
}
export type MessageKind = "application" | "proposal" | "commit";
export interface Envelope {
  room_id: string;
  seq: number;
  kind: MessageKind;
  epoch: number;
  sender_device: number;
  ts_ms: number;
  message: string;
}
export interface MessagePage {
  room_id: string;
  messages: Envelope[];
  more: boolean;
}
export interface WelcomeEnvelope {
  welcome_id: number;
  room_id: string;
  commit_seq: number;
  welcome: string;
}
export interface Ack {
  room_id: string;
  seq: number;
  epoch: number;
  kind: MessageKind;
  duplicate: boolean;
}
export interface TotpEnrollment {
  secret_base32: string;
  otpauth_uri: string;
}

export type ServerFrame =
  | { type: "message"; envelope: Envelope }
  | { type: "welcome"; welcome: WelcomeEnvelope }
  | { type: "key_packages_low"; available: number }
  | { type: "pong"; nonce: number }
  | { type: "error"; code: string; message: string }
  | { type: "ack"; txn_id: string; ack: Ack }
  | { type: "send_error"; room_id: string; txn_id: string; code: string; message: string };

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

export function b64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function unb64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export class Api {
  token: string | undefined;

  constructor(public base: string = "") {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.token) headers["Authorization"] = `Bearer ${this.token}`;
    let resp: Response;
    try {
      resp = await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "network", String(e));
    }
    if (resp.status === 204) return undefined as T;
    const text = await resp.text();
    if (!resp.ok) {
      let code = "internal";
      let message = `HTTP ${resp.status}`;
      try {
        const e = JSON.parse(text) as { code?: string; message?: string };
        code = e.code ?? code;
        message = e.message ?? message;
      } catch {
        /* not JSON */
      }
      throw new ApiError(resp.status, code, message);
    }
    return JSON.parse(text) as T;
  }

  register(username: string, password: string, invitationCode?: string) {
    return this.call<{ user_id: number; username: string; role?: Role }>("POST", "/v1/register", {
      username,
      password,
      invitation_code: invitationCode,
    });
  }

  login(req: {
    username: string;
    password: string;
    device_id?: number;
    device_name: string;
    signature_key: string;
    totp_code?: string;
  }) {
    return this.call<LoginResponse>("POST", "/v1/login", req);
  }

  logout() {
    return this.call<void>("POST", "/v1/logout", {});
  }

  totpEnroll() {
    return this.call<TotpEnrollment>("POST", "/v1/totp/enroll", {});
  }

  totpConfirm(code: string) {
    return this.call<void>("POST", "/v1/totp/confirm", { code });
  }

  keyPackageCount() {
    return this.call<KeyPackageCount>("GET", "/v1/devices/me/key_packages");
  }

  uploadKeyPackages(kps: Uint8Array[]) {
    return this.call<KeyPackageCount>("POST", "/v1/devices/me/key_packages", { key_packages: kps.map(b64) });
  }

  user(username: string) {
    return this.call<UserDevices>("GET", `/v1/users/${encodeURIComponent(username)}`);
  }

  device(deviceId: number) {
    return this.call<DeviceInfo>("GET", `/v1/devices/${deviceId}`);
  }

  claim(username: string) {
    return this.call<ClaimedKeyPackages>("POST", `/v1/users/${encodeURIComponent(username)}/key_packages/claim`, {});
  }

  createRoom(groupInfo: Uint8Array, ratchetTree: Uint8Array) {
    return this.call<RoomInfo>("POST", "/v1/rooms", { group_info: b64(groupInfo), ratchet_tree: b64(ratchetTree) });
  }

  rooms() {
    return this.call<{ rooms: RoomInfo[] }>("GET", "/v1/rooms");
  }

  submit(roomId: string, txnId: string, message: Uint8Array, welcome?: Uint8Array) {
    return this.call<Ack>("POST", `/v1/rooms/${roomId}/messages`, {
      txn_id: txnId,
      message: b64(message),
      welcome: welcome ? b64(welcome) : undefined,
    });
  }

  history(roomId: string, after: number, limit = 200) {
    return this.call<MessagePage>("GET", `/v1/rooms/${roomId}/messages?after=${after}&limit=${limit}`);
  }

  welcomes() {
    return this.call<{ welcomes: WelcomeEnvelope[] }>("GET", "/v1/welcomes");
  }

  deleteWelcome(id: number) {
    return this.call<void>("DELETE", `/v1/welcomes/${id}`);
  }

  /** Open the WebSocket; the token is offered as a subprotocol, never put
   * in the URL. */
  openSocket(): WebSocket {
    if (!this.token) throw new ApiError(401, "unauthenticated", "not logged in");
    const url = new URL("/v1/ws", this.base || location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return new WebSocket(url.toString(), [WS_PROTOCOL, WS_TOKEN_PREFIX + this.token]);
  }
}
