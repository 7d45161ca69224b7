// Node: big ArrayBuffers whose pages a worker thread has touched, for the Blob reads of api.mjs
// (`host.fresh`; index.cjs makes one for the package).
"use strict";

/** Big ArrayBuffers with their pages touched on another thread (`host.fresh` for api.mjs). A
 * Blob's reads come to the main thread, and copying them into new memory there takes a page
 * fault per page (on a VM, as long as reading the file); a worker allocates the buffer and touches
 * its pages while the reads are under way, then hands it over (transferred, not copied), one
 * buffer after another in the order asked. It starts on first use and ends
 * when it has had nothing to do for idleMs; should it fail to start or die, `make` rejects (and
 * the caller allocates on its own thread). (One worker, not two: on the 2-core VM this was
 * measured on, a second one starting in a fresh process cost more than it made up.)
 *
 * The pages are touched by reading `zeroes` (a device of zero bytes) into the buffer, 16 MiB per
 * read: the kernel then takes the faults itself, without a trip to user space and back for each
 * page. (On that VM, Linux 6.18 under Firecracker, 256 MiB took 150-180 ms so against 190-250 ms
 * written a byte per page.) Where the device cannot be opened or read (Windows), or once it
 * ends, the rest is touched a byte per page. In a process that loads again, a buffer may be
 * memory it freed, its pages present already: reading zeroes into those costs the worker about
 * 11 ms per 252 MB, off the main thread's path, so no check for them is made (one was tried:
 * timing the touch of the first pages and reading the device only after a slow one changed
 * nothing measurable in repeated loads of 252 MB). */
function freshBuffers({ idleMs = 2000, zeroes = "/dev/zero" } = {}) {
  const CODE = `"use strict";
const { parentPort, workerData } = require("node:worker_threads");
const { closeSync, openSync, readSync } = require("node:fs");
// One byte in every 4 KiB touches every page (pages are 4 KiB or more).
const PAGE = 4096;
const ZERO_READ = 16 << 20;
/** Whether the device could not be opened (then it is not tried again). */
let noZeroes = false;
/** Reads zeroes into bytes from their start on; gives how many it read. The device is opened for
 * each buffer and closed after it: a worker ended by terminate() closes no file it opened. */
function readZeroes(bytes) {
  let at = 0;
  let fd = -1;
  try {
    if (noZeroes) return 0;
    fd = openSync(workerData.zeroes, "r");
    while (at < bytes.length) {
      const n = readSync(fd, bytes, at, Math.min(bytes.length - at, ZERO_READ), null);
      if (n <= 0) break;
      at += n;
    }
  } catch {
    noZeroes ||= fd < 0;
  } finally {
    if (fd >= 0) closeSync(fd);
  }
  return at;
}
parentPort.on("message", ({ id, size }) => {
  let buffer;
  try {
    buffer = new ArrayBuffer(size);
  } catch (e) {
    parentPort.postMessage({ id, error: String(e) });
    return;
  }
  const bytes = new Uint8Array(buffer);
  for (let at = readZeroes(bytes); at < size; at += PAGE) bytes[at] = 0;
  parentPort.postMessage({ id, buffer }, [buffer]);
});`;
  let worker = null;
  let failed = false;
  let next = 0;
  let idle = null;
  /** Asked and not yet made: id → { resolve, reject }. */
  const waiting = new Map();
  /** Ends worker `w` (the current one), rejecting what it was asked with `why`. */
  const end = (w, why) => {
    if (worker !== w) return;
    worker = null;
    clearTimeout(idle);
    w.terminate().catch(() => {});
    for (const { reject } of waiting.values()) reject(why);
    waiting.clear();
  };
  const start = () => {
    if (worker || failed) return worker;
    let w;
    try {
      const { Worker } = require("node:worker_threads");
      w = new Worker(CODE, { eval: true, workerData: { zeroes } });
    } catch {
      failed = true;
      return null;
    }
    worker = w;
    w.on("message", ({ id, buffer, error }) => {
      const asked = waiting.get(id);
      if (!asked) return; // rejected already (this worker was ended)
      waiting.delete(id);
      if (buffer) asked.resolve(buffer);
      else asked.reject(new Error(error));
      if (waiting.size === 0) {
        w.unref();
        idle = setTimeout(() => end(w, new Error("idle")), idleMs);
        idle.unref();
      }
    });
    w.on("error", (e) => {
      failed = true;
      end(w, e);
    });
    w.on("exit", () => end(w, new Error("the worker making fresh buffers exited")));
    // It keeps the process alive only while asked for something (unref'd after its listeners:
    // adding them refs it again).
    w.unref();
    return w;
  };
  return {
    make(size) {
      const w = start();
      if (!w) return Promise.reject(new Error("no worker to make fresh buffers"));
      clearTimeout(idle);
      w.ref();
      return new Promise((resolve, reject) => {
        const id = next++;
        waiting.set(id, { resolve, reject });
        w.postMessage({ id, size });
      });
    },
  };
}

module.exports = { freshBuffers };
