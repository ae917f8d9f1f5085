//! HTTP endpoints for Kubernetes and Prometheus: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::adapters::amqp::Health;
use crate::adapters::db::Store;
use crate::adapters::metrics::Metrics;

/// The store, once the database answered: the endpoints are served before
/// (issue #16: an outage at start shows as "database not ready", not as a
/// worker that does not answer).
pub type StoreCell = Arc<std::sync::OnceLock<Store>>;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
    store: StoreCell,
}

pub fn router(metrics: Metrics, health: Arc<Health>, store: StoreCell) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            health,
            store,
        })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics
        .broker_blocked
        .set(crate::adapters::amqp::blocked_connections() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Ready when both consumers hold an open channel, the database answers, and
/// the worker is not draining for shutdown.
async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    // The worker waits for the database before it starts its consumers.
    let Some(store) = s.store.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "database not ready yet\n");
    };
    if !s.health.consumers_up() {
        return (StatusCode::SERVICE_UNAVAILABLE, "broker not connected\n");
    }
    // A resource alarm (issue #17): nothing is lost, the worker waits for
    // the broker to unblock it and resumes by itself.
    if crate::adapters::amqp::blocked_connections() > 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "broker blocks publishing (resource alarm); waiting\n",
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n"),
    }
}

pub async fn serve(
    addr: SocketAddr,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await
}
