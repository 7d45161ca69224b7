// mapLocation exactly as torch.load's map_location: every (file, map_location) pair of
// tests/fixtures/locations.json, whose outcomes real torch 2.15 recorded, gives the same
// devices or an Error with the same words (the native loader's message), through the package.

import assert from "node:assert/strict";
import { test } from "node:test";

import { fixture, fixtureJson, ptload, sha256 } from "./helpers.mjs";

/** The JS mapLocation for the JSON spelling of make_locations.py; counts callback calls. */
function mapLocation(spec, calls) {
  if (spec === null) return undefined;
  if (typeof spec === "string") return spec;
  if (spec.device) return spec.device.length > 1 ? `${spec.device[0]}:${spec.device[1]}` : spec.device[0];
  if (spec.dict) return spec.dict;
  if (spec.callback) {
    return (storage, location) => {
      calls.n++;
      assert.equal(storage.location, location);
      switch (spec.callback) {
        case "storage": return storage; // lambda s, loc: s
        case "cpu": return "cpu"; // lambda s, loc: s.cpu()
        case "none": return undefined; // lambda s, loc: None
        case "cuda1": return "cuda:1"; // lambda s, loc: s.cuda(1)
      }
      throw new Error(`unknown callback ${spec.callback}`);
    };
  }
  throw new Error(`unknown map_location spelling ${JSON.stringify(spec)}`);
}

test("every map_location case matches torch", async () => {
  const table = fixtureJson("locations.json");
  assert.ok(table.cases.length >= 200, `${table.cases.length} cases`);
  const problems = [];
  for (const c of table.cases) {
    const what = `${c.file} with map_location=${JSON.stringify(c.map_location)}`;
    const calls = { n: 0 };
    let ckpt;
    let error;
    try {
      ckpt = await ptload.load(fixture(c.file), { mapLocation: mapLocation(c.map_location, calls) });
    } catch (e) {
      error = e;
    }
    if (ckpt && c.ok) {
      const tensors = ckpt.tensors();
      const paths = tensors.map(([p]) => p);
      if (JSON.stringify(paths) !== JSON.stringify(c.tensor_paths)) problems.push(`${what}: paths ${paths}`);
      const devices = tensors.map(([, t]) => t.device);
      if (JSON.stringify(devices) !== JSON.stringify(c.devices)) {
        problems.push(`${what}: devices ${devices}, torch ${c.devices}`);
      }
      if (c.sha256) {
        for (let i = 0; i < tensors.length; i++) {
          const [path, t] = tensors[i];
          if (t.device === "cpu" && sha256(await t.contiguousBytes()) !== c.sha256[i]) {
            problems.push(`${what}: ${path} digest differs`);
          }
        }
      }
      if (c.callback_calls !== undefined && calls.n !== c.callback_calls) {
        problems.push(`${what}: callback called ${calls.n} times, torch ${c.callback_calls}`);
      }
    } else if (error && !c.ok) {
      if (!(error instanceof Error)) problems.push(`${what}: rejected with a non-Error ${error}`);
      for (let word of c.key_words) {
        // torch fails inside the user's `storage.cuda(1)` with its driver error; ptload has no
        // CUDA here and gives its CUDA-unavailable error before any byte is read.
        if (word.includes("NVIDIA driver")) {
          word = "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False";
        }
        if (!error.message.includes(word)) problems.push(`${what}: error ${JSON.stringify(error.message)} lacks ${JSON.stringify(word)}`);
      }
      if (c.callback_calls !== undefined && calls.n !== c.callback_calls) {
        problems.push(`${what}: callback called ${calls.n} times before failing, torch ${c.callback_calls}`);
      }
    } else if (ckpt) {
      problems.push(`${what}: loaded, torch failed with ${c.message}`);
    } else {
      problems.push(`${what}: failed (${error && error.message}), torch loaded it`);
    }
  }
  assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.join("\n")}`);
});

test("a callback is called once per storage, with the storage and its tag", async () => {
  const seen = [];
  const ckpt = await ptload.load(fixture("locations/zip_mixed.pt"), {
    mapLocation: (storage, location) => {
      seen.push([storage.key, storage.dtype, storage.nbytes, location]);
      return "cpu";
    },
  });
  assert.equal(ckpt.tensors().length, 4);
  assert.equal(ckpt.storages.length, 3);
  assert.deepEqual(seen.map((s) => s[3]), ["cpu", "cuda:0", "cuda:1"]);
  assert.ok(seen.every((s) => s[1] === "float32" && s[2] > 0));
});

test("what a callback throws rejects the load as is", async () => {
  const oops = new RangeError("nope");
  await assert.rejects(ptload.load(fixture("locations/zip_cpu.pt"), { mapLocation: () => { throw oops; } }), (e) => e === oops);
  await assert.rejects(ptload.load(fixture("locations/zip_cpu.pt"), { mapLocation: () => 42 }), TypeError);
});

test("meta reads no tensor byte; a Map works like an object", async () => {
  const ckpt = await ptload.load(fixture("locations/zip_cpu.pt"), { mapLocation: "meta" });
  for (const [, t] of ckpt.tensors()) {
    assert.equal(t.device, "meta");
    assert.equal(t.data, null);
    await assert.rejects(t.contiguousBytes(), /meta device/);
  }
  const mapped = await ptload.load(fixture("locations/zip_cuda0.pt"), { mapLocation: new Map([["cuda:0", "cpu"]]) });
  assert.ok(mapped.tensors().every(([, t]) => t.device === "cpu"));
});
