//! A component binary run as a child process, its stderr read line by line.

#![allow(dead_code)] // Each test file uses part of this.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bound on every wait.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A running component binary serving in `folder`.
pub struct Running {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `command` (with the socket folder given only through
    /// `DAPR_COMPONENT_SOCKETS_FOLDER`, as the Kubernetes injector sets it)
    /// and waits until it serves.
    pub fn start(mut command: Command, folder: &Path) -> Self {
        command
            .env_remove("DAPR_COMPONENTS_SOCKETS_FOLDER")
            .env_remove("DAPR_COMPONENT_SOCKET_FOLDER")
            .env("DAPR_COMPONENT_SOCKETS_FOLDER", folder)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the component");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Self {
            child: Some(child),
            lines,
            seen: Vec::new(),
        };
        running.wait_for_line("serving pluggable component");
        running
    }

    /// Waits (bounded) for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends SIGTERM, waits (bounded) for the exit, reads the rest of
    /// stderr into [`Running::seen`] and returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut child = child;
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(LIMIT)
            .expect("the process did not exit in time")
            .expect("wait");
        // stderr closes with the process.
        while let Ok(line) = self.lines.recv_timeout(LIMIT) {
            self.seen.push(line);
        }
        status
    }

    /// The stderr lines seen so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<&str> {
        self.seen
            .iter()
            .map(String::as_str)
            .filter(|line| line.contains(needle))
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `folder/<name>.sock`.
pub fn socket(folder: &Path, name: &str) -> PathBuf {
    folder.join(format!("{name}.sock"))
}
