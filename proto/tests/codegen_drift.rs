//! Code generator and drift check for `plugd-proto`.
//!
//! This test is the only place where Rust is generated from the `.proto`
//! files under `proto/proto/`. It compiles them with `protox` (no `protoc`
//! needed), runs `tonic-prost-build` into a temporary directory and compares
//! the result byte for byte with the checked-in files in `proto/src/gen/`:
//!
//! * one `<package>.rs` per protobuf package (client and server code for every
//!   service), and
//! * `descriptor.bin`, the encoded `FileDescriptorSet` of every file including
//!   its imports (well-known types), without source info, for gRPC reflection.
//!
//! To rewrite `src/gen/` after editing a `.proto` file (or after a
//! generator upgrade), run:
//!
//! ```text
//! PLUGD_UPDATE_PROTO=1 cargo test -p plugd-proto --test codegen_drift
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use prost::Message as _;

/// Environment variable that switches the test from "check" to "write".
const UPDATE_ENV: &str = "PLUGD_UPDATE_PROTO";

/// Name of the encoded descriptor set inside `src/gen/`.
const DESCRIPTOR_FILE: &str = "descriptor.bin";

/// The command that regenerates the checked-in files.
const UPDATE_COMMAND: &str = "PLUGD_UPDATE_PROTO=1 cargo test -p plugd-proto --test codegen_drift";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Root of the `.proto` include tree (file names in descriptors are relative to it).
fn proto_root() -> PathBuf {
    crate_dir().join("proto")
}

/// Directory holding the checked-in generated files.
fn gen_dir() -> PathBuf {
    crate_dir().join("src").join("gen")
}

/// Every `.proto` file below `root`, as sorted `/`-separated relative paths.
fn proto_files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                let rel = path.strip_prefix(root).expect("path below the proto root");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Runs the whole generator and returns file name -> contents of what belongs
/// in `src/gen/`.
fn generate() -> BTreeMap<String, Vec<u8>> {
    let root = proto_root();
    let files = proto_files(&root);
    assert!(
        !files.is_empty(),
        "no .proto files under {}",
        root.display()
    );

    let mut compiler = protox::Compiler::new([&root])
        .unwrap_or_else(|e| panic!("cannot set up protox for {}: {e}", root.display()));
    compiler.include_imports(true).include_source_info(true);
    compiler
        .open_files(&files)
        .unwrap_or_else(|e| panic!("protox failed to compile the .proto files: {e:?}"));
    let fds = compiler.file_descriptor_set();

    let mut out = BTreeMap::new();

    // Descriptor set for reflection: every file (imports included, in
    // dependency order), without source info so comment edits do not churn it.
    let mut reflection = fds.clone();
    for file in &mut reflection.file {
        file.source_code_info = None;
    }
    out.insert(DESCRIPTOR_FILE.to_owned(), reflection.encode_to_vec());

    // Rust code. prost-build needs the imported files to resolve types, so it
    // gets the whole set; the code it emits for `google.*` packages is
    // dropped, since those types come from `prost-types` (prost-build's
    // default extern path).
    let tmp = tempfile::tempdir().expect("temporary directory");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .out_dir(tmp.path())
        .compile_fds(fds)
        .expect("tonic-prost-build failed");

    for entry in fs::read_dir(tmp.path()).expect("list generated files") {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 file name")
            .to_owned();
        if name.starts_with("google.") {
            continue;
        }
        let bytes = fs::read(&path).expect("read generated file");
        out.insert(name, bytes);
    }
    out
}

/// Names of the regular files currently in `dir` (empty if it does not exist).
fn existing_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn generated_code_is_up_to_date() {
    let fresh = generate();
    let dir = gen_dir();

    for expected in [
        "dapr.proto.common.v1.rs",
        "dapr.proto.components.v1.rs",
        "dapr.proto.runtime.v1.rs",
        DESCRIPTOR_FILE,
    ] {
        assert!(
            fresh.contains_key(expected),
            "generator did not produce {expected}; produced: {:?}",
            fresh.keys().collect::<Vec<_>>()
        );
    }

    if std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1") {
        fs::create_dir_all(&dir).expect("create src/gen");
        for stale in existing_files(&dir) {
            if !fresh.contains_key(&stale) {
                fs::remove_file(dir.join(&stale)).expect("remove stale generated file");
                eprintln!("removed stale src/gen/{stale}");
            }
        }
        for (name, bytes) in &fresh {
            let path = dir.join(name);
            if fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                fs::write(&path, bytes).expect("write generated file");
                eprintln!("wrote src/gen/{name}");
            }
        }
        return;
    }

    let mut problems = Vec::new();
    for (name, bytes) in &fresh {
        match fs::read(dir.join(name)) {
            Ok(current) if current == *bytes => {}
            Ok(_) => problems.push(format!(
                "  src/gen/{name}: differs from freshly generated output"
            )),
            Err(_) => problems.push(format!("  src/gen/{name}: missing")),
        }
    }
    for name in existing_files(&dir) {
        if !fresh.contains_key(&name) {
            problems.push(format!(
                "  src/gen/{name}: not produced by the generator (stale)"
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "generated protobuf code in proto/src/gen/ is out of date with proto/proto/**/*.proto:\n{}\n\
         Regenerate it with:\n  {UPDATE_COMMAND}\nand commit the result.",
        problems.join("\n")
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(
        generate(),
        generate(),
        "two generator runs gave different output"
    );
}
