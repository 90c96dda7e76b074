//! SIGTERM / ctrl-c -> a cancellation token every task watches.

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as Token;

/// Returns a token cancelled on the first SIGTERM or SIGINT (graceful: each service says what
/// it waits for). A second one ends the process at once (exit status 130), for a developer who
/// pressed Ctrl-C twice. Must be called inside a tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: draining (send it again to exit at once)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logs and ignores SIGHUP for `service`: its default action would end the process, and a
/// service with nothing to reload must survive an operator's `kill -HUP` or a closing terminal.
/// Must be called inside a tokio runtime. (turn-server with TLS reloads its certificate on
/// SIGHUP instead.)
pub fn ignore_hangups(service: &'static str) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!(service, "SIGHUP received: ignored (nothing to reload)");
                    }
                });
            }
            Err(e) => tracing::warn!(service, error = %e, "cannot handle SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    let _ = service;
}
