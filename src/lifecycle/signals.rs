//! SIGTERM and SIGINT as a stream of events (signal-hook), counted so a second signal can skip
//! the drain wait.

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::sync::mpsc;

/// Starts listening; each received signal's number arrives on the channel.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<i32>> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
            tracing::info!(signal = name, "signal received");
            if tx.send(sig).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
