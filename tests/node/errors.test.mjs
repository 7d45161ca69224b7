// Errors reject the promise with a PtloadError carrying the native loader's message (checked
// against the native CLI's stderr when it is built), its ErrorKind variant's name, the file and
// the byte offset the message names; weights-only refuses a malicious pickle, and without
// weights-only it loads as an inert object, never run. Bad arguments (unknown option names
// included) are TypeErrors.

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
    if (!(error instanceof ptload.PtloadError) || !(error instanceof Error)) problems.push(`${name}: rejected with ${error}`);
    if (error.name !== "PtloadError") problems.push(`${name}: name ${error.name}`);
    if (error.file !== path) problems.push(`${name}: file ${error.file}`);
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
  await assert.rejects(ptload.load(Symbol("model.pt")), TypeError);
  await assert.rejects(ptload.load(new Uint8Array(4), null), ptload.PtloadError);
  await assert.rejects(ptload.load(new Uint8Array(4), "cpu"), TypeError);
  await assert.rejects(ptload.load(new Uint8Array(4), { weightsOnly: "yes" }), TypeError);
  await assert.rejects(ptload.load(new Uint8Array(4), { mapLocation: 3 }), TypeError);
  await assert.rejects(ptload.load(new Uint8Array(4), { mapLocation: { "cuda:0": 1 } }), TypeError);
  await assert.rejects(ptload.load(fixture("zip/nested.pt"), { encoding: "ebcdic" }), TypeError);
});

/** The kind each case fails with, and the offset its message names (as a number). */
const kinds = {
  "empty.pt": "NotACheckpoint",
  "garbage.pt": "NotACheckpoint",
  "malicious.pt": "WeightsOnly",
  "bad_size.pt": "StorageSize",
  "full_module.pt": "WeightsOnly",
  "latin1.pt": "Pickle",
};

test("a PtloadError has the native kind, file and offset", async () => {
  for (const [name, kind] of Object.entries(kinds)) {
    const e = await ptload.load(cases[name], { name }).then(() => assert.fail(`${name} loaded`), (e) => e);
    assert.ok(e instanceof ptload.PtloadError, `${name}: ${e}`);
    assert.equal(e.kind, kind, `${name}: ${e.message}`);
    assert.equal(e.file, name);
    assert.equal(String(e), `PtloadError: ${e.message}`);
    // The offset is the one the message names; a weights-only refusal (torch's words name
    // none) still carries the refused opcode's offset in the pickle.
    const named = /byte 0x([0-9A-F]+)/.exec(e.message);
    if (named) assert.equal(e.offset, parseInt(named[1], 16), `${name}: ${e.message}`);
    else if (kind === "WeightsOnly") assert.equal(typeof e.offset, "number", `${name}: ${e.message}`);
    else assert.equal(e.offset, undefined, `${name}: ${e.message}`);
  }
  const bad = await ptload.load(cases["bad_size.pt"]).catch((e) => e);
  assert.equal(bad.file, "<memory>");
  assert.ok(bad.offset > 0, bad.message);
  const pickle = await ptload.load(cases["latin1.pt"]).catch((e) => e);
  assert.equal(typeof pickle.offset, "number", pickle.message);
});

test("more kinds: a limit, a device, a file", async () => {
  const nested = "(".repeat(5000) + "]" + "l".repeat(5000);
  const deep = zipCheckpoint(Uint8Array.from(Buffer.from(`\x80\x02${nested}.`, "latin1")), []);
  const limit = await ptload.load(deep).catch((e) => e);
  assert.ok(limit instanceof ptload.PtloadError, String(limit));
  assert.match(limit.message, /max_depth/);
  assert.ok(["LimitExceeded", "Pickle"].includes(limit.kind), limit.kind);
  const cuda = await ptload.load(fixture("locations/zip_cuda0.pt"), { name: "c.pt" }).catch((e) => e);
  assert.equal(cuda.kind, "Location", cuda.message);
  assert.equal(cuda.file, "c.pt");
  const file = new File([new Uint8Array(0)], "empty.pt");
  const empty = await ptload.load(file).catch((e) => e);
  assert.deepEqual([empty.kind, empty.file, empty.offset], ["NotACheckpoint", "empty.pt", undefined]);
});

test("an unknown option is a TypeError naming it and the accepted ones", async () => {
  await assert.rejects(ptload.load(fixture("zip/state_dict.pt"), { mapLocaton: "cpu" }), (e) => {
    assert.ok(e instanceof TypeError, String(e));
    assert.equal(e.message, "ptload: unknown option 'mapLocaton' (load takes mapLocation, weightsOnly, device, dtype, signal, encoding, onProgress, name)");
    return true;
  });
  // Symbols are no options; undefined values of known ones are the defaults.
  await ptload.load(fixture("zip/state_dict.pt"), { [Symbol("x")]: 1, mapLocation: undefined });
});
