// The checkpoint viewer: opens a checkpoint (file picker, drag and drop, URL or ?url=) with the
// npm package's browser entry, shows its object tree with every tensor, statistics and a
// histogram of the selected tensor, places it on WebGPU, and converts it to .safetensors when the
// package offers it. Everything runs in this tab; nothing is uploaded.
//
// Markup contract (DESIGN.md, "Web page"): `input[type=file]#file`; one element per tensor with
// `data-path`, `data-dtype`, `data-shape` (JSON); `#status` (outcome or error message);
// `#to-webgpu` (then `#status` says `placed N tensors on WebGPU`).

import { load, Storage, Tensor } from "/pkg/browser.mjs";
import { decodable, formatBytes, formatNumber, summarize } from "./numbers.mjs";

const $ = (id) => document.getElementById(id);
const FIRST_ELEMENTS = 32;

const state = {
  /** What was opened last: a File/Blob, or a URL string. */
  source: null,
  name: "",
  ckpt: null,
  controller: null,
  /** The row of the selected tensor, and a counter that drops stale detail renders. */
  selected: null,
  detailToken: 0,
  /** Counts loads: a load that a newer one replaced neither shows nor reports anything. */
  loadSeq: 0,
  device: null,
};

// ---- small DOM helpers ---------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function setStatus(text, kind = "") {
  const s = $("status");
  s.textContent = text;
  s.className = kind;
}

function errorText(e) {
  if (e && e.name === "AbortError") return "Cancelled.";
  return e && e.message ? e.message : String(e);
}

// ---- WebGPU --------------------------------------------------------------------------------

async function gpuDevice() {
  if (state.device) return state.device;
  if (!navigator.gpu) throw new Error("WebGPU is not available in this browser (navigator.gpu is missing)");
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error("WebGPU: navigator.gpu.requestAdapter() found no adapter");
  const device = await adapter.requestDevice({
    requiredLimits: { maxBufferSize: adapter.limits.maxBufferSize, maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize },
  });
  device.lost.then(() => { if (state.device === device) state.device = null; });
  state.device = device;
  return device;
}

function freeGpu(ckpt) {
  for (const s of ckpt?.storages ?? []) s.buffer?.destroy();
}

// ---- loading -------------------------------------------------------------------------------

function showProgress(on) {
  $("progress-row").hidden = !on;
  if (on) {
    $("progress").removeAttribute("value");
    $("progress-text").textContent = "starting…";
  }
}

function onProgress({ loadedBytes, totalBytes }) {
  const bar = $("progress");
  if (totalBytes) {
    bar.max = totalBytes;
    bar.value = loadedBytes ?? 0;
    const pct = Math.floor((100 * (loadedBytes ?? 0)) / totalBytes);
    $("progress-text").textContent = `${formatBytes(loadedBytes)} of ${formatBytes(totalBytes)} (${pct}%)`;
  } else {
    $("progress-text").textContent = `${formatBytes(loadedBytes)}`;
  }
}

/** Loads `source` (File/Blob or URL) with the controls' options, or `override`; returns the
 * checkpoint and the seconds taken. Throws on failure or cancel. */
async function loadSource(source, override = {}) {
  state.controller?.abort();
  const controller = new AbortController();
  state.controller = controller;
  const options = {
    mapLocation: $("map-location").value,
    weightsOnly: $("weights-only").checked,
    signal: controller.signal,
    onProgress,
    ...override,
  };
  if (options.mapLocation === "webgpu") options.device = await gpuDevice();
  showProgress(true);
  const started = performance.now();
  try {
    let input = source;
    if (typeof source === "string") {
      let response;
      try {
        response = await fetch(source, { signal: controller.signal });
      } catch (e) {
        if (e && e.name === "AbortError") throw e;
        throw new Error(`${source}: the request failed (${errorText(e)}): is the URL right, and does its server allow this page to read it (CORS)?`);
      }
      if (!response.ok) throw new Error(`${source}: HTTP status ${response.status} ${response.statusText}`);
      input = response;
    }
    const ckpt = await load(input, options);
    if (controller.signal.aborted) {
      freeGpu(ckpt);
      throw controller.signal.reason ?? new DOMException("cancelled", "AbortError");
    }
    return { ckpt, seconds: (performance.now() - started) / 1000 };
  } finally {
    if (state.controller === controller) state.controller = null;
    showProgress(false);
  }
}

async function open(source, name) {
  state.source = source;
  state.name = name;
  setStatus(`Loading ${name}…`, "busy");
  const seq = ++state.loadSeq;
  try {
    const { ckpt, seconds } = await loadSource(source);
    if (seq !== state.loadSeq) return freeGpu(ckpt);
    show(ckpt);
    const n = ckpt.tensors().length;
    setStatus(`Loaded ${name}: ${n} tensor${n === 1 ? "" : "s"} in ${(seconds * 1000).toFixed(0)} ms.`, "ok");
  } catch (e) {
    if (seq !== state.loadSeq) return;
    show(null);
    setStatus(errorText(e), e && e.name === "AbortError" ? "" : "error");
  }
}

async function placeOnWebGpu() {
  if (!state.source) return;
  const button = $("to-webgpu");
  button.disabled = true;
  setStatus(`Placing ${state.name} on WebGPU…`, "busy");
  const seq = ++state.loadSeq;
  try {
    const { ckpt, seconds } = await loadSource(state.source, { mapLocation: "webgpu" });
    if (seq !== state.loadSeq) return freeGpu(ckpt);
    const selected = state.selected?.dataset.path;
    show(ckpt, selected);
    const tensors = ckpt.tensors().filter(([, t]) => t.device === "webgpu");
    const bytes = ckpt.storages.filter((s) => s.device === "webgpu").reduce((a, s) => a + s.nbytes, 0);
    const rate = seconds > 0 ? bytes / seconds / 1e9 : 0;
    setStatus(
      `placed ${tensors.length} tensors on WebGPU (${formatBytes(bytes)}) in ${(seconds * 1000).toFixed(0)} ms: ${rate >= 1 ? rate.toFixed(2) : rate.toPrecision(2)} GB/s`,
      "ok",
    );
  } catch (e) {
    if (seq === state.loadSeq) setStatus(errorText(e), e && e.name === "AbortError" ? "" : "error");
  } finally {
    button.disabled = false;
  }
}

// ---- the view ------------------------------------------------------------------------------

function show(ckpt, reselect) {
  if (state.ckpt && state.ckpt !== ckpt) freeGpu(state.ckpt);
  state.ckpt = ckpt;
  state.selected = null;
  state.detailToken++;
  $("view").hidden = !ckpt;
  $("filter").value = "";
  $("detail").replaceChildren(el("p", { class: "hint", text: "Select a tensor to see its statistics, histogram and first elements." }));
  $("detail").removeAttribute("data-shown");
  if (!ckpt) {
    $("tree").replaceChildren();
    $("summary").replaceChildren();
    return;
  }
  renderSummary(ckpt);
  renderTree(ckpt);
  $("download").hidden = typeof ckpt.toSafetensors !== "function";
  if (reselect !== undefined) {
    const row = [...document.querySelectorAll("#tree [data-path]")].find((r) => r.dataset.path === reselect);
    if (row) row.click();
  }
}

function renderSummary(ckpt) {
  const tensors = ckpt.tensors();
  const users = new Map();
  for (const [, t] of tensors) if (t.storage) users.set(t.storage, (users.get(t.storage) ?? new Set()).add(t));
  const shared = [...users.values()].filter((s) => s.size > 1).length;
  const bytes = ckpt.storages.reduce((a, s) => a + s.nbytes, 0);
  const devices = [...new Set(tensors.map(([, t]) => t.device))].join(", ") || "—";
  const chip = (label, value) => el("span", { class: "chip" }, `${label} `, el("b", { text: value }));
  $("summary").replaceChildren(
    chip("format", ckpt.format),
    chip("byte order", ckpt.byteOrder),
    chip("tensors", String(tensors.length)),
    chip("storages", String(ckpt.storages.length)),
    chip("total", formatBytes(bytes)),
    chip("shared storages", String(shared)),
    chip("device", devices),
  );
}

/** The path segment of a dict key, as the package's tensor paths write it. */
function segment(key) {
  if (key === true) return "True";
  if (key === false) return "False";
  if (key === null) return "None";
  if (Array.isArray(key)) return `(${key.map(segment).join(", ")})`;
  return String(key);
}

function join(path, seg) {
  return path === "" ? seg : `${path}.${seg}`;
}

function isInert(v) {
  return v !== null && typeof v === "object" && typeof v.__class__ === "string";
}

function scalarText(v) {
  if (v === null) return "None";
  if (typeof v === "boolean") return v ? "True" : "False";
  if (typeof v === "string") return JSON.stringify(v.length > 200 ? `${v.slice(0, 200)}…` : v);
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : formatNumber(v);
  if (v instanceof Uint8Array) return `bytes (${v.length})`;
  if (v instanceof Storage) return `storage ${v.key}: ${v.dtype} × ${v.numel} (${formatBytes(v.nbytes)}, ${v.device})`;
  if (v && typeof v.__global__ === "string") return v.__global__;
  return String(v);
}

/** The children of a container as [label, path segment, value, walked]: `walked` is false where
 * the package's tensor list does not look (an object's constructor arguments). */
function childrenOf(v) {
  if (Array.isArray(v)) return v.map((x, i) => [String(i), String(i), x, true]);
  if (v instanceof Set) return [...v].map((x, i) => [String(i), String(i), x, true]);
  if (v instanceof Map) return [...v].map(([k, x]) => [segment(k), segment(k), x, true]);
  if (isInert(v)) {
    const out = [];
    const dict = (d) => {
      if (d instanceof Map) for (const [k, x] of d) out.push([segment(k), segment(k), x, true]);
      else if (d && typeof d === "object" && !Array.isArray(d) && !isInert(d)) for (const [k, x] of Object.entries(d)) out.push([k, k, x, true]);
    };
    if (Array.isArray(v.state)) {
      for (const part of v.state) {
        if (part && typeof part === "object" && !Array.isArray(part) && !isInert(part)) dict(part);
        else if (part !== null) out.push(["(state)", null, part, false]);
      }
    } else if (v.state !== null && v.state !== undefined && typeof v.state === "object" && !isInert(v.state)) {
      dict(v.state);
    } else if (v.state !== null && v.state !== undefined) {
      out.push(["(state)", null, v.state, false]);
    }
    if (v.dictItems) dict(v.dictItems);
    if (v.listItems) v.listItems.forEach((x, i) => out.push([String(i), String(i), x, true]));
    if (Array.isArray(v.args) && v.args.length) out.push(["(args)", null, v.args, false]);
    return out;
  }
  return Object.entries(v).map(([k, x]) => [k, k, x, true]);
}

function isContainer(v) {
  return v !== null && typeof v === "object" && !(v instanceof Tensor) && !(v instanceof Storage) &&
    !(v instanceof Uint8Array) && typeof v.__global__ !== "string" &&
    !(isInert(v) && v.__class__ === "builtins.complex");
}

function kindOf(v, n) {
  if (Array.isArray(v)) return `list [${n}]`;
  if (v instanceof Set) return `set {${n}}`;
  if (isInert(v)) return null;
  return `dict {${n}}`;
}

function tensorRow(label, t, path) {
  const shape = JSON.stringify(t.shape);
  const nbytes = t.numel * t.itemsize;
  const row = el(
    "div",
    { class: "leaf tensor", tabIndex: 0, "data-path": path, "data-dtype": t.dtype, "data-shape": shape },
    el("span", { class: "key", text: label }),
    el("span", { class: "meta" },
      el("span", { class: "dtype", text: t.dtype }), ` ${shape.replace(/,/g, ", ")} `,
      el("span", { class: `device-${t.device}`, text: t.device }), ` ${formatBytes(nbytes)}`),
  );
  if (path === undefined) {
    row.classList.add("unlisted");
    row.title = "an object's constructor argument: not in the tensor list";
  }
  row.addEventListener("click", () => select(row, t, path ?? label));
  row.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); row.click(); } });
  return row;
}

function renderTree(ckpt) {
  const tensors = ckpt.tensors();
  // Paths come from the package's tensor list: the walk below takes them in its order.
  const queue = new Map();
  for (const [path, t] of tensors) {
    if (!queue.has(t)) queue.set(t, []);
    queue.get(t).push(path);
  }
  const seen = new Set();

  function node(label, v, path, walked, depth) {
    if (v instanceof Tensor) {
      const paths = walked ? queue.get(v) : undefined;
      return tensorRow(label, v, paths && paths.length ? paths.shift() : undefined);
    }
    if (!isContainer(v)) {
      const text = isInert(v) ? `complex(${v.args.map(formatNumber).join(", ")})` : scalarText(v);
      return el("div", { class: "leaf" }, el("span", { class: "key", text: label }), el("span", { class: "value", text }));
    }
    if (seen.has(v)) return el("div", { class: "leaf" }, el("span", { class: "key", text: label }), el("span", { class: "value", text: "(cycle)" }));
    const kids = childrenOf(v);
    const kind = kindOf(v, kids.length);
    if (!kids.length) {
      return el("div", { class: "leaf" }, el("span", { class: "key", text: label }),
        kind ? el("span", { class: "kind", text: kind }) : el("span", { class: "cls", text: v.__class__ }));
    }
    seen.add(v);
    const summary = el("summary", {}, el("span", { class: "key", text: label }), " ",
      kind ? el("span", { class: "kind", text: kind }) : el("span", { class: "cls", text: v.__class__ }));
    // Open the first levels, unless a container is too long to read (the filter opens it).
    const details = el("details", { open: depth === 0 || (depth < 3 && kids.length <= 2000) }, summary);
    for (const [childLabel, seg, x, childWalked] of kids) {
      const childPath = seg === null ? path : join(path, seg);
      details.append(node(childLabel, x, childPath, walked && childWalked, depth + 1));
    }
    seen.delete(v);
    return details;
  }

  const parts = [node("root", ckpt.root, "", true, 0)];
  // TorchScript: the tuple of constants.pkl, its tensors at `constants.N`.
  if (ckpt.constants !== undefined) parts.push(node("constants", ckpt.constants, "constants", true, 0));
  const rest = [...queue].flatMap(([t, paths]) => paths.map((p) => [p, t]));
  if (rest.length) {
    const details = el("details", { open: true, class: "other" }, el("summary", {}, el("span", { class: "key", text: "other tensors" })));
    for (const [p, t] of rest) details.append(tensorRow(p, t, p));
    parts.push(details);
  }
  $("tree").replaceChildren(...parts);
}

function applyFilter() {
  const q = $("filter").value.trim().toLowerCase();
  const tree = $("tree");
  const all = tree.querySelectorAll("details, .leaf");
  if (!q) {
    for (const n of all) n.hidden = false;
    return;
  }
  for (const n of all) n.hidden = true;
  for (const row of tree.querySelectorAll(".tensor[data-path]")) {
    if (!row.dataset.path.toLowerCase().includes(q)) continue;
    row.hidden = false;
    for (let p = row.parentElement; p && p !== tree; p = p.parentElement) {
      if (p.tagName === "DETAILS") {
        p.hidden = false;
        p.open = true;
      }
    }
  }
}

// ---- the selected tensor -------------------------------------------------------------------

async function select(row, t, path) {
  state.selected?.classList.remove("selected");
  row.classList.add("selected");
  state.selected = row;
  const token = ++state.detailToken;
  const detail = $("detail");
  detail.removeAttribute("data-shown");
  const shape = JSON.stringify(t.shape).replace(/,/g, ", ");
  const head = [
    el("h2", { text: path }),
    el("p", { class: "sub", text: `${t.dtype} ${shape} · stride ${JSON.stringify(t.stride)} · offset ${t.storageOffset} · ${t.device} · ${formatBytes(t.numel * t.itemsize)}${t.kind === "parameter" ? " · Parameter" : ""}${t.requiresGrad ? " · requires_grad" : ""}` }),
  ];
  detail.replaceChildren(...head, el("p", { class: "hint", text: "Reading elements…" }));
  let body;
  try {
    const ok = decodable(t.dtype);
    if (t.device === "meta") body = [el("p", { class: "hint", text: "On the meta device: no data (load with map_location cpu or webgpu to see values)." })];
    else if (ok !== true) body = [el("p", { class: "hint", text: ok })];
    else {
      const bytes = await t.contiguousBytes();
      if (token !== state.detailToken) return;
      const summary = await summarize(bytes, t.dtype, { first: FIRST_ELEMENTS, pause: () => new Promise((r) => setTimeout(r)) });
      if (token !== state.detailToken) return;
      body = statsView(summary, t);
    }
  } catch (e) {
    if (token !== state.detailToken) return;
    body = [el("p", { class: "error-text", text: errorText(e) })];
  }
  detail.replaceChildren(...head, ...body);
  detail.setAttribute("data-shown", path);
  const canvas = $("histogram");
  if (canvas) drawHistogram(canvas, canvas._data);
}

function statsView({ stats: s, counts, first: head, length }, t) {
  const cell = (label, v, bad) => el("div", { class: bad ? "bad" : "" }, el("dt", { text: label }), el("dd", { text: v }));
  const stats = el("dl", { id: "stats", "data-stats": JSON.stringify(s) },
    cell("elements", length.toLocaleString("en")),
    cell("min", formatNumber(s.min)),
    cell("max", formatNumber(s.max)),
    cell("mean", formatNumber(s.mean)),
    cell("std", formatNumber(s.std)),
    cell("NaN", String(s.nan), s.nan > 0),
    cell("+Inf", String(s.posinf), s.posinf > 0),
    cell("−Inf", String(s.neginf), s.neginf > 0),
  );
  const canvas = el("canvas", { id: "histogram" });
  canvas._data = { counts, min: s.min, max: s.max };
  const first = [...head].map(formatNumber).join(", ");
  const out = [stats, el("h3", { text: "Histogram of finite elements" }), canvas,
    el("h3", { text: `First ${head.length} of ${length.toLocaleString("en")} elements (C order)` }),
    el("div", { id: "first", text: length > head.length ? `${first}, …` : first || "(none)" })];
  if (t.dtype.startsWith("q")) out.splice(1, 0, el("p", { class: "hint", text: "Quantized: the stored integers, not dequantized." }));
  return out;
}

function drawHistogram(canvas, { counts, min, max }) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400;
  const h = canvas.clientHeight || 180;
  canvas.width = Math.round(w * ratio);
  canvas.height = Math.round(h * ratio);
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const styles = getComputedStyle(document.documentElement);
  const pad = { l: 10, r: 10, t: 18, b: 22 };
  const top = Math.max(1, ...counts);
  const bw = (w - pad.l - pad.r) / counts.length;
  g.fillStyle = styles.getPropertyValue("--accent").trim() || "#3b5bdb";
  counts.forEach((c, i) => {
    if (!c) return;
    const bh = Math.max(1, (c / top) * (h - pad.t - pad.b));
    g.fillRect(pad.l + i * bw + 0.5, h - pad.b - bh, Math.max(1, bw - 1), bh);
  });
  g.strokeStyle = styles.getPropertyValue("--line").trim() || "#ddd";
  g.beginPath();
  g.moveTo(pad.l, h - pad.b + 0.5);
  g.lineTo(w - pad.r, h - pad.b + 0.5);
  g.stroke();
  g.fillStyle = styles.getPropertyValue("--muted").trim() || "#666";
  g.font = "11px ui-monospace, monospace";
  g.textBaseline = "alphabetic";
  g.textAlign = "left";
  g.fillText(formatNumber(min), pad.l, h - 6);
  g.textAlign = "right";
  g.fillText(formatNumber(max), w - pad.r, h - 6);
  g.fillText(`peak ${top.toLocaleString("en")}`, w - pad.r, 12);
}

// ---- safetensors ---------------------------------------------------------------------------

async function downloadSafetensors() {
  try {
    const bytes = await state.ckpt.toSafetensors();
    const blob = new Blob([bytes], { type: "application/octet-stream" });
    const a = el("a", { href: URL.createObjectURL(blob), download: `${state.name.replace(/^.*\//, "").replace(/\.[^.]*$/, "") || "checkpoint"}.safetensors` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
    setStatus(`Wrote ${formatBytes(bytes.length)} of .safetensors.`, "ok");
  } catch (e) {
    setStatus(errorText(e), "error");
  }
}

// ---- wiring --------------------------------------------------------------------------------

function init() {
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) open(file, file.name);
    $("file").value = "";
  });
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const url = $("url").value.trim();
    if (url) open(url, url);
  });
  $("cancel").addEventListener("click", () => state.controller?.abort(new DOMException("cancelled by the user", "AbortError")));
  $("to-webgpu").addEventListener("click", placeOnWebGpu);
  $("download").addEventListener("click", downloadSafetensors);
  $("filter").addEventListener("input", applyFilter);
  let depth = 0;
  document.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; document.body.classList.remove("dragging"); } });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    const file = e.dataTransfer?.files?.[0];
    if (file) open(file, file.name);
  });
  window.addEventListener("resize", () => { const c = $("histogram"); if (c) drawHistogram(c, c._data); });

  if (!navigator.gpu) {
    const why = "WebGPU is not available in this browser (navigator.gpu is missing)";
    $("to-webgpu").disabled = true;
    $("to-webgpu").title = why;
    $("gpu-note").textContent = why;
    $("map-location").querySelector('option[value="webgpu"]').disabled = true;
  }
  const url = new URLSearchParams(location.search).get("url");
  if (url) {
    $("url").value = url;
    open(url, url);
  }
  document.documentElement.dataset.ready = "true";
}

init();
