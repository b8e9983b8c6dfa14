//! SIGTERM and SIGINT as a stream of events (signal-hook), counted so a second signal can skip
//! the drain wait.

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::sync::mpsc;

/// Starts listening; each received signal's number arrives on the channel.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<i32>> {
    let mut signals = stream()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            tracing::info!(signal = name(sig), "signal received");
            if tx.send(sig).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// The signals themselves, without a task between: signals that arrive together are all
/// ready in one poll (`spotinfer batch` quits at once when a second is already there).
pub fn stream() -> std::io::Result<signal_hook_tokio::Signals> {
    signal_hook_tokio::Signals::new([SIGTERM, SIGINT])
}

pub fn name(sig: i32) -> &'static str {
    if sig == SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    }
}
