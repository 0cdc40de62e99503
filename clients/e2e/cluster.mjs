// A real local Chorus cluster for the browser test: the API (serving the
// built web chat from CHORUS_WEB_DIR) and two gateways, as child processes
// of the binaries cargo built, over the Postgres and Redis that
// scripts/test started (DATABASE_URL, REDIS_URL). Every port is free and
// on loopback; every process is stopped by stop(), and killed if the test
// process dies first.

import { spawn, execFile } from "node:child_process";
import { createServer } from "node:net";
import { createWriteStream, mkdirSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** The gateways' recovery window: the test's outages exceed it on purpose. */
export const RECOVERY_WINDOW = 2;

/** How long a service may take to report ready (a debug build, a cold Postgres). */
const READY_TIMEOUT_MS = 30_000;

async function freePort() {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitReady(adminUrl, child, name) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode} (see its log)`);
    try {
      const r = await fetch(`${adminUrl}/readyz`);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} not ready within ${READY_TIMEOUT_MS} ms`);
}

/**
 * Starts the cluster. `binDir` holds chorus-api and chorus-gateway,
 * `webDir` the built web chat, `logDir` receives one log per process.
 */
export async function startCluster({ binDir, webDir, logDir }) {
  for (const v of ["DATABASE_URL", "REDIS_URL"]) {
    if (!process.env[v]) throw new Error(`${v} is not set: run through scripts/test`);
  }
  mkdirSync(logDir, { recursive: true });
  const secret = randomBytes(32).toString("hex");
  const internalToken = randomBytes(32).toString("hex");
  const common = {
    PATH: process.env.PATH,
    REDIS_URL: process.env.REDIS_URL,
    CHORUS_JWT_SECRET: secret,
    CHORUS_INTERNAL_TOKEN: internalToken,
    RUST_LOG: "info",
  };
  const children = new Set();
  const spawnLogged = (name, bin, args, env) => {
    const log = createWriteStream(join(logDir, `${name}.log`), { flags: "a" });
    const child = spawn(join(binDir, bin), args, { env: { ...common, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    children.add(child);
    child.once("exit", () => children.delete(child));
    return child;
  };

  const [apiPort, apiAdminPort] = [await freePort(), await freePort()];
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const apiAdminUrl = `http://127.0.0.1:${apiAdminPort}`;
  const api = spawnLogged("api", "chorus-api", ["serve"], {
    DATABASE_URL: process.env.DATABASE_URL,
    CHORUS_API_ADDR: `127.0.0.1:${apiPort}`,
    CHORUS_ADMIN_ADDR: `127.0.0.1:${apiAdminPort}`,
    CHORUS_WEB_DIR: webDir,
  });
  await waitReady(apiAdminUrl, api, "api");

  /** One gateway slot: a fixed port, so a restarted gateway is found again. */
  const gateway = async (n) => {
    const port = await freePort();
    const adminPort = await freePort();
    const slot = {
      id: `gateway-${n}`,
      url: `ws://127.0.0.1:${port}/ws`,
      adminUrl: `http://127.0.0.1:${adminPort}`,
      child: null,
      async start() {
        this.child = spawnLogged(this.id, "chorus-gateway", [], {
          CHORUS_GATEWAY_ADDR: `127.0.0.1:${port}`,
          CHORUS_ADMIN_ADDR: `127.0.0.1:${adminPort}`,
          CHORUS_GATEWAY_ID: this.id,
          CHORUS_API_URL: apiUrl,
          CHORUS_API_INTERNAL_URL: apiAdminUrl,
          // Small, so a client away for more than two events gets
          // `recovered: false` and must fill the gap from HTTP history.
          CHORUS_RECOVERY_WINDOW: String(RECOVERY_WINDOW),
        });
        await waitReady(this.adminUrl, this.child, this.id);
      },
      /** SIGKILL: no drain, no goodbye; clients see the TCP connection die. */
      async kill() {
        const c = this.child;
        if (!c || c.exitCode !== null) return;
        const exited = new Promise((r) => c.once("exit", r));
        c.kill("SIGKILL");
        await exited;
      },
    };
    await slot.start();
    return slot;
  };
  const gateways = [await gateway(1), await gateway(2)];

  const token = async (sub, name, role = "member") => {
    const { stdout } = await run(join(binDir, "chorus-api"), ["token", "--sub", sub, "--name", name, "--role", role, "--ttl", "1h"], {
      env: common,
    });
    return stdout.trim();
  };

  const stop = async () => {
    const all = [...children];
    for (const c of all) c.kill("SIGTERM");
    await Promise.all(
      all.map(
        (c) =>
          new Promise((r) => {
            if (c.exitCode !== null) return r();
            const t = setTimeout(() => c.kill("SIGKILL"), 5_000);
            c.once("exit", () => {
              clearTimeout(t);
              r();
            });
          }),
      ),
    );
  };
  process.once("exit", () => {
    for (const c of children) c.kill("SIGKILL");
  });

  /** The API over HTTP as `token`'s user; throws on an error envelope. */
  const http = async (tokenValue, method, path, body) => {
    const r = await fetch(`${apiUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${tokenValue}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };

  return { apiUrl, gateways, token, http, stop };
}
