// A fetch Response is read as it streams: a zip checkpoint's storages are placed as their
// records go by (the pickle comes first), so the file is never held whole — proved by GPU writes
// that happen while most of the body has not been delivered yet. Streamed loads give what
// buffered loads give: torch's digests, and the same errors for a missing or short record.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { compare, FIXTURES, fixtureJson, Pickle, ptload, ROOT, zipCheckpoint } from "./helpers.mjs";
import { gpuDevice, release } from "./gpu.mjs";

let device;
before(async () => {
  device = await gpuDevice();
});
after(() => device.destroy());

/** A Response whose body hands out `piece` bytes per pull, and only when asked; `sent()` is how
 * many it has handed out so far. */
function trickle(bytes, piece = 512) {
  let at = 0;
  const body = new ReadableStream(
    {
      pull(controller) {
        if (at >= bytes.length) {
          controller.close();
          return;
        }
        controller.enqueue(bytes.slice(at, at + piece));
        at += piece;
      },
    },
    { highWaterMark: 0 },
  );
  return { response: new Response(body, { headers: { "content-length": String(bytes.length) } }), sent: () => at };
}

const tiny = () => readFileSync(join(ROOT, "examples", "tiny_convnet.pt"));
const want = () => fixtureJson("expected.json").examples["tiny_convnet.pt"];

test("storages reach the GPU while most of the body is still unsent", async () => {
  const bytes = tiny();
  const { response, sent } = trickle(bytes);
  const queue = device.queue;
  const writeBuffer = queue.writeBuffer.bind(queue);
  const seen = [];
  const recording = {
    limits: device.limits,
    queue: { writeBuffer: (...a) => (seen.push(sent()), writeBuffer(...a)), onSubmittedWorkDone: () => queue.onSubmittedWorkDone(), submit: (x) => queue.submit(x) },
    createBuffer: (x) => device.createBuffer(x),
    createCommandEncoder: (x) => device.createCommandEncoder(x),
    pushErrorScope: (x) => device.pushErrorScope(x),
    popErrorScope: () => device.popErrorScope(),
  };
  const ckpt = await ptload.load(response, { mapLocation: "webgpu", device: recording });
  assert.ok(seen.length >= 16, `${seen.length} writes`);
  assert.ok(seen[0] < bytes.length / 2, `the first write came after ${seen[0]} of ${bytes.length} bytes`);
  for (const s of ckpt.storages) s.gpuDevice = device;
  assert.deepEqual(await compare(ckpt, want(), "streamed"), []);
  release(ckpt);
  assert.equal(device.live.size, 0);
});

test("a streamed deflated checkpoint (DecompressionStream on the way) matches torch", async () => {
  const rel = "zip/deflated.pt";
  const expected = fixtureJson("expected.json").files[rel];
  for (const mapLocation of ["cpu", "webgpu"]) {
    const { response } = trickle(readFileSync(join(FIXTURES, rel)), 333);
    const ckpt = await ptload.load(response, { mapLocation, device });
    assert.deepEqual(await compare(ckpt, expected, `${rel} on ${mapLocation}`), []);
    release(ckpt);
  }
});

test("streamed and buffered loads fail alike: a missing record, a short record, a cut stream", async () => {
  const pickle = new Pickle().op("}").str("a").tensor("FloatStorage", "0", 4, 0, [4], [1]).op("s")
    .str("b").tensor("FloatStorage", "1", 2, 0, [2], [1]).op("s").stop();
  const missing = zipCheckpoint(pickle, [["0", new Uint8Array(16)]]);
  const short = zipCheckpoint(pickle, [["0", new Uint8Array(16)], ["1", new Uint8Array(4)]]);
  for (const [what, file, pattern] of [
    ["missing", missing, /record 'archive\/data\/1' is missing from the archive/],
    ["short", short, /record size \(4 bytes\) does not match expected size \(8 bytes/],
  ]) {
    const buffered = await ptload.load(file, { name: "f.pt" }).catch((e) => e);
    const streamed = await ptload.load(trickle(file, 100).response, { name: "f.pt" }).catch((e) => e);
    assert.ok(streamed instanceof ptload.PtloadError, `${what}: ${streamed}`);
    assert.match(buffered.message, pattern, what);
    assert.match(streamed.message, pattern, what);
    assert.equal(streamed.kind, buffered.kind, what);
  }
  // The body ends inside a tensor record.
  const bytes = tiny();
  const cut = trickle(bytes.subarray(0, Math.floor(bytes.length * 0.6)), 256).response;
  await assert.rejects(ptload.load(cut, { mapLocation: "webgpu", device }), /the stream ended \d+ bytes into a record|truncated/);
  assert.equal(device.live.size, 0);
});

test("files that cannot stream (legacy, TorchScript) are read whole and still match torch", async () => {
  for (const rel of ["legacy/state_dict.pt", "tar/checkpoint.pt", "torchscript/traced.pt"]) {
    const expected = fixtureJson("expected_formats.json").files[rel];
    assert.ok(expected, `${rel} has torch's digests`);
    const ckpt = await ptload.load(trickle(readFileSync(join(FIXTURES, rel)), 700).response);
    assert.deepEqual(await compare(ckpt, expected, rel), []);
  }
});
