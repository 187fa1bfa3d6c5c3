//! Privilege separation: a supervisor that opens everything, and a jailed worker that serves.
//!
//! The supervisor (the process that was started) opens every LUN and the listening socket,
//! resolves the worker's account, then creates the worker with `clone` (inside new namespaces
//! for `--sandbox=namespace`). The worker keeps exactly the pre-opened set of descriptors
//! ([`Resources::keep_fds`]), confines itself ([`crate::sandbox`]) and serves vhost-user. The
//! supervisor then confines itself too (when it will never fork again), relays the worker's
//! stderr, forwards SIGTERM/SIGINT, reaps and reports the worker, and restarts it where the
//! `--restart-worker` policy allows.

pub mod broker;
pub mod error;
pub mod iscsi;
pub mod listener;
pub mod management;
pub mod monitor;
pub mod open;
pub mod preflight;
pub mod readiness;
pub mod spawn;

use std::process::ExitCode;

pub use error::PrivsepError;
pub use spawn::Resources;

use crate::config::Config;

/// Exit code for every setup error (as in `main`).
pub const EXIT_SETUP: u8 = 2;

/// The whole daemon: set up, start the worker, supervise. Returns the process exit code.
pub fn run(config: Config) -> ExitCode {
    match monitor::run(config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhost-user-scsi: error: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
