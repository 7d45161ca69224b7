// The checkpoint viewer (web/) in a real browser (Debian's Chromium, headless, WebGPU on
// SwiftShader; scripts/install-browser, driven by playwright-core), through its markup contract
// (DESIGN.md, "Web page"): fixtures opened with the file input show one row per tensor with
// torch's paths, dtypes and shapes; a tensor's statistics are torch's (tests/fixtures/make_web.py);
// the page's decoder matches torch's float64 values of every 16- and 8-bit float bit pattern;
// "Place on WebGPU" places every tensor and the statistics read back from the GPU are the same;
// refused files show their message in #status. A screenshot of each state goes to
// target/web-screenshots/.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { allFixtures, FIXTURES, fixtureJson, PKG, ROOT } from "../node/helpers.mjs";
import { serve } from "./server.mjs";

const require = createRequire(join(ROOT, ".cache", "npm-tools", "package.json"));

const FLAGS = [
  "--enable-unsafe-webgpu", "--no-sandbox", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic",
];
const SHOTS = join(process.env.CARGO_TARGET_DIR ?? join(ROOT, "target"), "web-screenshots");
const WEB = fixtureJson("expected_web.json");

let browser;
let page;
let server;
const pageErrors = [];

before(async () => {
  assert.ok(existsSync("/usr/bin/chromium"), "/usr/bin/chromium is missing: run scripts/install-browser");
  assert.ok(existsSync(join(PKG, "browser.mjs")), "pkg/ is not built: run scripts/build-npm");
  mkdirSync(SHOTS, { recursive: true });
  const { chromium } = require("playwright-core");
  server = await serve(ROOT);
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: FLAGS });
  page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await goto("/");
});

after(async () => {
  await browser?.close();
  server?.close();
});

async function goto(path) {
  await page.goto(`${server.url}${path}`);
  await page.waitForFunction(() => document.documentElement.dataset.ready === "true");
}

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Sets the controls, opens `path` through the file input, and waits for the outcome. */
async function openFile(path, { weightsOnly = true, mapLocation = "cpu" } = {}) {
  await page.selectOption("#map-location", mapLocation);
  await page.setChecked("#weights-only", weightsOnly);
  await page.evaluate(() => { document.getElementById("status").className = "pending"; });
  await page.setInputFiles("#file", path);
  return waitOutcome();
}

async function waitOutcome() {
  await page.waitForFunction(() => ["ok", "error", ""].includes(document.getElementById("status").className));
  return page.evaluate(() => {
    const s = document.getElementById("status");
    return { kind: s.className, text: s.textContent };
  });
}

/** Every tensor row: its data-path, data-dtype, data-shape, and whether it sits in the
 * "other tensors" group (tensors the tree walk did not reach). */
function rows() {
  return page.evaluate(() => [...document.querySelectorAll("[data-path]")].map((r) => ({
    path: r.dataset.path, dtype: r.dataset.dtype, shape: JSON.parse(r.dataset.shape),
    device: r.querySelector("[class^=device-]")?.textContent, other: !!r.closest("details.other"),
  })));
}

/** Clicks the row of `path` and returns the page's statistics of it (null when none). */
async function statsOf(path) {
  await page.locator(`[data-path="${path}"]`).click();
  await page.waitForFunction((p) => document.getElementById("detail").getAttribute("data-shown") === p, path);
  return page.evaluate(() => {
    const s = document.getElementById("stats");
    return s ? JSON.parse(s.dataset.stats) : null;
  });
}

function close(a, b) {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "number" || typeof b !== "number") return false;
  return Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(a), Math.abs(b));
}

function compareStats(path, got, want, problems) {
  if (!got) {
    problems.push(`${path}: no statistics shown`);
    return;
  }
  for (const field of ["count", "min", "max", "mean", "std", "nan", "posinf", "neginf"]) {
    if (!close(got[field], want[field])) problems.push(`${path}: ${field} ${got[field]} != torch ${want[field]}`);
  }
}

test("every fixture opened with the file input shows torch's tensor paths, dtypes and shapes", async () => {
  const problems = [];
  let opened = 0;
  for (const [rel, want, path] of allFixtures()) {
    if (want.encoding === "latin1" || want.encoding === "bytes") continue; // no encoding control on the page
    const mapLocation = want.map_location === "meta" ? "meta" : "cpu";
    const outcome = await openFile(path, { weightsOnly: !rel.startsWith("modules/"), mapLocation });
    if (outcome.kind !== "ok") {
      problems.push(`${rel}: ${outcome.kind}: ${outcome.text}`);
      continue;
    }
    opened++;
    const got = await rows();
    const byPath = new Map(got.map((r) => [r.path, r]));
    if (want.compare !== "by_path" && got.length !== want.tensors.length) {
      problems.push(`${rel}: ${got.length} rows, torch has ${want.tensors.length} tensors`);
    }
    for (const w of want.tensors) {
      const r = byPath.get(w.path);
      if (!r) problems.push(`${rel}: no row for ${w.path}`);
      else if (r.dtype !== w.dtype || JSON.stringify(r.shape) !== JSON.stringify(w.shape)) {
        problems.push(`${rel}: ${w.path}: ${r.dtype} ${JSON.stringify(r.shape)} != torch ${w.dtype} ${JSON.stringify(w.shape)}`);
      }
    }
    const other = got.filter((r) => r.other).map((r) => r.path);
    if (other.length) problems.push(`${rel}: rows outside the tree: ${other.join(", ")}`);
  }
  assert.ok(opened > 30, `only ${opened} fixtures opened`);
  assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.join("\n")}`);
  assert.deepEqual(pageErrors, []);
  await openFile(join(FIXTURES, "modules", "training_checkpoint.pt"), { weightsOnly: false });
  await shot("1-tree");
});

test("the statistics of every tensor of web/stats.pt are torch's (float16, bfloat16, float8, strided views)", async () => {
  const outcome = await openFile(join(FIXTURES, WEB.file));
  assert.equal(outcome.kind, "ok", outcome.text);
  const problems = [];
  for (const [path, want] of Object.entries(WEB.stats)) compareStats(path, await statsOf(path), want, problems);
  assert.deepEqual(problems, [], problems.join("\n"));
  await statsOf("f32_view");
  const first = await page.textContent("#first");
  const want = WEB.stats.f32_view.first.map((v) => Number(Number(v).toPrecision(6)));
  assert.deepEqual(first.split(", ").slice(0, want.length).map(Number), want);
  await statsOf("bf16");
  await shot("2-statistics");
  assert.equal((await openFile(join(ROOT, "examples", "tiny_convnet.pt"))).kind, "ok");
  await statsOf("9.weight");
  await shot("0-overview");
  assert.deepEqual(pageErrors, []);
});

test("the page's decoder gives torch's float64 value of every float16/bfloat16/float8 bit pattern", async () => {
  const got = await page.evaluate(async (file) => {
    const { load } = await import("/pkg/browser.mjs");
    const { decode } = await import("/numbers.mjs");
    const ckpt = await load(await fetch(`/fixtures/${file}`));
    const out = {};
    for (const [path, t] of ckpt.tensors()) {
      if (!path.startsWith("all_bits.")) continue;
      const values = decode(await t.contiguousBytes(), t.dtype);
      for (let i = 0; i < values.length; i++) if (Number.isNaN(values[i])) values[i] = NaN;
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", values));
      out[t.dtype] = [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
    }
    return out;
  }, WEB.file);
  assert.deepEqual(got, WEB.decode);
});

test("statistics computed in small chunks (chunk boundaries everywhere) are torch's too", async () => {
  const got = await page.evaluate(async (file) => {
    const { load } = await import("/pkg/browser.mjs");
    const { summarize } = await import("/numbers.mjs");
    const ckpt = await load(await fetch(`/fixtures/${file}`));
    const out = {};
    for (const [path, t] of ckpt.tensors()) out[path] = (await summarize(await t.contiguousBytes(), t.dtype, { chunk: 7 })).stats;
    return out;
  }, WEB.file);
  const problems = [];
  for (const [path, want] of Object.entries(WEB.stats)) compareStats(path, got[path], want, problems);
  assert.deepEqual(problems, [], problems.join("\n"));
});

test("Place on WebGPU places every tensor, and statistics read back from the GPU are torch's", async () => {
  const enabled = await page.evaluate(() => !!navigator.gpu && !document.getElementById("to-webgpu").disabled);
  assert.ok(enabled, "navigator.gpu is missing in Chromium: the WebGPU flags did not take");
  const outcome = await openFile(join(FIXTURES, WEB.file));
  assert.equal(outcome.kind, "ok", outcome.text);
  await page.evaluate(() => { document.getElementById("status").className = "pending"; });
  await page.click("#to-webgpu");
  const placed = await waitOutcome();
  const n = Object.keys(WEB.stats).length;
  assert.equal(placed.kind, "ok", placed.text);
  assert.match(placed.text, new RegExp(`^placed ${n} tensors on WebGPU \\(.*\\) in \\d+ ms: [\\d.e-]+ GB/s$`));
  const devices = new Set((await rows()).map((r) => r.device));
  assert.deepEqual([...devices], ["webgpu"]);
  const problems = [];
  for (const path of ["f16", "bf16", "float8_e4m3fn", "f32_view", "i64"]) {
    compareStats(path, await statsOf(path), WEB.stats[path], problems);
  }
  assert.deepEqual(problems, [], problems.join("\n"));
  await shot("3-webgpu");
  assert.deepEqual(pageErrors, []);
});

test("map_location meta shows shapes without data; the filter keeps matching rows", async () => {
  const outcome = await openFile(join(FIXTURES, "zip", "state_dict.pt"), { mapLocation: "meta" });
  assert.equal(outcome.kind, "ok", outcome.text);
  const all = await rows();
  assert.ok(all.length > 2 && all.every((r) => r.device === "meta"), JSON.stringify(all));
  assert.equal(await statsOf(all[0].path), null);
  await page.fill("#filter", "bias");
  const visible = await page.evaluate(() => [...document.querySelectorAll("[data-path]")].filter((r) => r.offsetParent !== null).map((r) => r.dataset.path));
  assert.deepEqual(visible, all.map((r) => r.path).filter((p) => p.includes("bias")));
  assert.ok(visible.length > 0);
});

test("?url= opens a checkpoint from a URL", async () => {
  const rel = "zip/state_dict.pt";
  await goto(`/?url=${encodeURIComponent(`/fixtures/${rel}`)}`);
  const outcome = await waitOutcome();
  assert.equal(outcome.kind, "ok", outcome.text);
  const want = fixtureJson("expected.json").files[rel].tensors.map((t) => t.path);
  assert.deepEqual((await rows()).map((r) => r.path), want);
  await goto("/?url=/fixtures/no-such-file.pt");
  const missing = await waitOutcome();
  assert.equal(missing.kind, "error");
  assert.match(missing.text, /no-such-file\.pt: HTTP status 404/);
  await goto(`/?url=${encodeURIComponent("http://127.0.0.1:1/unreachable.pt")}`);
  const unreachable = await waitOutcome();
  assert.equal(unreachable.kind, "error");
  assert.match(unreachable.text, /^http:\/\/127\.0\.0\.1:1\/unreachable\.pt: the request failed \(.*\): is the URL right/);
});

test("refused files show their message in #status, not a blank page", async () => {
  await goto("/");
  const hostile = join(FIXTURES, "regressions", "full_load-record-shorter-than-storage.pt");
  let outcome = await openFile(hostile);
  assert.equal(outcome.kind, "error");
  assert.match(outcome.text, /^full_load-record-shorter-than-storage\.pt: .*record size \(16 bytes\) does not match expected size \(48 bytes/);
  assert.equal(await page.isVisible("#view"), false);
  assert.equal(await page.isVisible("#status"), true);
  await shot("4-error");
  outcome = await openFile(join(FIXTURES, "modules", "full_module.pt"), { weightsOnly: true });
  assert.equal(outcome.kind, "error");
  assert.match(outcome.text, /Weights only load failed\. WeightsUnpickler error: Unsupported global: GLOBAL __main__\.FullNet/);
  outcome = await openFile(join(FIXTURES, "modules", "full_module.pt"), { weightsOnly: false });
  assert.equal(outcome.kind, "ok", outcome.text);
  assert.deepEqual(pageErrors, []);
});

test("loading shows bytes and percent; Cancel aborts a pending URL load", async () => {
  await goto("/");
  await page.evaluate(() => {
    window.progressTexts = [];
    new MutationObserver(() => window.progressTexts.push(document.getElementById("progress-text").textContent))
      .observe(document.getElementById("progress-text"), { childList: true, characterData: true, subtree: true });
  });
  const path = join(FIXTURES, WEB.file);
  assert.equal((await openFile(path)).kind, "ok");
  const size = statSync(path).size;
  const texts = await page.evaluate(() => window.progressTexts);
  assert.ok(texts.some((t) => /^[\d.]+ KiB of [\d.]+ KiB \(100%\)$/.test(t)), JSON.stringify(texts));
  assert.ok(texts.every((t) => t === "starting…" || / \(\d+%\)$/.test(t)), JSON.stringify(texts));
  assert.ok(size > 1024);

  // A response that never comes: the load waits until Cancel aborts it.
  let release;
  const held = new Promise((resolve) => { release = resolve; });
  await page.route("**/held.pt", async (route) => { await held; await route.abort().catch(() => {}); });
  await page.evaluate(() => { document.getElementById("status").className = "pending"; });
  await page.fill("#url", `${server.url}/held.pt`);
  await page.click("#url-form button[type=submit]");
  await page.waitForSelector("#progress-row:not([hidden])");
  assert.equal(await page.textContent("#status"), `Loading ${server.url}/held.pt…`);
  await page.click("#cancel");
  const outcome = await waitOutcome();
  assert.deepEqual(outcome, { kind: "", text: "Cancelled." });
  assert.equal(await page.isVisible("#progress-row"), false);
  release();
  await page.unroute("**/held.pt");
});

test("a file dropped on the page opens", async () => {
  await goto("/");
  await page.evaluate(async () => {
    const bytes = await (await fetch("/fixtures/zip/state_dict.pt")).arrayBuffer();
    const data = new DataTransfer();
    data.items.add(new File([bytes], "dropped.pt"));
    document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
  });
  const outcome = await waitOutcome();
  assert.equal(outcome.kind, "ok", outcome.text);
  assert.match(outcome.text, /^Loaded dropped\.pt: /);
  const want = fixtureJson("expected.json").files["zip/state_dict.pt"].tensors.map((t) => t.path);
  assert.deepEqual((await rows()).map((r) => r.path), want);
});

test("map_location webgpu places while opening", async () => {
  await goto("/");
  const outcome = await openFile(join(FIXTURES, WEB.file), { mapLocation: "webgpu" });
  assert.equal(outcome.kind, "ok", outcome.text);
  assert.deepEqual([...new Set((await rows()).map((r) => r.device))], ["webgpu"]);
  const problems = [];
  compareStats("float8_e5m2", await statsOf("float8_e5m2"), WEB.stats.float8_e5m2, problems);
  assert.deepEqual(problems, [], problems.join("\n"));
  assert.deepEqual(pageErrors, []);
});

test("without WebGPU the placement button is disabled and says why", async () => {
  const other = await browser.newPage();
  await other.addInitScript(() => Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined }));
  await other.goto(`${server.url}/`);
  await other.waitForFunction(() => document.documentElement.dataset.ready === "true");
  assert.equal(await other.isDisabled("#to-webgpu"), true);
  const why = "WebGPU is not available in this browser (navigator.gpu is missing)";
  assert.equal(await other.getAttribute("#to-webgpu", "title"), why);
  assert.equal(await other.textContent("#gpu-note"), why);
  assert.equal(await other.isDisabled('#map-location option[value="webgpu"]'), true);
  await other.close();
});

test("Download .safetensors is offered exactly when the package has ckpt.toSafetensors", async () => {
  await goto("/");
  const has = await page.evaluate(async () => typeof (await import("/pkg/browser.mjs")).Checkpoint.prototype.toSafetensors === "function");
  const rel = "zip/state_dict.pt";
  assert.equal((await openFile(join(FIXTURES, rel))).kind, "ok");
  assert.equal(await page.isVisible("#download"), has);
  if (!has) return;
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  assert.equal(download.suggestedFilename(), "state_dict.safetensors");
  const bytes = readFileSync(await download.path());
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8"));
  const want = fixtureJson("expected.json").files[rel].tensors.map((t) => t.path).sort();
  assert.deepEqual(Object.keys(header).filter((k) => k !== "__metadata__").sort(), want);
});
