// The room policy seen from the browser: a pharmacist may not add a nurse
// (the server refuses with policy_violation and the page says so), while a
// doctor may; grounds are shown in the member list.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WAIT, cleanup, launch, openPage, register, startServer, tmp, uiLogin } from "./harness.mjs";

test("room policy in the browser", { timeout: 300_000 }, async (t) => {
  const dir = tmp();
  const server = await startServer(dir);
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
    cleanup(dir);
  });
  await register(server, "doc", "doctor");
  await register(server, "phil", "pharmacist");
  await register(server, "nora", "nurse");
  const d = await openPage(browser, server);
  const p = await openPage(browser, server);
  const n = await openPage(browser, server);
  await uiLogin(d.page, "doc");
  await uiLogin(p.page, "phil");
  await uiLogin(n.page, "nora"); // uploads nora's key packages

  await d.page.getByLabel("Patient network ID (optional)").fill("NET-0042");
  await d.page.getByRole("button", { name: "New room" }).click();
  const roomId = await d.page.locator("section.room").getAttribute("data-room", { timeout: WAIT });
  await d.page.getByLabel("Add a person (username)").fill("phil");
  await d.page.getByRole("button", { name: "Add", exact: true }).click();
  await d.page
    .locator("#member-list li[data-user=phil] .grounds", { hasText: "room policy: a Doctor may add a Pharmacist" })
    .waitFor({ timeout: WAIT });

  // The room is bound to the patient: its title says so.
  await p.page.locator(`#room-list button[data-room="${roomId}"]`, { hasText: "Patient NET-0042" }).click();
  await p.page.getByLabel("Add a person (username)").fill("nora");
  await p.page.getByRole("button", { name: "Add", exact: true }).click();
  await p.page.locator("#notice", { hasText: "policy_violation" }).waitFor({ timeout: WAIT });
  assert.equal(await p.page.locator("#member-list li[data-user=nora]").count(), 0);

  // The doctor may; phil's browser checks the policy itself and shows why.
  await d.page.getByLabel("Add a person (username)").fill("nora");
  await d.page.getByRole("button", { name: "Add", exact: true }).click();
  await p.page
    .locator("#member-list li[data-user=nora] .grounds", { hasText: "room policy: a Doctor may add a Nurse" })
    .waitFor({ timeout: WAIT });
  await n.page.locator(`#room-list button[data-room="${roomId}"]`).waitFor({ timeout: WAIT });
  for (const x of [d, p, n]) assert.deepEqual(x.errors, []);
});
