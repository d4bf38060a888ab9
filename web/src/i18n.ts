// UI text in English and Japanese. The browser's language picks; the
// language switch overrides (kept in localStorage, which holds nothing else).

export type Lang = "en" | "ja";

const en = {
  app_name: "Tonari",
  language: "Language",
  login_title: "Log in",
  username: "Username",
  password: "Password",
  totp_code: "Authenticator code (if enabled)",
  device_name: "Name of this device",
  invitation_code: "Invitation code (to create an account)",
  log_in: "Log in",
  create_account: "Create account",
  account_created: "Account created. You can log in now.",
  other_device: "This browser holds the device of {user}. Forget it to log in as someone else.",
  forget_device: "Forget this browser's device",
  totp_required: "This account uses an authenticator app: enter its current code.",
  totp_enroll_required: "Your role requires an authenticator app. Set it up below before continuing.",
  rooms: "Care rooms",
  new_room: "New room",
  no_rooms: "No rooms yet.",
  room: "Room {id}",
  members_n: "{n} members",
  unread_n: "{n} unread",
  back: "Back to rooms",
  timeline: "Messages",
  compose_label: "Message",
  send: "Send",
  members: "Members",
  role: "Role",
  role_unknown: "role not stated",
  you: "you",
  added_by: "added by {name}",
  added_before: "in the room before you joined",
  creator: "created the room",
  invite_label: "Add a person (username)",
  invite: "Add",
  remove: "Remove",
  remove_confirm: "Confirm: remove {name}",
  devices: "Devices",
  this_device: "this device",
  device_id: "Device {id}",
  logout: "Log out",
  online: "Connected",
  offline: "Offline: reconnecting…",
  removed_notice: "You were removed from this room. New messages are no longer delivered to you.",
  untrusted_notice: "This room failed a security check and is no longer used.",
  ev_joined: "You joined the room.",
  ev_members: "{by} changed the members: {changes}",
  ev_added: "added {names}",
  ev_removed: "removed {names}",
  ev_removed_you: "You were removed from the room.",
  ev_undecryptable: "A message could not be decrypted.",
  grounds: "Grounds: {text}",
  unsupported: "(unsupported content)",
  lab_results: "Lab results",
  summary: "Summary",
  summary_problems: "Problems",
  summary_medications: "Medications",
  summary_allergies: "Allergies",
  summary_recent_labs: "Recent labs",
  summary_care_team: "Care team",
  lab_test: "Test",
  lab_value: "Value",
  lab_range: "Reference range",
  lab_flag: "Flag",
  flag_H: "High",
  flag_L: "Low",
  flag_HH: "Critically high",
  flag_LL: "Critically low",
  "flag_!": "Critical",
  totp_section: "Two-factor authentication",
  totp_enroll: "Set up an authenticator app",
  totp_secret: "Secret: {secret}",
  totp_confirm_label: "Code from the app",
  totp_confirm: "Turn on",
  totp_on: "The authenticator app is on.",
  error: "Error: {message}",
  patient: "Patient {id}",
  patient_id: "Patient network ID (optional)",
  skip: "Skip to content",
  g_rule: "room policy: a {actor} may {action} a {target}",
  g_add: "add",
  g_remove: "remove",
  g_own_device: "own device",
  g_leave: "left",
  g_consent: "consent {id}, signed by user {signer}",
  g_consent_revoked: "consent {id} revoked by user {signer}",
} as const;

export type Key = keyof typeof en;

const ja: Record<Key, string> = {
  app_name: "となり",
  language: "言語",
  login_title: "ログイン",
  username: "ユーザー名",
  password: "パスワード",
  totp_code: "認証アプリのコード（設定済みの場合）",
  device_name: "この端末の名前",
  invitation_code: "招待コード（アカウント作成時）",
  log_in: "ログイン",
  create_account: "アカウント作成",
  account_created: "アカウントを作成しました。ログインできます。",
  other_device: "このブラウザには {user} さんの端末が保存されています。別の人としてログインするには削除してください。",
  forget_device: "このブラウザの端末データを削除",
  totp_required: "このアカウントは認証アプリを使います。現在のコードを入力してください。",
  totp_enroll_required: "あなたの職種では認証アプリが必要です。続ける前に下で設定してください。",
  rooms: "ケアルーム",
  new_room: "新しいルーム",
  no_rooms: "ルームはまだありません。",
  room: "ルーム {id}",
  members_n: "メンバー {n} 人",
  unread_n: "未読 {n} 件",
  back: "ルーム一覧に戻る",
  timeline: "メッセージ",
  compose_label: "メッセージ",
  send: "送信",
  members: "メンバー",
  role: "職種",
  role_unknown: "職種の記載なし",
  you: "あなた",
  added_by: "{name} さんが追加",
  added_before: "あなたの参加前からのメンバー",
  creator: "ルーム作成者",
  invite_label: "メンバーを追加（ユーザー名）",
  invite: "追加",
  remove: "退出させる",
  remove_confirm: "確認：{name} さんを外す",
  devices: "端末",
  this_device: "この端末",
  device_id: "端末 {id}",
  logout: "ログアウト",
  online: "接続中",
  offline: "オフライン：再接続しています…",
  removed_notice: "このルームから外されました。新しいメッセージは届きません。",
  untrusted_notice: "このルームは安全性の確認に失敗したため使用を停止しました。",
  ev_joined: "ルームに参加しました。",
  ev_members: "{by} さんがメンバーを変更：{changes}",
  ev_added: "{names} を追加",
  ev_removed: "{names} を削除",
  ev_removed_you: "ルームから外されました。",
  ev_undecryptable: "復号できないメッセージがありました。",
  grounds: "根拠：{text}",
  unsupported: "（表示できない内容）",
  lab_results: "検査結果",
  summary: "サマリー",
  summary_problems: "病名・問題",
  summary_medications: "処方",
  summary_allergies: "アレルギー",
  summary_recent_labs: "最近の検査",
  summary_care_team: "ケアチーム",
  lab_test: "検査項目",
  lab_value: "結果",
  lab_range: "基準値",
  lab_flag: "判定",
  flag_H: "高値",
  flag_L: "低値",
  flag_HH: "異常高値",
  flag_LL: "異常低値",
  "flag_!": "要注意",
  totp_section: "二要素認証",
  totp_enroll: "認証アプリを設定する",
  totp_secret: "シークレット：{secret}",
  totp_confirm_label: "アプリに表示されたコード",
  totp_confirm: "有効にする",
  totp_on: "認証アプリが有効になりました。",
  error: "エラー：{message}",
  patient: "患者 {id}",
  patient_id: "患者ネットワークID（任意）",
  skip: "本文へ移動",
  g_rule: "ルームの規則：{actor}は{target}を{action}できる",
  g_add: "追加",
  g_remove: "削除",
  g_own_device: "本人の別の端末",
  g_leave: "本人が退出",
  g_consent: "同意 {id}（ユーザー {signer} が署名）",
  g_consent_revoked: "同意 {id} の撤回（ユーザー {signer}）",
};

const ROLE_NAMES: Record<Lang, Record<string, string>> = {
  en: {
    doctor: "Doctor", nurse: "Nurse", care_manager: "Care manager", pharmacist: "Pharmacist",
    dentist: "Dentist", therapist: "Therapist", emergency: "Emergency", admin: "Admin",
    patient: "Patient", family: "Family", bot: "Bot",
  },
  ja: {
    doctor: "医師", nurse: "看護師", care_manager: "ケアマネジャー", pharmacist: "薬剤師",
    dentist: "歯科医師", therapist: "療法士", emergency: "救急", admin: "管理者",
    patient: "患者", family: "家族", bot: "ボット",
  },
};

const DICTS: Record<Lang, Record<Key, string>> = { en, ja };
const STORAGE_KEY = "tonari.lang";

export function pickLang(navigatorLanguages: readonly string[], override: string | null): Lang {
  if (override === "en" || override === "ja") return override;
  for (const l of navigatorLanguages) {
    const base = l.toLowerCase().split("-")[0];
    if (base === "ja") return "ja";
    if (base === "en") return "en";
  }
  return "en";
}

let current: Lang = "en";

export function initLang(): Lang {
  let override: string | null = null;
  try {
    override = localStorage.getItem(STORAGE_KEY);
  } catch {
    /* storage unavailable */
  }
  current = pickLang(navigator.languages ?? [navigator.language], override);
  document.documentElement.lang = current;
  return current;
}

export function setLang(l: Lang): void {
  current = l;
  try {
    localStorage.setItem(STORAGE_KEY, l);
  } catch {
    /* storage unavailable */
  }
  document.documentElement.lang = l;
}

export function lang(): Lang {
  return current;
}

export function t(key: Key, params: Record<string, string | number> = {}, l: Lang = current): string {
  return DICTS[l][key].replace(/\{(\w+)\}/g, (_, k: string) => String(params[k] ?? `{${k}}`));
}

export function roleName(role: string | undefined, l: Lang = current): string {
  if (!role) return t("role_unknown", {}, l);
  return ROLE_NAMES[l][role] ?? role;
}

export const DICTIONARIES = DICTS;
