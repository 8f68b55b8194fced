//! Invalid Component resources stop plugd before any I/O on sockets, with every problem
//! reported at once, each naming its file, component and field; scopes decide what loads.

mod support;

use plugd::{app::StartError, config::Config, registry::ComponentStatus};
use support::TestDirs;

fn component(name_line: &str, spec: &str) -> String {
    format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n{name_line}spec:\n{spec}")
}

async fn build(
    dirs: &TestDirs,
    resources: Vec<std::path::PathBuf>,
) -> Result<plugd::App, StartError> {
    let config = Config::for_tests(dirs.sockets.clone(), resources);
    plugd::App::build(config, tokio_util::sync::CancellationToken::new()).await
}

fn config_problems(
    result: Result<plugd::App, StartError>,
) -> (Vec<plugd::config::manifest::Problem>, String) {
    match result {
        Ok(_) => panic!("plugd built from invalid resources"),
        Err(e @ StartError::Config(_)) => {
            let text = e.to_string();
            match e {
                StartError::Config(problems) => (problems.0, text),
                _ => unreachable!(),
            }
        }
        Err(other) => panic!("expected a configuration error, got: {other}"),
    }
}

#[tokio::test]
async fn every_problem_is_reported_with_file_component_and_field() {
    let dirs = TestDirs::new();
    dirs.write_resource(
        "a-category.yaml",
        &component("  name: badcat\n", "  type: queue.thing\n  version: v1\n"),
    );
    dirs.write_resource(
        "b-noname.yaml",
        &component(
            "  namespace: default\n",
            "  type: state.sqlite\n  version: v1\n",
        ),
    );
    dirs.write_resource(
        "c-dup.yaml",
        &component("  name: dup\n", "  type: state.sqlite\n  version: v1\n"),
    );
    dirs.write_resource(
        "d-dup.yml",
        &component("  name: dup\n", "  type: state.sqlite\n  version: v1\n"),
    );
    dirs.write_resource(
        "e-version.yaml",
        &component("  name: v2store\n", "  type: state.sqlite\n  version: v2\n"),
    );
    dirs.write_resource(
        "f-timeout.yaml",
        &component(
            "  name: slow\n",
            "  type: state.sqlite\n  version: v1\n  initTimeout: ten seconds\n",
        ),
    );
    // A valid component and a non-YAML file are not problems.
    dirs.write_resource(
        "g-ok.yaml",
        &component("  name: fine\n", "  type: state.sqlite\n  version: v1\n"),
    );
    dirs.write_resource("README.md", "not a resource");

    let (problems, text) = config_problems(build(&dirs, vec![dirs.resources.clone()]).await);
    let find = |file: &str, field: &str| {
        problems
            .iter()
            .find(|p| p.file.ends_with(file) && p.field == field)
            .unwrap_or_else(|| panic!("no problem for {file} / {field} in:\n{text}"))
    };

    let p = find("a-category.yaml", "spec.type");
    assert_eq!(p.component, "badcat");
    assert!(
        p.message.contains("unknown category") && p.message.contains("queue"),
        "{p}"
    );

    let p = find("b-noname.yaml", "metadata.name");
    assert!(p.message.contains("required"), "{p}");
    assert!(p.component.contains("unnamed"), "{p}");

    let p = find("d-dup.yml", "metadata.name");
    assert_eq!(p.component, "dup");
    assert!(
        p.message.contains("duplicate") && p.message.contains("c-dup.yaml"),
        "{p}"
    );

    let p = find("e-version.yaml", "spec.version");
    assert_eq!(p.component, "v2store");
    assert!(p.message.contains("v2"), "{p}");

    let p = find("f-timeout.yaml", "spec.initTimeout");
    assert_eq!(p.component, "slow");

    assert_eq!(problems.len(), 5, "unexpected problems:\n{text}");
    assert!(
        !text.contains("g-ok.yaml") && !text.contains("README"),
        "{text}"
    );
    // The Display lists every problem with its file, component and field.
    for p in &problems {
        let line = format!(
            "{}: component {}: field {}",
            p.file.display(),
            p.component,
            p.field
        );
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
    assert!(text.starts_with("5 problem(s)"), "{text}");
}

#[tokio::test]
async fn yaml_syntax_errors_and_missing_folders_are_reported_together() {
    let dirs = TestDirs::new();
    dirs.write_resource("broken.yaml", "apiVersion: [unclosed\n");
    let missing = dirs.root.path().join("no-such-folder");
    let (problems, text) =
        config_problems(build(&dirs, vec![dirs.resources.clone(), missing.clone()]).await);
    assert_eq!(problems.len(), 2, "{text}");
    assert!(
        problems
            .iter()
            .any(|p| p.file.ends_with("broken.yaml") && p.message.contains("invalid YAML")),
        "{text}"
    );
    let p = problems
        .iter()
        .find(|p| p.file == missing)
        .unwrap_or_else(|| panic!("missing folder not reported:\n{text}"));
    assert!(p.message.contains("cannot read resources folder"), "{p}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
}

#[tokio::test]
async fn components_scoped_to_other_apps_are_not_loaded() {
    let dirs = TestDirs::new();
    // Neither socket exists: loading either component would fail the start.
    dirs.write_resource(
        "other.yaml",
        &format!(
            "{}scopes:\n  - otherapp\n",
            component(
                "  name: theirs\n",
                "  type: state.nosocket\n  version: v1\n"
            )
        ),
    );
    let app = build(&dirs, vec![dirs.resources.clone()])
        .await
        .unwrap_or_else(|e| panic!("a component scoped to another app was loaded: {e}"));
    let snapshot = app.registry().snapshot();
    assert!(snapshot.components.is_empty(), "{:?}", snapshot.components);
    assert!(snapshot.state.is_empty());

    // Scoped to this app ("testapp"), the same component is loaded (and waits for its socket).
    dirs.write_resource(
        "mine.yaml",
        &format!(
            "{}scopes:\n  - otherapp\n  - testapp\n",
            component("  name: mine\n", "  type: state.nosocket\n  version: v1\n")
        ),
    );
    let app = build(&dirs, vec![dirs.resources.clone()])
        .await
        .expect("plugd starts");
    let snapshot = app.registry().snapshot();
    let names: Vec<&str> = snapshot.components.keys().map(String::as_str).collect();
    assert_eq!(names, ["mine"]);
    match &snapshot.components["mine"].status {
        ComponentStatus::Waiting { reason } => {
            assert!(reason.contains("nosocket.sock"), "{reason}")
        }
        other => panic!("mine is {other:?}"),
    }
}
