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
 * measured on, a second one starting in a fresh process cost more than it made up.) */
function freshBuffers({ idleMs = 2000 } = {}) {
  const CODE = `"use strict";
const { parentPort } = require("node:worker_threads");
// One byte in every 4 KiB touches every page (pages are 4 KiB or more).
const PAGE = 4096;
parentPort.on("message", ({ id, size }) => {
  let buffer;
  try {
    buffer = new ArrayBuffer(size);
  } catch (e) {
    parentPort.postMessage({ id, error: String(e) });
    return;
  }
  const bytes = new Uint8Array(buffer);
  for (let at = 0; at < size; at += PAGE) bytes[at] = 0;
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
      w = new Worker(CODE, { eval: true });
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
