// Two browsers (ts-mls in Chromium) and one Rust SDK client (tonari-cli) in
// one care room: messages both ways, reload keeps the room readable, XSS
// payloads stay text, a removed browser member stops receiving, and
// screenshots at 360×740 and 1280×800.
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import {
  WAIT,
  cleanup,
  cli,
  cliUntil,
  launch,
  openPage,
  register,
  screenshotPath,
  startServer,
  timelineTexts,
  tmp,
  uiLogin,
  waitForMessage,
} from "./harness.mjs";

const XSS = [
  `<script>window.__xss=1</script>`,
  `<img src=x onerror="window.__xss=1;alert(1)">`,
  `<svg/onload=alert(1)>`,
  `"><iframe src="javascript:alert(1)"></iframe>`,
  `<a href="javascript:alert(1)">click</a>`,
  `javascript:alert(1)`,
  `<style>*{display:none}</style>`,
  `{{constructor.constructor('alert(1)')()}}`,
  `<details open ontoggle=alert(1)>`,
  `&lt;b&gt;entity&lt;/b&gt; & <b>bold</b>`,
];

test("care room: browsers and the Rust CLI", { timeout: 600_000 }, async (t) => {
  const dir = tmp();
  const server = await startServer(dir);
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
    cleanup(dir);
  });
  const carolDir = path.join(dir, "carol");

  // Accounts: alice through the page's own form, bob and carol directly.
  const a = await openPage(browser, server);
  await a.page.getByLabel("Username").fill("alice");
  await a.page.getByLabel("Password").fill("correct horse battery staple");
  await a.page.getByRole("button", { name: "Create account" }).click();
  await a.page.getByText("Account created").waitFor({ timeout: WAIT });
  await register(server, "bob", "nurse");
  await register(server, "carol", "care_manager");
  await cli(server, carolDir, ["login", "carol", "--device-name", "carol-cli"]);

  await a.page.getByRole("button", { name: "Log in" }).click();
  await a.page.locator("#conn[data-online=true]").waitFor({ timeout: WAIT });
  const b = await openPage(browser, server);
  await uiLogin(b.page, "bob");

  // Alice creates the room and adds bob (browser) and carol (Rust SDK).
  await a.page.getByRole("button", { name: "New room" }).click();
  const roomId = await a.page.locator("section.room").getAttribute("data-room", { timeout: WAIT });
  assert.match(roomId, /^[0-9a-f]{32}$/);
  for (const who of ["bob", "carol"]) {
    await a.page.getByLabel("Add a person (username)").fill(who);
    await a.page.getByRole("button", { name: "Add", exact: true }).click();
    await a.page.locator(`#member-list li[data-user=${who}]`).waitFor({ timeout: WAIT });
  }
  await a.page.locator("#member-list li[data-user=bob] .meta", { hasText: "added by alice" }).first().waitFor({ timeout: WAIT });

  // Bob's browser joins from the Welcome pushed over the WebSocket; the
  // message alice sends meanwhile shows as unread in his room list.
  await a.page.getByLabel("Message", { exact: true }).fill("hello from alice");
  await a.page.getByRole("button", { name: "Send" }).click();
  await waitForMessage(a.page, "hello from alice");
  await b.page.locator(`#room-list button[data-room="${roomId}"] .badge`, { hasText: "1" }).waitFor({ timeout: WAIT });
  await b.page.locator(`#room-list button[data-room="${roomId}"]`).click();
  await waitForMessage(b.page, "hello from alice");
  await b.page.locator(`#room-list button[data-room="${roomId}"] .badge`).waitFor({ state: "detached", timeout: WAIT });
  // Who added whom: bob learns it from the Welcome's signer, alice made the room.
  await b.page.locator("#member-list li[data-user=bob] .meta", { hasText: "added by alice" }).first().waitFor({ timeout: WAIT });
  await b.page
    .locator("#member-list li[data-user=bob] .grounds", { hasText: "room policy: a Doctor may add a Nurse" })
    .waitFor({ timeout: WAIT });
  await a.page.locator("#member-list li[data-user=alice] .meta", { hasText: "created the room" }).first().waitFor({ timeout: WAIT });

  // Rust → browsers.
  await cliUntil(server, carolDir, roomId, (h) => h.includes("hello from alice"));
  await cli(server, carolDir, ["send", roomId, "hello from the rust sdk"]);
  await waitForMessage(a.page, "hello from the rust sdk");
  await waitForMessage(b.page, "hello from the rust sdk");

  // Browser → Rust and the other browser.
  await b.page.getByLabel("Message", { exact: true }).fill("hello from bob");
  await b.page.getByLabel("Message", { exact: true }).press("Enter");
  await waitForMessage(a.page, "hello from bob");
  await cliUntil(server, carolDir, roomId, (h) => h.includes("bob: hello from bob"));

  // Commits made by openmls (the Rust client) are processed by ts-mls: carol
  // adds erin (another Rust client) and removes her again.
  const erinDir = path.join(dir, "erin");
  await register(server, "erin", "pharmacist");
  await cli(server, erinDir, ["login", "erin", "--device-name", "erin-cli"]);
  await cli(server, carolDir, ["invite", roomId, "erin"]);
  for (const { page } of [a, b]) {
    await page.locator("#member-list li[data-user=erin] .meta", { hasText: "added by carol" }).first().waitFor({ timeout: WAIT });
    // Roles from the credentials, and the grounds each browser worked out
    // from the room policy in the group context.
    await page.locator("#member-list li[data-user=erin] .meta", { hasText: "Pharmacist" }).first().waitFor({ timeout: WAIT });
    await page
      .locator("#member-list li[data-user=erin] .grounds", { hasText: "room policy: a Care manager may add a Pharmacist" })
      .waitFor({ timeout: WAIT });
  }
  await a.page.locator("#member-list li[data-user=bob] .meta", { hasText: "Nurse" }).first().waitFor({ timeout: WAIT });
  await cliUntil(server, erinDir, roomId, () => true);
  await cli(server, erinDir, ["send", roomId, "hello from erin"]);
  await waitForMessage(b.page, "hello from erin");
  await cli(server, carolDir, ["remove", roomId, "erin"]);
  for (const { page } of [a, b]) {
    await page.locator("#member-list li[data-user=erin]").waitFor({ state: "detached", timeout: WAIT });
  }

  // Reload: bob's keys and group state come back from IndexedDB.
  await b.page.reload();
  await b.page.locator("#conn[data-online=true]").waitFor({ timeout: WAIT });
  await b.page.locator(`#room-list button[data-room="${roomId}"]`).click();
  await waitForMessage(b.page, "hello from bob");
  await waitForMessage(b.page, "hello from the rust sdk");
  await cli(server, carolDir, ["send", roomId, "after bob reloaded"]);
  await waitForMessage(b.page, "after bob reloaded");
  await b.page.getByLabel("Message", { exact: true }).fill("bob after reload");
  await b.page.getByRole("button", { name: "Send" }).click();
  await waitForMessage(a.page, "bob after reload");

  // XSS payloads from the Rust client and from a browser render as text.
  for (const p of XSS.slice(0, 5)) await cli(server, carolDir, ["send", roomId, p]);
  for (const p of XSS.slice(5)) {
    await a.page.getByLabel("Message", { exact: true }).fill(p);
    await a.page.getByRole("button", { name: "Send" }).click();
    await waitForMessage(a.page, p);
  }
  for (const p of XSS) await waitForMessage(b.page, p);
  for (const { page } of [a, b]) {
    const texts = await timelineTexts(page);
    for (const p of XSS) assert.ok(texts.includes(p), `payload shown as text: ${p}`);
    const injected = await page.evaluate(() => ({
      flag: window.__xss ?? null,
      nodes: document.querySelectorAll("#app script, #app img, #app svg, #app iframe, #app style, #app a[href]:not(.skip), #app details, #app b").length,
      hidden: getComputedStyle(document.querySelector("#timeline")).display,
    }));
    assert.deepEqual(injected, { flag: null, nodes: 0, hidden: "flex" });
  }
  assert.deepEqual(a.dialogs, []);
  assert.deepEqual(b.dialogs, []);

  // Screenshots of the care room, phone and desktop.
  await b.page.screenshot({ path: screenshotPath("care-room-1280x800.png") });
  await b.page.setViewportSize({ width: 360, height: 740 });
  await b.page.locator("#compose").waitFor({ timeout: WAIT });
  const overflow = await b.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling at 360 px (overflow ${overflow})`);
  await b.page.screenshot({ path: screenshotPath("care-room-360x740.png"), fullPage: true });
  await b.page.setViewportSize({ width: 1280, height: 800 });

  // Alice removes bob: bob's page says so and gets nothing sent afterwards.
  const remove = a.page.getByRole("button", { name: "Remove: bob" });
  await remove.click();
  await remove.click();
  await a.page.locator("#member-list li[data-user=bob]").waitFor({ state: "detached", timeout: WAIT });
  await b.page.getByText("You were removed from this room.").first().waitFor({ timeout: WAIT });
  assert.equal(await b.page.locator("#compose").isDisabled(), true);
  await a.page.getByLabel("Message", { exact: true }).fill("after bob was removed");
  await a.page.getByRole("button", { name: "Send" }).click();
  await waitForMessage(a.page, "after bob was removed");
  await cliUntil(server, carolDir, roomId, (h) => h.includes("alice: after bob was removed"));
  await cli(server, carolDir, ["send", roomId, "carol after removal"]);
  await waitForMessage(a.page, "carol after removal");
  // Everything sent after the removal reached the others; bob, still
  // connected, has none of it, not even after a reload.
  assert.ok(!(await timelineTexts(b.page)).includes("after bob was removed"));
  await b.page.reload();
  await b.page.locator("#conn[data-online=true]").waitFor({ timeout: WAIT });
  await b.page.locator(`#room-list button[data-room="${roomId}"]`).click();
  await waitForMessage(b.page, "bob after reload");
  const bobTexts = await timelineTexts(b.page);
  assert.ok(!bobTexts.includes("after bob was removed"));
  assert.ok(!bobTexts.includes("carol after removal"));

  for (const x of [a, b]) {
    assert.deepEqual(x.errors, [], "no page errors");
    assert.deepEqual(x.csp, [], "no CSP violations");
  }
});
