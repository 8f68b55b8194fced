"use strict";
// The Node.js example components (sdk-examples/node: an output binding and a secret store
// written with @grpc/grpc-js) end to end:
//
// 1. run by plugd as managed components (`--managed-component NAME=node <script>`; nothing is
//    started by hand), used through the official SDK's DaprClient over HTTP and gRPC: binding
//    operations with their answers and errors, two Components on one socket kept apart by
//    `x-component-instance`, secrets single and bulk, the metadata API, `plugd inspect`;
// 2. on their own: the contract seen by a plain gRPC client (reflection v1alpha and v1, Init
//    errors, a failed re-Init, instances created by Init only, status codes), paths kept inside
//    rootPath through symbolic links, `plugd conformance`, the socket's life (name and folder
//    from the environment in plugd's order, a stale socket replaced, a served one or one that
//    cannot be told stale left alone, SIGTERM removes it unless another process replaced it).
//
// Needs `npm ci --prefix sdk-examples/node` (tests/run-all.sh does it) and the plugd binaries.

const { describe, it, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { execFile } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const net = require("node:net");
const { createRequire } = require("node:module");
const path = require("node:path");
const { DaprClient, CommunicationProtocolEnum, LogLevel } = require("@dapr/dapr");

const { BIN_DIR, Env, REPO, componentYaml, httpRequest, startEnv, unixSocketAccepts, waitFor, withLogs } = require("./lib/plugd");

const EXAMPLES = path.join(REPO, "sdk-examples", "node");
const BINDING_JS = path.join(EXAMPLES, "output-binding.js");
const SECRETS_JS = path.join(EXAMPLES, "secret-store.js");

// The examples' own packages: the raw gRPC checks use the same @grpc/grpc-js and proto-loader.
if (!fs.existsSync(path.join(EXAMPLES, "node_modules", "@grpc", "grpc-js"))) {
  throw new Error(`${EXAMPLES}/node_modules is missing: run \`npm ci --prefix sdk-examples/node\``);
}
const examplesRequire = createRequire(path.join(EXAMPLES, "package.json"));
const grpc = examplesRequire("@grpc/grpc-js");
const protoLoader = examplesRequire("@grpc/proto-loader");

const TEST_TIMEOUT_MS = 30_000;
const HOOK_TIMEOUT_MS = 60_000;
const SOCKET_WAIT_MS = 15_000;
const CONFORMANCE_TIMEOUT_MS = 120_000;

// gRPC status codes
const GRPC = { INVALID_ARGUMENT: 3, NOT_FOUND: 5, FAILED_PRECONDITION: 9, INTERNAL: 13 };

// Socket names (= component type suffixes) plugd launches the examples under.
const BINDING_SOCKET = "mybinding";
const SECRETS_SOCKET = "mysecrets";
// Components: two bindings on the one binding process (one folder each), one secret store.
const BINDING_A = "files-a";
const BINDING_B = "files-b";
const SECRETS = "nodesecrets";

const SECRETS_CONTENT = {
  apikey: "k-7c1e",
  db: { user: "admin", password: "pa:ss w0rd", port: 5432 },
  flag: true,
  gone: null,
};

const token = () => crypto.randomUUID().slice(0, 12);

/** A command word for `--managed-component`, quoted the way a shell would read it. */
const shellWord = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The failure of an SDK call: thrown, or resolved as `{error}`. */
async function failureOf(call) {
  let result;
  try {
    result = await call();
  } catch (e) {
    return e instanceof Error ? e : e && e.error ? e.error : e;
  }
  if (result && result.error) return result.error;
  assert.fail(`expected the call to fail, it returned ${JSON.stringify(result)}`);
}

/** Checks an SDK failure against the expected HTTP status / errorCode or gRPC code, and text. */
function assertFailure(proto, e, { status, errorCode, code, message }) {
  if (proto === "http") {
    assert.ok(e instanceof Error, `expected an Error, got ${e}`);
    const outer = JSON.parse(e.message);
    let body = outer.error_msg;
    try {
      body = JSON.parse(body);
    } catch {
      // plain text
    }
    assert.equal(outer.status, status, `HTTP status (body ${JSON.stringify(body)})`);
    assert.equal(body.errorCode, errorCode, `errorCode (body ${JSON.stringify(body)})`);
    if (message) assert.match(body.message, message);
  } else {
    assert.equal(e.name, "ConnectError", `expected a ConnectError, got ${e}`);
    assert.equal(e.code, code, `gRPC code (message ${JSON.stringify(e.rawMessage)})`);
    if (message) assert.match(e.rawMessage, message);
  }
}

/** A binding answer as `{ data: Buffer|parsed JSON, metadata }` whichever protocol gave it. */
function answerData(proto, answer) {
  if (proto === "http") return answer; // the HTTP client parses the JSON body
  return JSON.parse(Buffer.from(answer.data).toString("utf8"));
}

/** Runs a plugd tool (`conformance`, `inspect`) and resolves `{ code, stdout, stderr }`. */
function plugdTool(args, timeoutMs = CONFORMANCE_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    execFile(path.join(BIN_DIR, "plugd"), args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== "number") return reject(new Error(`plugd ${args.join(" ")}: ${err.message}\n${stderr}`));
      resolve({ code: err ? err.code : 0, stdout, stderr });
    });
  });
}

// ------------------------------------------------------------------------------------------
// 1. Run by plugd
// ------------------------------------------------------------------------------------------

describe("the Node.js example components launched by plugd, used through DaprClient", () => {
  let env = null;
  let dirA;
  let dirB;
  let secretsFile;
  const test = (title, fn) => it(title, { timeout: TEST_TIMEOUT_MS }, withLogs(() => env, fn));

  before(async () => {
    const node = process.execPath;
    env = await startEnv("sdkex", {
      managedComponents: true,
      plugdArgs: [
        "--managed-component", `${BINDING_SOCKET}=${shellWord(node)} ${shellWord(BINDING_JS)}`,
        "--managed-component", `${SECRETS_SOCKET}=${shellWord(node)} ${shellWord(SECRETS_JS)}`,
      ],
      resources: {
        "bindings.yaml": (e) => {
          dirA = path.join(e.root, "files-a");
          dirB = path.join(e.root, "files-b");
          return [
            componentYaml(BINDING_A, `bindings.${BINDING_SOCKET}`, { rootPath: dirA }),
            componentYaml(BINDING_B, `bindings.${BINDING_SOCKET}`, { rootPath: dirB }),
          ].join("---\n");
        },
        "secrets.yaml": (e) => {
          secretsFile = path.join(e.root, "secrets.json");
          fs.writeFileSync(secretsFile, JSON.stringify(SECRETS_CONTENT));
          return componentYaml(SECRETS, `secretstores.${SECRETS_SOCKET}`, { secretsFile });
        },
      },
    });
  }, { timeout: HOOK_TIMEOUT_MS });

  after(async () => {
    const problems = env ? await env.stop() : [];
    if (problems.length) assert.fail(problems.join("; "));
  }, { timeout: HOOK_TIMEOUT_MS });

  test("plugd launched both examples: the metadata API lists their Components, ready", async () => {
    // The test started plugd only; the components are plugd's children.
    assert.deepEqual(env.procs.map((p) => p.name), ["plugd"]);
    const md = await env.metadata();
    const byName = Object.fromEntries(md.components.map((c) => [c.name, c]));
    assert.deepEqual(Object.keys(byName).sort(), [BINDING_A, BINDING_B, SECRETS].sort());
    for (const name of [BINDING_A, BINDING_B]) {
      assert.equal(byName[name].type, `bindings.${BINDING_SOCKET}`);
      assert.equal(byName[name].status, "READY", JSON.stringify(byName[name]));
      assert.deepEqual(byName[name].capabilities, ["OUTPUT_BINDING"]);
      assert.equal(byName[name].socket, path.join(env.sockets, `${BINDING_SOCKET}.sock`));
    }
    assert.equal(byName[SECRETS].type, `secretstores.${SECRETS_SOCKET}`);
    assert.equal(byName[SECRETS].status, "READY", JSON.stringify(byName[SECRETS]));
    assert.deepEqual(byName[SECRETS].capabilities, ["MULTIPLE_KEY_VALUES_PER_SECRET"]);
    // What the examples printed reaches plugd's log (relayed as it comes), marked with their
    // socket names.
    for (const line of [
      /\[mybinding\].*bindings instance files-a: files in/,
      /\[mybinding\].*bindings instance files-b: files in/,
      /\[mysecrets\].*secretstores instance nodesecrets: 3 secrets in/,
    ]) {
      await waitFor(`${line} in plugd's log`, 5000, () => line.test(env.plugd().log()));
    }
  });

  test("plugd inspect sees what plugd sees in the sockets folder", async () => {
    const { code, stdout, stderr } = await plugdTool(["inspect", "--sockets-folder", env.sockets, "--json"], 20_000);
    assert.equal(code, 0, `plugd inspect: ${stdout}\n${stderr}`);
    const bySocket = Object.fromEntries(JSON.parse(stdout).map((r) => [path.basename(r.socket), r]));
    const b = bySocket[`${BINDING_SOCKET}.sock`];
    const s = bySocket[`${SECRETS_SOCKET}.sock`];
    assert.ok(b && s, stdout);
    assert.equal(b.reachable, true);
    assert.equal(b.reflection, "v1alpha");
    assert.deepEqual(b.services, ["dapr.proto.components.v1.OutputBinding"]);
    // An output binding has no features; its operations are listed instead.
    assert.deepEqual(b.kinds.map((k) => [k.kind, k.features, k.operations]), [["output-binding", [], ["create", "get", "delete", "list"]]]);
    assert.equal(b.kinds[0].ping_error, null);
    assert.deepEqual(s.services, ["dapr.proto.components.v1.SecretStore"]);
    assert.deepEqual(s.kinds.map((k) => [k.kind, k.features]), [["secretstore", ["MULTIPLE_KEY_VALUES_PER_SECRET"]]]);
  });

  test("HTTP: a binding's answer carries the component's content type and metadata", async () => {
    const fileName = `raw/${token()}.txt`;
    const created = await httpRequest(env.httpPort, "POST", `/v1.0/bindings/${BINDING_A}`, {
      body: JSON.stringify({ operation: "create", data: "plain words", metadata: { fileName } }),
      headers: { "content-type": "application/json" },
    });
    assert.equal(created.status, 200, created.body.toString());
    assert.equal(created.headers["content-type"], "application/json");
    assert.equal(created.headers["metadata.filename"], fileName);
    assert.deepEqual(JSON.parse(created.body), { fileName, size: 13 });
    // Dapr hands `data` to the binding as JSON: the string keeps its quotes.
    assert.equal(fs.readFileSync(path.join(dirA, fileName), "utf8"), '"plain words"');

    const got = await httpRequest(env.httpPort, "POST", `/v1.0/bindings/${BINDING_A}`, {
      body: JSON.stringify({ operation: "get", metadata: { fileName } }),
    });
    assert.equal(got.status, 200);
    assert.equal(got.headers["content-type"], "text/plain");
    assert.equal(got.headers["metadata.size"], "13");
    assert.ok(!Number.isNaN(Date.parse(got.headers["metadata.modified"])), JSON.stringify(got.headers));
    assert.equal(got.body.toString(), '"plain words"');

    // delete answers neither data nor metadata: 204.
    const deleted = await httpRequest(env.httpPort, "POST", `/v1.0/bindings/${BINDING_A}`, {
      body: JSON.stringify({ operation: "delete", metadata: { fileName } }),
    });
    assert.equal(deleted.status, 204);
  });

  for (const { name: proto, protocol } of [
    { name: "http", protocol: CommunicationProtocolEnum.HTTP },
    { name: "grpc", protocol: CommunicationProtocolEnum.GRPC },
  ]) {
    describe(`DaprClient over ${proto}`, () => {
      let client;

      before(() => {
        client = new DaprClient({
          daprHost: "127.0.0.1",
          daprPort: String(proto === "http" ? env.httpPort : env.grpcPort),
          communicationProtocol: protocol,
          logger: env.sdkLogger(LogLevel.Info),
        });
      });

      after(async () => {
        if (client) await client.stop();
      });

      test("metadata.get() lists the examples' Components", async () => {
        const md = await client.metadata.get();
        const types = Object.fromEntries(md.components.map((c) => [c.name, c.type]));
        assert.deepEqual(types, {
          [BINDING_A]: `bindings.${BINDING_SOCKET}`,
          [BINDING_B]: `bindings.${BINDING_SOCKET}`,
          [SECRETS]: `secretstores.${SECRETS_SOCKET}`,
        });
      });

      test("binding: create, get, list, delete; files on disk", async () => {
        const t = token();
        const fileName = `${proto}/${t}/doc.json`;
        const doc = { hello: "plugd", proto, n: [1, 2, 3] };
        const size = Buffer.byteLength(JSON.stringify(doc));

        const created = await client.binding.send(BINDING_A, "create", doc, { fileName });
        assert.deepEqual(answerData(proto, created), { fileName, size });
        if (proto === "grpc") assert.deepEqual(created.metadata, { fileName, size: String(size) });
        assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dirA, fileName), "utf8")), doc, "the file on disk");

        const got = await client.binding.send(BINDING_A, "get", undefined, { fileName });
        assert.deepEqual(answerData(proto, got), doc);
        if (proto === "grpc") {
          assert.equal(got.metadata.fileName, fileName);
          assert.equal(got.metadata.size, String(size));
        }

        // No fileName: the binding names the file (a UUID) and says so.
        const named = answerData(proto, await client.binding.send(BINDING_A, "create", { auto: t }));
        assert.match(named.fileName, /^[0-9a-f-]{36}$/);
        assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dirA, named.fileName), "utf8")), { auto: t });

        const other = `${proto}/${t}/other.json`;
        await client.binding.send(BINDING_A, "create", [t], { fileName: other });
        const listed = answerData(proto, await client.binding.send(BINDING_A, "list", undefined, { prefix: `${proto}/${t}/` }));
        assert.deepEqual(listed, [fileName, other]);
        const all = answerData(proto, await client.binding.send(BINDING_A, "list", undefined, {}));
        assert.ok(all.includes(named.fileName) && all.includes(fileName), JSON.stringify(all));

        await client.binding.send(BINDING_A, "delete", undefined, { fileName });
        assert.equal(fs.existsSync(path.join(dirA, fileName)), false, "deleted from disk");
        assert.deepEqual(answerData(proto, await client.binding.send(BINDING_A, "list", undefined, { prefix: `${proto}/${t}/` })), [other]);
      });

      test("binding errors: a missing file, an escaping path, an unknown operation", async () => {
        const missing = `${proto}/${token()}/none.json`;
        for (const op of ["get", "delete"]) {
          const e = await failureOf(() => client.binding.send(BINDING_A, op, undefined, { fileName: missing }));
          assertFailure(proto, e, { status: 500, errorCode: "ERR_INVOKE_OUTPUT_BINDING", code: GRPC.INTERNAL, message: /not found/ });
        }
        const escaping = await failureOf(() => client.binding.send(BINDING_A, "create", { x: 1 }, { fileName: "../outside.json" }));
        assertFailure(proto, escaping, {
          status: 500,
          errorCode: "ERR_INVOKE_OUTPUT_BINDING",
          code: GRPC.INTERNAL,
          message: /must be a relative path inside rootPath/,
        });
        assert.equal(fs.existsSync(path.join(env.root, "outside.json")), false);
        const noName = await failureOf(() => client.binding.send(BINDING_A, "get", undefined, {}));
        assertFailure(proto, noName, { status: 500, errorCode: "ERR_INVOKE_OUTPUT_BINDING", code: GRPC.INTERNAL, message: /fileName is required/ });
        // plugd checks the operation against the binding's ListOperations answer.
        const unknown = await failureOf(() => client.binding.send(BINDING_A, "frobnicate", undefined, {}));
        assertFailure(proto, unknown, {
          status: 500,
          errorCode: "ERR_INVOKE_OUTPUT_BINDING",
          code: GRPC.INTERNAL,
          message: /create, get, delete, list/,
        });
      });

      test("two Components on one process stay apart (x-component-instance)", async () => {
        const fileName = `${proto}/${token()}.json`;
        await client.binding.send(BINDING_A, "create", { only: "a" }, { fileName });
        assert.equal(fs.existsSync(path.join(dirA, fileName)), true);
        assert.equal(fs.existsSync(path.join(dirB, fileName)), false);
        const e = await failureOf(() => client.binding.send(BINDING_B, "get", undefined, { fileName }));
        assertFailure(proto, e, { status: 500, errorCode: "ERR_INVOKE_OUTPUT_BINDING", code: GRPC.INTERNAL, message: /not found/ });
        const inB = answerData(proto, await client.binding.send(BINDING_B, "list", undefined, { prefix: `${proto}/` }));
        assert.deepEqual(inB, []);
        await client.binding.send(BINDING_B, "create", { only: "b" }, { fileName });
        assert.deepEqual(answerData(proto, await client.binding.send(BINDING_A, "get", undefined, { fileName })), { only: "a" });
        assert.deepEqual(answerData(proto, await client.binding.send(BINDING_B, "get", undefined, { fileName })), { only: "b" });
      });

      test("secrets: get, getBulk, an unknown secret", async () => {
        assert.deepEqual(await client.secret.get(SECRETS, "apikey"), { apikey: "k-7c1e" });
        const db = { user: "admin", password: "pa:ss w0rd", port: "5432" };
        const gotDb = await client.secret.get(SECRETS, "db");
        if (proto === "http") {
          assert.deepEqual(gotDb, db);
        } else {
          // The SDK's gRPC secret.get keeps only the first entry of the answer's map (3.18.0).
          const entries = Object.entries(gotDb);
          assert.equal(entries.length, 1, JSON.stringify(gotDb));
          assert.equal(db[entries[0][0]], entries[0][1], JSON.stringify(gotDb));
        }
        assert.deepEqual(await client.secret.get(SECRETS, "flag"), { flag: "true" });
        assert.deepEqual(await client.secret.getBulk(SECRETS), {
          apikey: { apikey: "k-7c1e" },
          db: { user: "admin", password: "pa:ss w0rd", port: "5432" },
          flag: { flag: "true" },
        });
        for (const missing of ["no-such-secret", "gone"]) {
          const e = await failureOf(() => client.secret.get(SECRETS, missing));
          assertFailure(proto, e, { status: 500, errorCode: "ERR_SECRET_GET", code: GRPC.INTERNAL, message: new RegExp(`${missing}.*not found`) });
        }
      });
    });
  }

  test("a changed secrets file is read on the next call, without a restart", async () => {
    const client = new DaprClient({
      daprHost: "127.0.0.1",
      daprPort: String(env.httpPort),
      communicationProtocol: CommunicationProtocolEnum.HTTP,
      logger: env.sdkLogger(LogLevel.Info),
    });
    try {
      const rotated = `k-${token()}`;
      fs.writeFileSync(secretsFile, JSON.stringify({ ...SECRETS_CONTENT, apikey: rotated }));
      assert.deepEqual(await client.secret.get(SECRETS, "apikey"), { apikey: rotated });
    } finally {
      fs.writeFileSync(secretsFile, JSON.stringify(SECRETS_CONTENT));
      await client.stop();
    }
  });
});


// ------------------------------------------------------------------------------------------
// 2. On their own
// ------------------------------------------------------------------------------------------

/** A gRPC client of `service` (in `file` under the repo's proto/proto) on a Unix socket. */
function componentClient(file, service, socketPath) {
  const def = protoLoader.loadSync(`dapr/proto/components/v1/${file}`, {
    includeDirs: [path.join(REPO, "proto", "proto")],
    keepCase: true,
    defaults: true,
  });
  const Client = grpc.loadPackageDefinition(def).dapr.proto.components.v1[service];
  return new Client(`unix:${socketPath}`, grpc.credentials.createInsecure());
}

/** Calls `client.method(request)` with `x-component-instance: instance` (none when null). */
function call(client, method, request, instance = null) {
  const md = new grpc.Metadata();
  if (instance !== null) md.set("x-component-instance", instance);
  return new Promise((resolve, reject) => {
    client[method](request, md, { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** The gRPC status code of a call that must fail, with its message matched. */
async function failsWith(promise, code, message) {
  let res;
  try {
    res = await promise;
  } catch (e) {
    assert.equal(e.code, code, `status ${e.code} ${e.details}`);
    if (message) assert.match(e.details, message);
    return;
  }
  assert.fail(`expected status ${code}, got ${JSON.stringify(res)}`);
}

/** The services listed by reflection `version` (`v1alpha` or `v1`) on `socketPath`. */
function reflectionServices(version, socketPath) {
  const protoPath = path.join(EXAMPLES, "node_modules", "@grpc", "reflection", "build", "proto", "grpc", "reflection", version, "reflection.proto");
  const def = protoLoader.loadSync(protoPath, { keepCase: true, defaults: true, oneofs: true });
  const Reflection = grpc.loadPackageDefinition(def).grpc.reflection[version].ServerReflection;
  const client = new Reflection(`unix:${socketPath}`, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const stream = client.ServerReflectionInfo({ deadline: Date.now() + 5000 });
    stream.on("data", (res) => {
      stream.end();
      client.close();
      if (res.error_response) reject(new Error(res.error_response.error_message));
      else resolve(res.list_services_response.service.map((s) => s.name).sort());
    });
    stream.on("error", (e) => {
      client.close();
      reject(e);
    });
    stream.write({ list_services: "*" });
  });
}

describe("the Node.js example components on their own", () => {
  let env = null;
  const test = (title, fn, opts = {}) => it(title, { timeout: TEST_TIMEOUT_MS, ...opts }, withLogs(() => env, fn));

  before(() => {
    env = new Env("sdkex-solo");
  });

  after(async () => {
    const problems = env ? await env.stop() : [];
    if (problems.length) assert.fail(problems.join("; "));
  }, { timeout: HOOK_TIMEOUT_MS });

  /** Starts `script` on `<env.sockets>/<name>.sock` and waits until it accepts. */
  async function startExample(script, name, { viaEnv = false } = {}) {
    const argv = viaEnv ? [process.execPath, script] : [process.execPath, script, "--socket-name", name, "--socket-folder", env.sockets];
    const extra = viaEnv ? { DAPR_COMPONENTS_SOCKETS_FOLDER: env.sockets, PLUGD_SOCKET_NAME: name } : {};
    const proc = env.spawn(`${name}-${token()}`, argv, extra);
    const socketPath = path.join(env.sockets, `${name}.sock`);
    await waitFor(`${path.basename(script)} accepting on ${socketPath}`, SOCKET_WAIT_MS, () => unixSocketAccepts(socketPath), { proc });
    return { proc, socketPath };
  }

  /** SIGTERM: the process exits 0 and its socket is gone. */
  async function stopCleanly({ proc, socketPath }) {
    const r = await proc.stop();
    assert.equal(r.killed, false, `${proc.name} ignored SIGTERM`);
    assert.equal(r.code, 0, `${proc.name} exit after SIGTERM: ${JSON.stringify(r)}\n${proc.log()}`);
    assert.equal(fs.existsSync(socketPath), false, `${socketPath} removed at exit`);
  }

  test("output binding, plain gRPC: reflection, Init, ListOperations, Invoke, Ping, instances", async () => {
    const started = await startExample(BINDING_JS, "rawbinding", { viaEnv: true });
    const { socketPath } = started;
    assert.deepEqual(await reflectionServices("v1alpha", socketPath), ["dapr.proto.components.v1.OutputBinding"]);
    assert.deepEqual(await reflectionServices("v1", socketPath), ["dapr.proto.components.v1.OutputBinding"]);

    const c = componentClient("bindings.proto", "OutputBinding", socketPath);
    try {
      // Before Init: the operations and Ping answer, an Invoke is refused.
      assert.deepEqual((await call(c, "ListOperations", {}, "one")).operations, ["create", "get", "delete", "list"]);
      await call(c, "Ping", {}, "one");
      await failsWith(call(c, "Invoke", { operation: "list" }, "one"), GRPC.FAILED_PRECONDITION, /one is not initialised/);
      await failsWith(call(c, "Init", { metadata: { properties: {} } }, "one"), GRPC.INVALID_ARGUMENT, /rootPath is required/);

      const one = path.join(env.root, "one");
      const two = path.join(env.root, "two");
      await call(c, "Init", { metadata: { properties: { rootPath: one } } }, "one");
      await call(c, "Init", { metadata: { properties: { rootPath: two } } }, "two");
      const created = await call(c, "Invoke", { operation: "create", data: Buffer.from("bytes\0here"), metadata: { fileName: "d/b.bin" } }, "one");
      assert.equal(created.content_type, "application/json");
      assert.deepEqual(created.metadata, { fileName: "d/b.bin", size: "10" });
      assert.deepEqual(fs.readFileSync(path.join(one, "d", "b.bin")), Buffer.from("bytes\0here"));
      const got = await call(c, "Invoke", { operation: "get", metadata: { fileName: "d/b.bin" } }, "one");
      assert.deepEqual(got.data, Buffer.from("bytes\0here"));
      assert.equal(got.content_type, "application/octet-stream");
      await failsWith(call(c, "Invoke", { operation: "get", metadata: { fileName: "d/b.bin" } }, "two"), GRPC.NOT_FOUND, /not found/);
      await failsWith(call(c, "Invoke", { operation: "get", metadata: { fileName: "d/b.bin" } }), GRPC.FAILED_PRECONDITION);
      await failsWith(call(c, "Invoke", { operation: "frob" }, "one"), GRPC.INVALID_ARGUMENT, /unsupported operation "frob"; supported: create, get, delete, list/);
      await failsWith(call(c, "Invoke", { operation: "get", metadata: { fileName: "/etc/passwd" } }, "one"), GRPC.INVALID_ARGUMENT);
      await failsWith(call(c, "Invoke", { operation: "get", metadata: { fileName: "d" } }, "one"), GRPC.INVALID_ARGUMENT, /is a folder/);
      const deleted = await call(c, "Invoke", { operation: "delete", metadata: { fileName: "d/b.bin" } }, "one");
      assert.deepEqual([deleted.data.length, deleted.metadata, deleted.content_type], [0, {}, ""]);
      await failsWith(call(c, "Invoke", { operation: "delete", metadata: { fileName: "d/b.bin" } }, "one"), GRPC.NOT_FOUND);
      // Ping reports a folder that went away.
      fs.rmSync(two, { recursive: true });
      await failsWith(call(c, "Ping", {}, "two"), 14 /* UNAVAILABLE */, /not usable/);
      await call(c, "Ping", {}, "one");
    } finally {
      c.close();
    }
    await stopCleanly(started);
  });

  test("secret store, plain gRPC: reflection, Init, Features, Get, BulkGet, Ping, instances", async () => {
    const started = await startExample(SECRETS_JS, "rawsecrets", { viaEnv: true });
    const { socketPath } = started;
    assert.deepEqual(await reflectionServices("v1alpha", socketPath), ["dapr.proto.components.v1.SecretStore"]);
    assert.deepEqual(await reflectionServices("v1", socketPath), ["dapr.proto.components.v1.SecretStore"]);

    const fileA = path.join(env.root, "a.json");
    const fileB = path.join(env.root, "b.json");
    fs.writeFileSync(fileA, JSON.stringify({ k: "from-a", multi: { x: 1, y: { z: 2 } } }));
    fs.writeFileSync(fileB, JSON.stringify({ k: "from-b" }));
    const c = componentClient("secretstore.proto", "SecretStore", socketPath);
    try {
      assert.deepEqual((await call(c, "Features", {}, "a")).features, ["MULTIPLE_KEY_VALUES_PER_SECRET"]);
      await failsWith(call(c, "Get", { key: "k" }, "a"), GRPC.FAILED_PRECONDITION);
      await failsWith(call(c, "Init", { metadata: { properties: {} } }, "a"), GRPC.INVALID_ARGUMENT, /secretsFile is required/);
      await failsWith(call(c, "Init", { metadata: { properties: { secretsFile: path.join(env.root, "none.json") } } }, "a"), GRPC.INVALID_ARGUMENT, /cannot read/);
      fs.writeFileSync(path.join(env.root, "bad.json"), "{ not json: SECRET");
      const bad = call(c, "Init", { metadata: { properties: { secretsFile: path.join(env.root, "bad.json") } } }, "a");
      await failsWith(bad, GRPC.INVALID_ARGUMENT, /is not valid JSON/);
      await bad.catch((e) => assert.doesNotMatch(e.details, /SECRET/, "the file's content is not quoted in errors"));

      await call(c, "Init", { metadata: { properties: { secretsFile: fileA } } }, "a");
      await call(c, "Init", { metadata: { properties: { secretsFile: fileB } } }, "b");
      assert.deepEqual((await call(c, "Get", { key: "k" }, "a")).data, { k: "from-a" });
      assert.deepEqual((await call(c, "Get", { key: "k" }, "b")).data, { k: "from-b" });
      assert.deepEqual((await call(c, "Get", { key: "multi", metadata: { namespace: "default" } }, "a")).data, { x: "1", y: '{"z":2}' });
      await failsWith(call(c, "Get", { key: "multi" }, "b"), GRPC.NOT_FOUND, /"multi" not found/);
      await failsWith(call(c, "Get", { key: "" }, "a"), GRPC.INVALID_ARGUMENT);
      const bulk = (await call(c, "BulkGet", {}, "a")).data;
      assert.deepEqual(Object.fromEntries(Object.entries(bulk).map(([k, v]) => [k, v.secrets])), { k: { k: "from-a" }, multi: { x: "1", y: '{"z":2}' } });
      await call(c, "Ping", {}, "a");
      fs.rmSync(fileB);
      await failsWith(call(c, "Ping", {}, "b"), 14 /* UNAVAILABLE */, /cannot read/);
      await failsWith(call(c, "Get", { key: "k" }, "b"), 14 /* UNAVAILABLE */);
    } finally {
      c.close();
    }
    await stopCleanly(started);
  });

  test("a stale socket is replaced, a served one is left alone, SIGTERM removes it", async () => {
    // SIGKILL leaves the socket file behind with nobody accepting on it.
    const first = await startExample(BINDING_JS, "lifecycle");
    first.proc.child.kill("SIGKILL");
    await first.proc.exitedPromise;
    assert.equal(fs.lstatSync(first.socketPath).isSocket(), true, "the killed process left its socket");
    assert.equal(await unixSocketAccepts(first.socketPath), false);

    const second = await startExample(BINDING_JS, "lifecycle");
    assert.match(second.proc.log(), /removed the stale socket/);

    // A third copy on the same socket refuses to take it over, and the second keeps serving.
    const third = env.spawn(`lifecycle-${token()}`, [process.execPath, BINDING_JS, "--socket-name", "lifecycle", "--socket-folder", env.sockets]);
    const exit = await third.exitedPromise;
    assert.equal(exit.code, 1, third.log());
    assert.match(third.log(), /already served by another process/);
    assert.equal(await unixSocketAccepts(second.socketPath), true);

    await stopCleanly(second);
  });

  test("output binding: symbolic links never lead reads or writes out of rootPath", async () => {
    const started = await startExample(BINDING_JS, "symlinks");
    const root = path.join(env.root, "sym-root");
    const outside = path.join(env.root, "sym-outside");
    fs.mkdirSync(root, { recursive: true });
    fs.mkdirSync(outside, { recursive: true });
    fs.writeFileSync(path.join(outside, "secret.txt"), "outside secret");
    fs.symlinkSync(outside, path.join(root, "link"));
    fs.symlinkSync(path.join(outside, "secret.txt"), path.join(root, "file.txt"));
    fs.mkdirSync(path.join(root, "real"));
    fs.symlinkSync(path.join(root, "real"), path.join(root, "inner")); // a link that stays inside
    // rootPath may itself be a link: it is resolved once, at Init.
    const rootLink = path.join(env.root, "sym-root-link");
    fs.symlinkSync(root, rootLink);
    const outsideBefore = () => fs.readdirSync(outside).sort();
    const refused = async (promise, what) => {
      let res;
      try {
        res = await promise;
      } catch (e) {
        assert.ok([GRPC.INVALID_ARGUMENT, GRPC.NOT_FOUND].includes(e.code), `${what}: status ${e.code} ${e.details}`);
        return;
      }
      assert.fail(`${what}: expected a refusal, got ${JSON.stringify(res)}`);
    };

    const c = componentClient("bindings.proto", "OutputBinding", started.socketPath);
    try {
      await call(c, "Init", { metadata: { properties: { rootPath: rootLink } } }, "sym");
      const data = Buffer.from("written");
      for (const fileName of ["link/secret.txt", "file.txt", "link/none.txt", "inner/x.txt"]) {
        await refused(call(c, "Invoke", { operation: "get", metadata: { fileName } }, "sym"), `get ${fileName}`);
      }
      for (const fileName of ["link/new.txt", "link/sub/new.txt", "file.txt", "link/secret.txt", "inner/x.txt"]) {
        await refused(call(c, "Invoke", { operation: "create", data, metadata: { fileName } }, "sym"), `create ${fileName}`);
      }
      for (const fileName of ["file.txt", "link/secret.txt"]) {
        await refused(call(c, "Invoke", { operation: "delete", metadata: { fileName } }, "sym"), `delete ${fileName}`);
      }
      // Nothing written, created or removed outside; the links are still links.
      assert.deepEqual(outsideBefore(), ["secret.txt"]);
      assert.equal(fs.readFileSync(path.join(outside, "secret.txt"), "utf8"), "outside secret");
      assert.equal(fs.lstatSync(path.join(root, "file.txt")).isSymbolicLink(), true);
      assert.equal(fs.existsSync(path.join(root, "real", "x.txt")), false);
      // Real folders work as before, created under the real root; links are not listed.
      const created = await call(c, "Invoke", { operation: "create", data, metadata: { fileName: "real/sub/ok.txt" } }, "sym");
      assert.equal(created.metadata.fileName, "real/sub/ok.txt");
      assert.equal(fs.readFileSync(path.join(root, "real", "sub", "ok.txt"), "utf8"), "written");
      assert.deepEqual((await call(c, "Invoke", { operation: "get", metadata: { fileName: "real/sub/ok.txt" } }, "sym")).data, data);
      const listed = await call(c, "Invoke", { operation: "list", metadata: {} }, "sym");
      assert.deepEqual(JSON.parse(listed.data.toString()), ["real/sub/ok.txt"]);
    } finally {
      c.close();
    }
    await stopCleanly(started);
  });

  test("a failed re-Init leaves the instance uninitialised; only Init creates instances", async () => {
    const binding = await startExample(BINDING_JS, "reinit-binding");
    const secrets = await startExample(SECRETS_JS, "reinit-secrets");
    const b = componentClient("bindings.proto", "OutputBinding", binding.socketPath);
    const s = componentClient("secretstore.proto", "SecretStore", secrets.socketPath);
    try {
      // Never initialised: FAILED_PRECONDITION, except Ping (the process is alive) and the
      // Init-independent ListOperations / Features.
      await failsWith(call(b, "Invoke", { operation: "list" }, "ghost"), GRPC.FAILED_PRECONDITION, /binding instance ghost is not initialised/);
      await failsWith(call(s, "Get", { key: "k" }, "ghost"), GRPC.FAILED_PRECONDITION, /secret store instance ghost is not initialised/);
      await failsWith(call(s, "BulkGet", {}, "ghost"), GRPC.FAILED_PRECONDITION);
      await call(b, "Ping", {}, "ghost");
      await call(s, "Ping", {}, "ghost");
      assert.deepEqual((await call(b, "ListOperations", {}, "ghost")).operations, ["create", "get", "delete", "list"]);
      assert.deepEqual((await call(s, "Features", {}, "ghost")).features, ["MULTIPLE_KEY_VALUES_PER_SECRET"]);
      // Pinging it did not make it exist.
      await failsWith(call(b, "Invoke", { operation: "list" }, "ghost"), GRPC.FAILED_PRECONDITION);

      const folder = path.join(env.root, "reinit-files");
      await call(b, "Init", { metadata: { properties: { rootPath: folder } } }, "re");
      await call(b, "Invoke", { operation: "create", data: Buffer.from("x"), metadata: { fileName: "a.txt" } }, "re");
      fs.writeFileSync(path.join(env.root, "not-a-folder"), "");
      await failsWith(call(b, "Init", { metadata: { properties: { rootPath: path.join(env.root, "not-a-folder") } } }, "re"), GRPC.INVALID_ARGUMENT, /not a usable folder/);
      await failsWith(call(b, "Invoke", { operation: "get", metadata: { fileName: "a.txt" } }, "re"), GRPC.FAILED_PRECONDITION, /re is not initialised/);
      await call(b, "Ping", {}, "re");
      await call(b, "Init", { metadata: { properties: { rootPath: folder } } }, "re");
      assert.deepEqual((await call(b, "Invoke", { operation: "get", metadata: { fileName: "a.txt" } }, "re")).data, Buffer.from("x"));

      const good = path.join(env.root, "reinit-secrets.json");
      fs.writeFileSync(good, JSON.stringify({ k: "v" }));
      await call(s, "Init", { metadata: { properties: { secretsFile: good } } }, "re");
      assert.deepEqual((await call(s, "Get", { key: "k" }, "re")).data, { k: "v" });
      await failsWith(call(s, "Init", { metadata: { properties: { secretsFile: path.join(env.root, "none.json") } } }, "re"), GRPC.INVALID_ARGUMENT, /cannot read/);
      await failsWith(call(s, "Get", { key: "k" }, "re"), GRPC.FAILED_PRECONDITION, /re is not initialised/);
      await call(s, "Ping", {}, "re");
      await call(s, "Init", { metadata: { properties: { secretsFile: good } } }, "re");
      assert.deepEqual((await call(s, "Get", { key: "k" }, "re")).data, { k: "v" });
    } finally {
      b.close();
      s.close();
    }
    await stopCleanly(binding);
    await stopCleanly(secrets);
  });

  test("the socket folder comes from DAPR_COMPONENTS_SOCKETS_FOLDER, then the singular spellings", async () => {
    const plural = path.join(env.root, "sock-plural");
    const singular = path.join(env.root, "sock-singular");
    const oldest = path.join(env.root, "sock-oldest");
    for (const [vars, expected] of [
      [{ DAPR_COMPONENTS_SOCKETS_FOLDER: plural, DAPR_COMPONENT_SOCKETS_FOLDER: singular, DAPR_COMPONENT_SOCKET_FOLDER: oldest }, plural],
      [{ DAPR_COMPONENTS_SOCKETS_FOLDER: "", DAPR_COMPONENT_SOCKETS_FOLDER: singular, DAPR_COMPONENT_SOCKET_FOLDER: oldest }, singular],
      [{ DAPR_COMPONENTS_SOCKETS_FOLDER: "", DAPR_COMPONENT_SOCKETS_FOLDER: "", DAPR_COMPONENT_SOCKET_FOLDER: oldest }, oldest],
    ]) {
      const proc = env.spawn(`envorder-${token()}`, [process.execPath, SECRETS_JS], { ...vars, PLUGD_SOCKET_NAME: "envorder" });
      const socketPath = path.join(expected, "envorder.sock");
      await waitFor(`a socket at ${socketPath}`, SOCKET_WAIT_MS, () => unixSocketAccepts(socketPath), { proc });
      await stopCleanly({ proc, socketPath });
    }
  });

  test("a socket whose listener does not accept (backlog full) is not taken over", async () => {
    const socketPath = path.join(env.sockets, "busy.sock");
    // A listener with the smallest backlog whose event loop is then blocked: it never accepts.
    const script = `
      const net = require("node:net");
      net.createServer().listen({ path: ${JSON.stringify(socketPath)}, backlog: 1 }, () => {
        console.log("listening");
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000);
      });`;
    const listener = env.spawn(`busy-listener-${token()}`, [process.execPath, "-e", script]);
    const held = [];
    try {
      await waitFor("the never-accepting listener", SOCKET_WAIT_MS, () => /listening/.test(listener.log()), { proc: listener });
      // Fill its backlog: connects succeed until the queue is full, then EAGAIN.
      let full = false;
      for (let i = 0; i < 64 && !full; i++) {
        const outcome = await new Promise((resolve) => {
          const sock = net.connect({ path: socketPath });
          held.push(sock);
          sock.once("connect", () => resolve("connected"));
          sock.once("error", (e) => resolve(e.code));
        });
        if (outcome === "EAGAIN") full = true;
        else assert.equal(outcome, "connected");
      }
      assert.ok(full, "the listener's backlog never filled");
      const ino = fs.lstatSync(socketPath).ino;

      const comp = env.spawn(`busy-${token()}`, [process.execPath, BINDING_JS, "--socket-name", "busy", "--socket-folder", env.sockets]);
      const exit = await comp.exitedPromise;
      assert.equal(exit.code, 1, comp.log());
      assert.match(comp.log(), /busy\.sock exists and a connect to it failed with EAGAIN: it may be served by another process, not taking it over/);
      assert.doesNotMatch(comp.log(), /removed the stale socket/);
      assert.equal(fs.lstatSync(socketPath).ino, ino, "the listener's socket file is left in place");
      assert.equal(listener.exited(), false);
    } finally {
      for (const sock of held) sock.destroy();
      listener.child.kill("SIGKILL");
      await listener.exitedPromise;
    }
  });

  test("at SIGTERM a socket another process put in its place is left alone", async () => {
    const started = await startExample(BINDING_JS, "replaced");
    // Another process takes the name over (its own socket file at the same path).
    fs.unlinkSync(started.socketPath);
    const other = net.createServer((s) => s.destroy());
    await new Promise((resolve, reject) => {
      other.once("error", reject);
      other.listen(started.socketPath, resolve);
    });
    try {
      const ino = fs.lstatSync(started.socketPath).ino;
      const r = await started.proc.stop();
      assert.equal(r.killed, false, "ignored SIGTERM");
      assert.equal(r.code, 0, started.proc.log());
      assert.match(started.proc.log(), /no longer this process's socket: left alone/);
      assert.equal(fs.lstatSync(started.socketPath).ino, ino, "the other process's socket file is still there");
      assert.equal(await unixSocketAccepts(started.socketPath), true);
    } finally {
      await new Promise((resolve) => other.close(resolve));
    }
  });

  for (const [script, name, metadata] of [
    [BINDING_JS, "confbinding", (dir) => ({ rootPath: path.join(dir, "files") })],
    [SECRETS_JS, "confsecrets", (dir) => {
      const file = path.join(dir, "conformance-secrets.json");
      fs.writeFileSync(file, JSON.stringify({ first: "one", second: { a: "1", b: "2" } }));
      return { secretsFile: file };
    }],
  ]) {
    // (While the suite is a placeholder, its expected failure is not followed by the logs.)
    const body = async () => {
      const started = await startExample(script, name);
      const args = ["conformance", "--socket", started.socketPath, "--json"];
      for (const [k, v] of Object.entries(metadata(env.root))) args.push("--metadata", `${k}=${v}`);
      const { code, stdout, stderr } = await plugdTool(args);
      let report;
      try {
        report = JSON.parse(stdout);
      } catch (e) {
        assert.fail(`plugd conformance printed no JSON (exit ${code}): ${stdout}\n${stderr}`);
      }
      const failed = report.results.filter((r) => r.outcome === "fail");
      assert.deepEqual(failed, [], `failed checks:\n${JSON.stringify(failed, null, 2)}`);
      assert.ok(report.results.some((r) => r.outcome === "pass"), stdout);
      assert.equal(code, 0, `plugd conformance exit code\n${stderr}`);
      await stopCleanly(started);
    };
    it(`plugd conformance passes on ${path.basename(script)}`, { timeout: CONFORMANCE_TIMEOUT_MS + 10_000 }, withLogs(() => env, body));
  }
});
