//! `vhost-user-scsi`: parse and validate, open every LUN, create the listening socket, serve.
//!
//! The order matters: nothing is created (socket, lock, log) until the whole configuration has
//! been checked, and every setup failure is one line on stderr with exit code 2.

use std::{process::ExitCode, sync::Arc};

use log::{error, info};
use vhost_user_scsi::{
    backend::ScsiBackend,
    capabilities,
    cli::{self, Command},
    config::{Config, ListenSpec},
    daemon::{self, ServeOptions},
    device, listener, logging, open,
};

/// Exit code for every setup error (bad command line, missing image, socket in use …).
const EXIT_SETUP: u8 = 2;
/// Exit code when serving failed after setup.
const EXIT_RUNTIME: u8 = 1;

fn setup_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("vhost-user-scsi: error: {e}");
    ExitCode::from(EXIT_SETUP)
}

fn main() -> ExitCode {
    let config = match cli::parse() {
        Ok(Command::PrintCapabilities) => {
            return match capabilities::print(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => setup_error(e),
            };
        }
        Ok(Command::Serve(config)) => config,
        Err(e) => return setup_error(e),
    };
    // Before any thread exists, so that only the daemon's signal thread takes SIGTERM/SIGINT.
    if let Err(e) = daemon::block_termination_signals() {
        return setup_error(e);
    }
    if let Err(e) = logging::init(&config.log) {
        return setup_error(e);
    }
    run(config)
}

fn run(config: Config) -> ExitCode {
    let luns = match open::open_luns(&config.luns) {
        Ok(luns) => luns,
        Err(e) => return setup_error(e),
    };
    let listener = match listener::listen(&config.listen) {
        Ok(l) => l,
        Err(e) => return setup_error(e),
    };
    if let ListenSpec::SocketPath(path) = &config.listen {
        info!(
            "listening on {}; attach with: qemu-system-x86_64 -object memory-backend-memfd,id=mem,size=1G,share=on \
             -numa node,memdev=mem -chardev socket,id=vus,path={} -device vhost-user-scsi-pci,chardev=vus",
            path.display(),
            path.display()
        );
    } else {
        info!("listening on the inherited socket");
    }

    let bus = Arc::new(device::build_bus(luns));
    let backend = Arc::new(ScsiBackend::new(bus, config.num_queues, config.queue_size));
    let opts = ServeOptions {
        exit_on_disconnect: config.exit_on_disconnect,
    };
    let result = daemon::serve(listener.as_unix_listener(), backend, &opts);
    drop(listener);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
