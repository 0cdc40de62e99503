// Serves dist/ and forwards /api/* and /ws to the backend, so the app, the API
// and the gateway share one origin (no CORS needed). The API can also serve
// dist/ itself (CHORUS_WEB_DIR); this is for a separate front end in development.
//
//   node serve.mjs                                   :5173 → upstream http://127.0.0.1:8000 (the HAProxy of deploy/)
//   node serve.mjs --port 5173 --upstream http://127.0.0.1:8000
//   node serve.mjs --api http://127.0.0.1:8080 --gateway http://127.0.0.1:8081
//
// The app may still talk to other gateways directly (?gateway=ws://host:port/ws):
// WebSockets need no CORS. Only node's standard library is used.
import http from "node:http";
import net from "node:net";
import { readFile, stat } from "node:fs/promises";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "dist");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && process.argv[i + 1]) return process.argv[i + 1];
  const env = process.env[`CHORUS_WEB_${name.toUpperCase()}`];
  return env || fallback;
}
const port = Number(arg("port", "5173"));
const host = arg("host", "127.0.0.1");
const upstream = arg("upstream", "http://127.0.0.1:8000");
const api = new URL(arg("api", upstream));
const gateway = new URL(arg("gateway", upstream));

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".txt": "text/plain; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
};

function portOf(url) {
  return Number(url.port) || (url.protocol === "https:" || url.protocol === "wss:" ? 443 : 80);
}

async function serveStatic(req, res) {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  let file = normalize(join(root, path));
  if (file !== root && !file.startsWith(root + sep)) {
    res.writeHead(403).end();
    return;
  }
  try {
    if ((await stat(file)).isDirectory()) file = join(file, "index.html");
  } catch {
    file = join(root, "index.html"); // a client-side route: the app
  }
  try {
    const body = await readFile(file);
    res.writeHead(200, {
      "content-type": TYPES[extname(file)] ?? "application/octet-stream",
      "cache-control": file.endsWith("index.html") ? "no-cache" : "public, max-age=0, must-revalidate",
    });
    res.end(req.method === "HEAD" ? undefined : body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" }).end("not built: run `node build.mjs`\n");
  }
}

function proxyHttp(req, res) {
  const headers = { ...req.headers, host: api.host };
  const out = http.request(
    { host: api.hostname, port: portOf(api), method: req.method, path: req.url, headers },
    (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    },
  );
  out.on("error", (err) => {
    if (!res.headersSent) {
      res.writeHead(502, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "unavailable", message: `API unreachable: ${err.message}` } }));
    } else res.destroy();
  });
  req.pipe(out);
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/api" || path.startsWith("/api/")) return proxyHttp(req, res);
  if (req.method !== "GET" && req.method !== "HEAD") return res.writeHead(405).end();
  void serveStatic(req, res);
});

// WebSocket: a raw TCP tunnel to the gateway after replaying the upgrade request.
server.on("upgrade", (req, socket, head) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path !== "/ws") {
    socket.end("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    return;
  }
  const up = net.connect(portOf(gateway), gateway.hostname, () => {
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const name = req.rawHeaders[i];
      lines.push(`${name}: ${name.toLowerCase() === "host" ? gateway.host : req.rawHeaders[i + 1]}`);
    }
    up.write(lines.join("\r\n") + "\r\n\r\n");
    if (head.length) up.write(head);
    up.pipe(socket);
    socket.pipe(up);
  });
  up.setNoDelay(true);
  socket.setNoDelay(true);
  const close = () => {
    up.destroy();
    socket.destroy();
  };
  up.on("error", () => {
    if (socket.writable && up.bytesRead === 0) socket.end("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
    close();
  });
  socket.on("error", close);
  up.on("close", close);
  socket.on("close", close);
});

server.listen(port, host, () => {
  console.log(`chorus web on http://${host}:${port}/  (api → ${api.origin}, /ws → ${gateway.origin})`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
