// The package's browser entry in a real browser (Debian's Chromium, headless, WebGPU on
// SwiftShader; installed by scripts/install-browser, driven by playwright-core): fixtures fetched
// from 127.0.0.1 are placed on WebGPU from a fetch Response and from a Blob, read back, and
// digested in the page with crypto.subtle; the digests must be torch's.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { allFixtures, fixtureJson, PKG, ROOT } from "../node/helpers.mjs";
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
