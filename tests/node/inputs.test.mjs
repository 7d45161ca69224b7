// Every kind of input gives the same checkpoint: Buffer, Uint8Array, ArrayBuffer, DataView,
// Blob, File (its name in errors), fetch Response (streamed, with or without a length), a path
// or file: URL in Node, a fetched string or URL in browsers (with a fake fetch), with progress
// reported as bytes arrive.

import assert from "node:assert/strict";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

import { FIXTURES, fixture, PKG, ptload, sha256 } from "./helpers.mjs";

async function digests(ckpt) {
  const out = [];
  for (const [path, t] of ckpt.tensors()) out.push(`${path} ${t.dtype} ${sha256(await t.contiguousBytes())}`);
  return out;
}

/** A Response whose body arrives in `chunks` pieces, with or without Content-Length. */
function streamed(bytes, chunks, withLength) {
  const size = Math.ceil(bytes.length / chunks);
  const body = new ReadableStream({
    start(controller) {
      for (let i = 0; i < bytes.length; i += size) controller.enqueue(bytes.slice(i, i + size));
      controller.close();
    },
  });
  const headers = withLength ? { "content-length": String(bytes.length) } : {};
  return new Response(body, { headers });
}

test("all input kinds load the same tensors", async () => {
  const file = fixture("zip/views.pt");
  const want = await digests(await ptload.load(file));
  const inputs = {
    Uint8Array: new Uint8Array(file),
    ArrayBuffer: file.buffer.slice(file.byteOffset, file.byteOffset + file.length),
    DataView: new DataView(file.buffer, file.byteOffset, file.length),
    Blob: new Blob([file]),
    File: new File([file], "views.pt"),
    Response: new Response(file),
    "Response (streamed, length)": streamed(file, 7, true),
    "Response (streamed, no length)": streamed(file, 5, false),
  };
  for (const [kind, input] of Object.entries(inputs)) {
    assert.deepEqual(await digests(await ptload.load(input)), want, kind);
  }
});

test("progress: monotonic, ends at the total, for every input kind", async () => {
  const file = fixture("zip/state_dict.pt");
  for (const [kind, input] of [
    ["Buffer", file],
    ["Blob", new Blob([file])],
    ["Response", streamed(file, 4, true)],
    ["Response (no length)", streamed(file, 4, false)],
  ]) {
    const events = [];
    await ptload.load(input, { onProgress: (e) => events.push(e) });
    assert.ok(events.length >= 2, `${kind}: ${events.length} events`);
    for (let i = 1; i < events.length; i++) {
      assert.ok(events[i].loadedBytes >= events[i - 1].loadedBytes, `${kind}: ${JSON.stringify(events)}`);
    }
    assert.deepEqual(events.at(-1), { loadedBytes: file.length, totalBytes: file.length }, kind);
  }
});

test("a File's name and a Response's URL appear in errors", async () => {
  await assert.rejects(ptload.load(new File([new Uint8Array(0)], "empty.pt")), /^PtloadError: empty\.pt: /);
  await assert.rejects(ptload.load(new Uint8Array(0)), /^PtloadError: <memory>: /);
  await assert.rejects(ptload.load(new Response(null, { status: 404 })), (e) => {
    assert.ok(e instanceof ptload.PtloadError, String(e));
    assert.match(e.message, /HTTP status 404/);
    assert.equal(e.kind, "Io");
    return true;
  });
  const used = new Response(fixture("zip/views.pt"));
  await used.arrayBuffer();
  await assert.rejects(ptload.load(used), TypeError);
});

test("Node: a path or a file: URL is opened as a Blob and read by slices", async () => {
  const path = join(FIXTURES, "zip", "views.pt");
  const want = await digests(await ptload.load(fixture("zip/views.pt")));
  for (const input of [path, pathToFileURL(path)]) {
    const ckpt = await ptload.load(input);
    assert.deepEqual(await digests(ckpt), want, String(input));
    // Read from a Blob: the storages are copies of slices, not views of a caller's buffer.
    assert.ok(ckpt.storages.every((s) => !s.zeroCopy));
  }
  const events = [];
  await ptload.load(path, { onProgress: (e) => events.push(e) });
  const size = statSync(path).size;
  assert.deepEqual(events.at(-1), { loadedBytes: size, totalBytes: size });
});

test("Node: a missing file, a directory and a bad checkpoint name the path", async () => {
  const missing = join(FIXTURES, "missing.pt");
  for (const input of [missing, pathToFileURL(missing)]) {
    await assert.rejects(ptload.load(input), (e) => {
      assert.ok(e instanceof ptload.PtloadError, String(e));
      assert.deepEqual([e.message, e.kind, e.file], [`${missing}: No such file or directory (os error 2)`, "Io", missing]);
      return true;
    });
  }
  await assert.rejects(ptload.load(FIXTURES), (e) => e.kind === "NotACheckpoint" &&
    e.message === `${FIXTURES}: not a PyTorch checkpoint: a directory holding no .pt, .pth, .bin, .ckpt or *.index.json file`);
  const text = join(FIXTURES, "README.md");
  await assert.rejects(ptload.load(text), (e) => e.kind === "NotACheckpoint" && e.file === text);
  await assert.rejects(ptload.load(text, { name: "x.pt" }), (e) => e.file === "x.pt");
});

test("browsers: a string or URL is fetched, the Response streamed (a fake fetch)", async () => {
  const browser = await import(pathToFileURL(join(PKG, "browser.mjs")).href);
  await browser.init(readFileSync(join(PKG, "wasm", "ptload_wasm_bg.wasm")));
  const file = fixture("zip/views.pt");
  const want = await digests(await ptload.load(file));
  const calls = [];
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (input) => {
    calls.push(input);
    if (String(input).endsWith("/missing.pt")) return new Response(null, { status: 404 });
    if (String(input).startsWith("offline:")) throw new TypeError("fetch failed");
    return streamed(file, 3, true);
  };
  try {
    const url = new URL("https://example.com/views.pt");
    assert.deepEqual(await digests(await browser.load("https://example.com/views.pt")), want);
    assert.deepEqual(await digests(await browser.load(url)), want);
    assert.deepEqual(calls, ["https://example.com/views.pt", url]);
    await assert.rejects(browser.load("https://example.com/missing.pt"), (e) => {
      assert.ok(e instanceof browser.PtloadError, String(e));
      assert.deepEqual([e.message, e.kind, e.file],
        ["https://example.com/missing.pt: HTTP status 404", "Io", "https://example.com/missing.pt"]);
      return true;
    });
    await assert.rejects(browser.load("offline:x.pt"), (e) => e.kind === "Io" && e.message === "offline:x.pt: fetch failed");
  } finally {
    globalThis.fetch = realFetch;
  }
});
