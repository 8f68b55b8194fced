"use strict";
// DaprClient (@dapr/dapr, unmodified) in HTTP mode and in gRPC mode against one real plugd:
// state on state.sqlite (plugd-sqlite), publish / publishBulk on pubsub.memory (plugd-memory,
// delivered to a DaprServer subscriber in this process, so every publish is checked by what
// arrives), an output binding on bindings.files and a secret store on secretstores.files
// (plugd-files). What the SDK sends and expects: /work/shared/spec/runtime-api-wire.md §1.3.

const { describe, it, before, after } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { DaprClient, DaprServer, CommunicationProtocolEnum, LogLevel } = require("@dapr/dapr");

const { componentYaml, freePort, httpRequest, startEnv, waitFor, withLogs } = require("./lib/plugd");

const STORE = "statestore";
const PUBSUB = "pubsub";
const BINDING = "files";
const SECRETS = "secretstore";
const TEST_TIMEOUT_MS = 30_000;
const DELIVERY_WAIT_MS = 15_000;
// Start-up: components and plugd (20 s each at most), the SDK's sidecar probe (30 s at most).
const HOOK_TIMEOUT_MS = 90_000;

// gRPC status codes (ConnectError.code)
const GRPC = { INVALID_ARGUMENT: 3, NOT_FOUND: 5, ABORTED: 10, INTERNAL: 13 };

const SECRETS_FILE_CONTENT = {
  apikey: "k-1f3a9",
  db: { user: "admin", password: "pa:ss w0rd", port: 5432 },
};

const PROTOCOLS = [
  { name: "http", protocol: CommunicationProtocolEnum.HTTP },
  { name: "grpc", protocol: CommunicationProtocolEnum.GRPC },
];

let env = null;
let subscriber = null;
let outDir = null;
/** topic → every payload the DaprServer subscriber received on it, in order */
const received = {};

const token = () => crypto.randomUUID().slice(0, 12);

/**
 * The failure of an SDK call, whichever way the SDK reports it: some methods resolve with
 * `{error}` (HTTP state.save/delete, HTTP publish), others throw an Error or a ConnectError, and
 * gRPC publish throws `{error: ConnectError}`.
 */
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

/** The HTTP client's error: `Error(JSON{error: statusText, error_msg: body, status})`. */
function httpFailure(e) {
  assert.ok(e instanceof Error, `expected an Error, got ${e}`);
  const outer = JSON.parse(e.message);
  let body = outer.error_msg;
  try {
    body = JSON.parse(body);
  } catch {
    // plain text
  }
  return { status: outer.status, body };
}

/** Checks a failure against the expected HTTP status/errorCode or gRPC code. */
function assertFailure(proto, e, { status, errorCode, code, message }) {
  if (proto === "http") {
    const f = httpFailure(e);
    assert.equal(f.status, status, `HTTP status (body ${JSON.stringify(f.body)})`);
    if (errorCode) assert.equal(f.body.errorCode, errorCode, `errorCode (body ${JSON.stringify(f.body)})`);
    if (message) assert.match(JSON.stringify(f.body), message);
  } else {
    assert.equal(e.name, "ConnectError", `expected a ConnectError, got ${e}`);
    assert.equal(e.code, code, `gRPC code (message ${JSON.stringify(e.rawMessage)})`);
    if (message) assert.match(e.rawMessage, message);
  }
}

async function etagOf(client, key) {
  const [item] = await client.state.getBulk(STORE, [key]);
  assert.equal(item.key, key);
  assert.equal(typeof item.etag, "string", `getBulk item ${JSON.stringify(item)}`);
  assert.ok(item.etag.length > 0, `getBulk item ${JSON.stringify(item)}`);
  return item.etag;
}

function waitForDelivery(topic, what, match) {
  return waitFor(`${what} on topic ${topic}`, DELIVERY_WAIT_MS, () => (received[topic] || []).filter(match).length > 0 && (received[topic] || []).filter(match));
}

before(async () => {
  const appPort = await freePort();
  env = await startEnv("client", {
    components: ["sqlite", "memory", "files"],
    resources: {
      [`${STORE}.yaml`]: (e) => componentYaml(STORE, "state.sqlite", { connectionString: path.join(e.root, "state.db") }),
      // One delivery in flight per stream: deliveries arrive in publish order.
      [`${PUBSUB}.yaml`]: componentYaml(PUBSUB, "pubsub.memory", { maxInFlight: "1" }),
      [`${BINDING}.yaml`]: (e) => {
        outDir = path.join(e.root, "out");
        return componentYaml(BINDING, "bindings.files", { rootPath: outDir });
      },
      [`${SECRETS}.yaml`]: (e) => {
        const file = path.join(e.root, "secrets.json");
        fs.writeFileSync(file, JSON.stringify(SECRETS_FILE_CONTENT));
        return componentYaml(SECRETS, "secretstores.files", { secretsFile: file });
      },
    },
    appPort,
    appProtocol: "http",
  });
  try {
    await startSubscriber(appPort);
  } catch (e) {
    e.message += `\n${env.logs()}`;
    throw e;
  }
}, { timeout: HOOK_TIMEOUT_MS });

/** The subscriber every publish test checks against: an HTTP DaprServer on --app-port. */
async function startSubscriber(appPort) {
  subscriber = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort: String(appPort),
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    clientOptions: { daprHost: "127.0.0.1", daprPort: String(env.httpPort) },
    logger: env.sdkLogger(LogLevel.Info),
  });
  const topics = PROTOCOLS.flatMap((p) => [`orders-${p.name}`, `bulk-${p.name}`]);
  for (const topic of topics) {
    received[topic] = [];
    await subscriber.pubsub.subscribe(PUBSUB, topic, async (data) => {
      received[topic].push(data);
    });
  }
  // Once the app listens, plugd reads GET /dapr/subscribe and opens the streams. pubsub.memory
  // holds what is published before the first consumer group subscribes, so nothing published
  // by the tests is lost meanwhile; every delivery check is a bounded wait.
  await subscriber.start();
}

after(async () => {
  // plugd first (it holds connections to the subscriber), then the subscriber.
  const problems = env ? await env.stop() : [];
  if (subscriber) await subscriber.stop();
  if (problems.length) assert.fail(problems.join("; "));
}, { timeout: HOOK_TIMEOUT_MS });

for (const { name: proto, protocol } of PROTOCOLS) {
  describe(`DaprClient over ${proto}`, () => {
    let client;
    const test = (title, fn) => it(title, { timeout: TEST_TIMEOUT_MS }, withLogs(() => env, fn));

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

    test("metadata: the lazy start probe and metadata.get()", async () => {
      // The first call starts the client: it polls GET /v1.0/metadata (HTTP, needs a non-empty
      // JSON body) or GetMetadata (gRPC) until plugd answers.
      const md = await client.metadata.get();
      assert.equal(md.id, env.appId);
      const types = Object.fromEntries((md.components || []).map((c) => [c.name, c.type]));
      assert.deepEqual(types, {
        [STORE]: "state.sqlite",
        [PUBSUB]: "pubsub.memory",
        [BINDING]: "bindings.files",
        [SECRETS]: "secretstores.files",
      });
    });

    test("state: save, get, getBulk, delete", async () => {
      const t = token();
      const k1 = `${proto}-${t}-obj`;
      const k2 = `${proto}-${t}-str`;
      const value = { name: "plugd", n: 42, nested: { ok: true, list: [1, "two"] } };

      assert.deepEqual(await client.state.save(STORE, [{ key: k1, value }, { key: k2, value: "plain text" }]), {});
      assert.deepEqual(await client.state.get(STORE, k1), value);
      assert.equal(await client.state.get(STORE, k2), "plain text");

      // What was stored, read over plugd's raw HTTP API: JSON for objects either way; a string
      // is stored JSON-encoded over HTTP (with its quotes) and as its raw bytes over gRPC.
      const raw1 = await httpRequest(env.httpPort, "GET", `/v1.0/state/${STORE}/${k1}`);
      assert.equal(raw1.status, 200);
      assert.deepEqual(JSON.parse(raw1.body.toString()), value);
      const raw2 = await httpRequest(env.httpPort, "GET", `/v1.0/state/${STORE}/${k2}`);
      assert.equal(raw2.body.toString(), proto === "http" ? '"plain text"' : "plain text");

      const missing = `${proto}-${t}-missing`;
      const bulk = await client.state.getBulk(STORE, [k1, k2, missing]);
      const byKey = Object.fromEntries(bulk.map((i) => [i.key, i]));
      assert.deepEqual(Object.keys(byKey).sort(), [k1, k2, missing].sort());
      assert.deepEqual(byKey[k1].data, value);
      assert.equal(byKey[k2].data, "plain text");
      assert.ok(byKey[k1].etag && byKey[k2].etag, `etags in ${JSON.stringify(bulk)}`);
      assert.ok(!byKey[missing].data, `missing key has no data: ${JSON.stringify(byKey[missing])}`);
      assert.ok(!byKey[missing].etag, `missing key has no etag: ${JSON.stringify(byKey[missing])}`);

      // A missing key reads as "" (HTTP 204 / empty GetStateResponse).
      assert.equal(await client.state.get(STORE, missing), "");

      assert.deepEqual(await client.state.delete(STORE, k1), {});
      assert.equal(await client.state.get(STORE, k1), "");
      assert.equal(await client.state.get(STORE, k2), "plain text", "only k1 was deleted");

      // An unknown store is an error (HTTP 400 ERR_STATE_STORE_NOT_FOUND / INVALID_ARGUMENT).
      const e = await failureOf(() => client.state.get("no-such-store", k2));
      assertFailure(proto, e, { status: 400, errorCode: "ERR_STATE_STORE_NOT_FOUND", code: GRPC.INVALID_ARGUMENT, message: /no-such-store/ });
    });

    test("state: etag conflicts on save and delete", async () => {
      const key = `${proto}-${token()}-etag`;
      assert.deepEqual(await client.state.save(STORE, [{ key, value: { v: 1 } }]), {});
      const e1 = await etagOf(client, key);

      // The current etag wins and gives a new one.
      assert.deepEqual(await client.state.save(STORE, [{ key, value: { v: 2 }, etag: e1 }]), {});
      const e2 = await etagOf(client, key);
      assert.notEqual(e2, e1);
      assert.deepEqual(await client.state.get(STORE, key), { v: 2 });

      // A stale etag is a conflict: HTTP 409 ERR_STATE_SAVE / gRPC ABORTED; nothing changes.
      const saveErr = await failureOf(() => client.state.save(STORE, [{ key, value: { v: 3 }, etag: e1 }]));
      assertFailure(proto, saveErr, { status: 409, errorCode: "ERR_STATE_SAVE", code: GRPC.ABORTED });
      assert.deepEqual(await client.state.get(STORE, key), { v: 2 });
      assert.equal(await etagOf(client, key), e2);

      const delErr = await failureOf(() => client.state.delete(STORE, key, { etag: e1 }));
      assertFailure(proto, delErr, { status: 409, errorCode: "ERR_STATE_DELETE", code: GRPC.ABORTED });
      assert.deepEqual(await client.state.get(STORE, key), { v: 2 });

      assert.deepEqual(await client.state.delete(STORE, key, { etag: e2 }), {});
      assert.equal(await client.state.get(STORE, key), "");
    });

    test("state: transaction upserts and deletes atomically", async () => {
      const t = token();
      const kept = `${proto}-${t}-tx-kept`;
      const gone = `${proto}-${t}-tx-gone`;
      const fresh = `${proto}-${t}-tx-new`;
      assert.deepEqual(await client.state.save(STORE, [{ key: kept, value: { v: "old" } }, { key: gone, value: "bye" }]), {});
      const keptEtag = await etagOf(client, kept);

      // Node's HTTP client sends a typed etag as an object ({"value": …}, §1.3); over gRPC the
      // SDK calls toString() on it, so there it is given as a string. gRPC values must be strings
      // (the SDK does Buffer.from(value)); HTTP values are any JSON.
      const etag = proto === "http" ? { value: keptEtag } : keptEtag;
      const val = (v) => (proto === "http" ? v : JSON.stringify(v));
      await client.state.transaction(STORE, [
        { operation: "upsert", request: { key: kept, value: val({ v: "new" }), etag } },
        { operation: "upsert", request: { key: fresh, value: val({ v: "fresh" }) } },
        { operation: "delete", request: { key: gone } },
      ]);
      assert.deepEqual(await client.state.get(STORE, kept), { v: "new" });
      assert.deepEqual(await client.state.get(STORE, fresh), { v: "fresh" });
      assert.equal(await client.state.get(STORE, gone), "");

      // A stale etag fails the whole transaction (HTTP 500 / gRPC INTERNAL ERR_STATE_TRANSACTION):
      // the delete in it must not happen either.
      const stale = proto === "http" ? { value: keptEtag } : keptEtag;
      const e = await failureOf(() =>
        client.state.transaction(STORE, [
          { operation: "delete", request: { key: fresh } },
          { operation: "upsert", request: { key: kept, value: val({ v: "newer" }), etag: stale } },
        ]),
      );
      assertFailure(proto, e, { status: 500, errorCode: "ERR_STATE_TRANSACTION", code: GRPC.INTERNAL });
      assert.deepEqual(await client.state.get(STORE, kept), { v: "new" });
      assert.deepEqual(await client.state.get(STORE, fresh), { v: "fresh" }, "the failed transaction was rolled back");
    });

    test("pubsub: publish delivers to the subscriber", async () => {
      const topic = `orders-${proto}`;
      const t = token();
      assert.deepEqual(await client.pubsub.publish(PUBSUB, topic, { order: t, items: [1, 2], vip: true }), {});
      const [got] = await waitForDelivery(topic, `order ${t}`, (d) => d && d.order === t);
      assert.deepEqual(got, { order: t, items: [1, 2], vip: true });

      // A string goes out as text/plain and arrives as the same string.
      assert.deepEqual(await client.pubsub.publish(PUBSUB, topic, `text ${t}`), {});
      await waitForDelivery(topic, `text ${t}`, (d) => d === `text ${t}`);

      // An unknown pubsub is an error (HTTP 404 ERR_PUBSUB_NOT_FOUND / gRPC INVALID_ARGUMENT).
      const e = await failureOf(() => client.pubsub.publish("no-such-pubsub", topic, { order: t }));
      assertFailure(proto, e, { status: 404, errorCode: "ERR_PUBSUB_NOT_FOUND", code: GRPC.INVALID_ARGUMENT, message: /no-such-pubsub/ });
    });

    test("pubsub: publishBulk delivers every entry", async () => {
      const topic = `bulk-${proto}`;
      const t = token();
      const messages = [
        { entryID: `${t}-1`, event: { bulk: t, i: 1 } },
        { entryID: `${t}-2`, event: { bulk: t, i: 2 } },
        { bulk: t, i: 3 }, // a bare message: the SDK makes the entry and its id
      ];
      const res = await client.pubsub.publishBulk(PUBSUB, topic, messages);
      assert.deepEqual(res, { failedMessages: [] });
      const got = await waitFor(`3 bulk entries ${t} on ${topic}`, DELIVERY_WAIT_MS, () => {
        const mine = received[topic].filter((d) => d && d.bulk === t);
        return mine.length >= 3 && mine;
      });
      assert.deepEqual(got.map((d) => d.i), [1, 2, 3], "each entry once, in order");

      // A bulk publish to an unknown pubsub fails every entry.
      const bad = await client.pubsub.publishBulk("no-such-pubsub", topic, [{ bulk: t, i: 4 }, { bulk: t, i: 5 }]);
      assert.equal(bad.failedMessages.length, 2, JSON.stringify(bad));
    });

    test("binding: create, get, list, delete on bindings.files", async () => {
      const t = token();
      const fileName = `${proto}/${t}/doc.json`;
      const doc = { hello: "plugd", proto, n: [1, 2, 3] };
      const onDisk = path.join(outDir, fileName);

      const created = await client.binding.send(BINDING, "create", doc, { fileName });
      if (proto === "http") {
        assert.deepEqual(created, { fileName }, "HTTP: the component's JSON answer");
      } else {
        assert.deepEqual(JSON.parse(Buffer.from(created.data).toString()), { fileName });
        assert.equal(created.metadata.fileName, fileName);
      }
      assert.deepEqual(JSON.parse(fs.readFileSync(onDisk, "utf8")), doc, "the file on disk");

      const got = await client.binding.send(BINDING, "get", undefined, { fileName });
      const gotDoc = proto === "http" ? got : JSON.parse(Buffer.from(got.data).toString());
      assert.deepEqual(gotDoc, doc);

      // A string: over HTTP Dapr re-encodes `data` as JSON (quotes kept); over gRPC the SDK
      // sends it as text/plain bytes.
      const textName = `${proto}/${t}/note.txt`;
      await client.binding.send(BINDING, "create", `note ${t}`, { fileName: textName });
      assert.equal(fs.readFileSync(path.join(outDir, textName), "utf8"), proto === "http" ? `"note ${t}"` : `note ${t}`);

      const listed = await client.binding.send(BINDING, "list", undefined, {});
      const names = proto === "http" ? listed : JSON.parse(Buffer.from(listed.data).toString());
      assert.ok(Array.isArray(names), `list answer ${JSON.stringify(listed)}`);
      assert.ok(names.includes(fileName) && names.includes(textName), `${fileName} and ${textName} in ${JSON.stringify(names)}`);

      await client.binding.send(BINDING, "delete", undefined, { fileName });
      assert.equal(fs.existsSync(onDisk), false, "deleted from disk");
      assert.equal(fs.existsSync(path.join(outDir, textName)), true, "the other file stays");

      // Getting the deleted file is ERR_INVOKE_OUTPUT_BINDING (HTTP 500 / gRPC INTERNAL).
      const e = await failureOf(() => client.binding.send(BINDING, "get", undefined, { fileName }));
      assertFailure(proto, e, { status: 500, errorCode: "ERR_INVOKE_OUTPUT_BINDING", code: GRPC.INTERNAL });
    });

    test("secret: get and getBulk from secretstores.files", async () => {
      assert.deepEqual(await client.secret.get(SECRETS, "apikey"), { apikey: "k-1f3a9" });
      assert.deepEqual(await client.secret.get(SECRETS, "db:password"), { "db:password": "pa:ss w0rd" });
      assert.deepEqual(await client.secret.get(SECRETS, "db:port"), { "db:port": "5432" });

      const all = await client.secret.getBulk(SECRETS);
      assert.deepEqual(all, {
        apikey: { apikey: "k-1f3a9" },
        "db:user": { "db:user": "admin" },
        "db:password": { "db:password": "pa:ss w0rd" },
        "db:port": { "db:port": "5432" },
      });

      // An unknown secret is ERR_SECRET_GET (HTTP 500 / gRPC INTERNAL).
      const e = await failureOf(() => client.secret.get(SECRETS, "no-such-secret"));
      assertFailure(proto, e, { status: 500, errorCode: "ERR_SECRET_GET", code: GRPC.INTERNAL, message: /no-such-secret/ });
    });
  });
}
