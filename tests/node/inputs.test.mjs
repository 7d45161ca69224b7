// Every kind of input gives the same checkpoint: Buffer, Uint8Array, ArrayBuffer, DataView,
// Blob, File (its name in errors), fetch Response (streamed, with or without a length), with
// progress reported as bytes arrive.

import assert from "node:assert/strict";
import { test } from "node:test";

import { fixture, ptload, sha256 } from "./helpers.mjs";

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
  await assert.rejects(ptload.load(new File([new Uint8Array(0)], "empty.pt")), /^Error: empty\.pt: /);
  await assert.rejects(ptload.load(new Uint8Array(0)), /^Error: <memory>: /);
  await assert.rejects(ptload.load(new Response(null, { status: 404 })), /HTTP status 404/);
  const used = new Response(fixture("zip/views.pt"));
  await used.arrayBuffer();
  await assert.rejects(ptload.load(used), TypeError);
});
