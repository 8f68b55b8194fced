//! Hot reload of the resources paths: a changed, added or removed Component YAML is applied
//! without restarting plugd; an invalid edit is reported and changes nothing.

use std::{path::PathBuf, time::Duration};

use notify::Watcher;
use tokio_util::sync::CancellationToken;

use crate::{config::manifest, lifecycle::Manager, managed::Managed};

/// Watches `paths` and applies every valid change through `manager`.
pub fn watch_resources(
    paths: Vec<PathBuf>,
    app_id: String,
    namespace: Option<String>,
    mut manager: Manager,
    managed: std::sync::Arc<Managed>,
    stop: CancellationToken,
) {
    let (tx, mut events) = tokio::sync::mpsc::channel::<()>(16);
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.try_send(());
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the resources paths; hot reload is off");
                None
            }
        };
    if let Some(w) = watcher.as_mut() {
        for path in &paths {
            if let Err(e) = w.watch(path, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch resources path; its changes need a restart");
            }
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                got = events.recv() => if got.is_none() { break },
            }
            // Debounce: editors write files in several steps.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while events.try_recv().is_ok() {}
            if stop.is_cancelled() {
                break;
            }
            // Reading and parsing may take a while (files up to 16 MiB): not on the thread
            // that serves requests.
            let read = {
                let (paths, app_id, namespace) = (paths.clone(), app_id.clone(), namespace.clone());
                tokio::task::spawn_blocking(move || {
                    let (docs, problems) = manifest::read_documents(&paths);
                    let validated = manifest::validate(&docs, &app_id, namespace.as_deref());
                    (validated, problems)
                })
                .await
            };
            let Ok((validated, mut problems)) = read else {
                tracing::error!("reading the resource files failed; keeping the current ones");
                continue;
            };
            match validated {
                Ok(loaded) if problems.is_empty() => {
                    tracing::debug!(
                        components = loaded.components.len(),
                        "resources changed; applying"
                    );
                    // Processes for new socket names first, so the new Components find them.
                    let launched = managed.reconcile(&loaded.components).await;
                    let longest_init = loaded
                        .components
                        .iter()
                        .map(|c| c.init_timeout)
                        .max()
                        .unwrap_or_default();
                    managed.ready(&launched, longest_init, &stop).await;
                    manager.apply(loaded.components).await;
                }
                Ok(_) => report(problems),
                Err(manifest::Problems(more)) => {
                    problems.extend(more);
                    report(problems);
                }
            }
        }
    });
}

fn report(problems: Vec<manifest::Problem>) {
    tracing::error!(
        "resources changed but are invalid; nothing was changed: {}",
        manifest::Problems(problems)
    );
}
