// Test harness for the browser tests: a real `tonari` server on 127.0.0.1:0
// (its own data directory), the real `tonari-cli` as the Rust SDK client,
// and Debian's Chromium driven by playwright-core. Nothing is mocked and
// nothing sleeps: every wait is for a condition, with a timeout.
import { spawn, execFile } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const WAIT = 60_000;
export const PASSWORD = "correct horse battery staple";
const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR || path.join(repoRoot, "target");
export const serverBin = process.env.TONARI_BIN || path.join(targetDir, "debug", "tonari");
export const cliBin = process.env.TONARI_CLI_BIN || path.join(targetDir, "debug", "tonari-cli");
export const screenshotDir = path.join(repoRoot, "target", "web-screenshots");

export function tmp() {
  return mkdtempSync(path.join(tmpdir(), "tonari-web-test-"));
}

/** Start the server; resolves with its URL once it prints it. */
export async function startServer(dir, env = {}) {
  const child = spawn(serverBin, ["serve"], {
    env: {
      PATH: process.env.PATH,
      TONARI_LISTEN: "127.0.0.1:0",
      TONARI_DATA_DIR: path.join(dir, "server"),
      TONARI_LOG_FILTER: "warn",
      // Like the integration tests: open registration, no TOTP requirement
      // (keys of the care-team server; a server without them ignores them).
      TONARI_REGISTRATION: "open",
      TONARI_TOTP_REQUIRED_ROLES: "",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const url = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), WAIT);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/tonari listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${stderr}`));
    });
  });
  return {
    url,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Run tonari-cli for one device directory; resolves with stdout. */
export function cli(server, deviceDir, args) {
  return new Promise((resolve, reject) => {
    execFile(
      cliBin,
      ["--server", server.url, "--device-dir", deviceDir, ...args],
      { env: { PATH: process.env.PATH, TONARI_PASSWORD: PASSWORD }, timeout: WAIT },
      (err, stdout, stderr) => (err ? reject(new Error(`tonari-cli ${args.join(" ")}: ${stderr || err}`)) : resolve(stdout)),
    );
  });
}

/** Sync the CLI device until its history of `room` satisfies `pred`. */
export async function cliUntil(server, deviceDir, room, pred) {
  const deadline = Date.now() + WAIT;
  let last = "";
  while (Date.now() < deadline) {
    await cli(server, deviceDir, ["sync"]);
    last = await cli(server, deviceDir, ["history", room]).catch(() => "");
    if (pred(last)) return last;
  }
  throw new Error(`condition not reached; last history:\n${last}`);
}

/** Register (open registration); `role` as the care-team server takes it. */
export async function register(server, username, role) {
  const r = await fetch(`${server.url}/v1/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password: PASSWORD, role }),
  });
  if (!r.ok) throw new Error(`register ${username}: ${r.status} ${await r.text()}`);
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-background-networking"],
  });
}

/** A browser context (its own IndexedDB: one device) with a page on the app.
 * Dialogs and page errors are recorded, never expected. */
export async function openPage(browser, server, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport, locale: "en-US" });
  const page = await context.newPage();
  const dialogs = [];
  const errors = [];
  const csp = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) csp.push(m.text());
  });
  await page.goto(server.url + "/");
  return { context, page, dialogs, errors, csp };
}

export async function uiLogin(page, username) {
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#conn[data-online=true]").waitFor({ timeout: WAIT });
}

/** Wait for a message with exactly this text in the open room's timeline. */
export async function waitForMessage(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#timeline .msg .body")].some((e) => e.textContent === t),
    text,
    { timeout: WAIT },
  );
}

export async function timelineTexts(page) {
  return page.$$eval("#timeline .msg .body", (els) => els.map((e) => e.textContent));
}

export function screenshotPath(name) {
  mkdirSync(screenshotDir, { recursive: true });
  return path.join(screenshotDir, name);
}

export function cleanup(dir) {
  rmSync(dir, { recursive: true, force: true });
}
