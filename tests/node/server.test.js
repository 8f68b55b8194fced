"use strict";
// DaprServer (@dapr/dapr, unmodified) as the app behind plugd: one plugd per app protocol,
// started with `--app-port <DaprServer's port> --app-protocol http|grpc`, delivering
// pubsub.memory (plugd-memory) events to subscriptions the SDK declares (GET /dapr/subscribe or
// ListTopicSubscriptions). Events are published with the DaprServer's own embedded DaprClient
// (same protocol as the app's), and every check is on what the callbacks received.
// What the SDK serves and expects: /work/shared/spec/runtime-api-wire.md §4.2, §4.3.

const { describe, it, before, after } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { DaprServer, CommunicationProtocolEnum, DaprPubSubStatusEnum, LogLevel } = require("@dapr/dapr");

const { componentYaml, freePort, startEnv, waitFor, withLogs } = require("./lib/plugd");

const PUBSUB = "pubsub";
const TEST_TIMEOUT_MS = 30_000;
const DELIVERY_WAIT_MS = 15_000;
// Start-up: components and plugd (20 s each at most), the SDK's sidecar probe (30 s at most).
const HOOK_TIMEOUT_MS = 90_000;

const APP_PROTOCOLS = [
  { name: "http", protocol: CommunicationProtocolEnum.HTTP },
  { name: "grpc", protocol: CommunicationProtocolEnum.GRPC },
];

const token = () => crypto.randomUUID().slice(0, 12);

for (const { name: appProtocol, protocol } of APP_PROTOCOLS) {
  describe(`DaprServer subscriber, plugd --app-protocol ${appProtocol}`, () => {
    let env = null;
    let server = null;
    /** topic or route → every {data, headers} its callback received, in order */
    const got = { orders: [], vip: [], normal: [], retry: [], drop: [] };
    /** tokens whose first delivery on "retry" has been answered RETRY */
    const retried = new Set();

    const test = (title, opts, fn) => it(title, { timeout: TEST_TIMEOUT_MS, ...opts }, withLogs(() => env, fn));
    const record = (bucket, status) => async (data, headers) => {
      got[bucket].push({ data, headers });
      return typeof status === "function" ? status(data) : status;
    };
    const waitForEvents = (bucket, what, match, n = 1) =>
      waitFor(`${what} in ${bucket}`, DELIVERY_WAIT_MS, () => {
        const mine = got[bucket].filter((e) => match(e.data));
        return mine.length >= n && mine;
      });

    before(async () => {
      const appPort = await freePort();
      env = await startEnv(`server-${appProtocol}`, {
        components: ["memory"],
        // One delivery in flight per stream, so events of one topic arrive in publish order.
        resources: { [`${PUBSUB}.yaml`]: componentYaml(PUBSUB, "pubsub.memory", { maxInFlight: "1" }) },
        appPort,
        appProtocol,
      });
      try {
        server = new DaprServer({
          serverHost: "127.0.0.1",
          serverPort: String(appPort),
          communicationProtocol: protocol,
          // The embedded client talks to plugd over the app's protocol.
          clientOptions: {
            daprHost: "127.0.0.1",
            daprPort: String(appProtocol === "http" ? env.httpPort : env.grpcPort),
          },
          logger: env.sdkLogger(LogLevel.Info),
        });
        await server.pubsub.subscribe(PUBSUB, "orders", record("orders"));
        // Routing rules (CEL evaluated by plugd); each route has its own callback.
        await server.pubsub.subscribeWithOptions(PUBSUB, "routed", {
          route: { rules: [{ match: 'event.data.kind == "vip"', path: "vip" }], default: "normal" },
        });
        server.pubsub.subscribeToRoute(PUBSUB, "routed", "vip", record("vip"));
        server.pubsub.subscribeToRoute(PUBSUB, "routed", "normal", record("normal"));
        // RETRY the first delivery of each event, SUCCESS afterwards.
        await server.pubsub.subscribe(PUBSUB, "retry", record("retry", (data) => {
          if (retried.has(data.t)) return DaprPubSubStatusEnum.SUCCESS;
          retried.add(data.t);
          return DaprPubSubStatusEnum.RETRY;
        }));
        await server.pubsub.subscribe(PUBSUB, "drop", record("drop", (data) => (data.drop ? DaprPubSubStatusEnum.DROP : DaprPubSubStatusEnum.SUCCESS)));
        // Listens, then polls plugd (GET /v1.0/metadata or GetMetadata) until it answers. Once the
        // app listens plugd reads its subscriptions and opens the streams; pubsub.memory holds
        // what is published before that, so every check below is a bounded wait for delivery.
        await server.start();
      } catch (e) {
        e.message += `\n${env.logs()}`;
        throw e;
      }
    }, { timeout: HOOK_TIMEOUT_MS });

    after(async () => {
      // plugd first (it keeps connections to the app open), then the app server.
      const problems = env ? await env.stop() : [];
      if (server) await server.stop();
      if (problems.length) assert.fail(problems.join("; "));
    }, { timeout: HOOK_TIMEOUT_MS });

    test("a published object and a string reach the callback", {}, async () => {
      const t = token();
      assert.deepEqual(await server.client.pubsub.publish(PUBSUB, "orders", { order: t, qty: 3, tags: ["a", "b"] }), {});
      assert.deepEqual(await server.client.pubsub.publish(PUBSUB, "orders", `plain ${t}`), {});

      const [obj] = await waitForEvents("orders", `order ${t}`, (d) => d && d.order === t);
      assert.deepEqual(obj.data, { order: t, qty: 3, tags: ["a", "b"] });
      // The broker metadata plugd forwards includes the pubsub name (an HTTP header / gRPC
      // metadata, lower-cased by both servers).
      assert.equal(obj.headers.pubsubname, PUBSUB, `headers ${JSON.stringify(obj.headers)}`);
      if (appProtocol === "http") {
        assert.match(obj.headers["content-type"], /^application\/cloudevents\+json/);
      }
      await waitForEvents("orders", `plain ${t}`, (d) => d === `plain ${t}`);
      const mine = got.orders.filter((e) => (e.data && e.data.order === t) || e.data === `plain ${t}`);
      assert.deepEqual(mine.map((e) => e.data), [{ order: t, qty: 3, tags: ["a", "b"] }, `plain ${t}`], "each once, in order");
    });

    test("publishBulk entries reach the callback", {}, async () => {
      const t = token();
      const res = await server.client.pubsub.publishBulk(PUBSUB, "orders", [
        { order: t, i: 1 },
        { order: t, i: 2 },
        { order: t, i: 3 },
      ]);
      assert.deepEqual(res, { failedMessages: [] });
      const mine = await waitForEvents("orders", `3 bulk orders ${t}`, (d) => d && d.order === t, 3);
      assert.deepEqual(mine.map((e) => e.data.i), [1, 2, 3]);
    });

    test("routing rules pick the SDK's route", {}, async () => {
      const t = token();
      await server.client.pubsub.publish(PUBSUB, "routed", { kind: "vip", t });
      await server.client.pubsub.publish(PUBSUB, "routed", { kind: "regular", t });
      await waitForEvents("vip", `vip ${t}`, (d) => d && d.t === t);
      await waitForEvents("normal", `regular ${t}`, (d) => d && d.t === t);
      assert.deepEqual(got.vip.filter((e) => e.data.t === t).map((e) => e.data.kind), ["vip"]);
      assert.deepEqual(got.normal.filter((e) => e.data.t === t).map((e) => e.data.kind), ["regular"]);
    });

    test("RETRY is delivered again, DROP is not", {}, async () => {
      const t = token();
      await server.client.pubsub.publish(PUBSUB, "retry", { t });
      const both = await waitForEvents("retry", `two deliveries of ${t}`, (d) => d && d.t === t, 2);
      assert.deepEqual(both.map((e) => e.data), [{ t }, { t }]);

      // A dropped event is acked: the next event on the topic arrives after it, and the dropped
      // one is not delivered again.
      await server.client.pubsub.publish(PUBSUB, "drop", { t, drop: true });
      await server.client.pubsub.publish(PUBSUB, "drop", { t, drop: false });
      await waitForEvents("drop", `the event after the dropped one (${t})`, (d) => d && d.t === t && d.drop === false);
      assert.deepEqual(got.drop.filter((e) => e.data.t === t).map((e) => e.data.drop), [true, false]);
    });

    test("plugd's metadata API lists the app's subscriptions", {}, async () => {
      // Subscriptions are read once the app listens: wait for one delivery first.
      const tk = token();
      await server.client.pubsub.publish(PUBSUB, "orders", { order: tk });
      await waitForEvents("orders", `order ${tk}`, (d) => d && d.order === tk);

      // (The SDK's own metadata.get() returns subscriptions over HTTP only; read plugd's
      // GET /v1.0/metadata directly so both app protocols check the same thing.)
      const md = await env.metadata();
      const subs = (md.subscriptions || []).filter((s) => s.pubsubname === PUBSUB);
      assert.deepEqual(subs.map((s) => s.topic).sort(), ["drop", "orders", "retry", "routed"], JSON.stringify(subs));
      const routed = subs.find((s) => s.topic === "routed");
      assert.ok(
        (routed.rules || []).some((r) => r.match === 'event.data.kind == "vip"' && /vip$/.test(r.path)),
        `routed rules ${JSON.stringify(routed.rules)}`,
      );
    });
  });
}
