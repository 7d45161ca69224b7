// The package as users get it: `npm pack` of pkg/, installed (offline) into a scratch project.
// require and import both work and share one instance; the browser entry works (given the
// wasm bytes, as a page would fetch them); `npx ptload inspect` prints what the native CLI does.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, test } from "node:test";

import { allFixtures, nativeCli, optionsFor, PKG, ROOT } from "./helpers.mjs";

let project;

before(() => {
  project = mkdtempSync(join(tmpdir(), "ptload-pkg-"));
  const npm = (args) => execFileSync("npm", args, { cwd: project, stdio: ["ignore", "pipe", "pipe"] }).toString();
  npm(["pack", PKG, "--pack-destination", project, "--silent"]);
  const tarball = readdirSync(project).find((f) => f.endsWith(".tgz"));
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "scratch", private: true }));
  npm(["install", "--offline", "--no-audit", "--no-fund", "--silent", `./${tarball}`]);
});

after(() => rmSync(project, { recursive: true, force: true }));

function node(args, input) {
  return execFileSync(process.execPath, args, { cwd: project, input, stdio: ["pipe", "pipe", "pipe"] }).toString();
}

const example = join(ROOT, "examples", "tiny_convnet.pt");

test("require('ptload') works", () => {
  const out = node(["-e", `
    const { load } = require("ptload");
    load(require("fs").readFileSync(${JSON.stringify(example)})).then((c) => console.log(c.format, c.tensors().length));
  `]);
  assert.equal(out.trim(), "zip 16");
});

test("import 'ptload' works, and is the same instance as require", () => {
  const out = node(["--input-type=module", "-e", `
    import { load, Tensor, PtloadError } from "ptload";
    import api from "ptload";
    import { createRequire } from "node:module";
    import { readFileSync } from "node:fs";
    const required = createRequire(import.meta.url)("ptload");
    const c = await load(readFileSync(${JSON.stringify(example)}));
    const e = await load(new Uint8Array(3)).catch((e) => e);
    console.log(c.format, c.tensors().length, required.load === load, api.Tensor === Tensor,
      c.tensors()[0][1] instanceof required.Tensor, e instanceof required.PtloadError,
      api.PtloadError === PtloadError, e.kind);
  `]);
  assert.equal(out.trim(), "zip 16 true true true true true NotACheckpoint");
});

test("the package's exports: node (import, require), browser, types", () => {
  const pkg = JSON.parse(readFileSync(join(project, "node_modules/ptload/package.json"), "utf8"));
  const dot = pkg.exports["."];
  assert.equal(dot.node.import.default, "./index.mjs");
  assert.equal(dot.node.require.default, "./index.cjs");
  assert.equal(dot.browser.default, "./browser.mjs");
  assert.equal(pkg.bin.ptload, "./bin/ptload.cjs");
  for (const file of ["index.mjs", "index.cjs", "browser.mjs", "index.d.ts", "index.d.mts", "index.d.cts",
    "lib/api.mjs", "lib/api.cjs", "wasm/ptload_wasm_bg.wasm", "wasm/ptload_wasm.cjs", "wasm/ptload_wasm.mjs",
    "bin/ptload.cjs", "README.md"]) {
    readFileSync(join(project, "node_modules/ptload", file));
  }
});

test("the browser entry (web glue, ES modules) loads checkpoints once given the wasm", () => {
  const dir = join(project, "node_modules/ptload");
  const out = node(["--input-type=module", "-e", `
    import { load, init, PtloadError } from ${JSON.stringify(pathToFileURL(join(dir, "browser.mjs")).href)};
    import { readFileSync } from "node:fs";
    await init(readFileSync(${JSON.stringify(join(dir, "wasm/ptload_wasm_bg.wasm"))}));
    const bytes = readFileSync(${JSON.stringify(example)});
    const c = await load(new Blob([bytes]));
    const d = await load(bytes);
    const e = await load(new Uint8Array(3)).catch((e) => e);
    console.log(c.format, c.tensors().length, d.tensors()[0][1].data.buffer === bytes.buffer,
      e instanceof PtloadError, e.kind);
  `]);
  assert.equal(out.trim(), "zip 16 true true NotACheckpoint");
});

test("npx ptload inspect prints what the native CLI prints", (t) => {
  const npx = (args) => execFileSync("npx", ["--no", "ptload", ...args], { cwd: project, stdio: ["ignore", "pipe", "pipe"] }).toString();
  const table = npx(["inspect", example]);
  assert.match(table, /zip format, little-endian, 16 tensors in 16 storages/);
  const json = JSON.parse(npx(["inspect", example, "--json"]));
  assert.equal(json.format, "zip");
  assert.equal(json.tensors.length, 16);
  assert.deepEqual(Object.keys(json), ["byte_order", "format", "root", "tensors"]);
  assert.deepEqual(json.root["0.weight"], { __tensor__: "0.weight" });
  const native = nativeCli();
  assert.ok(native, "the native CLI is not built: run cargo build (scripts/test does)");
  const cli = join(project, "node_modules/ptload/bin/ptload.cjs");
  const problems = [];
  for (const [rel, want, path] of allFixtures()) {
    const flags = optionsFor(rel, want).weightsOnly ? [] : ["--no-weights-only"];
    if (want.encoding) flags.push("--encoding", want.encoding);
    for (const args of [["inspect", "--json", "--sha256", ...flags, path], ["inspect", "--sha256", ...flags, path]]) {
      const ours = execFileSync(process.execPath, [cli, ...args]).toString();
      const theirs = execFileSync(native, args).toString();
      if (ours !== theirs) problems.push(`${rel} ${args.join(" ")}:\n${ours}\n---\n${theirs}`);
    }
  }
  // Distributed checkpoints' folders, too.
  for (const rel of ["dcp/single", "dcp/sharded"]) {
    const path = join(ROOT, "tests", "fixtures", rel);
    for (const args of [["inspect", "--json", "--sha256", path], ["inspect", "--sha256", path]]) {
      const ours = execFileSync(process.execPath, [cli, ...args]).toString();
      const theirs = execFileSync(native, args).toString();
      if (ours !== theirs) problems.push(`${rel} ${args.join(" ")}:\n${ours}\n---\n${theirs}`);
    }
  }
  assert.deepEqual(problems, [], problems.join("\n"));
});

test("the CLI fails like the native one: exit 1, one line naming the file", () => {
  const cli = join(project, "node_modules/ptload/bin/ptload.cjs");
  const fail = (exe, args) => {
    try {
      execFileSync(exe, args, { stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      return [e.status, e.stderr.toString()];
    }
    return [0, ""];
  };
  assert.deepEqual(fail(process.execPath, [cli, "inspect", join(project, "missing.pt")]),
    [1, `ptload: ${join(project, "missing.pt")}: No such file or directory (os error 2)\n`]);
  const native = nativeCli();
  assert.ok(native, "the native CLI is not built: run cargo build (scripts/test does)");
  // A folder that is no checkpoint: the native words, naming what it lacks.
  const dir = join(ROOT, "tests", "fixtures", "zip");
  const folder = fail(process.execPath, [cli, "inspect", dir]);
  assert.equal(folder[0], 1);
  assert.deepEqual(folder, fail(native, ["inspect", dir]));
  // The text tree is the native CLI's alone: said so, not ignored.
  assert.deepEqual(fail(process.execPath, [cli, "inspect", "--tree", example]),
    [1, 'ptload: --tree: the text tree is in the native ptload CLI only; --json has the whole tree as "root"\n']);
  const args = ["inspect", "--encoding", "cp1252", example];
  const ours = fail(process.execPath, [cli, ...args]);
  assert.equal(ours[0], 1);
  assert.match(ours[1], /^ptload: .*tiny_convnet\.pt: unknown encoding: cp1252 /);
  assert.deepEqual(ours, fail(native, args));
});
