// The package's browser entry in a real browser (Debian's Chromium, headless, WebGPU on
// SwiftShader; installed by scripts/install-browser, driven by playwright-core): fixtures fetched
// from 127.0.0.1 are placed on WebGPU from a fetch Response and from a Blob, read back, and
// digested in the page with crypto.subtle; the digests must be torch's. A string or URL given
// to load() is fetched there. A File picked from disk is read ahead as it is in Node.

import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { allFixtures, fixtureJson, Pickle, PKG, ptload, ROOT, sha256, zipCheckpoint } from "../node/helpers.mjs";
import { serve } from "./server.mjs";

const require = createRequire(join(ROOT, ".cache", "npm-tools", "package.json"));

const FLAGS = [
  "--enable-unsafe-webgpu", "--no-sandbox", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic",
];

let browser;
let page;
let server;

before(async () => {
  assert.ok(existsSync("/usr/bin/chromium"), "/usr/bin/chromium is missing: run scripts/install-browser");
  assert.ok(existsSync(join(PKG, "browser.mjs")), "pkg/ is not built: run scripts/build-npm");
  const { chromium } = require("playwright-core");
  server = await serve(ROOT);
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: FLAGS });
  page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`${server.url}/page.html`);
  await page.waitForFunction(() => document.title === "ready");
});

after(async () => {
  await browser?.close();
  server?.close();
});

/** In the page: loads each [rel, url, options] onto WebGPU from `input` ("response" | "blob")
 * and returns, per fixture, its tensors as { path, dtype, shape, stride, offset, device, sha256 }
 * (or { error }), plus how many GPUBuffers the loads left alive after releasing them. */
async function inPage([fixtures, input, dtype]) {
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) return { error: "navigator.gpu.requestAdapter() returned null" };
  const device = await adapter.requestDevice({ requiredLimits: { maxBufferSize: adapter.limits.maxBufferSize } });
  let live = 0;
  const createBuffer = device.createBuffer.bind(device);
  device.createBuffer = (d) => {
    const b = createBuffer(d);
    live++;
    const destroy = b.destroy.bind(b);
    b.destroy = () => (live--, destroy());
    return b;
  };
  const hex = (buf) => [...new Uint8Array(buf)].map((x) => x.toString(16).padStart(2, "0")).join("");
  const out = {};
  for (const [rel, url, options] of fixtures) {
    try {
      const response = await fetch(url);
      const source = input === "blob" ? await response.blob() : response;
      const ckpt = await window.ptload.load(source, { ...options, device, dtype });
      const tensors = [];
      for (const [path, t] of ckpt.tensors()) {
        const bytes = await t.contiguousBytes();
        tensors.push({
          path, dtype: t.dtype, shape: t.shape, stride: t.stride, offset: t.storageOffset, device: t.device,
          sha256: hex(await crypto.subtle.digest("SHA-256", bytes)),
        });
      }
      for (const s of ckpt.storages) s.buffer?.destroy();
      out[rel] = tensors;
    } catch (e) {
      out[rel] = { error: String(e && e.message) };
    }
  }
  device.destroy();
  return { out, live, adapter: adapter.info ? adapter.info.description || adapter.info.vendor : "" };
}

function urlOf(rel, path) {
  return path.startsWith(join(ROOT, "examples")) ? `/examples/${rel}` : `/fixtures/${rel}`;
}

function compareTensors(rel, got, want, problems) {
  if (!Array.isArray(got)) {
    problems.push(`${rel}: ${got.error}`);
    return;
  }
  const expected = want.compare === "by_path" ? want.tensors : want.tensors;
  const byPath = new Map(got.map((t) => [t.path, t]));
  if (want.compare !== "by_path" && got.length !== expected.length) {
    problems.push(`${rel}: ${got.length} tensors, torch has ${expected.length}`);
  }
  for (const w of expected) {
    const t = byPath.get(w.path);
    if (!t) {
      problems.push(`${rel}: no tensor ${w.path}`);
      continue;
    }
    for (const [field, ours] of [["dtype", t.dtype], ["shape", t.shape], ["stride", t.stride], ["storage_offset", t.offset], ["sha256", t.sha256]]) {
      if (JSON.stringify(ours) !== JSON.stringify(w[field])) problems.push(`${rel}: ${w.path}: ${field} ${JSON.stringify(ours)} != torch ${JSON.stringify(w[field])}`);
    }
    if (t.device !== "webgpu" && w.storage_group !== null) problems.push(`${rel}: ${w.path} on ${t.device}`);
  }
}

for (const input of ["response", "blob"]) {
  test(`fixtures placed on WebGPU in Chromium from a ${input} read back with torch's digests`, async () => {
    const fixtures = allFixtures().filter(([rel, want]) => want.map_location !== "meta");
    const list = fixtures.map(([rel, want, path]) => {
      const options = { weightsOnly: !rel.startsWith("modules/"), mapLocation: "webgpu" };
      if (want.encoding === "latin1" || want.encoding === "bytes") options.encoding = want.encoding;
      return [rel, urlOf(rel, path), options];
    });
    const { out, live, error } = await page.evaluate(inPage, [list, input, undefined]);
    assert.equal(error, undefined, error);
    const problems = [];
    for (const [rel, want] of fixtures) compareTensors(rel, out[rel], want, problems);
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.join("\n")}`);
    assert.equal(live, 0, "GPUBuffers left alive");
  });
}

test("dtype conversion on the GPU in Chromium matches torch's .to()", async () => {
  const expected = fixtureJson("expected_webgpu.json");
  for (const target of ["float16", "float32"]) {
    const list = [[expected.file, `/fixtures/${expected.file}`, { mapLocation: "webgpu" }]];
    const { out, error } = await page.evaluate(inPage, [list, "response", target]);
    assert.equal(error, undefined, error);
    const got = out[expected.file];
    assert.ok(Array.isArray(got), JSON.stringify(got));
    const byPath = new Map(got.map((t) => [t.path, t]));
    const problems = [];
    for (const w of expected.tensors) {
      const t = byPath.get(w.path);
      if (t.dtype !== w.to[target].dtype || t.sha256 !== w.to[target].sha256) problems.push(`${w.path} -> ${target}`);
    }
    assert.deepEqual(problems, [], problems.join("\n"));
  }
});

test("in Chromium a string or URL is fetched; failures are PtloadErrors with the URL", async () => {
  const want = fixtureJson("expected.json").examples["tiny_convnet.pt"];
  const got = await page.evaluate(async () => {
    const hex = (buf) => [...new Uint8Array(buf)].map((x) => x.toString(16).padStart(2, "0")).join("");
    const digests = async (ckpt) => {
      const out = [];
      for (const [path, t] of ckpt.tensors()) out.push([path, hex(await crypto.subtle.digest("SHA-256", await t.contiguousBytes()))]);
      return out;
    };
    const byString = await digests(await window.ptload.load("/examples/tiny_convnet.pt"));
    const byUrl = await digests(await window.ptload.load(new URL("/examples/tiny_convnet.pt", location.href)));
    const e = await window.ptload.load("/examples/missing.pt").catch((e) => e);
    return { byString, byUrl, error: [e instanceof window.ptload.PtloadError, e.kind, e.message] };
  });
  const torch = want.tensors.map((t) => [t.path, t.sha256]);
  assert.deepEqual(got.byString, torch);
  assert.deepEqual(got.byUrl, torch);
  assert.deepEqual(got.error.slice(0, 2), [true, "Io"]);
  assert.match(got.error[2], /\/examples\/missing\.pt: HTTP status 404$/);
});

test("in Chromium a File from disk is read ahead (batches, one-read records, streamed parts) as its bytes", async () => {
  // Small records read together (some at odd offsets), a 3 MiB one in one read, a 20 MiB one
  // in 4 MiB parts streamed into its buffer, on the CPU; the page digests each storage.
  const sizes = [20 * (1 << 20) + 4096, 3 << 20, ...Array(200).fill(16384), 64];
  let p = new Pickle().op("}(");
  sizes.forEach((n, k) => {
    p = p.str(`t${k}`).tensor("FloatStorage", String(k), n / 4, 0, [n / 4], [1]);
  });
  const records = sizes.map((n, k) => [String(k), Uint8Array.from({ length: n }, (_, i) => (i * 31 + k) & 255)]);
  const file = zipCheckpoint(p.op("u").stop(), records, { misalign: (k) => (k * 3) % 8 });
  const dir = mkdtempSync(join(tmpdir(), "ptload-browser-"));
  try {
    const path = join(dir, "read_ahead.pt");
    writeFileSync(path, file);
    const want = (await ptload.load(file)).storages.map((s) => sha256(s.bytes));
    const other = await browser.newPage();
    await other.goto(`${server.url}/page.html`);
    await other.waitForFunction(() => document.title === "ready");
    await other.evaluate(() => document.body.insertAdjacentHTML("beforeend", '<input type="file" id="f">'));
    await other.setInputFiles("#f", path);
    const got = await other.evaluate(async () => {
      const hex = (buf) => [...new Uint8Array(buf)].map((x) => x.toString(16).padStart(2, "0")).join("");
      const ckpt = await window.ptload.load(document.getElementById("f").files[0]);
      const out = [];
      for (const s of ckpt.storages) out.push(hex(await crypto.subtle.digest("SHA-256", s.bytes)));
      return out;
    });
    await other.close();
    assert.deepEqual(got, want);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
