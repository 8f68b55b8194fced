//! A managed component's output in plugd's JSON logs: every line stays one JSON object, and the
//! component's lines are told apart from plugd's own by `target` and `component`.

mod support;

use std::{
    io::Read,
    process::{Command, Stdio},
};

use support::TestDirs;

#[test]
fn managed_output_is_relayed_as_json_lines_marked_with_the_component() {
    let dirs = TestDirs::new();
    dirs.write_resource(
        "state.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.in-memory\n  version: v1\n  metadata: []\n",
    );
    // Port 0: plugd picks free ports itself, so no other test can take them first.
    let mut guard = support::ChildGuard::spawn(
        "plugd",
        Command::new(support::binary("plugd"))
            .args([
                "--app-id",
                "logs",
                "--log-as-json",
                "--enable-metrics=false",
                "--dapr-grpc-port",
                "0",
                "--dapr-http-port",
                "0",
            ])
            .arg("--resources-path")
            .arg(&dirs.resources)
            .arg("--sockets-folder")
            .arg(&dirs.sockets)
            .stderr(Stdio::piped()),
    );
    // Read plugd's output as it comes, until it serves; then stop it and read the rest.
    let mut reader = std::io::BufReader::new(guard.child.stderr.take().expect("piped stderr"));
    let mut stderr = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read stderr");
        assert!(n > 0, "plugd stopped before serving:\n{stderr}");
        stderr.push_str(&line);
        if line.contains("plugd is serving the runtime API") {
            break;
        }
    }
    let status = guard.terminate().expect("plugd stops after SIGTERM");
    assert!(status.success(), "{status:?}");
    reader.read_to_string(&mut stderr).expect("read stderr");

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let from_component: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["scope"] == "component").collect();
    assert!(
        from_component.iter().all(|l| l["component"] == "in-memory"
            && l["stream"] == "stderr"
            && l["socket"]
                .as_str()
                .is_some_and(|s| s.ends_with("in-memory.sock"))),
        "{from_component:#?}"
    );
    // The component's own start-up line, level kept, text not prefixed in JSON mode.
    assert!(
        from_component.iter().any(|l| l["level"] == "info"
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("serving pluggable component"))),
        "{from_component:#?}"
    );
    // plugd's own lines are there too, without the component marker.
    assert!(
        lines
            .iter()
            .any(|l| l["scope"] == "plugd.managed" && l["msg"] == "launching managed component")
    );
    assert!(
        lines
            .iter()
            .filter(|l| l["scope"] != "component")
            .all(|l| l.get("stream").is_none())
    );
    // It was stopped, and its socket is gone.
    assert!(
        lines
            .iter()
            .any(|l| l["msg"] == "managed component stopped"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&dirs.sockets)
        .expect("sockets dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
