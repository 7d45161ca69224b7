// Errors reject the promise with an Error carrying the native loader's message (checked
// against the native CLI's stderr when it is built); weights-only refuses a malicious pickle,
// and without weights-only it loads as an inert object, never run.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import { fixture, nativeCli, Pickle, ptload, zipCheckpoint } from "./helpers.mjs";

const dir = mkdtempSync(join(tmpdir(), "ptload-node-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** `os.system("echo pwned")` as a pickle: GLOBAL os system, ( 'echo pwned' t, REDUCE. */
const malicious = new Pickle().global("os", "system").op("(").str("echo pwned").op("tR").stop();

const cases = {
  "empty.pt": new Uint8Array(0),
  "garbage.pt": new TextEncoder().encode("this is not a checkpoint at all, just some text\n".repeat(10)),
  "truncated.pt": fixture("zip/state_dict.pt").subarray(0, 3000),
  "malicious.pt": zipCheckpoint(malicious, []),
  "bad_size.pt": zipCheckpoint(new Pickle().tensor("FloatStorage", "0", 4, 0, [4], [1]).stop(), [["0", new Uint8Array(12)]]),
  "full_module.pt": fixture("modules/full_module.pt"),
  "latin1.pt": fixture("py2/latin1.pt"),
};

test("every failure rejects with the native loader's message", async () => {
  const native = nativeCli();
  const problems = [];
  for (const [name, bytes] of Object.entries(cases)) {
    const path = join(dir, name);
    writeFileSync(path, bytes);
    let error;
    try {
      await ptload.load(bytes, { name: path });
      problems.push(`${name}: loaded`);
      continue;
    } catch (e) {
      error = e;
    }
    if (!(error instanceof Error)) problems.push(`${name}: rejected with ${error}`);
    if (!error.message.startsWith(`${path}: `)) problems.push(`${name}: message does not name the file: ${error.message}`);
    if (native) {
      let stderr = "";
      try {
        execFileSync(native, ["inspect", path], { stdio: ["ignore", "ignore", "pipe"] });
      } catch (e) {
        stderr = e.stderr.toString();
      }
      const want = stderr.trim().replace(/^ptload: /, "");
      if (error.message.replace(/\n/g, " ") !== want) problems.push(`${name}:\n  js:     ${error.message}\n  native: ${want}`);
    }
  }
  assert.deepEqual(problems, [], problems.join("\n"));
});

test("the Blob path gives the same messages", async () => {
  for (const [name, bytes] of Object.entries(cases)) {
    const a = await ptload.load(bytes).then(() => null, (e) => e.message);
    const b = await ptload.load(new Blob([bytes])).then(() => null, (e) => e.message);
    assert.equal(b, a, name);
  }
});

test("weights-only refuses a malicious pickle; without it, the call stays inert", async () => {
  await assert.rejects(ptload.load(cases["malicious.pt"]), (e) => {
    assert.match(e.message, /Weights only load failed/);
    assert.match(e.message, /os\.system/);
    return true;
  });
  const ckpt = await ptload.load(cases["malicious.pt"], { weightsOnly: false });
  assert.equal(ckpt.root.__class__, "os.system");
  assert.deepEqual(ckpt.root.args, ["echo pwned"]);
  assert.equal(ckpt.tensors().length, 0);
});

test("full-module pickles are inert objects walkable by attribute", async () => {
  const ckpt = await ptload.load(fixture("modules/full_module.pt"), { weightsOnly: false });
  assert.equal(ckpt.root.__class__, "__main__.FullNet");
  const body = ckpt.root.state._modules.body;
  assert.match(body.__class__, /Sequential/);
  assert.ok(ckpt.tensors().some(([p]) => p.startsWith("_modules.body.")));
});

test("bad arguments are TypeErrors", async () => {
  await assert.rejects(ptload.load(42), TypeError);
  await assert.rejects(ptload.load("model.pt"), TypeError);
  await assert.rejects(ptload.load(new Uint8Array(4), { weightsOnly: "yes" }), TypeError);
  await assert.rejects(ptload.load(new Uint8Array(4), { mapLocation: 3 }), TypeError);
  await assert.rejects(ptload.load(new Uint8Array(4), { mapLocation: { "cuda:0": 1 } }), TypeError);
  await assert.rejects(ptload.load(fixture("zip/nested.pt"), { encoding: "ebcdic" }), TypeError);
});
