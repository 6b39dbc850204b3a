//! API-key check in front of the remote (TCP) admin API. The unix socket
//! needs none: its file permissions are the access control, as in Headscale.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use super::bootstrap::BootstrapKey;
use crate::state::AppState;

#[derive(Clone)]
pub(crate) struct ApiKeyLayer {
    state: Arc<AppState>,
    bootstrap: Option<Arc<BootstrapKey>>,
}

impl ApiKeyLayer {
    pub(crate) fn new(state: Arc<AppState>) -> Self {
        ApiKeyLayer {
            state,
            bootstrap: None,
        }
    }

    /// Also accept the key in this file (`admin.bootstrap_api_key_path`).
    pub(crate) fn with_bootstrap(mut self, key: Option<Arc<BootstrapKey>>) -> Self {
        self.bootstrap = key;
        self
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            state: self.state.clone(),
            bootstrap: self.bootstrap.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct ApiKeyAuth<S> {
    inner: S,
    state: Arc<AppState>,
    bootstrap: Option<Arc<BootstrapKey>>,
}

/// The key from `authorization: Bearer <key>`, if the header is there and readable.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
}

impl<S, B> Service<Request<B>> for ApiKeyAuth<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that must serve this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        let bootstrap = self.bootstrap.clone();
        Box::pin(async move {
            let Some(key) = bearer(req.headers()) else {
                state
                    .metrics
                    .grpc_request("auth", tonic::Code::Unauthenticated);
                return Ok(Status::unauthenticated(
                    "an API key is required: authorization: Bearer <key>",
                )
                .into_http());
            };
            if bootstrap.as_ref().is_some_and(|b| b.verify(key)) {
                return inner.call(req).await;
            }
            match state.store.verify_api_key(key).await {
                Ok(_) => inner.call(req).await,
                Err(e) => {
                    tracing::info!(reason = %e, "admin API call refused");
                    state
                        .metrics
                        .grpc_request("auth", tonic::Code::Unauthenticated);
                    Ok(Status::unauthenticated(e.to_string()).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
