//! Small helpers shared by the kind modules.

/// `err`'s message followed by the messages of its sources, joined by `": "`.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The init properties of a `MetadataRequest`, empty when it is absent.
pub(crate) fn properties(
    metadata: Option<plugd_proto::components::MetadataRequest>,
) -> std::collections::HashMap<String, String> {
    metadata.map(|m| m.properties).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
