// A static server on 127.0.0.1 (a secure context, so WebGPU is exposed) for the browser tests
// and scripts/web: /pkg/ is the built npm package, /fixtures/ tests/fixtures, /examples/
// examples, /page.html an empty page that imports the package's browser entry as
// `window.ptload`, and everything else web/ (the checkpoint viewer; / is web/index.html).

import { createReadStream, existsSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize } from "node:path";

const TYPES = {
  ".mjs": "text/javascript", ".js": "text/javascript", ".cjs": "text/javascript",
  ".wasm": "application/wasm", ".html": "text/html", ".json": "application/json",
  ".css": "text/css", ".png": "image/png",
};

const PAGE = `<!doctype html><meta charset="utf-8"><title>ptload</title>
<script type="module">
import * as ptload from "/pkg/browser.mjs";
window.ptload = ptload;
document.title = "ready";
</script>`;

/** Serves `root`'s pkg/, tests/fixtures/, examples/ and web/ on 127.0.0.1:`port` (0: any free
 * port); resolves to { url, close }. */
export function serve(root, port = 0) {
  const mounts = {
    "/pkg/": join(root, "pkg"),
    "/fixtures/": join(root, "tests", "fixtures"),
    "/examples/": join(root, "examples"),
    "/": join(root, "web"),
  };
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    if (url.pathname === "/page.html") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(PAGE);
      return;
    }
    for (const [prefix, dir] of Object.entries(mounts)) {
      if (!url.pathname.startsWith(prefix)) continue;
      let rel;
      try {
        rel = normalize(decodeURIComponent(url.pathname.slice(prefix.length)) || "index.html");
      } catch {
        break; // malformed %-escapes
      }
      const path = join(dir, rel);
      if (rel.startsWith("..") || !path.startsWith(dir) || !existsSync(path) || !statSync(path).isFile()) break;
      res.writeHead(200, {
        "content-type": TYPES[extname(path)] ?? "application/octet-stream",
        "content-length": statSync(path).size,
      });
      createReadStream(path).pipe(res);
      return;
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(port, "127.0.0.1", () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() });
    });
  });
}
