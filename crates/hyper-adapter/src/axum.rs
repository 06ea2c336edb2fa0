//! axum on a graceful listener, with the keep-alive behaviour and the drain of [`serve`](crate::serve).

use graceful_tokio::Listener;
use hyper_util::service::TowerToHyperService;

/// Serves an axum `Router` on `listener`; see [`crate::serve`] for what happens at an upgrade.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// # async fn run() -> Result<(), graceful_tokio::Error> {
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = graceful_tokio::listen("127.0.0.1:8080").await?;
/// graceful_hyper::axum::serve(listener, app).await?;
/// # Ok(())
/// # }
/// ```
pub fn serve<L>(
    listener: Listener<L>,
    router: axum::Router,
) -> crate::Serve<L, TowerToHyperService<axum::Router>> {
    crate::serve(listener, TowerToHyperService::new(router))
}
