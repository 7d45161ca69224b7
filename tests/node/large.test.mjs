// Checkpoints over 4 GiB: file offsets and sizes stay 64-bit from JS through the wasm planner.
// A sparse zip64 file (5 GiB, its tensors past the 4 GiB mark; tests/node/large.mjs) loads on
// the CPU and on WebGPU with the digests torch gave for the small original.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { compare, fixtureJson, ptload, ROOT } from "./helpers.mjs";
import { gpuDevice, release } from "./gpu.mjs";
import { fileBlob, writeSparseZip64 } from "./large.mjs";

let dir;
let path;
let device;
const want = fixtureJson("expected.json").examples["tiny_convnet.pt"];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "ptload-large-"));
  path = join(dir, "five_gib.pt");
  const size = writeSparseZip64(readFileSync(join(ROOT, "examples", "tiny_convnet.pt")), path, 5 * 2 ** 30);
  assert.ok(size > 5 * 2 ** 30);
  device = await gpuDevice();
});

after(() => {
  device?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

test("a 5 GiB zip64 checkpoint from a Blob: tensors past 4 GiB load on the CPU as torch's", async () => {
  const blob = fileBlob(path);
  const ckpt = await ptload.load(blob);
  assert.deepEqual(await compare(ckpt, want, "five_gib.pt"), []);
});

test("a 5 GiB zip64 checkpoint from a Blob: tensors past 4 GiB go to WebGPU as torch's", async () => {
  const ckpt = await ptload.load(fileBlob(path), { mapLocation: "webgpu", device });
  assert.ok(ckpt.storages.every((s) => s.device === "webgpu"));
  assert.deepEqual(await compare(ckpt, want, "five_gib.pt"), []);
  release(ckpt);
  assert.equal(device.live.size, 0);
});

test("a 5 GiB zip64 checkpoint by its path (Node): read by positioned reads at its true size", async () => {
  const ckpt = await ptload.load(path);
  assert.deepEqual(await compare(ckpt, want, "five_gib.pt"), []);
});
