#!/usr/bin/env node
"use strict";
// A Dapr pluggable output binding in Node.js: files in a folder.
//
//   node output-binding.js [--socket-name NAME] [--socket-folder DIR]
//
// Serves dapr.proto.components.v1.OutputBinding (Init, ListOperations, Invoke, Ping) on
// <folder>/<NAME>.sock (default name: nodefiles, so `type: bindings.nodefiles`).
//
// Init metadata:   rootPath (required) the folder the files live in; created if missing. An Init
//                  (again) first drops the instance's folder: when it fails, the instance is
//                  uninitialised (FAILED_PRECONDITION) until an Init succeeds.
// Operations:
//   create  data → the file `fileName` (request metadata; a new UUID when absent), replaced
//           if it exists, sub-folders created. Answers {"fileName", "size"} (application/json)
//           and the metadata fileName, size.
//   get     the bytes of `fileName`, content type from its extension, metadata fileName, size,
//           modified (ISO 8601). NOT_FOUND when there is no such file.
//   delete  removes `fileName`; NOT_FOUND when there is no such file. Answers nothing.
//   list    a JSON array of every file's name (relative to rootPath, `/`-separated, sorted),
//           only those starting with the request metadata `prefix` when given; metadata count.
// Paths stay inside rootPath: fileName must be relative without `..` leading out, every folder on
// the way must be a real folder (a symbolic link is refused, also one that points inside), the
// file itself must not be a symbolic link, and the folder it is in must resolve (realpath) to a
// place under rootPath's real path.
// Errors: an unknown operation, a missing or escaping fileName, a symbolic link on the way are
// INVALID_ARGUMENT; a call for an instance that was not initialised is FAILED_PRECONDITION; I/O
// failures are INTERNAL.

const crypto = require("node:crypto");
const fs = require("node:fs");
const fsp = require("node:fs/promises");
const path = require("node:path");
const { ComponentError, InitialisedInstance, Instances, PACKAGE, loadProto, run, serve, unary } = require("./lib/component");

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
The socket is DIR/NAME.sock: DIR defaults to $DAPR_COMPONENTS_SOCKETS_FOLDER,
$DAPR_COMPONENT_SOCKETS_FOLDER, $DAPR_COMPONENT_SOCKET_FOLDER (the first set), then
/tmp/dapr-components-sockets; NAME to $PLUGD_SOCKET_NAME, then nodefiles.
`;

/** `full`'s name relative to `root`, `/`-separated. */
const relName = (root, full) => path.relative(root, full).split(path.sep).join("/");

/** One Component's binding: its folder (real path, no symbolic link in it), set by Init. */
class FolderBinding extends InitialisedInstance {
  constructor(name) {
    super(KIND, name, INIT_KEYS);
  }

  /** The folder, null until an Init succeeds. */
  get root() {
    return this.settings;
  }

  async load(properties) {
    const rootPath = properties.rootPath;
    if (!rootPath) throw ComponentError.invalidArgument("metadata rootPath is required: the folder the files live in");
    let root;
    try {
      await fsp.mkdir(path.resolve(rootPath), { recursive: true });
      // Resolved once: every file path is checked against the folder's real path.
      root = await fsp.realpath(path.resolve(rootPath));
      if (!(await fsp.stat(root)).isDirectory()) throw new Error("not a folder");
      await fsp.access(root, fs.constants.R_OK | fs.constants.W_OK);
    } catch (e) {
      throw ComponentError.invalidArgument(`metadata rootPath ${JSON.stringify(rootPath)} is not a usable folder: ${e.message}`);
    }
    return { settings: root, summary: `files in ${root}` };
  }

  rootOrFail() {
    if (this.root === null) throw ComponentError.failedPrecondition(`the binding instance ${this.name} is not initialised (call Init first)`);
    return this.root;
  }

  /**
   * Where `fileName` is: `{ root, full, display }`, `full` built on the real folder it is in.
   * The name must stay inside the root as text, every folder on the way must be a folder (not
   * a symbolic link), created when `create`, and the real path of the file's folder must be
   * under the root's. NOT_FOUND when a folder on the way is missing (and not `create`).
   */
  async locate(fileName, { create = false } = {}) {
    const root = this.rootOrFail();
    if (!fileName) throw ComponentError.invalidArgument("metadata fileName is required");
    if (fileName.includes("\0")) throw ComponentError.invalidArgument("fileName contains a NUL byte");
    const full = path.resolve(root, fileName);
    if (path.isAbsolute(fileName) || !full.startsWith(root + path.sep)) {
      throw ComponentError.invalidArgument(`fileName ${JSON.stringify(fileName)} must be a relative path inside rootPath`);
    }
    // Folder by folder from the root, never following a link: a recursive mkdir would follow a
    // link on the way and create folders outside the root.
    let dir = root;
    for (const part of path.relative(root, path.dirname(full)).split(path.sep).filter(Boolean)) {
      dir = path.join(dir, part);
      let st;
      try {
        st = await fsp.lstat(dir);
      } catch (e) {
        if (e.code !== "ENOENT") throw e;
        if (!create) throw ComponentError.notFound(`file ${fileName} not found`);
        try {
          await fsp.mkdir(dir);
        } catch (e2) {
          if (e2.code !== "EEXIST") throw e2;
        }
        st = await fsp.lstat(dir);
      }
      if (st.isSymbolicLink()) throw ComponentError.invalidArgument(`fileName ${JSON.stringify(fileName)}: ${relName(root, dir)} is a symbolic link`);
      if (!st.isDirectory()) {
        if (create) throw ComponentError.invalidArgument(`cannot create ${fileName}: ${relName(root, dir)} is not a folder`);
        throw ComponentError.notFound(`file ${fileName} not found`);
      }
    }
    // Whatever changed on the way (a folder swapped for a link meanwhile) shows in its real path.
    const realDir = await fsp.realpath(path.dirname(full));
    if (realDir !== root && !realDir.startsWith(root + path.sep)) {
      throw ComponentError.invalidArgument(`fileName ${JSON.stringify(fileName)} leads outside rootPath`);
    }
    return { root, full: path.join(realDir, path.basename(full)) };
  }

  /** lstat of the file itself (null when missing); a symbolic link or a folder is refused. */
  async fileStat(full, fileName) {
    let st;
    try {
      st = await fsp.lstat(full);
    } catch (e) {
      if (e.code === "ENOENT") return null;
      throw e;
    }
    if (st.isSymbolicLink()) throw ComponentError.invalidArgument(`${fileName} is a symbolic link`);
    if (st.isDirectory()) throw ComponentError.invalidArgument(`${fileName} is a folder, not a file`);
    return st;
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
    const { root, full } = await this.locate(fileName, { create: true });
    await this.fileStat(full, fileName);
    // Written beside the target and renamed: a reader never sees half a file. The temporary
    // file is created exclusively (O_EXCL never follows a link), and rename replaces the
    // directory entry itself, never what a link there points to.
    const tmp = path.join(path.dirname(full), `.${path.basename(full)}.${process.pid}.${crypto.randomUUID()}.tmp`);
    const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
    try {
      const handle = await fsp.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o666);
      try {
        await handle.writeFile(data);
      } finally {
        await handle.close();
      }
      await fsp.rename(tmp, full);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      if (e.code === "EISDIR" || e.code === "ENOTDIR") throw ComponentError.invalidArgument(`cannot create ${fileName}: ${e.message}`);
      throw e;
    }
    const name = relName(root, full);
    const size = String(data.length);
    return {
      data: Buffer.from(JSON.stringify({ fileName: name, size: data.length })),
      metadata: { fileName: name, size },
      content_type: "application/json",
    };
  }

  async get(metadata) {
    const { root, full } = await this.locate(metadata.fileName);
    const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
    let handle;
    try {
      // O_NOFOLLOW: a link put there is refused (ELOOP), never read through; O_NONBLOCK: a FIFO
      // does not hang the call (it is refused below as not a file).
      handle = await fsp.open(full, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    } catch (e) {
      if (e.code === "ENOENT" || e.code === "ENOTDIR") throw ComponentError.notFound(`file ${metadata.fileName} not found`);
      if (e.code === "ELOOP") throw ComponentError.invalidArgument(`${metadata.fileName} is a symbolic link`);
      throw e;
    }
    let bytes;
    let st;
    try {
      st = await handle.stat();
      if (st.isDirectory()) throw ComponentError.invalidArgument(`${metadata.fileName} is a folder, not a file`);
      if (!st.isFile()) throw ComponentError.invalidArgument(`${metadata.fileName} is not a regular file`);
      bytes = await handle.readFile();
    } finally {
      await handle.close();
    }
    return {
      data: bytes,
      metadata: { fileName: relName(root, full), size: String(bytes.length), modified: st.mtime.toISOString() },
      content_type: CONTENT_TYPES[path.extname(full).toLowerCase()] || "application/octet-stream",
    };
  }

  async delete(metadata) {
    const { full } = await this.locate(metadata.fileName);
    if (!(await this.fileStat(full, metadata.fileName))) throw ComponentError.notFound(`file ${metadata.fileName} not found`);
    try {
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
    // Dirents describe links as links (neither folder nor file): a link is never followed or
    // listed.
    const walk = async (dir) => {
      for (const entry of await fsp.readdir(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (entry.isFile() && !(entry.name.startsWith(".") && entry.name.endsWith(".tmp"))) names.push(relName(root, full));
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
    // Healthy while the folder is there (an instance whose Init failed has nothing to check).
    const root = this.root;
    if (root === null) return;
    try {
      await fsp.access(root, fs.constants.R_OK | fs.constants.W_OK);
    } catch (e) {
      throw ComponentError.unavailable(`rootPath ${root} is not usable: ${e.message}`);
    }
  }
}

async function main() {
  const { definition, services } = loadProto("bindings.proto");
  const instances = new Instances("binding", (name) => new FolderBinding(name));
  const implementation = {
    // Init is the only call that creates an instance.
    Init: instances.initHandler(),
    // The operations do not depend on Init: answered for any instance.
    ListOperations: unary(() => ({ operations: OPERATIONS })),
    // FAILED_PRECONDITION for an instance that is not initialised.
    Invoke: unary((req, call) => instances.of(call).invoke(req)),
    // OK for an instance never initialised; an initialised one also checks its folder.
    Ping: instances.pingHandler(),
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
