//! CancelRequest: the client presents the key the proxy handed it; the
//! proxy forwards a cancel to each backend session serving that client.

use crate::backend::send_cancel;
use crate::server::state::Shared;
use aws_lc_rs::constant_time::verify_slices_are_equal;

pub async fn handle(shared: &Shared, pid: i32, secret: &[u8]) {
    let targets = match shared.cancel.get(&pid) {
        Some(entry) if verify_slices_are_equal(&entry.secret.to_be_bytes(), secret).is_ok() => {
            entry.targets.clone()
        }
        _ => {
            // Postgres ignores a bad cancel key silently; so do we.
            tracing::debug!(pid, "cancel request with an unknown key ignored");
            return;
        }
    };
    for target in targets {
        if let Err(e) = send_cancel(&target).await {
            tracing::warn!(host = %target.host, port = target.port, error = %e, "forwarding cancel failed");
        }
    }
}
