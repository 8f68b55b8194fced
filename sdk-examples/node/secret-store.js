#!/usr/bin/env node
"use strict";
// A Dapr pluggable secret store in Node.js: secrets from a JSON file.
//
//   node secret-store.js [--socket-name NAME] [--socket-folder DIR]
//
// Serves dapr.proto.components.v1.SecretStore (Init, Features, Get, BulkGet, Ping) on
// <folder>/<NAME>.sock (default name: nodesecrets, so `type: secretstores.nodesecrets`).
//
// Init metadata:   secretsFile (required) a JSON object, read at Init and again on every call
//                  (a changed file is seen at once, no restart needed):
//                    { "apikey": "k-1", "db": { "user": "admin", "password": "s3cret" } }
//                  A string (or number, boolean, array) value is a secret with one key, its own
//                  name: apikey → {"apikey": "k-1"}. An object is a secret with several keys:
//                  db → {"user": "admin", "password": "s3cret"} (non-string values as JSON text).
//                  null values are no secret. An Init (again) first drops the instance's file:
//                  when it fails, the instance is uninitialised (FAILED_PRECONDITION) until an
//                  Init succeeds.
// Features:        MULTIPLE_KEY_VALUES_PER_SECRET.
// Errors: an unknown secret is NOT_FOUND, an empty key INVALID_ARGUMENT, a call for an instance
// that was not initialised FAILED_PRECONDITION, a file that became unreadable or invalid JSON
// UNAVAILABLE (Ping too). Secret values are never logged.

const fsp = require("node:fs/promises");
const path = require("node:path");
const { ComponentError, InitialisedInstance, Instances, PACKAGE, loadProto, run, serve, unary } = require("./lib/component");

const KIND = "secretstores";
const FEATURES = ["MULTIPLE_KEY_VALUES_PER_SECRET"];
const INIT_KEYS = ["secretsFile"];

const USAGE = `usage: node secret-store.js [--socket-name NAME] [--socket-folder DIR]
A Dapr pluggable secret store (secrets from the JSON file given by the Init metadata secretsFile).
The socket is DIR/NAME.sock: DIR defaults to $DAPR_COMPONENTS_SOCKETS_FOLDER,
$DAPR_COMPONENT_SOCKETS_FOLDER, $DAPR_COMPONENT_SOCKET_FOLDER (the first set), then
/tmp/dapr-components-sockets; NAME to $PLUGD_SOCKET_NAME, then nodesecrets.
`;

const asText = (v) => (typeof v === "string" ? v : JSON.stringify(v));

/** The secret (key → value) a top-level JSON value makes, or null for no secret. */
function secretOf(name, value) {
  if (value === null) return null;
  if (typeof value === "object" && !Array.isArray(value)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, asText(v)]));
  }
  return { [name]: asText(value) };
}

/** Every secret in `file`, by name. Throws a plain Error saying what is wrong with the file. */
async function readSecrets(file) {
  let text;
  try {
    text = await fsp.readFile(file, "utf8");
  } catch (e) {
    throw new Error(`cannot read ${file}: ${e.message}`);
  }
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    // The parser's message may quote the file's content: only say where it failed.
    throw new Error(`${file} is not valid JSON`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) throw new Error(`${file} must hold a JSON object (secret name → value)`);
  const secrets = new Map();
  for (const [name, value] of Object.entries(doc)) {
    const secret = secretOf(name, value);
    if (secret) secrets.set(name, secret);
  }
  return secrets;
}

/** One Component's store: its file, set by Init. */
class FileSecretStore extends InitialisedInstance {
  constructor(name) {
    super(KIND, name, INIT_KEYS);
  }

  /** The secrets file, null until an Init succeeds. */
  get file() {
    return this.settings;
  }

  async load(properties) {
    if (!properties.secretsFile) throw ComponentError.invalidArgument("metadata secretsFile is required: the JSON file holding the secrets");
    const file = path.resolve(properties.secretsFile);
    let secrets;
    try {
      secrets = await readSecrets(file);
    } catch (e) {
      throw ComponentError.invalidArgument(`metadata secretsFile: ${e.message}`);
    }
    return { settings: file, summary: `${secrets.size} secrets in ${file}` };
  }

  async secrets() {
    const file = this.file;
    if (file === null) throw ComponentError.failedPrecondition(`the secret store instance ${this.name} is not initialised (call Init first)`);
    try {
      return await readSecrets(file);
    } catch (e) {
      throw ComponentError.unavailable(e.message);
    }
  }

  async get(key) {
    if (!key) throw ComponentError.invalidArgument("the secret name (key) is empty");
    const secret = (await this.secrets()).get(key);
    if (!secret) throw ComponentError.notFound(`secret ${JSON.stringify(key)} not found`);
    return secret;
  }

  async bulkGet() {
    const data = {};
    for (const [name, secrets] of await this.secrets()) data[name] = { secrets };
    return data;
  }

  async ping() {
    // An instance whose Init failed has nothing to check.
    if (this.file !== null) await this.secrets();
  }
}

async function main() {
  const { definition, services } = loadProto("secretstore.proto");
  const instances = new Instances("secret store", (name) => new FileSecretStore(name));
  const implementation = {
    // Init is the only call that creates an instance.
    Init: instances.initHandler(),
    // The features do not depend on Init: answered for any instance.
    Features: unary(() => ({ features: FEATURES })),
    // FAILED_PRECONDITION for an instance that is not initialised.
    Get: unary(async (req, call) => ({ data: await instances.of(call).get(req.key) })),
    BulkGet: unary(async (req, call) => ({ data: await instances.of(call).bulkGet() })),
    // OK for an instance never initialised; an initialised one also checks its file.
    Ping: instances.pingHandler(),
  };
  await serve({
    kind: KIND,
    defaultName: "nodesecrets",
    definition,
    services: { [`${PACKAGE}.SecretStore`]: { service: services.SecretStore.service, implementation } },
    usage: USAGE,
  });
}

run(main);
