"use strict";
// Starts real plugd + component processes for the Node SDK compatibility tests.
//
// Like tests/python/conftest.py: every environment gets its own short temp dir under /tmp
// (sockets/, resources/, the processes' logs), components are started with
// `--socket-name/--socket-folder` and waited for on their Unix socket, plugd is started on free
// TCP ports and waited for until `GET /v1.0/healthz` answers 204. Every wait is a bounded poll.
// Teardown is SIGTERM, a bounded wait, then SIGKILL; a plugd or component that needs the kill
// or exits non-zero after SIGTERM is reported as a problem.
//
// Binaries come from $PLUGD_BIN_DIR (default <repo>/target/debug): build them first with
// `cargo build --workspace --bins`.

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const net = require("node:net");
const path = require("node:path");

const REPO = path.resolve(__dirname, "..", "..", "..");
const BIN_DIR = process.env.PLUGD_BIN_DIR || path.join(REPO, "target", "debug");

const SOCKET_WAIT_MS = 20_000;
const HEALTH_WAIT_MS = 20_000;
const STOP_WAIT_MS = 10_000;
const LOG_TAIL_LINES = 150;

/** What each reference component binary serves, by socket name (= the type's suffix). */
const COMPONENT_BINARIES = {
  sqlite: "plugd-sqlite", // state.sqlite
  memory: "plugd-memory", // pubsub.memory, state.memory
  files: "plugd-files", // bindings.files, secretstores.files
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function binary(name) {
  const p = path.join(BIN_DIR, name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} not found: run \`cargo build --workspace --bins\` (or set PLUGD_BIN_DIR)`);
  }
  return p;
}

/** A free TCP port on 127.0.0.1 (bound to 0, read, released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Distinct free ports, none of them in `taken`. */
async function freePorts(n, taken = []) {
  const ports = [];
  while (ports.length < n) {
    const p = await freePort();
    if (!ports.includes(p) && !taken.includes(p)) ports.push(p);
  }
  return ports;
}

/**
 * Polls `probe` (async, truthy = done) every `everyMs` until it succeeds or `withinMs` passes;
 * `proc`, if given, must stay alive meanwhile. Returns the probe's value.
 */
async function waitFor(what, withinMs, probe, { proc = null, everyMs = 20 } = {}) {
  const deadline = Date.now() + withinMs;
  let last;
  for (;;) {
    if (proc && proc.exited()) {
      throw new Error(`${proc.name} exited (${proc.exitDescription()}) while waiting for ${what}`);
    }
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : last === undefined ? "" : ` (last: ${JSON.stringify(last)})`;
      throw new Error(`${what} did not happen within ${withinMs} ms${detail}`);
    }
    await sleep(everyMs);
  }
}

/** GET/POST on 127.0.0.1 with a timeout; resolves `{status, headers, body}` or rejects. */
function httpRequest(port, method, urlPath, { body, headers = {}, timeoutMs = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, method, path: urlPath, headers, agent: false, timeout: timeoutMs },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${urlPath} timed out after ${timeoutMs} ms`)));
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function unixSocketAccepts(socketPath) {
  return new Promise((resolve) => {
    const s = net.connect({ path: socketPath });
    s.on("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

/** Every live child, so that a crashing test process does not leave them behind. */
const LIVE = new Set();
process.on("exit", () => {
  for (const child of LIVE) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
});

class Proc {
  constructor(name, args, root, env) {
    this.name = name;
    this.logPath = path.join(root, `${name}.log`);
    const fd = fs.openSync(this.logPath, "w");
    try {
      this.child = spawn(args[0], args.slice(1), {
        stdio: ["ignore", fd, fd],
        env: { ...process.env, ...env },
      });
    } finally {
      fs.closeSync(fd); // the child holds its own descriptor
    }
    this.exit = null; // {code, signal} once exited
    this.spawnError = null;
    LIVE.add(this.child);
    this.exitedPromise = new Promise((resolve) => {
      this.child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        LIVE.delete(this.child);
        resolve(this.exit);
      });
      this.child.on("error", (err) => {
        this.spawnError = err;
        this.exit = this.exit || { code: null, signal: null };
        LIVE.delete(this.child);
        resolve(this.exit);
      });
    });
  }

  exited() {
    return this.exit !== null;
  }

  exitDescription() {
    if (!this.exit) return "running";
    if (this.spawnError) return `could not start: ${this.spawnError.message}`;
    return this.exit.signal ? `signal ${this.exit.signal}` : `code ${this.exit.code}`;
  }

  log({ tail = 0 } = {}) {
    let text;
    try {
      text = fs.readFileSync(this.logPath, "utf8");
    } catch (e) {
      return `<cannot read ${this.logPath}: ${e.message}>`;
    }
    if (tail > 0) {
      const lines = text.split("\n");
      if (lines.length > tail) text = `[... ${lines.length - tail} earlier lines in ${this.logPath}]\n${lines.slice(-tail).join("\n")}`;
    }
    return text;
  }

  /** SIGTERM, bounded wait, then SIGKILL. Resolves {code, signal, killed}. */
  async stop() {
    if (this.exited()) return { ...this.exit, killed: false, wasRunning: false };
    this.child.kill("SIGTERM");
    const timedOut = Symbol("timeout");
    let timer;
    const r = await Promise.race([
      this.exitedPromise,
      new Promise((resolve) => {
        timer = setTimeout(() => resolve(timedOut), STOP_WAIT_MS);
      }),
    ]);
    clearTimeout(timer);
    if (r !== timedOut) return { ...r, killed: false, wasRunning: true };
    this.child.kill("SIGKILL");
    const k = await this.exitedPromise;
    return { ...k, killed: true, wasRunning: true };
  }
}

/** A Component resource (`metadata` values are written as JSON strings, which YAML reads). */
function componentYaml(name, type, metadata = {}) {
  const items = Object.entries(metadata)
    .map(([k, v]) => `    - name: ${k}\n      value: ${JSON.stringify(String(v))}\n`)
    .join("");
  return (
    "apiVersion: dapr.io/v1alpha1\nkind: Component\n" +
    `metadata:\n  name: ${name}\n` +
    `spec:\n  type: ${type}\n  version: v1\n  metadata:\n${items || "    []\n"}`
  );
}

class Env {
  constructor(label) {
    this.label = label;
    this.root = fs.mkdtempSync(path.join("/tmp", `plugd-node-${label}-`));
    this.sockets = path.join(this.root, "sockets");
    this.resources = path.join(this.root, "resources");
    fs.mkdirSync(this.sockets);
    fs.mkdirSync(this.resources);
    this.procs = [];
    this.grpcPort = 0;
    this.httpPort = 0;
    this.appPort = null;
    this.appId = `node-sdk-${label}`;
    this.plugdProc = null;
    this.sdkLines = [];
  }

  /**
   * LoggerOptions for the SDK's DaprClient/DaprServer: what they log is kept with this
   * environment and printed with the processes' output when a test fails (set
   * PLUGD_NODE_SDK_LOG=1 to see it as it happens). `level` is the SDK's LogLevel (2 = Info).
   */
  sdkLogger(level = 2) {
    const lines = this.sdkLines;
    const echo = !!process.env.PLUGD_NODE_SDK_LOG;
    const record = (lvl) => (message, ...rest) => {
      const line = `${new Date().toISOString()} ${lvl} ${[message, ...rest].map(String).join(" ")}`;
      lines.push(line);
      if (echo) process.stderr.write(`${line}\n`);
    };
    return {
      level,
      service: {
        error: record("ERROR"),
        warn: record("WARN"),
        info: record("INFO"),
        verbose: record("VERBOSE"),
        debug: record("DEBUG"),
      },
    };
  }

  /** The output of every process (the last lines of each), for failure reports. */
  logs({ tail = LOG_TAIL_LINES } = {}) {
    const procs = this.procs.map(
      (p) => `----- ${p.name} (pid ${p.child.pid}, ${p.exitDescription()}) log ${p.logPath} -----\n${p.log({ tail })}`,
    );
    const sdk = this.sdkLines.slice(-tail);
    return [...procs, `----- @dapr/dapr SDK log (last ${sdk.length} lines) -----\n${sdk.join("\n")}`].join("\n");
  }

  async startComponent(socketName) {
    const bin = COMPONENT_BINARIES[socketName];
    if (!bin) throw new Error(`unknown component ${socketName}`);
    const proc = new Proc(
      bin,
      [binary(bin), "--socket-name", socketName, "--socket-folder", this.sockets],
      this.root,
      { RUST_LOG: process.env.PLUGD_COMPONENT_LOG || "info" },
    );
    this.procs.push(proc);
    const sock = path.join(this.sockets, `${socketName}.sock`);
    await waitFor(`${bin} accepting on ${sock}`, SOCKET_WAIT_MS, () => unixSocketAccepts(sock), { proc });
  }

  writeResource(fileName, text) {
    fs.writeFileSync(path.join(this.resources, fileName), text);
  }

  /**
   * Starts a process that is not a reference component (an example component in another
   * language, say) with `argv` and extra environment variables, logging to `<root>/<name>.log`;
   * it is stopped with the environment. Returns the Proc.
   */
  spawn(name, argv, extraEnv = {}) {
    const proc = new Proc(name, argv, this.root, extraEnv);
    this.procs.push(proc);
    return proc;
  }

  /**
   * Starts plugd (optionally with an app channel) and waits for `/v1.0/healthz` = 204.
   * `managedComponents: true` lets plugd launch components itself (off by default: the tests
   * start their components); `plugdArgs` are added to plugd's command line (for example
   * `--managed-component NAME=COMMAND`).
   */
  async startPlugd({ appPort = null, appProtocol = null, managedComponents = false, plugdArgs = [] } = {}) {
    this.appPort = appPort;
    // A port picked by binding to 0 can be taken again before plugd binds it: retry a few times.
    for (let attempt = 0; attempt < 3; attempt++) {
      [this.grpcPort, this.httpPort] = await freePorts(2, appPort ? [appPort] : []);
      const appArgs = appPort ? ["--app-port", String(appPort), "--app-protocol", appProtocol] : [];
      const plugd = new Proc(
        attempt === 0 ? "plugd" : `plugd-${attempt}`,
        [
          binary("plugd"),
          "--app-id", this.appId,
          "--resources-path", this.resources,
          "--sockets-folder", this.sockets,
          "--dapr-grpc-port", String(this.grpcPort),
          "--dapr-http-port", String(this.httpPort),
          // The tests start their components themselves (unless told otherwise) and read no
          // metrics.
          ...(managedComponents ? [] : ["--managed-components=false"]),
          "--enable-metrics=false",
          ...appArgs,
          ...plugdArgs,
          "--log-level", process.env.PLUGD_LOG_LEVEL || "info",
        ],
        this.root,
        {},
      );
      this.procs.push(plugd);
      this.plugdProc = plugd;
      try {
        await waitFor(
          `GET /v1.0/healthz = 204 on port ${this.httpPort}`,
          HEALTH_WAIT_MS,
          async () => (await httpRequest(this.httpPort, "GET", "/v1.0/healthz", { timeoutMs: 1000 })).status === 204,
          { proc: plugd, everyMs: 50 },
        );
        return;
      } catch (e) {
        if (!plugd.exited() || attempt === 2) throw e;
        // exited early (e.g. a port clash): try again with new ports
      }
    }
  }

  /** plugd's `GET /v1.0/metadata`, parsed. */
  async metadata() {
    const r = await httpRequest(this.httpPort, "GET", "/v1.0/metadata");
    if (r.status !== 200) throw new Error(`GET /v1.0/metadata answered ${r.status}: ${r.body}`);
    return JSON.parse(r.body.toString("utf8"));
  }

  /** The running plugd process (the last one started). */
  plugd() {
    return this.plugdProc;
  }

  /**
   * Stops plugd first, then the components. Returns the problems (a process that ignored SIGTERM
   * or exited non-zero after it). Removes the temp dir unless PLUGD_KEEP_TMP is set or there
   * were problems.
   */
  async stop() {
    const problems = [];
    for (const proc of [...this.procs].reverse()) {
      const r = await proc.stop();
      if (!r.wasRunning) continue;
      if (r.killed) problems.push(`${proc.name} ignored SIGTERM for ${STOP_WAIT_MS} ms and was killed`);
      else if (r.code !== 0) problems.push(`${proc.name} exited with ${r.signal ? `signal ${r.signal}` : `code ${r.code}`} after SIGTERM`);
    }
    if (problems.length === 0 && !process.env.PLUGD_KEEP_TMP) {
      fs.rmSync(this.root, { recursive: true, force: true });
    } else {
      process.stderr.write(`[${this.label}] kept ${this.root}\n`);
    }
    return problems;
  }
}

/**
 * Builds an environment: the given components, the resources (file name → YAML text, or a
 * function of the Env giving it), then plugd (`managedComponents` and `plugdArgs` as for
 * `Env.startPlugd`). On failure everything started is stopped and the
 * error carries the processes' output.
 */
async function startEnv(label, { components = [], resources = {}, appPort = null, appProtocol = null, managedComponents = false, plugdArgs = [] } = {}) {
  const env = new Env(label);
  try {
    for (const c of components) await env.startComponent(c);
    for (const [name, text] of Object.entries(resources)) {
      env.writeResource(name, typeof text === "function" ? text(env) : text);
    }
    await env.startPlugd({ appPort, appProtocol, managedComponents, plugdArgs });
  } catch (e) {
    const logs = env.logs();
    await env.stop();
    e.message = `could not start environment ${label}: ${e.message}\n${logs}`;
    throw e;
  }
  return env;
}

/**
 * Wraps a test body so that, when it fails, the output of the environment's processes is
 * printed next to the failure. `getEnv` is called lazily (the env is made in a `before` hook).
 */
function withLogs(getEnv, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      const env = getEnv();
      if (env) process.stderr.write(`\n===== ${t.name}: output of the ${env.label} environment =====\n${env.logs()}\n`);
      throw e;
    }
  };
}

module.exports = {
  BIN_DIR,
  Env,
  REPO,
  componentYaml,
  freePort,
  freePorts,
  httpRequest,
  sleep,
  startEnv,
  unixSocketAccepts,
  waitFor,
  withLogs,
};
