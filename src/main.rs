//! `vhost-user-scsi`: parse and validate, then hand over to the supervisor, which opens every
//! LUN and the listening socket, starts the jailed worker and supervises it
//! ([`vhost_user_scsi::supervisor`]).
//!
//! The order matters: nothing is created (socket, lock, log) until the whole configuration has
//! been checked, and every setup failure is one line on stderr with exit code 2.

use std::process::ExitCode;

use vhost_user_scsi::{
    config::{
        cli::{self, Command},
        print_capabilities as capabilities,
    },
    sandbox::seccomp,
    supervisor as privsep,
    worker::serve as daemon,
};

fn setup_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("vhost-user-scsi: error: {e}");
    ExitCode::from(privsep::EXIT_SETUP)
}

fn main() -> ExitCode {
    let config = match cli::parse() {
        Ok(Command::PrintCapabilities) => {
            return match capabilities::print(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => setup_error(e),
            };
        }
        Ok(Command::PrintSeccompPolicy { role, mode }) => {
            return match seccomp::print_policy(&mut std::io::stdout(), &role, mode) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => setup_error(e),
            };
        }
        Ok(Command::Ctl(args)) => return privsep::management::client::run(&args),
        Ok(Command::Serve(config)) => config,
        Err(e) => return setup_error(e),
    };
    // Parsing did no I/O: what it could not know (do the images open, is the socket usable)
    // is checked now, still before anything is created.
    privsep::preflight::take_systemd_env();
    if let Err(e) = privsep::preflight::check(&config) {
        return setup_error(e);
    }
    // Before any thread exists, so that only the worker's signal thread takes SIGTERM/SIGINT
    // (and the supervisor reads them from its signalfd).
    if let Err(e) = daemon::block_termination_signals() {
        return setup_error(e);
    }
    if let Err(e) = vhost_user_scsi::logging::init(&config.log) {
        return setup_error(e);
    }
    privsep::run(config)
}
