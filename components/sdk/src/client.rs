//! Dialling a component over its Unix socket, for tests and tools that talk to a component
//! directly (the way plugd does).

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::Request;
use tonic::metadata::errors::InvalidMetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::INSTANCE_HEADER;

/// Opens a gRPC channel to the component listening on `socket`. The `:authority` sent is
/// `localhost`, as Dapr's Go client sends it.
pub async fn connect(socket: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.as_ref().to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// `message` as a request for the component instance `instance`: with the
/// [`INSTANCE_HEADER`] daprd sends, so the component's multiplexer hands it to
/// that instance. Fails when `instance` cannot be a header value (for example
/// when it holds a line break).
pub fn for_instance<T>(instance: &str, message: T) -> Result<Request<T>, InvalidMetadataValue> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(INSTANCE_HEADER, instance.parse()?);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_their_instance() {
        let request = for_instance("orders", ()).expect("a valid name");
        let header = request.metadata().get(INSTANCE_HEADER);
        assert_eq!(header.and_then(|value| value.to_str().ok()), Some("orders"));
        assert!(for_instance("two\nlines", ()).is_err());
    }
}
