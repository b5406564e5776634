//! The accept loop. `axum::serve` reads request heads without a deadline, so a client that sends
//! half a request line keeps its connection for good (60 such slowloris connections were all
//! still held after 45 s). This is the same loop over hyper-util's connection builder with a
//! header-read timeout: HTTP/1.1 and HTTP/2, upgrades (the WebSocket), and graceful shutdown
//! (accepting stops, open connections finish their requests and close).

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// Serves `app` on `listener` until `shutdown` resolves, then until every open connection has
/// finished. A connection whose request head has not fully arrived `header_read_timeout` after it
/// started waiting for one is closed.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    // The extended CONNECT protocol carries WebSockets over HTTP/2, as axum::serve enables.
    builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
