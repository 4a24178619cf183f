// Browser tests of the web console against the real stack (see stack.mjs). They
// run in order: the operator's experiment is what the viewer then looks at.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { launchBrowser, repo, screenshots, seriousViolations, startStack } from "./stack.mjs";

const EXPERIMENT = "topk-web";
let stack;
let browser;

before(async () => {
  stack = await startStack({ hostGrace: "15s" });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

/** A page signed in with `role`'s token (through the URL fragment scripts/demo prints). */
async function signedIn(role, path = "", viewport = { width: 1280, height: 900 }) {
  // bypassCSP lets the test inject axe-core; the console itself never needs it.
  const context = await browser.newContext({ viewport, bypassCSP: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  await page.goto(`${stack.consoleUrl}${path}#token=${stack.tokens[role]}`);
  await page.locator(`#who[data-role="${role}"]`).waitFor();
  assert.equal(new URL(page.url()).hash, "", "the token is dropped from the address bar");
  return { page, context, errors };
}

async function assertAccessible(page, what) {
  const violations = await seriousViolations(page);
  assert.deepEqual(violations, [], `${what}: serious or critical accessibility violations`);
}

test("a wrong token is refused on the sign-in page", async () => {
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  await page.goto(stack.consoleUrl);
  await page.fill("#token", "not-a-valid-token");
  await page.click("button[type=submit]");
  await page.locator("#signin-error", { hasText: "not valid" }).waitFor();
  await assertAccessible(page, "sign-in page");
  await context.close();
});

test("an operator creates the example through the CLI, watches it live, reads the report and promotes", { timeout: 420_000 }, async () => {
  const { page, context, errors } = await signedIn("operator");
  await page.locator("#live[data-live=true]").waitFor();
  // Marks this document: a reload would lose it.
  await page.evaluate(() => (window.__sameDocument = true));
  await assertAccessible(page, "experiments list (empty)");

  execFileSync(stack.phoenix, ["experiment", "create", "-f", join(repo, "examples/topk-web.yaml")], {
    env: { ...process.env, PHOENIX_API_URL: stack.apiUrl, PHOENIX_TOKEN: stack.tokens.operator },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const row = page.locator(`tr[data-experiment="${EXPERIMENT}"]`);
  await row.waitFor({ timeout: 30_000 });
  // The phase moves on by itself (pending → deploying → running), from the stream.
  await row.locator(".phase", { hasText: /deploying|running/ }).waitFor({ timeout: 120_000 });
  await assertAccessible(page, "experiments list");

  await row.getByRole("link", { name: EXPERIMENT }).click();
  await page.locator("#phase[data-phase=running]").waitFor({ timeout: 120_000 });
  await page.locator("#measure-progress").waitFor();
  await page.locator("#phase[data-phase=completed]").waitFor({ timeout: 300_000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "the page was never reloaded");

  // The report: verdict, criteria with reasons, per-host rows, both series charted.
  await page.locator("#verdict[data-verdict=pass]").waitFor({ timeout: 30_000 });
  assert.equal(await page.locator("#criteria tbody tr").count(), 4);
  assert.match(await page.locator('#criteria tr[data-criterion="seriesReduction"]').innerText(), /pass.*series cut by/s);
  assert.equal(await page.locator("#hosts tbody tr").count(), 2);
  const seriesChart = page.locator("#evidence figure", { hasText: "Distinct series over time" });
  for (const variant of ["baseline", "candidate"]) {
    const points = Number(await seriesChart.locator(`g[data-series=${variant}]`).getAttribute("data-points"));
    assert.ok(points > 1, `${variant} series drawn with ${points} points`);
  }
  assert.ok((await page.locator("#configs .line.add").count()) > 0, "the config diff marks added lines");
  // The tests name themselves and give an interval; fidelity has a row per host.
  const cpuTest = await page.locator('#tests tr[data-test="CPU"]').innerText();
  assert.match(cpuTest, /Wilcoxon signed-rank across separate windows/, cpuTest);
  assert.match(cpuTest, /-?\d\.\d{4} to -?\d\.\d{4} cores \(95 %\)/, cpuTest);
  assert.match(await page.locator("#error-control").innerText(), /Holm over 2 tested criteria/);
  assert.equal(await page.locator("#fidelity tbody tr").count(), 3, "all hosts and each of the two");
  const recall = await page.locator('#fidelity tr[data-scope="all hosts"]').innerText();
  assert.match(recall, /\d+\.\d %/, `top-10 recall in percent: ${recall}`);
  await assertAccessible(page, "experiment page");
  await page.screenshot({ path: join(screenshots, "experiment.png"), fullPage: true });

  // Promote, confirmed; the API's answer names the deployment's revision.
  await page.click("#action-promote");
  await page.locator("#confirm-promote").getByRole("button", { name: "Yes, promote" }).click();
  const result = page.locator("#action-result [data-outcome=ok]");
  await result.waitFor({ timeout: 30_000 });
  const answer = await result.innerText();
  const [, deployment, revision] = /Deployment (\S+) is at revision (\d+)/.exec(answer) ?? [];
  assert.ok(deployment, `the answer names the deployment: ${answer}`);
  await page.locator("#phase[data-phase=promoted]").waitFor();

  // Again: a 409 and the API's reason.
  await page.click("#action-promote");
  await page.locator("#confirm-promote").getByRole("button", { name: "Yes, promote" }).click();
  const refused = page.locator('#action-result [data-outcome=error][data-status="409"]');
  await refused.waitFor();
  assert.match(await refused.innerText(), /409 Conflict.*already promoted/s);

  // The catalog shows the deployment at its new revision, made by the promotion.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Catalog" }).click();
  const card = page.locator(`article[data-deployment="${deployment}"]`);
  await card.waitFor();
  assert.equal(await card.getAttribute("data-revision"), revision);
  assert.match(await card.locator(`tr[data-revision="${revision}"]`).innerText(), new RegExp(`${EXPERIMENT}.*current`, "s"));
  await assertAccessible(page, "catalog");
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "still the same document");
  assert.deepEqual(errors, []);
  await context.close();
});

test("a viewer sees no Promote button, and the API refuses it anyway", async () => {
  const { page, context, errors } = await signedIn("viewer", `experiments/${EXPERIMENT}`);
  await page.locator("#phase").waitFor();
  await page.locator("#actions", { hasText: "reads only" }).waitFor();
  assert.equal(await page.locator("#action-promote").count(), 0);
  assert.equal(await page.getByRole("button", { name: /promote/i }).count(), 0);
  const status = await page.evaluate(
    async ([name, token]) =>
      (await fetch(`/api/v1/experiments/${name}/promote`, { method: "POST", headers: { authorization: `Bearer ${token}` } })).status,
    [EXPERIMENT, stack.tokens.viewer],
  );
  assert.equal(status, 403);
  await assertAccessible(page, "experiment page (viewer)");

  // A keyboard user starts at the skip link.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), "Skip to content");

  // A phone: nothing wider than the screen but the tables' own scrolling.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  await page.screenshot({ path: join(screenshots, "experiment-phone.png") });
  assert.deepEqual(errors, []);
  await context.close();
});

test("the fleet page shows a host as lost once its agent is killed", { timeout: 120_000 }, async () => {
  const { page, context, errors } = await signedIn("viewer", "fleet");
  for (const host of ["web-1", "web-2"]) {
    await page.locator(`#fleet tr[data-host="${host}"][data-state=ready]`).waitFor();
  }
  // The label selector filters.
  await page.fill("#selector", "role=db");
  await page.locator("#fleet", { hasText: "No host matches" }).waitFor();
  await page.fill("#selector", "role=web");
  await page.locator('#fleet tr[data-host="web-2"]').waitFor();
  // A host's tasks.
  await page.locator('#fleet tr[data-host="web-1"]').getByRole("link", { name: "web-1" }).click();
  await page.locator("#tasks tbody tr").first().waitFor();
  assert.equal(await page.inputValue("#selector"), "role=web", "the filter survives opening a host");
  await assertAccessible(page, "fleet page");

  const victim = stack.agents.find((a) => a.host === "web-2");
  const killedAt = Date.now();
  process.kill(victim.pid, "SIGKILL");
  const graceMs = 15_000;
  await page.locator('#fleet tr[data-host="web-2"][data-state=lost]').waitFor({ timeout: graceMs + 10_000 });
  const tookMs = Date.now() - killedAt;
  console.log(`web-2 shown lost ${(tookMs / 1000).toFixed(1)} s after its agent was killed (grace 15 s)`);
  assert.ok(tookMs <= graceMs + 5_000, `lost after ${tookMs} ms`);
  await page.locator('#fleet tr[data-host="web-1"][data-state=ready]').waitFor();
  await page.screenshot({ path: join(screenshots, "fleet.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});
