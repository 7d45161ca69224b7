// Distributed checkpoints (torch.distributed.checkpoint folders): `load` of a folder's files,
// given as a Map or object of name → Blob / File / bytes, or in Node as the folder's path,
// returns the consolidated checkpoint: torch's own consolidation's digests
// (expected_dcp.json, as tests/dcp.rs), non-tensor values decoded, errors as the native CLI's.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";
import { after, test } from "node:test";

import { FIXTURES, fixtureJson, nativeCli, ptload, sha256 } from "./helpers.mjs";

const expected = fixtureJson("expected_dcp.json").folders;
const dir = mkdtempSync(join(tmpdir(), "ptload-dcp-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A folder's files (a path, or one relative to tests/fixtures) as name → Uint8Array. */
function files(rel) {
  const path = isAbsolute(rel) ? rel : join(FIXTURES, rel);
  return Object.fromEntries(readdirSync(path).map((f) => [f, readFileSync(join(path, f))]));
}

/** The value at a flattened key: object keys, Map keys (int keys as numbers), array indices. */
function at(root, path) {
  let v = root;
  for (const seg of path.split(".")) {
    if (v instanceof Map) v = v.has(seg) ? v.get(seg) : v.get(Number(seg));
    else v = v?.[seg];
  }
  return v;
}

async function problems(ckpt, want, what) {
  const out = [];
  if (ckpt.format !== "dcp") out.push(`${what}: format ${ckpt.format}`);
  const got = ckpt.tensors();
  if (got.length !== want.tensors.length) return [`${what}: ${got.length} tensors, torch has ${want.tensors.length}`];
  for (let i = 0; i < got.length; i++) {
    const [path, t] = got[i];
    const ours = { dtype: t.dtype, path, sha256: sha256(await t.contiguousBytes()), shape: t.shape };
    if (JSON.stringify(ours) !== JSON.stringify(want.tensors[i])) out.push(`${what}: ${JSON.stringify(ours)} != torch ${JSON.stringify(want.tensors[i])}`);
    if (t.device !== "cpu") out.push(`${what}: ${path} on ${t.device}`);
    if (at(ckpt.root, path) !== t) out.push(`${what}: root does not hold ${path}`);
  }
  for (const [path, value] of Object.entries(want.values)) {
    if (at(ckpt.root, path) !== value) out.push(`${what}: ${path} = ${at(ckpt.root, path)}, torch ${value}`);
  }
  return out;
}

test("a folder's files load as the consolidated checkpoint, as torch consolidates it", async () => {
  assert.equal(Object.keys(expected).length, 2);
  const found = [];
  for (const [rel, want] of Object.entries(expected)) {
    const bytes = files(rel);
    assert.deepEqual(Object.fromEntries(Object.entries(bytes).map(([f, b]) => [f, b.length])), want.files);
    const inputs = {
      "object of Uint8Array": bytes,
      "Map of Blob": new Map(Object.entries(bytes).map(([f, b]) => [f, new Blob([b])])),
      "Map of File": new Map(Object.entries(bytes).map(([f, b]) => [f, new File([b], f)])),
      "Node: the folder's path": join(FIXTURES, rel),
    };
    for (const [kind, input] of Object.entries(inputs)) {
      found.push(...await problems(await ptload.load(input), want, `${rel} (${kind})`));
    }
  }
  assert.deepEqual(found, [], found.join("\n"));
});

test("mapLocation applies (storages are tagged cpu); a function is refused", async () => {
  const input = files("dcp/single");
  const meta = await ptload.load(input, { mapLocation: "meta" });
  assert.ok(meta.tensors().every(([, t]) => t.device === "meta" && t.data === null));
  const mapped = await ptload.load(input, { mapLocation: { cpu: "cpu" } });
  assert.equal(mapped.tensors().length, expected["dcp/single"].tensors.length);
  await assert.rejects(ptload.load(input, { mapLocation: () => "cpu" }), TypeError);
  await assert.rejects(ptload.load(input, { mapLocation: "cuda:0" }), (e) => e.kind === "Location");
});

test("a bad folder fails with the native CLI's message, naming the folder", async () => {
  const native = nativeCli();
  assert.ok(native, "the native CLI is not built: run cargo build (scripts/test does)");
  const bad = join(FIXTURES, "dcp", "bad");
  const seen = [];
  for (const file of readdirSync(bad)) {
    const folder = join(dir, file.replace(".metadata", ""));
    mkdirSync(folder);
    for (const f of readdirSync(join(FIXTURES, "dcp", "sharded"))) copyFileSync(join(FIXTURES, "dcp", "sharded", f), join(folder, f));
    copyFileSync(join(bad, file), join(folder, ".metadata"));
    const e = await ptload.load(files(folder), { name: folder }).catch((e) => e);
    assert.ok(e instanceof ptload.PtloadError, `${file}: ${e}`);
    assert.ok(e.file.startsWith(`${folder}/`), e.file); // .metadata, or the file of a bad item
    let stderr = "";
    try {
      execFileSync(native, ["inspect", folder], { stdio: ["ignore", "ignore", "pipe"] });
    } catch (err) {
      stderr = err.stderr.toString();
    }
    assert.equal(`ptload: ${e.message}\n`, stderr, file);
    seen.push(e.kind);
  }
  assert.ok(seen.includes("Dcp"), seen.join());
});

test("files without .metadata are no checkpoint; bad file values are TypeErrors", async () => {
  const input = files("dcp/sharded");
  delete input[".metadata"];
  await assert.rejects(ptload.load(input, { name: "run" }), (e) => {
    assert.ok(e instanceof ptload.PtloadError, String(e));
    assert.equal(e.kind, "NotACheckpoint");
    assert.match(e.message, /^run: not a PyTorch checkpoint: .*without \.metadata/);
    return true;
  });
  await assert.rejects(ptload.load({ ".metadata": "text" }), TypeError);
  await assert.rejects(ptload.load(new Map([[1, new Uint8Array(1)]])), TypeError);
});
