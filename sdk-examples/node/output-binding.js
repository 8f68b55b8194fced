#!/usr/bin/env node
"use strict";
// A Dapr pluggable output binding in Node.js: files in a folder.
//
//   node output-binding.js [--socket-name NAME] [--socket-folder DIR]
//
// Serves dapr.proto.components.v1.OutputBinding (Init, ListOperations, Invoke, Ping) on
// <folder>/<NAME>.sock (default name: nodefiles, so `type: bindings.nodefiles`).
//
// Init metadata:   rootPath (required) the folder the files live in; created if missing.
// Operations:
//   create  data → the file `fileName` (request metadata; a new UUID when absent), replaced
//           if it exists, sub-folders created. Answers {"fileName", "size"} (application/json)
//           and the metadata fileName, size.
//   get     the bytes of `fileName`, content type from its extension, metadata fileName, size,
//           modified (ISO 8601). NOT_FOUND when there is no such file.
//   delete  removes `fileName`; NOT_FOUND when there is no such file. Answers nothing.
//   list    a JSON array of every file's name (relative to rootPath, `/`-separated, sorted),
//           only those starting with the request metadata `prefix` when given; metadata count.
// Errors: an unknown operation, a missing or escaping fileName are INVALID_ARGUMENT; a call for
// an instance that was not initialised is FAILED_PRECONDITION; I/O failures are INTERNAL.

const crypto = require("node:crypto");
const fs = require("node:fs");
const fsp = require("node:fs/promises");
const path = require("node:path");
const { ComponentError, Instances, PACKAGE, initProperties, loadProto, log, run, serve, unary, warnUnknownKeys } = require("./lib/component");

const KIND = "bindings";
const OPERATIONS = ["create", "get", "delete", "list"];
const INIT_KEYS = ["rootPath"];

const CONTENT_TYPES = {
  ".json": "application/json",
  ".txt": "text/plain",
  ".md": "text/markdown",
  ".html": "text/html",
  ".csv": "text/csv",
  ".xml": "application/xml",
  ".yaml": "application/yaml",
  ".yml": "application/yaml",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
};

const USAGE = `usage: node output-binding.js [--socket-name NAME] [--socket-folder DIR]
A Dapr pluggable output binding (files in the folder given by the Init metadata rootPath).
The socket is DIR/NAME.sock: DIR defaults to $DAPR_COMPONENT_SOCKETS_FOLDER, then
/tmp/dapr-components-sockets; NAME to $PLUGD_SOCKET_NAME, then nodefiles.
`;

/** One Component's binding: its folder, set by Init. */
class FolderBinding {
  constructor(name) {
    this.name = name;
    this.root = null;
  }

  async init(properties) {
    const rootPath = properties.rootPath;
    if (!rootPath) throw ComponentError.invalidArgument("metadata rootPath is required: the folder the files live in");
    const root = path.resolve(rootPath);
    try {
      await fsp.mkdir(root, { recursive: true });
      await fsp.access(root, fs.constants.R_OK | fs.constants.W_OK);
    } catch (e) {
      throw ComponentError.invalidArgument(`metadata rootPath ${JSON.stringify(rootPath)} is not a usable folder: ${e.message}`);
    }
    warnUnknownKeys(KIND, this.name, properties, INIT_KEYS);
    this.root = root;
    log(`${KIND} instance ${this.name}: files in ${root}`);
  }

  rootOrFail() {
    if (this.root === null) throw ComponentError.failedPrecondition(`the binding instance ${this.name} is not initialised (call Init first)`);
    return this.root;
  }

  /** The absolute path of `fileName`, which must stay inside the root. */
  resolve(fileName, { required = true } = {}) {
    const root = this.rootOrFail();
    if (!fileName) {
      if (required) throw ComponentError.invalidArgument("metadata fileName is required");
      return null;
    }
    if (fileName.includes("\0")) throw ComponentError.invalidArgument("fileName contains a NUL byte");
    const full = path.resolve(root, fileName);
    if (path.isAbsolute(fileName) || !full.startsWith(root + path.sep)) {
      throw ComponentError.invalidArgument(`fileName ${JSON.stringify(fileName)} must be a relative path inside rootPath`);
    }
    return full;
  }

  relative(full) {
    return path.relative(this.root, full).split(path.sep).join("/");
  }

  async invoke({ operation, data, metadata }) {
    switch (operation) {
      case "create":
        return this.create(data, metadata);
      case "get":
        return this.get(metadata);
      case "delete":
        return this.delete(metadata);
      case "list":
        return this.list(metadata);
      default:
        throw ComponentError.invalidArgument(`unsupported operation ${JSON.stringify(operation)}; supported: ${OPERATIONS.join(", ")}`);
    }
  }

  async create(data, metadata) {
    const fileName = metadata.fileName || crypto.randomUUID();
    const full = this.resolve(fileName);
    await fsp.mkdir(path.dirname(full), { recursive: true });
    // Written beside the target and renamed: a reader never sees half a file.
    const tmp = path.join(path.dirname(full), `.${path.basename(full)}.${process.pid}.${crypto.randomUUID()}.tmp`);
    try {
      await fsp.writeFile(tmp, data);
      await fsp.rename(tmp, full);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      if (e.code === "EISDIR" || e.code === "ENOTDIR") throw ComponentError.invalidArgument(`cannot create ${fileName}: ${e.message}`);
      throw e;
    }
    const name = this.relative(full);
    const size = String(data.length);
    return {
      data: Buffer.from(JSON.stringify({ fileName: name, size: data.length })),
      metadata: { fileName: name, size },
      content_type: "application/json",
    };
  }

  async get(metadata) {
    const full = this.resolve(metadata.fileName);
    let bytes;
    let st;
    try {
      st = await fsp.stat(full);
      if (st.isDirectory()) throw ComponentError.invalidArgument(`${metadata.fileName} is a folder, not a file`);
      bytes = await fsp.readFile(full);
    } catch (e) {
      if (e.code === "ENOENT" || e.code === "ENOTDIR") throw ComponentError.notFound(`file ${metadata.fileName} not found`);
      throw e;
    }
    return {
      data: bytes,
      metadata: { fileName: this.relative(full), size: String(bytes.length), modified: st.mtime.toISOString() },
      content_type: CONTENT_TYPES[path.extname(full).toLowerCase()] || "application/octet-stream",
    };
  }

  async delete(metadata) {
    const full = this.resolve(metadata.fileName);
    try {
      const st = await fsp.stat(full);
      if (st.isDirectory()) throw ComponentError.invalidArgument(`${metadata.fileName} is a folder, not a file`);
      await fsp.unlink(full);
    } catch (e) {
      if (e.code === "ENOENT" || e.code === "ENOTDIR") throw ComponentError.notFound(`file ${metadata.fileName} not found`);
      throw e;
    }
    return { data: Buffer.alloc(0), metadata: {}, content_type: "" };
  }

  async list(metadata) {
    const root = this.rootOrFail();
    const prefix = metadata.prefix || "";
    const names = [];
    const walk = async (dir) => {
      for (const entry of await fsp.readdir(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (entry.isFile() && !(entry.name.startsWith(".") && entry.name.endsWith(".tmp"))) names.push(this.relative(full));
      }
    };
    await walk(root);
    const selected = names.filter((n) => n.startsWith(prefix)).sort();
    return {
      data: Buffer.from(JSON.stringify(selected)),
      metadata: { count: String(selected.length) },
      content_type: "application/json",
    };
  }

  async ping() {
    // Healthy while the folder is there (an instance not initialised yet has nothing to check).
    if (this.root === null) return;
    try {
      await fsp.access(this.root, fs.constants.R_OK | fs.constants.W_OK);
    } catch (e) {
      throw ComponentError.unavailable(`rootPath ${this.root} is not usable: ${e.message}`);
    }
  }
}

async function main() {
  const { definition, services } = loadProto("bindings.proto");
  const instances = new Instances((name) => new FolderBinding(name));
  const implementation = {
    Init: unary(async (req, call) => {
      await instances.of(call).init(initProperties(req));
      return {};
    }),
    // The operations do not depend on Init: answered for any instance.
    ListOperations: unary(() => ({ operations: OPERATIONS })),
    Invoke: unary((req, call) => instances.of(call).invoke(req)),
    Ping: unary(async (req, call) => {
      await instances.of(call).ping();
      return {};
    }),
  };
  await serve({
    kind: KIND,
    defaultName: "nodefiles",
    definition,
    services: { [`${PACKAGE}.OutputBinding`]: { service: services.OutputBinding.service, implementation } },
    usage: USAGE,
  });
}

run(main);
