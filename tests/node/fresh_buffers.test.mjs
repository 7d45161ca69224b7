// Node's fresh buffers (pkg/lib/fresh-buffers.cjs, `host.fresh` for api.mjs): ArrayBuffers a
// worker allocated and touched, handed over whole and zeroed; a failure rejects and leaves the
// maker working; the worker never keeps the process alive when nothing is asked, and comes back
// after ending idle. (Each test has a timeout: a worker mishandled is as likely to hang as to fail.)

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

import { Pickle, PKG, zipCheckpoint } from "./helpers.mjs";

const MODULE = join(PKG, "lib", "fresh-buffers.cjs");
const { freshBuffers } = createRequire(import.meta.url)(MODULE);
const MiB = 1 << 20;

/** Runs `code` in a fresh Node (CommonJS, `MODULE` and `PKG` defined); gives its stdout. A
 * worker that kept it alive would run it into the timeout (which fails the test). */
async function child(code) {
  const prelude = `const MODULE = ${JSON.stringify(MODULE)}; const PKG = ${JSON.stringify(PKG)};\n`;
  const { stdout } = await promisify(execFile)(process.execPath, ["-e", prelude + code], { timeout: 30_000 });
  return stdout.trim();
}

test("make(n) gives a zeroed ArrayBuffer of n bytes, its own, in the order asked", { timeout: 60_000 }, async () => {
  const fresh = freshBuffers();
  const sizes = [MiB, 3 * MiB + 4096, 5 * MiB + 1, 64 * 1024 + 7];
  const made = await Promise.all(sizes.map((n) => fresh.make(n)));
  made.forEach((b, k) => {
    assert.ok(b instanceof ArrayBuffer, `buffer ${k} is a ${Object.prototype.toString.call(b)}`);
    assert.equal(b.byteLength, sizes[k]);
    assert.ok(new Uint8Array(b).every((x) => x === 0), `buffer ${k} is not zeroed`);
  });
  assert.equal(new Set(made).size, made.length);
  // Ours to write (transferred, not shared with the worker).
  const bytes = new Uint8Array(made[0]);
  bytes.fill(7);
  assert.equal(bytes[MiB - 1], 7);
});

test("the pages are read from the zero device, opened for each buffer and closed after it, the rest touched", { timeout: 60_000 }, async () => {
  // A stand-in device that is not zeros, to see what came from it: 20 MiB + 1 byte, its last 7
  // (past a first read of 16 MiB).
  const dir = mkdtempSync(join(tmpdir(), "ptload-zeroes-"));
  try {
    const device = join(dir, "zeroes");
    const bytes = new Uint8Array(20 * MiB + 1).fill(5);
    bytes[20 * MiB] = 7;
    bytes[0] = 1;
    writeFileSync(device, bytes);
    const fds = () => readdirSync("/proc/self/fd").length;
    const before = fds();
    const fresh = freshBuffers({ zeroes: device });
    for (let k = 0; k < 20; k++) {
      const size = k % 2 ? 24 * MiB : MiB + 3;
      const got = new Uint8Array(await fresh.make(size));
      assert.equal(got.length, size);
      const want = new Uint8Array(size);
      want.set(bytes.subarray(0, size));
      assert.ok(Buffer.from(got).equals(Buffer.from(want)), `buffer ${k} is not the device's bytes, then zeros`);
    }
    assert.ok(fds() < before + 5, `${fds() - before} more files open after 20 buffers`);
    // No device: every page touched instead.
    const none = freshBuffers({ zeroes: join(dir, "none") });
    for (const size of [MiB + 3, 24 * MiB]) {
      const got = new Uint8Array(await none.make(size));
      assert.deepEqual([got.length, got.every((x) => x === 0)], [size, true]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("every page is touched before the buffer is handed over, read from the device or written a byte per page", { timeout: 60_000 }, async () => {
  // 64 MiB: glibc maps a buffer that big anew (untouched), so the process's resident memory grows
  // by it only if the worker touched it. In a fresh process, which holds no garbage that a
  // collection could free meanwhile.
  for (const zeroes of ["/dev/zero", join(tmpdir(), "ptload-no-such-device")]) {
    const grown = Number(await child(`const f = require(MODULE).freshBuffers({ zeroes: ${JSON.stringify(zeroes)} });
      f.make(1 << 20).then(async () => {
        const before = process.memoryUsage().rss;
        const buffer = await f.make(64 << 20);
        console.log(buffer.byteLength === 64 << 20 ? process.memoryUsage().rss - before : -1);
      });`));
    assert.ok(grown >= 48 * MiB, `${zeroes}: resident memory grew by ${(grown / MiB).toFixed(1)} MiB, not 64`);
  }
});

test("a buffer the worker cannot allocate rejects, and the next is made", { timeout: 60_000 }, async () => {
  const fresh = freshBuffers();
  await assert.rejects(fresh.make(2 ** 53), /Array buffer allocation failed|Invalid array buffer length/);
  assert.equal((await fresh.make(MiB)).byteLength, MiB);
});

test("after ending idle, a worker starts again when asked", { timeout: 60_000 }, async () => {
  const fresh = freshBuffers({ idleMs: 20 });
  assert.equal((await fresh.make(MiB)).byteLength, MiB);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal((await fresh.make(2 * MiB)).byteLength, 2 * MiB);
});

test("a buffer asked for just as the worker ends idle is made by the next worker", { timeout: 60_000 }, async () => {
  const fresh = freshBuffers({ idleMs: 0 });
  for (let k = 0; k < 5; k++) {
    assert.equal((await fresh.make(MiB)).byteLength, MiB);
    // After the idle timer (set when that buffer came): the worker is ending, not yet gone.
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal((await fresh.make(2 * MiB)).byteLength, 2 * MiB);
  }
});

test("the worker keeps no process alive once done making, but does while asked", { timeout: 60_000 }, async () => {
  // A minute idle: a worker still holding the process would run it into the 30 s timeout.
  assert.equal(await child(`const f = require(MODULE).freshBuffers({ idleMs: 60000 });
    Promise.all([f.make(1 << 20), f.make(1 << 22)]).then((b) => console.log(b.map((x) => x.byteLength).join(" ")));`),
  `${MiB} ${4 * MiB}`);
  // And while one is asked for, the process waits for it (the worker is its only work).
  assert.equal(await child(`const f = require(MODULE).freshBuffers({ idleMs: 60000 });
    setTimeout(() => f.make(1 << 20).then((b) => console.log("made", b.byteLength)), 10);`), `made ${MiB}`);
  // Nor after the package's load of a Blob (a file's) holding a record of 4 MiB or more.
  const dir = mkdtempSync(join(tmpdir(), "ptload-fresh-"));
  try {
    const path = join(dir, "four_mib.pt");
    const pickle = new Pickle().op("}(").str("w").tensor("FloatStorage", "0", MiB, 0, [MiB], [1]).op("u").stop();
    writeFileSync(path, zipCheckpoint(pickle, [["0", new Uint8Array(4 * MiB).fill(3)]]));
    assert.equal(await child(`const { load } = require(PKG);
      require("node:fs").openAsBlob(${JSON.stringify(path)}).then(load).then((c) => console.log(c.storages[0].bytes.length));`),
    String(4 * MiB));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
