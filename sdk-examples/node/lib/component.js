"use strict";
// What every pluggable component needs, whatever its kind, written once for the two examples:
//
// - the `dapr.proto.components.v1` protos, loaded at run time from the repository's `proto/`
//   folder with @grpc/proto-loader (nothing generated is committed);
// - the socket: `<folder>/<name>.sock`, the folder from `--socket-folder`, else
//   DAPR_COMPONENT_SOCKETS_FOLDER (what plugd and daprd set), else /tmp/dapr-components-sockets,
//   the name from `--socket-name`, else PLUGD_SOCKET_NAME (set by plugd for a managed component),
//   else the component's default; a stale socket file (nobody accepts on it) is removed first, a
//   socket another process serves is left alone and the component exits with an error;
// - gRPC reflection (v1alpha and v1, both served by @grpc/reflection) listing only the services
//   the component implements: plugd and daprd decide a socket's kinds from that list;
// - one instance per `x-component-instance` request header (the Component's metadata.name):
//   daprd and plugd send it on every call, so two Components of the same type served by one
//   process stay apart; calls without the header (a test client, `plugd inspect`) use a default
//   instance;
// - errors as gRPC statuses (`ComponentError`);
// - a clean stop on SIGTERM / SIGINT: the server stops accepting, in-flight calls get a bounded
//   grace period, the socket file is removed, exit code 0.

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
  const folder = args["socket-folder"] || process.env.DAPR_COMPONENT_SOCKETS_FOLDER || process.env.DAPR_COMPONENTS_SOCKETS_FOLDER || DEFAULT_SOCKETS_FOLDER;
  const name = args["socket-name"] || process.env.PLUGD_SOCKET_NAME || defaultName;
  if (!name || name.includes("/")) throw new Error(`invalid socket name ${JSON.stringify(name)}`);
  return { folder, name, socketPath: path.join(folder, `${name}.sock`) };
}

/** Whether some process accepts connections on the Unix socket at `socketPath`. */
function socketAccepts(socketPath) {
  return new Promise((resolve) => {
    const s = net.connect({ path: socketPath });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Removes a socket file nobody serves; refuses to take a socket another process serves. */
async function clearStaleSocket(socketPath) {
  let st;
  try {
    st = fs.lstatSync(socketPath);
  } catch (e) {
    if (e.code === "ENOENT") return;
    throw e;
  }
  if (!st.isSocket()) throw new Error(`${socketPath} exists and is not a socket: not touching it`);
  if (await socketAccepts(socketPath)) throw new Error(`${socketPath} is already served by another process`);
  fs.unlinkSync(socketPath);
  log(`removed the stale socket ${socketPath}`);
}

function log(message) {
  process.stdout.write(`${new Date().toISOString()} ${message}\n`);
}

/**
 * One instance per `x-component-instance` value, created on first use by `create(name)`.
 * Instances live as long as the process: there is no Close call, and a hot reload re-uses the
 * name and calls Init again on the same instance.
 */
class Instances {
  constructor(create) {
    this.create = create;
    this.byName = new Map();
  }

  nameOf(call) {
    const values = call.metadata.get(INSTANCE_HEADER);
    return values.length > 0 ? String(values[0]) : DEFAULT_INSTANCE;
  }

  of(call) {
    const name = this.nameOf(call);
    let instance = this.byName.get(name);
    if (!instance) {
      instance = this.create(name);
      this.byName.set(name, instance);
    }
    return instance;
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

  fs.mkdirSync(folder, { recursive: true });
  await clearStaleSocket(socketPath);
  await new Promise((resolve, reject) => {
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });
  log(`${kind}.${name} serving ${Object.keys(services).join(", ")} on ${socketPath}`);

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping`);
    const timer = setTimeout(() => {
      log(`calls still running after ${SHUTDOWN_GRACE_MS} ms: cancelling them`);
      server.forceShutdown();
    }, SHUTDOWN_GRACE_MS);
    timer.unref();
    server.tryShutdown(() => {
      clearTimeout(timer);
      removeSocket(socketPath);
      log("stopped");
      process.exit(0);
    });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  return { server, socketPath };
}

function removeSocket(socketPath) {
  try {
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
