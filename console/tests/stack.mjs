// The real stack for the browser tests: `phoenix-demo --stack-only` (a throwaway
// Postgres, Prometheus and Pushgateway, phoenix-api with the embedded console, the
// reconciler, two agents running the real collector), and Debian's chromium driven
// by playwright-core.

import { spawn } from "node:child_process";
import { readFileSync, mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run the browser tests through console/test.sh`);
  return value;
}

/** Starts the stack; resolves with its description once both agents registered. */
export async function startStack({ hostGrace = "15s" } = {}) {
  const demo = required("PHOENIX_DEMO_BIN");
  const collector = required("PHOENIX_COLLECTOR_BIN");
  const args = ["--stack-only", "--collector", collector, "--examples", join(repo, "examples"), "--host-grace", hostGrace];
  const child = spawn(demo, args, {
    cwd: repo,
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  const lines = createInterface({ input: child.stdout });
  const description = await new Promise((resolveStack, reject) => {
    const timer = setTimeout(() => reject(new Error("phoenix-demo --stack-only did not report its stack within 240 s")), 240_000);
    child.once("exit", (code) => reject(new Error(`phoenix-demo exited (${code}) before reporting its stack`)));
    lines.on("line", (line) => {
      if (line.startsWith("PHOENIX_STACK ")) {
        clearTimeout(timer);
        resolveStack(JSON.parse(line.slice("PHOENIX_STACK ".length)));
      }
    });
  });
  return {
    ...description,
    async stop() {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000))]);
    },
  };
}

/** Debian's chromium, headless, without the background traffic a browser makes. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.PHOENIX_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-default-apps",
      "--disable-sync",
      "--disable-domain-reliability",
      "--disable-client-side-phishing-detection",
      "--no-first-run",
      "--no-pings",
    ],
  });
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** Serious and critical accessibility violations on the page (axe-core). */
export async function seriousViolations(page) {
  await page.addScriptTag({ content: axeSource });
  const results = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  return results.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).slice(0, 5).join(", ")})`);
}

export const screenshots = resolve(process.env.PHOENIX_CONSOLE_SCREENSHOTS ?? join(repo, "console/test-output"));
mkdirSync(screenshots, { recursive: true });
