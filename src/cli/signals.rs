//! Ctrl-C and SIGTERM, installed once per command so that no interrupt is lost between stages
//! (once installed, the default "die at once" behaviour is gone for the process).

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next interrupt or termination request.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Whether a signal came since the last look, without waiting.
    pub async fn arrived(&mut self) -> bool {
        // `timeout` polls the inner future once before looking at its (zero) deadline.
        tokio::time::timeout(Duration::ZERO, self.recv())
            .await
            .is_ok()
    }
}
