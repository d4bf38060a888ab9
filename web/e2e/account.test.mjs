// Accounts in the browser: the language follows the browser and the switch
// overrides it; TOTP enrolment and login with a code; devices; logout and
// re-login re-attach the same device (keys from IndexedDB).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { WAIT, PASSWORD, cleanup, launch, openPage, register, startServer, tmp } from "./harness.mjs";

/** RFC 6238 (SHA-1, 6 digits, 30 s) for a base32 secret, `offset` s ahead. */
function totp(secretBase32, offset = 0) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secretBase32.replace(/=+$/, "").toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor((Date.now() / 1000 + offset) / 30)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const o = mac[mac.length - 1] & 0xf;
  return String((mac.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

test("language, TOTP, devices, logout and re-login", { timeout: 300_000 }, async (t) => {
  const dir = tmp();
  const server = await startServer(dir);
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
    cleanup(dir);
  });
  await register(server, "nina");

  // A Japanese browser gets Japanese; the switch overrides, and sticks.
  const context = await browser.newContext({ viewport: { width: 360, height: 740 }, locale: "ja-JP" });
  const page = await context.newPage();
  const dialogs = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  await page.goto(server.url + "/");
  await page.getByRole("heading", { name: "ログイン" }).waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => document.documentElement.lang), "ja");
  await page.getByLabel("ユーザー名").fill("nina");
  await page.locator("#lang").selectOption("en");
  await page.getByRole("heading", { name: "Log in" }).waitFor({ timeout: WAIT });
  await page.reload();
  await page.getByRole("heading", { name: "Log in" }).waitFor({ timeout: WAIT });

  // Log in (a new device), then turn TOTP on from the devices screen.
  await page.getByLabel("Username").fill("nina");
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByLabel("Name of this device").fill("nina-phone");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#conn[data-online=true]").waitFor({ timeout: WAIT });
  await page.getByRole("button", { name: "Devices" }).click();
  const me = page.locator("#device-list li", { hasText: "nina-phone" });
  await me.getByText("this device").waitFor({ timeout: WAIT });
  await page.getByRole("button", { name: "Set up an authenticator app" }).click();
  const secretLine = await page.locator("#totp-out p").first().textContent({ timeout: WAIT });
  const secret = secretLine.replace(/^Secret: /, "").trim();
  assert.match(secret, /^[A-Z2-7]+=*$/);
  await page.getByLabel("Code from the app").fill(totp(secret));
  await page.getByRole("button", { name: "Turn on" }).click();
  await page.getByText("The authenticator app is on.").waitFor({ timeout: WAIT });

  // Log out; logging in again now needs a (fresh) code.
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("heading", { name: "Log in" }).waitFor({ timeout: WAIT });
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByText("This account uses an authenticator app").waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => document.activeElement?.id), "totp");
  await page.getByLabel("Authenticator code (if enabled)").fill(totp(secret, 30));
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#conn[data-online=true]").waitFor({ timeout: WAIT });

  // Still one device: the browser re-attached its stored device and keys.
  await page.getByRole("button", { name: "Devices" }).click();
  await me.getByText("this device").waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#device-list li").count(), 1);
  // The session token is not in a cookie or in web storage.
  assert.deepEqual(await context.cookies(), []);
  const storage = await page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }));
  assert.equal(storage, JSON.stringify({ "tonari.lang": "en" }));
  assert.deepEqual(dialogs, []);
});

test("a role that requires TOTP enrols it before anything else", { timeout: 300_000 }, async (t) => {
  const dir = tmp();
  const server = await startServer(dir, { TONARI_TOTP_REQUIRED_ROLES: "doctor,nurse" });
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
    cleanup(dir);
  });
  await register(server, "dana", "doctor");
  const { page, errors } = await openPage(browser, server, { width: 360, height: 740 });
  await page.getByLabel("Username").fill("dana");
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByText("Your role requires an authenticator app").waitFor({ timeout: WAIT });
  await page.getByRole("button", { name: "Set up an authenticator app" }).click();
  const secret = (await page.locator("#totp-out p").first().textContent({ timeout: WAIT })).replace(/^Secret: /, "").trim();
  await page.getByLabel("Code from the app").fill(totp(secret));
  await page.getByRole("button", { name: "Turn on" }).click();
  await page.getByText("The authenticator app is on.").waitFor({ timeout: WAIT });
  // From now on the session works: key packages, WebSocket, rooms.
  await page.locator("#conn[data-online=true]").waitFor({ timeout: WAIT });
  await page.getByRole("button", { name: "Care rooms" }).click();
  await page.getByRole("button", { name: "New room" }).click();
  await page.locator("section.room").waitFor({ timeout: WAIT });
  assert.deepEqual(errors, []);
});
