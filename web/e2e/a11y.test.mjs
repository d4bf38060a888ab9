// Accessibility basics, checked by axe-core (WCAG 2 A/AA rules: labels,
// contrast, names, landmarks) on the login page and the care room, at phone
// and desktop width, in English and Japanese.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { WAIT, cleanup, launch, openPage, register, startServer, tmp, uiLogin, waitForMessage } from "./harness.mjs";

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

async function axe(page) {
  // Injected through the DevTools protocol: the page's CSP stays in force.
  await page.evaluate(axeSource);
  const r = await page.evaluate(() =>
    window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }),
  );
  return r.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}

test("login and care room pass axe's WCAG 2 A/AA rules", { timeout: 300_000 }, async (t) => {
  const dir = tmp();
  const server = await startServer(dir);
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
    cleanup(dir);
  });
  await register(server, "ayumi");
  for (const viewport of [{ width: 360, height: 740 }, { width: 1280, height: 800 }]) {
    const { page, context } = await openPage(browser, server, viewport);
    await page.getByLabel("Username").waitFor({ timeout: WAIT });
    assert.deepEqual(await axe(page), [], `login at ${viewport.width}px`);
    if (viewport.width === 360) {
      await uiLogin(page, "ayumi");
      await page.getByRole("button", { name: "New room" }).click();
      await page.locator("section.room").waitFor({ timeout: WAIT });
      await page.getByLabel("Message", { exact: true }).fill("a11y check");
      await page.getByRole("button", { name: "Send" }).click();
      await waitForMessage(page, "a11y check");
      assert.deepEqual(await axe(page), [], "care room, English");
      await page.locator("#lang").selectOption("ja");
      await page.getByRole("button", { name: "送信" }).waitFor({ timeout: WAIT });
      await page.locator("#timeline .msg").first().waitFor({ timeout: WAIT });
      assert.deepEqual(await axe(page), [], "care room, Japanese");
      await page.getByRole("button", { name: "端末" }).click();
      await page.locator("#device-list li").first().waitFor({ timeout: WAIT });
      assert.deepEqual(await axe(page), [], "devices, Japanese");
      // The check is live: an unlabeled field is reported.
      await page.evaluate(() => document.querySelector("main").append(document.createElement("input")));
      assert.ok((await axe(page)).some((v) => v.startsWith("label")), "axe reports a missing label");
    }
    await context.close();
  }
});
