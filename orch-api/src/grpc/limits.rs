//! The limits the gRPC servers apply to the requests they serve, as tower layers (set with
//! `Server::builder().layer(...)` by [`cluster::serve`](super::cluster::serve) and
//! [`node::serve`](super::node::serve)):
//!
//! - requests in flight on one connection (tonic's `concurrency_limit_per_connection`, a
//!   tower `ConcurrencyLimit`): a connection's requests past it wait for a slot;
//! - requests in flight on the whole server, all connections together
//!   ([`tower::limit::GlobalConcurrencyLimitLayer`] behind [`tower::load_shed::LoadShedLayer`]):
//!   a request past it is refused at once with `Unavailable` naming the limit (agents' store
//!   calls retry on `Unavailable`), never queued;
//! - how long a request may take to its response ([`tower::timeout::TimeoutLayer`]): a unary
//!   call's answer, or a stream's start (the handler handing over the stream). The messages
//!   of a stream that has started (watches, logs) are never cut: a tower service's future
//!   ends with the response's headers, not its body.
//!
//! A request still holds its slot until its response starts, so a long watch holds none.

use std::convert::Infallible;
use std::time::Duration;

use tonic::Status;
use tower::layer::util::{Identity, Stack};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::util::{Either, MapErrLayer};

/// What tower services return as an error.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits every cluster server applies.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests in flight per connection; more wait for a slot on that connection.
    pub concurrency_per_connection: usize,
    /// Requests in flight on the whole server, all connections together; more are refused
    /// at once with `Unavailable` naming this limit (load shedding).
    pub concurrency: usize,
    /// Longest a request may take to its response (a unary call's answer, a stream's start;
    /// never the messages of a stream that has started). `None`: no limit.
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency_per_connection: 256,
            concurrency: 1024,
            timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// The routes' errors (there are none) as a [`BoxError`], the error of the layers above.
type Boxed = MapErrLayer<fn(Infallible) -> BoxError>;

/// The layers of [`Limits::layer`], outermost first: refusals as statuses, load shedding,
/// the server's concurrency limit, the timeout.
type Layers<F> = Stack<
    Boxed,
    Stack<
        Either<TimeoutLayer, Identity>,
        Stack<GlobalConcurrencyLimitLayer, Stack<LoadShedLayer, Stack<MapErrLayer<F>, Identity>>>,
    >,
>;

impl Limits {
    /// The server-wide limit, load shedding and timeout as one tower layer (the limit per
    /// connection is tonic's, set with [`tonic::transport::Server::concurrency_limit_per_connection`]).
    /// A shed request gets `Unavailable`, a late one `DeadlineExceeded`, each naming the limit.
    pub(crate) fn layer(
        &self,
    ) -> Layers<impl Fn(BoxError) -> BoxError + Clone + Send + Sync + 'static> {
        let (concurrency, timeout) = (self.concurrency, self.timeout);
        let refusal = move |e: BoxError| -> BoxError {
            if e.is::<tower::load_shed::error::Overloaded>() {
                Box::new(Status::unavailable(format!(
                    "the server is busy: it serves at most {concurrency} requests at once (its \
                     concurrency limit); retry later"
                )))
            } else if e.is::<tower::timeout::error::Elapsed>() {
                Box::new(Status::deadline_exceeded(format!(
                    "no answer within {:?} (the server's time limit for a request)",
                    timeout.unwrap_or_default()
                )))
            } else {
                e
            }
        };
        tower::ServiceBuilder::new()
            .map_err(refusal)
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(concurrency))
            .option_layer(timeout.map(TimeoutLayer::new))
            .layer(MapErrLayer::new(
                (|never| match never {}) as fn(Infallible) -> BoxError,
            ))
            .into_inner()
    }
}
