// Every torch-made fixture (tests/fixtures/expected.json, expected_formats.json, and the
// third-party checkpoints when scripts/fetch-third-party has cached them) loads through the
// built package bit-exact: same tensors in the same order, dtype, shape, stride, offset, flags,
// SHA-256 of the elements, storage sharing. From a Buffer, from a Blob read by slices, and
// from a fetch Response.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { allFixtures, compare, fixtureJson, optionsFor, ptload, ROOT } from "./helpers.mjs";

const fixtures = allFixtures();

test("the fixture lists are all there", () => {
  assert.ok(fixtures.length >= 40, `${fixtures.length} fixtures`);
});

for (const [label, wrap] of [
  ["Buffer", (bytes) => bytes],
  ["Blob", (bytes) => new Blob([bytes])],
  ["Response", (bytes) => new Response(bytes)],
]) {
  test(`every fixture matches torch (input: ${label})`, async () => {
    const problems = [];
    for (const [rel, want, path] of fixtures) {
      try {
        const ckpt = await ptload.load(wrap(readFileSync(path)), optionsFor(rel, want));
        problems.push(...(await compare(ckpt, want, rel)));
      } catch (e) {
        problems.push(`${rel}: ${e.message}`);
      }
    }
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.join("\n")}`);
  });
}

test("TorchScript constants are listed after the module", async () => {
  const expected = fixtureJson("expected_formats.json").files["torchscript/traced.pt"];
  const ckpt = await ptload.load(readFileSync(join(ROOT, "tests/fixtures/torchscript/traced.pt")));
  const paths = ckpt.tensors().map(([p]) => p);
  assert.ok(paths.includes("constants.0"), paths.join(" "));
  assert.ok(Array.isArray(ckpt.constants));
  assert.equal(expected.constants.length, 1);
});

test("a protocol-0 legacy file (torch cannot load it) loads like its protocol-2 twin", async () => {
  const expected = fixtureJson("expected_formats.json");
  assert.ok(expected.unloadable["legacy/nested_protocol0.pt"]);
  const ckpt = await ptload.load(readFileSync(join(ROOT, "tests/fixtures/legacy/nested_protocol0.pt")));
  const problems = await compare(ckpt, expected.files["legacy/nested.pt"], "nested_protocol0.pt");
  assert.deepEqual(problems, [], problems.join("\n"));
});

test("third-party checkpoints match torch", async (t) => {
  const cache = process.env.PTLOAD_CACHE ?? join(ROOT, ".cache", "third-party");
  const table = fixtureJson("third_party.json").third_party;
  let loaded = 0;
  const problems = [];
  for (const [rel, want] of Object.entries(table)) {
    const path = join(cache, rel);
    // scripts/test fetches every file first: a missing one is a failure, never a skip.
    assert.ok(existsSync(path), `${path} is not cached: run scripts/fetch-third-party`);
    const ckpt = await ptload.load(readFileSync(path), optionsFor(rel, want));
    problems.push(...(await compare(ckpt, want, rel)));
    loaded++;
  }
  assert.equal(loaded, Object.keys(table).length);
  assert.deepEqual(problems, [], problems.join("\n"));
});
