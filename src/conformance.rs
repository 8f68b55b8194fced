//! `plugd conformance`: a black-box check of a component socket against the pluggable-component
//! contract.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Serialize;

use crate::component::ComponentKind;

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// Kinds to check; empty: every kind the socket serves.
    pub kinds: Vec<ComponentKind>,
    /// Init metadata for the component under test.
    pub metadata: BTreeMap<String, String>,
    /// Deadline on each call.
    pub timeout: Duration,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The kind checked (`state`, …), or `socket` for the checks that come first.
    pub kind: String,
    pub check: String,
    pub outcome: Outcome,
    pub reason: String,
}

/// Every check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub socket: PathBuf,
    pub results: Vec<CheckResult>,
}

impl Report {
    /// No check failed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.outcome != Outcome::Fail)
    }

    /// The results as an aligned text table (check, result, reason).
    pub fn table(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            out.push_str(&format!(
                "{} {} {:?} {}\n",
                r.kind, r.check, r.outcome, r.reason
            ));
        }
        out
    }
}

/// Runs the suite.
pub async fn run(opts: &Options) -> Report {
    Report {
        socket: opts.socket.clone(),
        results: vec![CheckResult {
            kind: "socket".into(),
            check: "suite".into(),
            outcome: Outcome::Fail,
            reason: format!("not implemented yet (timeout {:?})", opts.timeout),
        }],
    }
}
