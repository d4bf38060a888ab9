// Screens: login (with TOTP), room list with unread counts, the care room
// (timeline, compose, members with roles and who added whom), devices, and
// logout. Mobile first: one column; from 900 px the room list stays beside
// the room. All text goes into the DOM as text (dom.h).

import { ApiError } from "../api.js";
import type { Client, MemberView } from "../client.js";
import { clear, h, on } from "../dom.js";
import { lang, roleName, setLang, t, type Lang } from "../i18n.js";
import { defaultRoomSettings, type DeviceIdentity, type Grounds } from "../mls/tonari.js";
import type { MessageRecord, RoomEvent } from "../store.js";
import { renderCard } from "./cards.js";

type Route = { name: "login" } | { name: "rooms" } | { name: "room"; roomId: string } | { name: "devices" };

const shortId = (roomId: string) => roomId.slice(0, 8);

function errorText(e: unknown): string {
  if (e instanceof ApiError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}

/** Why a membership change was allowed, as a sentence. */
export function groundsText(g: Grounds): string {
  switch (g.kind) {
    case "rule":
      return t("g_rule", { actor: roleName(g.actor_role), action: t(g.action === "add" ? "g_add" : "g_remove"), target: roleName(g.target_role) });
    case "own_device":
      return t("g_own_device");
    case "leave":
      return t("g_leave");
    case "consent":
      return t("g_consent", { id: g.consent_id, signer: g.signer_user_id });
    case "consent_revoked":
      return t("g_consent_revoked", { id: g.consent_id, signer: g.signer_user_id });
  }
}

export class App {
  private route: Route;
  private renderSeq = 0;
  private roomRefresh = 0;
  private notice: { text: string; kind: "info" | "error" } | undefined;
  private totpEnrollmentRequired = false;

  constructor(
    private root: HTMLElement,
    private client: Client,
  ) {
    this.route = client.loggedIn ? { name: "rooms" } : { name: "login" };
    client.on((e) => {
      if (e.type === "logged_out") this.go({ name: "login" });
      else if (e.type === "connection") this.renderStatus();
      else if (e.type === "rooms") void this.refreshRoomList();
      else if (e.type === "room" && this.route.name === "room" && this.route.roomId === e.roomId) void this.refreshRoom(e.roomId);
    });
  }

  start(): void {
    this.render();
    if (this.client.loggedIn) void this.resumeSession();
  }

  /** A stored session may have expired, or may only be allowed to enrol TOTP. */
  private async resumeSession(): Promise<void> {
    try {
      await this.client.api.keyPackageCount();
    } catch (e) {
      if (e instanceof ApiError && e.code === "unauthenticated") {
        await this.client.logout();
        return;
      }
      if (e instanceof ApiError && e.code === "totp_enrollment_required") {
        this.totpEnrollmentRequired = true;
        this.go({ name: "devices" });
        this.say(t("totp_enroll_required"), "error");
        return;
      }
      // Offline or the server is restarting: the socket retries by itself.
    }
    this.client.connect();
  }

  private go(route: Route): void {
    this.route = route;
    this.notice = undefined;
    this.render();
  }

  private say(text: string, kind: "info" | "error" = "info"): void {
    this.notice = { text, kind };
    const n = this.root.querySelector<HTMLElement>("#notice");
    if (n) this.fillNotice(n);
  }

  private fillNotice(n: HTMLElement): void {
    clear(n);
    n.className = this.notice ? `notice ${this.notice.kind}` : "notice";
    if (this.notice) n.append(this.notice.text);
  }

  private async guard(f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (e) {
      if (e instanceof ApiError && e.code === "unauthenticated") {
        await this.client.logout();
        return;
      }
      this.say(t("error", { message: errorText(e) }), "error");
    }
  }

  // ------------------------------------------------------------ frame

  private render(): void {
    const seq = ++this.renderSeq;
    clear(this.root);
    const langSelect = h(
      "select",
      { id: "lang", "aria-label": `${t("language")} / Language` },
      h("option", { value: "en", selected: lang() === "en" }, "English"),
      h("option", { value: "ja", selected: lang() === "ja" }, "日本語"),
    );
    on(langSelect, "change", () => {
      setLang(langSelect.value as Lang);
      this.render();
    });
    const nav = this.client.loggedIn
      ? h(
          "nav",
          { "aria-label": t("app_name") },
          this.navButton(t("rooms"), { name: "rooms" }),
          this.navButton(t("devices"), { name: "devices" }),
          on(h("button", { type: "button", id: "logout" }, t("logout")), "click", () => void this.guard(() => this.client.logout())),
        )
      : null;
    const notice = h("div", { id: "notice", role: "status", "aria-live": "polite" });
    this.fillNotice(notice);
    const main = h("main", { id: "main", tabindex: -1 });
    this.root.append(
      h("a", { href: "#main", class: "skip" }, t("skip")),
      h(
        "header",
        { class: "top" },
        h("h1", {}, t("app_name")),
        h("span", { id: "conn", class: "conn", role: "status" }),
        h("label", { class: "lang" }, h("span", { class: "sr-only" }, t("language")), langSelect),
        nav,
      ),
      notice,
      main,
    );
    this.renderStatus();
    if (this.route.name === "login" || !this.client.loggedIn) this.renderLogin(main);
    else if (this.route.name === "rooms") this.renderRooms(main, seq);
    else if (this.route.name === "room") this.renderRoom(main, this.route.roomId);
    else this.renderDevices(main, seq);
  }

  private navButton(label: string, route: Route): HTMLElement {
    const current = this.route.name === route.name || (route.name === "rooms" && this.route.name === "room");
    return on(h("button", { type: "button", "aria-current": current ? "page" : undefined }, label), "click", () => this.go(route));
  }

  private renderStatus(): void {
    const el = this.root.querySelector<HTMLElement>("#conn");
    if (!el) return;
    clear(el);
    if (!this.client.loggedIn) return;
    el.dataset.online = String(this.client.online);
    el.append(this.client.online ? t("online") : t("offline"));
  }

  // ------------------------------------------------------------ login

  private renderLogin(main: HTMLElement): void {
    const field = (id: string, label: string, attrs: Record<string, string | boolean>) =>
      h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));
    const stored = this.client.device;
    const form = h(
      "form",
      { class: "login", "aria-labelledby": "login-title" },
      h("h2", { id: "login-title", tabindex: -1 }, t("login_title")),
      field("username", t("username"), { autocomplete: "username", required: true, value: stored?.username ?? "" }),
      field("password", t("password"), { type: "password", autocomplete: "current-password", required: true, minlength: "8" }),
      field("totp", t("totp_code"), { inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}" }),
      field("device-name", t("device_name"), { value: stored?.deviceName ?? "browser", required: true, maxlength: "128" }),
      field("invitation", t("invitation_code"), { autocomplete: "off" }),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit", class: "primary" }, t("log_in")),
        h("button", { type: "button", id: "register" }, t("create_account")),
      ),
    );
    const val = (id: string) => (form.querySelector(`#${id}`) as HTMLInputElement).value;
    on(form, "submit", (ev) => {
      ev.preventDefault();
      void this.guard(async () => {
        try {
          const r = await this.client.login(val("username").trim(), val("password"), val("device-name").trim(), val("totp").trim());
          this.totpEnrollmentRequired = r.totpEnrollmentRequired;
        } catch (e) {
          if (e instanceof ApiError && e.code === "totp_required") {
            this.say(t("totp_required"), "error");
            (form.querySelector("#totp") as HTMLInputElement).focus();
            return;
          }
          if (e instanceof ApiError && e.code === "other_device") {
            this.say(t("other_device", { user: this.client.device?.username ?? "?" }), "error");
            return;
          }
          throw e;
        }
        if (this.totpEnrollmentRequired) {
          this.go({ name: "devices" });
          this.say(t("totp_enroll_required"), "error");
          return;
        }
        this.client.connect();
        this.go({ name: "rooms" });
      });
    });
    on(form.querySelector<HTMLElement>("#register")!, "click", () => {
      if (!form.reportValidity()) return;
      void this.guard(async () => {
        await this.client.register(val("username").trim(), val("password"), val("invitation").trim() || undefined);
        this.say(t("account_created"));
      });
    });
    main.append(form);
    if (stored && !stored.token) {
      main.append(
        on(h("button", { type: "button", class: "link", id: "forget" }, t("forget_device")), "click", () =>
          void this.guard(async () => {
            await this.client.forgetDevice();
            this.render();
          }),
        ),
      );
    }
    (form.querySelector(stored?.username ? "#password" : "#username") as HTMLElement).focus();
  }

  // ------------------------------------------------------------ rooms

  private roomList(): HTMLElement {
    return h("ul", { class: "room-list", id: "room-list", "aria-label": t("rooms") });
  }

  private renderRooms(main: HTMLElement, _seq: number): void {
    // Care-team servers (credentials with roles) bind a room to a patient.
    const withPatient = this.client.device?.role !== undefined;
    const patient = h("input", { id: "patient-id", name: "patient-id", autocomplete: "off", pattern: "[A-Za-z0-9_-]{1,64}" });
    const form = h(
      "form",
      { class: "new-room", id: "new-room-form" },
      withPatient ? h("div", { class: "field" }, h("label", { for: "patient-id" }, t("patient_id")), patient) : null,
      h("button", { type: "submit", class: "primary", id: "new-room" }, t("new_room")),
    );
    on(form, "submit", (ev) => {
      ev.preventDefault();
      void this.guard(async () => {
        const id = await this.client.createRoom(defaultRoomSettings(withPatient, patient.value.trim() || undefined));
        this.go({ name: "room", roomId: id });
      });
    });
    main.append(h("div", { class: "list-head" }, h("h2", { tabindex: -1 }, t("rooms")), form), this.roomList());
    void this.refreshRoomList();
    main.querySelector<HTMLElement>("h2")?.focus();
  }

  private async refreshRoomList(): Promise<void> {
    if (!this.client.loggedIn) return;
    const list = this.root.querySelector<HTMLElement>("#room-list");
    if (!list) return;
    const rooms = await this.client.rooms();
    clear(list);
    if (rooms.length === 0) list.append(h("li", { class: "empty" }, t("no_rooms")));
    for (const r of rooms.sort((a, b) => b.lastSeq - a.lastSeq || a.roomId.localeCompare(b.roomId))) {
      const title = r.settings?.patient_network_id ? t("patient", { id: r.settings.patient_network_id }) : t("room", { id: shortId(r.roomId) });
      const current = this.route.name === "room" && this.route.roomId === r.roomId;
      const btn = h(
        "button",
        { type: "button", class: "room-item", "data-room": r.roomId, "aria-current": current ? "true" : undefined },
        h("span", { class: "room-title" }, title),
        h("span", { class: "room-meta" }, t("members_n", { n: r.memberCount })),
        r.unread > 0 ? h("span", { class: "badge", "aria-label": t("unread_n", { n: r.unread }) }, String(r.unread)) : null,
        r.status !== "active" ? h("span", { class: "room-meta" }, r.status === "removed" ? t("removed_notice") : t("untrusted_notice")) : null,
      );
      on(btn, "click", () => this.go({ name: "room", roomId: r.roomId }));
      list.append(h("li", {}, btn));
    }
  }

  // ------------------------------------------------------------ room

  private renderRoom(main: HTMLElement, roomId: string): void {
    main.classList.add("with-side");
    const side = h("aside", { class: "side", "aria-label": t("rooms") }, this.roomList());
    const compose = h("textarea", { id: "compose", name: "compose", rows: 2, required: true, maxlength: 20000 });
    const form = h(
      "form",
      { class: "compose", id: "compose-form" },
      h("label", { for: "compose" }, t("compose_label")),
      h("div", { class: "compose-row" }, compose, h("button", { type: "submit", class: "primary" }, t("send"))),
    );
    const submit = () => {
      const text = compose.value;
      if (!text.trim()) return;
      compose.value = "";
      void this.guard(async () => {
        try {
          await this.client.send(roomId, text);
        } catch (e) {
          compose.value = text;
          throw e;
        }
      });
    };
    on(form, "submit", (ev) => {
      ev.preventDefault();
      submit();
    });
    on(compose, "keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        submit();
      }
    });
    const invite = h("input", { id: "invite", name: "invite", autocomplete: "off", required: true });
    const inviteForm = h(
      "form",
      { class: "invite", id: "invite-form" },
      h("label", { for: "invite" }, t("invite_label")),
      h("div", { class: "compose-row" }, invite, h("button", { type: "submit" }, t("invite"))),
    );
    on(inviteForm, "submit", (ev) => {
      ev.preventDefault();
      const who = invite.value.trim();
      if (!who) return;
      void this.guard(async () => {
        await this.client.invite(roomId, who);
        invite.value = "";
      });
    });
    const room = h(
      "section",
      { class: "room", "aria-labelledby": "room-title", "data-room": roomId },
      h(
        "div",
        { class: "room-head" },
        on(h("button", { type: "button", class: "back" }, "← ", t("back")), "click", () => this.go({ name: "rooms" })),
        h("h2", { id: "room-title", tabindex: -1 }, t("room", { id: shortId(roomId) })),
      ),
      h("div", { id: "room-state" }),
      h("ol", { class: "timeline", id: "timeline", "aria-label": t("timeline"), "aria-live": "polite", tabindex: 0 }),
      form,
      h(
        "section",
        { class: "members", "aria-labelledby": "members-title" },
        h("h3", { id: "members-title" }, t("members")),
        h("ul", { id: "member-list" }),
        inviteForm,
      ),
    );
    main.append(side, room);
    void this.refreshRoomList();
    void this.refreshRoom(roomId);
    room.querySelector<HTMLElement>("#room-title")?.focus();
  }

  private async refreshRoom(roomId: string): Promise<void> {
    const timeline = this.root.querySelector<HTMLElement>("#timeline");
    const memberList = this.root.querySelector<HTMLElement>("#member-list");
    const stateEl = this.root.querySelector<HTMLElement>("#room-state");
    if (!timeline || !memberList || !stateEl) return;
    const mine = ++this.roomRefresh;
    const [views, history, members] = await Promise.all([this.client.rooms(), this.client.history(roomId), this.client.members(roomId)]);
    const view = views.find((v) => v.roomId === roomId);
    // Stored messages never change: only new ones are added to the list, so
    // a screen reader announces just those (the list is aria-live).
    const shown = new Set([...timeline.children].map((li) => (li as HTMLElement).dataset.seq));
    const fresh = history.filter((m) => !shown.has(String(m.seq)));
    const items = await Promise.all(fresh.map((m) => this.messageItem(m)));
    // A newer refresh (or another screen) supersedes this one.
    if (mine !== this.roomRefresh || this.route.name !== "room" || this.route.roomId !== roomId) return;
    const first = timeline.childElementCount === 0;
    const atBottom = first || timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 40;
    const lastShown = Number((timeline.lastElementChild as HTMLElement | null)?.dataset.seq ?? -1);
    if (items.length && fresh[0].seq < lastShown) {
      // Something older arrived (rare): rebuild in order.
      clear(timeline);
      timeline.append(...(await Promise.all(history.map((m) => this.messageItem(m)))));
    } else {
      timeline.append(...items);
    }
    if (atBottom) timeline.scrollTop = timeline.scrollHeight;
    clear(memberList);
    memberList.append(...members.map((m) => this.memberItem(roomId, m)));
    clear(stateEl);
    const active = view?.status === "active";
    if (view && !active) {
      stateEl.append(h("p", { class: "notice error", role: "alert" }, view.status === "removed" ? t("removed_notice") : t("untrusted_notice")));
    }
    for (const el of this.root.querySelectorAll<HTMLInputElement | HTMLButtonElement | HTMLTextAreaElement>(
      "#compose-form textarea, #compose-form button, #invite-form input, #invite-form button",
    ))
      el.disabled = !active;
    if (active && view && view.unread > 0 && document.visibilityState === "visible") await this.client.markRead(roomId);
  }

  private async eventText(e: RoomEvent, me: DeviceIdentity): Promise<string> {
    const names = async (ids: DeviceIdentity[]) =>
      (await Promise.all(ids.map((id) => (id.userId === me.userId && id.deviceId === me.deviceId ? t("you") : this.client.nameOf(id))))).join(", ");
    switch (e.kind) {
      case "joined":
        return t("ev_joined");
      case "removed":
        return t("ev_removed_you");
      case "undecryptable":
        return t("ev_undecryptable");
      case "members": {
        const parts = [];
        if (e.added.length) parts.push(t("ev_added", { names: await names(e.added) }));
        if (e.removed.length) parts.push(t("ev_removed", { names: await names(e.removed) }));
        let s = t("ev_members", { by: e.by ? await this.client.nameOf(e.by) : "?", changes: parts.join("; ") });
        const why = [...new Set(Object.values(e.grounds ?? {}).map(groundsText))];
        if (why.length) s += ` — ${t("grounds", { text: why.join("; ") })}`;
        return s;
      }
    }
  }

  private async messageItem(m: MessageRecord): Promise<HTMLElement> {
    const me = this.client.identity;
    const time = new Date(m.ts);
    const stamp = h("time", { datetime: time.toISOString() }, time.toLocaleTimeString(lang() === "ja" ? "ja-JP" : "en-GB", { hour: "2-digit", minute: "2-digit" }));
    if (m.content.type === "event") {
      return h("li", { class: "event", "data-seq": m.seq }, h("span", { class: "body" }, await this.eventText(m.content.event, me)), " ", stamp);
    }
    const mine = !!m.sender && m.sender.userId === me.userId && m.sender.deviceId === me.deviceId;
    const who = m.sender ? await this.client.nameOf(m.sender) : "?";
    let body: HTMLElement;
    if (m.content.type === "text") body = h("p", { class: "body" }, m.content.body);
    else if (m.content.type === "card") body = renderCard(m.content.card);
    else body = h("p", { class: "body muted" }, t("unsupported"));
    return h(
      "li",
      { class: mine ? "msg mine" : "msg", "data-seq": m.seq },
      h("div", { class: "msg-head" }, h("span", { class: "who" }, who), " ", stamp),
      body,
    );
  }

  private memberItem(roomId: string, m: MemberView): HTMLElement {
    const added = m.addedBy
      ? m.addedBy.userId === m.identity.userId && m.addedBy.deviceId === m.identity.deviceId
        ? t("creator")
        : t("added_by", { name: m.addedByName ?? "?" })
      : t("added_before");
    const removeBtn = m.self
      ? null
      : h("button", { type: "button", class: "small", "aria-label": `${t("remove")}: ${m.username}` }, t("remove"));
    if (removeBtn) {
      // Two steps instead of a native confirm() dialog.
      let armed = false;
      on(removeBtn, "click", () => {
        if (!armed) {
          armed = true;
          clear(removeBtn);
          removeBtn.append(t("remove_confirm", { name: m.username }));
          removeBtn.classList.add("danger");
          return;
        }
        void this.guard(() => this.client.remove(roomId, m.username));
      });
    }
    return h(
      "li",
      { class: "member", "data-user": m.username },
      h("span", { class: "who" }, m.username, m.self ? ` (${t("you")})` : ""),
      h("span", { class: "meta" }, [roleName(m.identity.role), m.deviceName, added].filter(Boolean).join(" · ")),
      m.grounds ? h("span", { class: "meta grounds" }, t("grounds", { text: groundsText(m.grounds) })) : null,
      removeBtn,
    );
  }

  // ------------------------------------------------------------ devices

  private renderDevices(main: HTMLElement, seq: number): void {
    const list = h("ul", { class: "device-list", id: "device-list" });
    const totpCode = h("input", { id: "totp-confirm", inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}", required: true });
    const totpOut = h("div", { id: "totp-out" });
    const confirmForm = h(
      "form",
      { class: "totp-confirm" },
      h("label", { for: "totp-confirm" }, t("totp_confirm_label")),
      h("div", { class: "compose-row" }, totpCode, h("button", { type: "submit" }, t("totp_confirm"))),
    );
    on(confirmForm, "submit", (ev) => {
      ev.preventDefault();
      void this.guard(async () => {
        await this.client.api.totpConfirm(totpCode.value.trim());
        this.say(t("totp_on"));
        if (this.totpEnrollmentRequired) {
          this.totpEnrollmentRequired = false;
          await this.client.topUpKeyPackages();
          this.client.connect();
        }
      });
    });
    const enroll = on(h("button", { type: "button" }, t("totp_enroll")), "click", () =>
      void this.guard(async () => {
        const e = await this.client.api.totpEnroll();
        clear(totpOut);
        totpOut.append(h("p", {}, t("totp_secret", { secret: e.secret_base32 })), h("p", { class: "uri" }, e.otpauth_uri));
      }),
    );
    main.append(
      h("h2", { tabindex: -1 }, t("devices")),
      list,
      h("section", { "aria-labelledby": "totp-title" }, h("h3", { id: "totp-title" }, t("totp_section")), enroll, totpOut, confirmForm),
    );
    main.querySelector<HTMLElement>("h2")?.focus();
    if (this.totpEnrollmentRequired) return;
    void this.guard(async () => {
      const me = this.client.identity;
      const devices = await this.client.ownDevices();
      if (seq !== this.renderSeq) return;
      for (const d of devices.devices) {
        list.append(
          h(
            "li",
            {},
            h("span", { class: "who" }, d.device_name),
            h("span", { class: "meta" }, t("device_id", { id: d.device_id }), d.device_id === me.deviceId ? ` · ${t("this_device")}` : ""),
          ),
        );
      }
    });
  }
}
