"use strict";
// What every pluggable component needs, whatever its kind, written once for the two examples:
//
// - the `dapr.proto.components.v1` protos, loaded at run time from the repository's `proto/`
//   folder with @grpc/proto-loader (nothing generated is committed);
// - the socket: `<folder>/<name>.sock`, the folder from `--socket-folder`, else the first set of
//   DAPR_COMPONENTS_SOCKETS_FOLDER (what daprd reads; plugd sets it too),
//   DAPR_COMPONENT_SOCKETS_FOLDER, DAPR_COMPONENT_SOCKET_FOLDER (the order plugd reads them in),
//   else /tmp/dapr-components-sockets; the name from `--socket-name`, else PLUGD_SOCKET_NAME (set
//   by plugd for a managed component), else the component's default. A stale socket file (a
//   connect is refused) is removed first; a socket another process serves, or one whose state
//   cannot be told (backlog full, no permission, no answer in time), is left alone and the
//   component exits with an error;
// - gRPC reflection (v1alpha and v1, both served by @grpc/reflection) listing only the services
//   the component implements: plugd and daprd decide a socket's kinds from that list;
// - one instance per `x-component-instance` request header (the Component's metadata.name):
//   daprd and plugd send it on every call, so two Components of the same type served by one
//   process stay apart; calls without the header (a test client) use a default instance.
//   Instances are created by Init only; other calls for a name that was never initialised are
//   FAILED_PRECONDITION, except Ping, which answers OK (the process is alive) without creating
//   anything;
// - errors as gRPC statuses (`ComponentError`);
// - a clean stop on SIGTERM / SIGINT: the server stops accepting, in-flight calls get a bounded
//   grace period, the socket file is removed if it is still the one this process created, exit
//   code 0.

const crypto = require("node:crypto");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const { ReflectionService } = require("@grpc/reflection");

const DEFAULT_SOCKETS_FOLDER = "/tmp/dapr-components-sockets";
const INSTANCE_HEADER = "x-component-instance";
const DEFAULT_INSTANCE = "#default#";
const PACKAGE = "dapr.proto.components.v1";
/** How long in-flight calls may run on after SIGTERM before they are cancelled. */
const SHUTDOWN_GRACE_MS = 3000;
/** How long the check of an existing socket file waits for its connect. */
const CONNECT_TIMEOUT_MS = 2000;
/** The longest Unix socket path (sun_path holds 108 bytes with the terminating NUL). */
const MAX_SOCKET_PATH = 107;
/** The socket folder's environment variables, in the order plugd reads them (src/config.rs). */
const SOCKETS_FOLDER_ENV = ["DAPR_COMPONENTS_SOCKETS_FOLDER", "DAPR_COMPONENT_SOCKETS_FOLDER", "DAPR_COMPONENT_SOCKET_FOLDER"];

/**
 * Metadata keys daprd and plugd may pass to any component (they are read by the runtime, not
 * the component), never reported as unknown.
 */
const RUNTIME_KEYS = ["direction", "route", "keyPrefix", "consumerID", "actorStateStore", "ttlInSeconds"];

/** The folder holding `dapr/proto/...`: $PLUGD_PROTO_DIR, else this repository's proto/proto. */
function protoDir() {
  return process.env.PLUGD_PROTO_DIR || path.resolve(__dirname, "..", "..", "..", "proto", "proto");
}

/**
 * Loads `dapr/proto/components/v1/<file>` (and what it imports). Field names are kept as written
 * in the .proto files (`content_type`, not `contentType`), so that what reflection describes is
 * what the files say.
 */
function loadProto(file) {
  const dir = protoDir();
  const rel = `dapr/proto/components/v1/${file}`;
  if (!fs.existsSync(path.join(dir, rel))) {
    throw new Error(`${path.join(dir, rel)} not found: set PLUGD_PROTO_DIR to the folder holding dapr/proto/`);
  }
  const definition = protoLoader.loadSync(rel, {
    includeDirs: [dir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return { definition, services: grpc.loadPackageDefinition(definition).dapr.proto.components.v1 };
}

/** A failure that becomes the gRPC status `code` with `message`. */
class ComponentError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
  static invalidArgument(message) {
    return new ComponentError(grpc.status.INVALID_ARGUMENT, message);
  }
  static notFound(message) {
    return new ComponentError(grpc.status.NOT_FOUND, message);
  }
  static failedPrecondition(message) {
    return new ComponentError(grpc.status.FAILED_PRECONDITION, message);
  }
  static unavailable(message) {
    return new ComponentError(grpc.status.UNAVAILABLE, message);
  }
}

/** `{ name: value }` of the command line's `--flag value` / `--flag=value` pairs. */
function parseArgs(argv, known) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m || !known.includes(m[1])) {
      if (arg === "--help" || arg === "-h") return { help: true };
      throw new Error(`unknown argument ${JSON.stringify(arg)} (known: ${known.map((k) => `--${k}`).join(", ")})`);
    }
    let value = m[2];
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new Error(`--${m[1]} needs a value`);
    }
    out[m[1]] = value;
  }
  return out;
}

/** Where to listen: `{ folder, name, socketPath }` from the arguments, then the environment. */
function socketLocation(args, defaultName) {
  const fromEnv = SOCKETS_FOLDER_ENV.map((k) => process.env[k]).find((v) => v);
  const folder = args["socket-folder"] || fromEnv || DEFAULT_SOCKETS_FOLDER;
  const name = args["socket-name"] || process.env.PLUGD_SOCKET_NAME || defaultName;
  if (!name || name.includes("/")) throw new Error(`invalid socket name ${JSON.stringify(name)}`);
  return { folder, name, socketPath: path.join(folder, `${name}.sock`) };
}

/**
 * What a connect to the Unix socket at `socketPath` says about it: `"served"` (connected),
 * `"stale"` (ECONNREFUSED: nobody listens; ENOENT: the file went away), or the error code of
 * anything else (EAGAIN: a listener whose backlog is full, EACCES, `ETIMEDOUT` when the connect
 * did not finish in time), which proves nothing either way.
 */
function probeSocket(socketPath, timeoutMs = CONNECT_TIMEOUT_MS) {
  return new Promise((resolve) => {
    const s = net.connect({ path: socketPath });
    const done = (result) => {
      clearTimeout(timer);
      s.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => done("ETIMEDOUT"), timeoutMs);
    s.once("connect", () => done("served"));
    s.once("error", (e) => done(e.code === "ECONNREFUSED" || e.code === "ENOENT" ? "stale" : e.code || String(e)));
  });
}

/**
 * Removes a socket file nobody listens on. A socket another process serves, or one that cannot
 * be told stale (a full backlog, no permission, no answer), is never taken over.
 */
async function clearStaleSocket(socketPath) {
  let st;
  try {
    st = fs.lstatSync(socketPath);
  } catch (e) {
    if (e.code === "ENOENT") return;
    throw e;
  }
  if (!st.isSocket()) throw new Error(`${socketPath} exists and is not a socket: not touching it`);
  const state = await probeSocket(socketPath);
  if (state === "served") throw new Error(`${socketPath} is already served by another process`);
  if (state !== "stale") {
    throw new Error(`${socketPath} exists and a connect to it failed with ${state}: it may be served by another process, not taking it over`);
  }
  try {
    fs.unlinkSync(socketPath);
  } catch (e) {
    if (e.code !== "ENOENT") throw e;
  }
  log(`removed the stale socket ${socketPath}`);
}

/**
 * Binds `server` to `socketPath` and answers the socket file's identity `{ dev, ino, mtimeNs }`.
 *
 * Node (libuv) unlinks the path a server bound when the server closes, whatever file is there by
 * then — possibly another process's socket that replaced this one. So the server binds a name
 * of its own in a private sub-folder, and that socket is hard-linked to `socketPath` (which
 * fails, rather than replaces, when the path was taken meanwhile) and the private name removed:
 * libuv's unlink at close then finds nothing, and `removeOwnSocket` is the only removal.
 * (When the private path would be too long for a socket address, the server binds
 * `socketPath` directly.)
 */
async function bindSocket(server, folder, socketPath) {
  const bind = (p) =>
    new Promise((resolve, reject) => {
      server.bindAsync(`unix:${p}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
    });
  // The socket file's modification time is set to a random moment in 2000-2003: inode numbers
  // are reused at once and change times are coarse, but no other file will be made with this
  // mark (a new file gets the current time).
  const mark = 946684800 + crypto.randomInt(100_000_000) + crypto.randomInt(1_000_000) / 1e6;
  // The identity is taken from the private name, before the socket is reachable under
  // `socketPath` (a client, or a process replacing it, may act at once); `link` keeps the inode
  // and its modification time.
  const identityOf = (p) => {
    const st = fs.lstatSync(p, { bigint: true });
    return { dev: st.dev, ino: st.ino, mtimeNs: st.mtimeNs };
  };
  const privateDir = fs.mkdtempSync(path.join(folder, ".bind-"));
  const privatePath = path.join(privateDir, "s");
  try {
    if (Buffer.byteLength(privatePath) > MAX_SOCKET_PATH) {
      await bind(socketPath);
      fs.utimesSync(socketPath, mark, mark);
      return identityOf(socketPath);
    }
    await bind(privatePath);
    fs.utimesSync(privatePath, mark, mark);
    const identity = identityOf(privatePath);
    try {
      fs.linkSync(privatePath, socketPath);
    } catch (e) {
      server.forceShutdown();
      if (e.code === "EEXIST") throw new Error(`${socketPath} was created by another process while this one started`);
      throw e;
    }
    return identity;
  } finally {
    fs.rmSync(privateDir, { recursive: true, force: true });
  }
}

function log(message) {
  process.stdout.write(`${new Date().toISOString()} ${message}\n`);
}

/**
 * One instance per `x-component-instance` value, created by Init only (`create(name)`), so the
 * map holds the Components the host initialised, not every header value a client ever sent.
 * Instances live as long as the process: there is no Close call, and a hot reload re-uses the
 * name and calls Init again on the same instance. An instance has `init(properties)` and
 * `initialised()`; `label` names the kind in messages ("binding", "secret store").
 */
class Instances {
  constructor(label, create) {
    this.label = label;
    this.create = create;
    this.byName = new Map();
  }

  nameOf(call) {
    const values = call.metadata.get(INSTANCE_HEADER);
    return values.length > 0 ? String(values[0]) : DEFAULT_INSTANCE;
  }

  /**
   * Runs Init on the call's instance, created if new. A failed Init leaves the instance
   * uninitialised (its old settings are gone); a new instance whose Init failed is dropped.
   */
  async init(call, properties) {
    const name = this.nameOf(call);
    let instance = this.byName.get(name);
    const created = !instance;
    if (created) {
      instance = this.create(name);
      this.byName.set(name, instance);
    }
    try {
      await instance.init(properties);
    } catch (e) {
      if (created && this.byName.get(name) === instance && !instance.initialised()) this.byName.delete(name);
      throw e;
    }
  }

  /** The call's instance, or null when Init never succeeded for its name. */
  find(call) {
    const instance = this.byName.get(this.nameOf(call));
    return instance && instance.initialised() ? instance : null;
  }

  /** The Init handler: Init is the only call that creates an instance. */
  initHandler() {
    return unary(async (req, call) => {
      await this.init(call, initProperties(req));
      return {};
    });
  }

  /**
   * The Ping handler. The process is alive: OK for an instance never initialised (`plugd
   * inspect` pings one), which is not created; an initialised one also runs its `ping()`.
   */
  pingHandler() {
    return unary(async (req, call) => {
      const instance = this.find(call);
      if (instance) await instance.ping();
      return {};
    });
  }

  /** The call's initialised instance; FAILED_PRECONDITION otherwise. */
  of(call) {
    const instance = this.find(call);
    if (!instance) throw ComponentError.failedPrecondition(`the ${this.label} instance ${this.nameOf(call)} is not initialised (call Init first)`);
    return instance;
  }
}

/**
 * An instance whose settings come from Init (for `Instances`): a subclass's `load(properties)`
 * checks the Init metadata and returns `{ settings, summary }` (the summary is logged) or throws
 * a `ComponentError`. An Init (again) first drops the old settings: a failed Init leaves the
 * instance uninitialised rather than serving the previous settings while the host reports the
 * Component FAILED. Of Inits that overlap, the one started last decides.
 */
class InitialisedInstance {
  constructor(kind, name, knownKeys) {
    this.kind = kind;
    this.name = name;
    this.knownKeys = knownKeys;
    this.settings = null;
    this.inits = 0;
  }

  initialised() {
    return this.settings !== null;
  }

  async init(properties) {
    this.settings = null;
    const generation = ++this.inits;
    const { settings, summary } = await this.load(properties);
    warnUnknownKeys(this.kind, this.name, properties, this.knownKeys);
    if (generation !== this.inits) return;
    this.settings = settings;
    log(`${this.kind} instance ${this.name}: ${summary}`);
  }
}

/** The Init metadata (`MetadataRequest.properties`) of an Init request. */
function initProperties(request) {
  return (request.metadata && request.metadata.properties) || {};
}

/** Logs the Init keys the component does not read (names only: values may be secrets). */
function warnUnknownKeys(kind, instance, properties, known) {
  const lower = [...known, ...RUNTIME_KEYS].map((k) => k.toLowerCase());
  const unknown = Object.keys(properties).filter((k) => !lower.includes(k.toLowerCase())).sort();
  if (unknown.length) log(`${kind} instance ${instance}: ignoring metadata keys this component does not read: ${unknown.join(", ")}`);
}

/**
 * A gRPC handler from `fn(request, call)` (sync or async): its value is the response, a
 * `ComponentError` becomes its status, anything else INTERNAL.
 */
function unary(fn) {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call.request, call))
      .then(
        (response) => callback(null, response),
        (err) => {
          if (err instanceof ComponentError) return callback({ code: err.code, details: err.message });
          log(`internal error: ${err && err.stack ? err.stack : err}`);
          callback({ code: grpc.status.INTERNAL, details: String(err && err.message ? err.message : err) });
        },
      );
  };
}

/**
 * Serves `handlers` (fully-qualified service name → { service definition, implementation }) on
 * the component's socket with reflection, until SIGTERM / SIGINT.
 *
 * `kind` names the component in logs (`bindings`, `secretstores`); `defaultName` is the socket
 * name used when neither `--socket-name` nor PLUGD_SOCKET_NAME gives one.
 */
async function serve({ kind, defaultName, definition, services, usage }) {
  let args;
  try {
    args = parseArgs(process.argv.slice(2), ["socket-name", "socket-folder"]);
  } catch (e) {
    process.stderr.write(`${e.message}\n${usage}`);
    process.exit(64);
  }
  if (args.help) {
    process.stdout.write(usage);
    process.exit(0);
  }
  const { folder, name, socketPath } = socketLocation(args, defaultName);

  const server = new grpc.Server();
  for (const { service, implementation } of Object.values(services)) server.addService(service, implementation);
  // Reflection lists only the services given here: the package's other services (for
  // example InputBinding next to OutputBinding in bindings.proto) are not implemented, and a
  // listed service is taken as a kind the socket serves.
  new ReflectionService(definition, { services: Object.keys(services) }).addToServer(server);

  // The signal handlers come first: a SIGTERM that arrives while the socket is being set up
  // (a client may already have connected) waits for it, then stops as usual.
  let identity = null;
  let pendingSignal = null;
  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    if (identity === null) {
      pendingSignal = pendingSignal || signal;
      return;
    }
    stopping = true;
    log(`${signal}: stopping`);
    const timer = setTimeout(() => {
      log(`calls still running after ${SHUTDOWN_GRACE_MS} ms: cancelling them`);
      server.forceShutdown();
    }, SHUTDOWN_GRACE_MS);
    timer.unref();
    server.tryShutdown(() => {
      clearTimeout(timer);
      removeOwnSocket(socketPath, identity);
      log("stopped");
      process.exit(0);
    });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));

  fs.mkdirSync(folder, { recursive: true });
  await clearStaleSocket(socketPath);
  identity = await bindSocket(server, folder, socketPath);
  log(`${kind}.${name} serving ${Object.keys(services).join(", ")} on ${socketPath}`);
  if (pendingSignal) stop(pendingSignal);
  return { server, socketPath };
}

/** Removes `socketPath` if it is still the file `bindSocket` made (same dev, inode, mark). */
function removeOwnSocket(socketPath, identity) {
  try {
    const st = fs.lstatSync(socketPath, { bigint: true });
    if (st.dev !== identity.dev || st.ino !== identity.ino || st.mtimeNs !== identity.mtimeNs) {
      log(`${socketPath} is no longer this process's socket: left alone`);
      return;
    }
    fs.unlinkSync(socketPath);
  } catch (e) {
    if (e.code !== "ENOENT") log(`cannot remove ${socketPath}: ${e.message}`);
  }
}

/** Runs `main` and exits 1 with the error when it fails (a socket in use, a bad argument, …). */
function run(main) {
  main().catch((e) => {
    process.stderr.write(`${e && e.message ? e.message : e}\n`);
    process.exit(1);
  });
}

module.exports = {
  ComponentError,
  INSTANCE_HEADER,
  InitialisedInstance,
  Instances,
  PACKAGE,
  initProperties,
  loadProto,
  log,
  run,
  serve,
  unary,
  warnUnknownKeys,
};
