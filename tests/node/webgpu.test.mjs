// WebGPU placement on a real device (Dawn on Mesa's llvmpipe, tests/node/gpu.mjs): every fixture
// placed on "webgpu" reads back with torch's digests, from a Buffer and from a Blob; mixed
// CPU/WebGPU mappings; the dtype conversion matches torch's `.to()` bit for bit; and a load
// that fails, is refused or is aborted leaves no GPUBuffer alive.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { allFixtures, compare, countingBlob, FIXTURES, fixtureJson, optionsFor, ptload, sha256 } from "./helpers.mjs";
import { gpuDevice, release } from "./gpu.mjs";

let device;
before(async () => {
  device = await gpuDevice();
});
after(() => device.destroy());

const fixtures = allFixtures();

function gpuOptions(rel, want) {
  const options = { ...optionsFor(rel, want), device };
  options.mapLocation = want.map_location === "meta" ? "meta" : "webgpu";
  return options;
}

for (const [label, wrap] of [
  ["Buffer", (bytes) => bytes],
  ["Blob", (bytes) => new Blob([bytes])],
]) {
  test(`every fixture placed on WebGPU reads back as torch's (input: ${label})`, async () => {
    const problems = [];
    let placed = 0;
    for (const [rel, want, path] of fixtures) {
      try {
        const ckpt = await ptload.load(wrap(readFileSync(path)), gpuOptions(rel, want));
        for (const [p, t] of ckpt.tensors()) {
          if (!t.storage || t.storage.device === "meta") continue;
          placed++;
          if (t.device !== "webgpu") problems.push(`${rel}: ${p} is on ${t.device}`);
          if (t.data.buffer !== t.storage.buffer || t.data.byteOffset !== t.storageOffset * t.itemsize) {
            problems.push(`${rel}: ${p}: data is not { buffer, byteOffset } of its storage`);
          }
          if (t.storage.buffer.size % 4 !== 0 || t.storage.buffer.size < t.storage.nbytes) {
            problems.push(`${rel}: ${p}: buffer of ${t.storage.buffer.size} bytes for ${t.storage.nbytes}`);
          }
        }
        problems.push(...(await compare(ckpt, want, rel)));
        release(ckpt);
      } catch (e) {
        problems.push(`${rel}: ${e.message}`);
      }
    }
    assert.ok(placed > 100, `${placed} tensors placed`);
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.join("\n")}`);
    assert.equal(device.live.size, 0);
  });
}

test("mixed mappings: a callback and a dict send some storages to WebGPU, the rest stay on the CPU", async () => {
  const file = readFileSync(join(FIXTURES, "..", "..", "examples", "tiny_convnet.pt"));
  const want = fixtureJson("expected.json").examples["tiny_convnet.pt"];
  let n = 0;
  const ckpt = await ptload.load(file, { device, mapLocation: () => (n++ % 2 === 0 ? "webgpu" : "cpu") });
  const devices = ckpt.storages.map((s) => s.device);
  assert.ok(devices.includes("webgpu") && devices.includes("cpu"), devices.join(" "));
  for (const s of ckpt.storages) assert.equal(s.buffer !== null, s.device === "webgpu");
  assert.deepEqual(await compare(ckpt, want, "callback"), []);
  release(ckpt);
  const dict = await ptload.load(file, { device, mapLocation: { cpu: "webgpu" } });
  assert.ok(dict.storages.every((s) => s.device === "webgpu"));
  assert.deepEqual(await compare(dict, want, "dict"), []);
  release(dict);
  assert.equal(device.live.size, 0);
});

test("asking for webgpu without a device fails before a byte is read", async () => {
  const { blob, reads } = countingBlob(readFileSync(join(FIXTURES, "..", "..", "examples", "tiny_convnet.pt")));
  for (const mapLocation of ["webgpu", "wgpu", { "cuda:0": "webgpu" }]) {
    await assert.rejects(ptload.load(blob, { mapLocation }), /no device was given: pass \{ device: GPUDevice \}/);
  }
  assert.deepEqual(reads, []);
  // A callback's answer is only known while planning: still before any tensor byte.
  await assert.rejects(
    ptload.load(blob, { mapLocation: () => "webgpu" }),
    /no device was given: pass \{ device: GPUDevice \}/,
  );
  await assert.rejects(ptload.load(blob, { mapLocation: "webgpu", device: {} }), /device must be a GPUDevice/);
});

/** A GPUDevice that claims a small maxBufferSize. */
function smallDevice(maxBufferSize) {
  const d = device;
  return {
    limits: { maxBufferSize, maxStorageBufferBindingSize: d.limits.maxStorageBufferBindingSize },
    queue: d.queue,
    createBuffer: (x) => d.createBuffer(x),
    createCommandEncoder: (x) => d.createCommandEncoder(x),
    createShaderModule: (x) => d.createShaderModule(x),
    createComputePipeline: (x) => d.createComputePipeline(x),
    createBindGroup: (x) => d.createBindGroup(x),
    pushErrorScope: (x) => d.pushErrorScope(x),
    popErrorScope: () => d.popErrorScope(),
  };
}

test("a storage over maxBufferSize is refused by name, size and limit; nothing stays alive", async () => {
  const file = readFileSync(join(FIXTURES, "..", "..", "examples", "tiny_convnet.pt"));
  const cpu = await ptload.load(file);
  const sizes = cpu.storages.map((s) => s.nbytes);
  const limit = Math.max(...sizes) - 1;
  const big = cpu.storages.find((s) => s.nbytes > limit);
  assert.ok(sizes.indexOf(big.nbytes) > 0, "an earlier storage is placed before the refusal");
  await assert.rejects(
    ptload.load(file, { mapLocation: "webgpu", device: smallDevice(limit) }),
    (e) => {
      assert.ok(e instanceof ptload.PtloadError, String(e));
      assert.equal(e.kind, "Placement");
      assert.match(e.message, new RegExp(`storage ${big.key} holds ${big.nbytes} bytes, more than this GPUDevice's maxBufferSize \\(${limit}\\)`));
      assert.match(e.message, /requiredLimits: \{ maxBufferSize/);
      return true;
    },
  );
  assert.equal(device.live.size, 0);
});

test("a device that fails mid-load (out of memory) leaves no buffer alive", async () => {
  const bytes = readFileSync(join(FIXTURES, "..", "..", "examples", "tiny_convnet.pt"));
  let created = 0;
  const failing = smallDevice(device.limits.maxBufferSize);
  failing.createBuffer = (x) => {
    if (++created === 4) throw new Error("out of memory (simulated)");
    return device.createBuffer(x);
  };
  await assert.rejects(ptload.load(new Blob([bytes]), { mapLocation: "webgpu", device: failing }), /out of memory \(simulated\)/);
  assert.equal(created, 4);
  assert.equal(device.live.size, 0);
});

test("an AbortSignal cancels a load in progress and destroys what it made", async () => {
  const bytes = readFileSync(join(FIXTURES, "..", "..", "examples", "tiny_convnet.pt"));
  const controller = new AbortController();
  let created = 0;
  const counting = smallDevice(device.limits.maxBufferSize);
  counting.createBuffer = (x) => {
    if (++created === 3) controller.abort(new Error("user cancelled"));
    return device.createBuffer(x);
  };
  await assert.rejects(
    ptload.load(bytes, { mapLocation: "webgpu", device: counting, signal: controller.signal }),
    /user cancelled/,
  );
  assert.equal(created, 3);
  assert.equal(device.live.size, 0);
  // Aborted before it starts: nothing is read.
  const { blob, reads } = countingBlob(bytes);
  await assert.rejects(ptload.load(blob, { mapLocation: "webgpu", device, signal: AbortSignal.abort() }));
  assert.deepEqual(reads, []);
});

test("onProgress counts every byte up to the file size", async () => {
  const bytes = readFileSync(join(FIXTURES, "..", "..", "examples", "tiny_convnet.pt"));
  const seen = [];
  const ckpt = await ptload.load(new Blob([bytes]), {
    mapLocation: "webgpu",
    device,
    onProgress: (p) => seen.push(p),
  });
  release(ckpt);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i].loadedBytes >= seen[i - 1].loadedBytes);
  assert.deepEqual(seen.at(-1), { loadedBytes: bytes.length, totalBytes: bytes.length });
});

for (const target of ["float16", "float32"]) {
  test(`dtype: "${target}" converts float storages on the GPU exactly as torch's .to()`, async () => {
    const expected = fixtureJson("expected_webgpu.json");
    const bytes = readFileSync(join(FIXTURES, expected.file));
    // The last run binds 4 KiB at a time: many windows per storage, as a big storage gets.
    const narrow = smallDevice(device.limits.maxBufferSize);
    narrow.limits.maxStorageBufferBindingSize = 4096;
    for (const [label, input, gpu] of [["Buffer", bytes, device], ["Blob", new Blob([bytes]), device], ["narrow bindings", bytes, narrow]]) {
      const ckpt = await ptload.load(input, { mapLocation: "webgpu", device: gpu, dtype: target });
      const got = new Map(ckpt.tensors());
      const problems = [];
      for (const w of expected.tensors) {
        const t = got.get(w.path);
        const to = w.to[target];
        if (t.dtype !== to.dtype) problems.push(`${w.path}: dtype ${t.dtype}, torch ${to.dtype}`);
        const digest = sha256(await t.contiguousBytes());
        if (digest !== to.sha256) problems.push(`${w.path} (${w.dtype} -> ${target}): digest differs from torch's`);
        if (t.data.byteOffset !== w.storage_offset * t.itemsize) problems.push(`${w.path}: byteOffset ${t.data.byteOffset}`);
        assert.deepEqual([t.shape, t.stride], [w.shape, w.stride]);
      }
      assert.deepEqual(problems, [], `${label}:\n${problems.join("\n")}`);
      release(ckpt);
    }
    assert.equal(device.live.size, 0);
  });
}
