//! Files under one root folder, with every name checked so that nothing
//! outside the root is read, written, listed or deleted.
//!
//! A name ([`FileName::parse`]) is relative, `/`-separated, and may contain
//! folders. It is refused when it is empty, contains a NUL byte, starts with
//! `/`, ends with `/`, has a `..` component, is nothing but `.` components,
//! or its last component starts with [`TEMP_PREFIX`]. Empty and `.`
//! components (`a//b`, `./a`) are dropped.
//!
//! Symbolic links inside the root are followed only while they stay inside
//! it: every folder on the way is resolved (`canonicalize`) and must lie
//! under the canonical root, and so must an existing file that is a link.
//! These are checks before use; someone who can write to the root folder
//! at the same time could still swap a folder for a link between the check
//! and the use (see the README).
//!
//! Everything here blocks; the binding runs it on the blocking pool.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use plugd_component_sdk::bindings::BindingError;

/// Prefix of the temporary files a create writes before renaming them into
/// place. Such files are never listed, and names ending in such a component
/// are refused.
pub const TEMP_PREFIX: &str = ".plugd-files-tmp-";

/// A checked relative file name: its components, none empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    parts: Vec<String>,
}

impl FileName {
    /// Checks `name` (see the module docs).
    pub fn parse(name: &str) -> Result<Self, BindingError> {
        let refuse = |why: &str| {
            Err(BindingError::InvalidArgument(format!(
                "fileName {name:?} {why}"
            )))
        };
        if name.is_empty() {
            return Err(BindingError::InvalidArgument(
                "fileName is empty".to_owned(),
            ));
        }
        if name.contains('\0') {
            return refuse("contains a NUL byte");
        }
        if name.starts_with('/') {
            return refuse("is an absolute path; names are relative to the root folder");
        }
        if name.ends_with('/') {
            return refuse("ends with '/'; it must name a file");
        }
        let mut parts = Vec::new();
        for part in name.split('/') {
            match part {
                "" | "." => {}
                ".." => return refuse("contains '..'; names may not leave the root folder"),
                part => parts.push(part.to_owned()),
            }
        }
        match parts.last() {
            None => refuse("names no file"),
            Some(last) if last.starts_with(TEMP_PREFIX) => refuse(&format!(
                "is reserved: names starting with {TEMP_PREFIX:?} are temporary files"
            )),
            Some(_) => Ok(Self { parts }),
        }
    }

    /// The normalised name (components joined by `/`).
    pub fn as_string(&self) -> String {
        self.parts.join("/")
    }

    fn folders(&self) -> &[String] {
        self.parts.split_last().map_or(&[], |(_, folders)| folders)
    }

    fn file(&self) -> &str {
        self.parts.last().map_or("", String::as_str)
    }
}

/// The canonical root folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    path: PathBuf,
}

impl Root {
    /// Creates `path` (and its parents) if missing and resolves it. A path
    /// in one of the [`DISALLOWED_ROOTS`] (or resolving into one) is refused
    /// before anything is created, as Dapr's localstorage binding does.
    pub fn open(path: &Path) -> Result<Self, String> {
        let disallowed = || format!("rootPath {path:?} points to a disallowed location");
        let absolute = std::path::absolute(path)
            .map_err(|err| format!("rootPath {path:?} cannot be resolved: {err}"))?;
        if is_disallowed(&absolute) {
            return Err(disallowed());
        }
        fs::create_dir_all(path)
            .map_err(|err| format!("rootPath {path:?} cannot be created: {err}"))?;
        let canonical = fs::canonicalize(path)
            .map_err(|err| format!("rootPath {path:?} cannot be resolved: {err}"))?;
        if is_disallowed(&canonical) {
            return Err(disallowed());
        }
        if !canonical.is_dir() {
            return Err(format!("rootPath {path:?} is not a folder"));
        }
        Ok(Self { path: canonical })
    }

    /// The canonical root path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn contains(&self, path: &Path) -> bool {
        path.starts_with(&self.path)
    }

    /// Writes `data` to `name` atomically: a temporary file in the same
    /// folder, synced, then renamed over the target. Missing folders are
    /// created.
    pub fn create(&self, name: &FileName, data: &[u8]) -> Result<(), BindingError> {
        let folder = self.folder(name, true)?;
        let target = folder.join(name.file());
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => return Err(is_folder(name)),
            Ok(meta) if meta.is_symlink() => {
                // The rename replaces the link itself, but a link leading out
                // of the root is refused all the same, as for get and delete.
                if let Ok(real) = fs::canonicalize(&target)
                    && !self.contains(&real)
                {
                    return Err(escapes(name));
                }
            }
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(name, &err)),
        }
        let temp = folder.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4()));
        let written = write_synced(&temp, data).and_then(|()| fs::rename(&temp, &target));
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error(name, &err));
        }
        // Make the rename itself durable; the file is complete either way.
        if let Err(err) = fs::File::open(&folder).and_then(|dir| dir.sync_all()) {
            tracing::debug!(error = %err, "syncing the folder after a create failed");
        }
        Ok(())
    }

    /// The contents of `name`.
    pub fn read(&self, name: &FileName) -> Result<Vec<u8>, BindingError> {
        let path = self.existing(name)?;
        fs::read(&path).map_err(|err| io_error(name, &err))
    }

    /// Deletes `name` (a link is removed, not what it points to).
    pub fn delete(&self, name: &FileName) -> Result<(), BindingError> {
        self.existing(name)?;
        let path = self.folder(name, false)?.join(name.file());
        fs::remove_file(&path).map_err(|err| io_error(name, &err))
    }

    /// Every file under the root, by name relative to it, sorted. Folders
    /// are descended into; links are listed when they lead to a file inside
    /// the root and never descended into. Temporary files and names that are
    /// not UTF-8 are left out.
    pub fn list(&self) -> Result<Vec<String>, BindingError> {
        self.list_under(None)
    }

    /// Like [`Root::list`], but only the files under the folder `folder`
    /// (itself relative to the root; `None` is the root), still named
    /// relative to the root (`folder/...`). A missing folder is `NOT_FOUND`,
    /// a file `INVALID_ARGUMENT`.
    pub fn list_under(&self, folder: Option<&FileName>) -> Result<Vec<String>, BindingError> {
        let start = match folder {
            None => (self.path.clone(), String::new()),
            Some(name) => {
                let mut path = self.path.clone();
                for part in &name.parts {
                    let next = path.join(part);
                    path = self.step(name, &next, false)?;
                }
                (path, format!("{}/", name.as_string()))
            }
        };
        let mut names = Vec::new();
        let mut pending = vec![start];
        while let Some((folder, prefix)) = pending.pop() {
            let entries = fs::read_dir(&folder).map_err(|err| list_error(&prefix, &err))?;
            for entry in entries {
                let entry = entry.map_err(|err| list_error(&prefix, &err))?;
                let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                    tracing::debug!(folder = %folder.display(), "skipping a name that is not UTF-8");
                    continue;
                };
                let name = format!("{prefix}{file_name}");
                let kind = entry.file_type().map_err(|err| list_error(&name, &err))?;
                if kind.is_dir() {
                    pending.push((entry.path(), format!("{name}/")));
                } else if kind.is_file() {
                    if !file_name.starts_with(TEMP_PREFIX) {
                        names.push(name);
                    }
                } else if kind.is_symlink() {
                    let inside = fs::canonicalize(entry.path())
                        .is_ok_and(|real| self.contains(&real) && real.is_file());
                    if inside {
                        names.push(name);
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// The folder holding `name`, resolved and checked to be inside the root;
    /// missing folders are created when `create` is set, else the file is
    /// reported missing.
    fn folder(&self, name: &FileName, create: bool) -> Result<PathBuf, BindingError> {
        let mut folder = self.path.clone();
        for part in name.folders() {
            let next = folder.join(part);
            folder = self.step(name, &next, create)?;
        }
        // Belt and braces: the whole chain, resolved once more.
        let real = fs::canonicalize(&folder).map_err(|err| io_error(name, &err))?;
        if !self.contains(&real) {
            return Err(escapes(name));
        }
        Ok(real)
    }

    /// Resolves one folder on the way to a file.
    fn step(&self, name: &FileName, next: &Path, create: bool) -> Result<PathBuf, BindingError> {
        // Twice at most: a folder created by someone else between the check
        // and the mkdir is looked at again.
        for _ in 0..2 {
            match fs::symlink_metadata(next) {
                Ok(meta) if meta.is_dir() => return Ok(next.to_path_buf()),
                Ok(meta) if meta.is_symlink() => {
                    let real = match fs::canonicalize(next) {
                        Ok(real) => real,
                        Err(err) if err.kind() == ErrorKind::NotFound => {
                            return Err(if create {
                                not_a_folder(name)
                            } else {
                                not_found(name)
                            });
                        }
                        Err(err) => return Err(io_error(name, &err)),
                    };
                    if !self.contains(&real) {
                        return Err(escapes(name));
                    }
                    if !real.is_dir() {
                        return Err(not_a_folder(name));
                    }
                    return Ok(real);
                }
                Ok(_) => return Err(not_a_folder(name)),
                Err(err) if err.kind() == ErrorKind::NotFound && create => {
                    match fs::create_dir(next) {
                        Ok(()) => return Ok(next.to_path_buf()),
                        Err(err) if err.kind() == ErrorKind::AlreadyExists => {}
                        Err(err) => return Err(io_error(name, &err)),
                    }
                }
                Err(err) if err.kind() == ErrorKind::NotFound => return Err(not_found(name)),
                Err(err) => return Err(io_error(name, &err)),
            }
        }
        Err(not_a_folder(name))
    }

    /// The real path of the existing file `name`, checked to be inside the
    /// root and not a folder.
    fn existing(&self, name: &FileName) -> Result<PathBuf, BindingError> {
        let path = self.folder(name, false)?.join(name.file());
        let real = match fs::canonicalize(&path) {
            Ok(real) => real,
            // Missing, or a link to nothing.
            Err(err) if err.kind() == ErrorKind::NotFound => return Err(not_found(name)),
            Err(err) => return Err(io_error(name, &err)),
        };
        if !self.contains(&real) {
            return Err(escapes(name));
        }
        let meta = fs::metadata(&real).map_err(|err| io_error(name, &err))?;
        if meta.is_dir() {
            return Err(is_folder(name));
        }
        Ok(real)
    }
}

/// Root folders refused by [`Root::open`], with everything below them (the
/// same list as Dapr's localstorage binding).
pub const DISALLOWED_ROOTS: [&str; 4] = ["/proc", "/sys", "/boot", "/var/run/secrets"];

fn is_disallowed(path: &Path) -> bool {
    DISALLOWED_ROOTS.iter().any(|root| {
        let root = Path::new(root);
        path.starts_with(root) || fs::canonicalize(root).is_ok_and(|real| path.starts_with(real))
    })
}

/// Orders names (relative, `/`-separated) the way a depth-first walk that
/// reads each folder in name order meets them: component by component, so
/// `a/b` comes before `a.txt` (Go's `filepath.Walk` order, which Dapr's
/// localstorage `list` answers in).
pub fn walk_order(names: &mut [String]) {
    names.sort_by(|a, b| a.split('/').cmp(b.split('/')));
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

fn not_found(name: &FileName) -> BindingError {
    BindingError::NotFound(format!("file {:?} not found", name.as_string()))
}

fn is_folder(name: &FileName) -> BindingError {
    BindingError::InvalidArgument(format!("fileName {:?} is a folder", name.as_string()))
}

fn not_a_folder(name: &FileName) -> BindingError {
    BindingError::InvalidArgument(format!(
        "fileName {:?}: a folder on its path is not a folder",
        name.as_string()
    ))
}

fn escapes(name: &FileName) -> BindingError {
    BindingError::InvalidArgument(format!(
        "fileName {:?} leads outside the root folder through a symbolic link",
        name.as_string()
    ))
}

fn io_error(name: &FileName, err: &std::io::Error) -> BindingError {
    let message = format!("file {:?}: {err}", name.as_string());
    match err.kind() {
        ErrorKind::NotFound => not_found(name),
        ErrorKind::PermissionDenied => BindingError::PermissionDenied(message),
        ErrorKind::InvalidFilename | ErrorKind::NotADirectory | ErrorKind::IsADirectory => {
            BindingError::InvalidArgument(message)
        }
        _ => BindingError::Internal(message),
    }
}

fn list_error(name: &str, err: &std::io::Error) -> BindingError {
    BindingError::Internal(format!(
        "listing {:?}: {err}",
        if name.is_empty() { "." } else { name }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str) -> String {
        match FileName::parse(name) {
            Err(BindingError::InvalidArgument(message)) => message,
            other => panic!("{name:?} not refused: {other:?}"),
        }
    }

    #[test]
    fn names_are_normalised() {
        for (name, normal) in [
            ("a.txt", "a.txt"),
            ("a/b.txt", "a/b.txt"),
            ("./a//b.txt", "a/b.txt"),
            ("a/./b", "a/b"),
            ("..a/b..", "..a/b.."),
            ("a\\..\\b", "a\\..\\b"),
        ] {
            let parsed = FileName::parse(name).expect(name);
            assert_eq!(parsed.as_string(), normal);
        }
    }

    #[test]
    fn escaping_names_are_refused() {
        assert_eq!(refused(""), "fileName is empty");
        assert!(refused("/etc/passwd").contains("absolute"));
        assert!(refused("../x").contains("'..'"));
        assert!(refused("a/../../x").contains("'..'"));
        assert!(refused("a/..").contains("'..'"));
        assert!(refused("a\0b").contains("NUL"));
        assert!(refused("a/").contains("ends with '/'"));
        assert!(refused(".").contains("names no file"));
        assert!(refused("./.").contains("names no file"));
        assert!(refused("a/.plugd-files-tmp-x").contains("reserved"));
        assert!(refused("../x").starts_with("fileName \"../x\""));
    }

    #[test]
    fn create_read_list_delete_and_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("secret"), b"outside").expect("write");
        let root = Root::open(&dir.path().join("root/deeper")).expect("root");
        let name = |n: &str| FileName::parse(n).expect(n);

        root.create(&name("a/b/c.txt"), b"abc").expect("create");
        root.create(&name("top"), b"1").expect("create");
        root.create(&name("top"), b"2").expect("overwrite");
        assert_eq!(root.read(&name("top")).expect("read"), b"2");
        assert_eq!(root.read(&name("a/b/c.txt")).expect("read"), b"abc");

        std::os::unix::fs::symlink(&outside, root.path().join("out")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("secret"), root.path().join("leak"))
            .expect("symlink");
        std::os::unix::fs::symlink(root.path().join("a"), root.path().join("inner"))
            .expect("symlink");
        for escaping in ["out/secret", "leak", "out/new"] {
            assert!(
                matches!(
                    root.read(&name(escaping)),
                    Err(BindingError::InvalidArgument(_))
                ),
                "{escaping}"
            );
        }
        assert!(matches!(
            root.create(&name("out/new"), b"x"),
            Err(BindingError::InvalidArgument(_))
        ));
        assert!(matches!(
            root.create(&name("leak"), b"x"),
            Err(BindingError::InvalidArgument(_))
        ));
        assert!(matches!(
            root.delete(&name("out/secret")),
            Err(BindingError::InvalidArgument(_))
        ));
        assert_eq!(
            fs::read(outside.join("secret")).expect("still there"),
            b"outside"
        );
        assert!(!outside.join("new").exists());

        // Links that stay inside are followed.
        assert_eq!(root.read(&name("inner/b/c.txt")).expect("read"), b"abc");

        fs::write(root.path().join(format!("{TEMP_PREFIX}left")), b"x").expect("write");
        assert_eq!(root.list().expect("list"), ["a/b/c.txt", "top"]);

        assert!(matches!(
            root.read(&name("a")),
            Err(BindingError::InvalidArgument(_))
        ));
        assert!(matches!(
            root.read(&name("top/x")),
            Err(BindingError::InvalidArgument(_))
        ));
        assert!(matches!(
            root.read(&name("nope/x")),
            Err(BindingError::NotFound(_))
        ));
        root.delete(&name("top")).expect("delete");
        assert!(matches!(
            root.read(&name("top")),
            Err(BindingError::NotFound(_))
        ));
        assert!(matches!(
            root.delete(&name("top")),
            Err(BindingError::NotFound(_))
        ));
    }

    #[test]
    fn listing_under_a_folder_and_walk_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::open(dir.path()).expect("root");
        let name = |n: &str| FileName::parse(n).expect(n);
        for file in ["a.txt", "a/b/c.txt", "a/z.txt", "b.txt"] {
            root.create(&name(file), b"x").expect("create");
        }
        assert_eq!(
            root.list().expect("list"),
            ["a.txt", "a/b/c.txt", "a/z.txt", "b.txt"]
        );
        assert_eq!(
            root.list_under(Some(&name("a"))).expect("list a"),
            ["a/b/c.txt", "a/z.txt"]
        );
        assert_eq!(
            root.list_under(Some(&name("./a//b"))).expect("list a/b"),
            ["a/b/c.txt"]
        );
        assert!(matches!(
            root.list_under(Some(&name("nope"))),
            Err(BindingError::NotFound(_))
        ));
        assert!(matches!(
            root.list_under(Some(&name("b.txt"))),
            Err(BindingError::InvalidArgument(_))
        ));
        let mut names = root.list().expect("list");
        walk_order(&mut names);
        assert_eq!(names, ["a/b/c.txt", "a/z.txt", "a.txt", "b.txt"]);
    }

    #[test]
    fn disallowed_roots_are_refused() {
        for path in [
            "/proc",
            "/proc/plugd-test",
            "/sys/x",
            "/boot/x",
            "/var/run/secrets/k",
        ] {
            let err = Root::open(Path::new(path)).expect_err(path);
            assert!(err.contains("disallowed"), "{path}: {err}");
        }
        assert!(!Path::new("/boot/x").exists());
    }

    #[test]
    fn root_must_be_a_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        fs::write(&file, b"x").expect("write");
        let err = Root::open(&file).expect_err("a file");
        assert!(err.starts_with("rootPath"), "{err}");
    }
}
