//! `vhost-user-scsi ctl --management-socket PATH COMMAND`: the management client's command line
//! (the client itself is `supervisor::management::client`; the protocol is docs/management.md).
//!
//! A clap subcommand of the daemon's own parser ([`super::cli::Args`]), so that one binary is
//! both; `args_conflicts_with_subcommands` keeps daemon options and `ctl` apart.

use std::{os::fd::RawFd, path::PathBuf};

use clap::{Args as ClapArgs, Subcommand};

use super::{MAX_LUN, MAX_TARGET};

/// `vhost-user-scsi ctl ...`.
#[derive(ClapArgs, Debug, Clone, PartialEq, Eq)]
#[command(disable_help_subcommand = true)]
pub struct CtlArgs {
    /// The daemon's management socket (its --management-socket).
    #[arg(long, value_name = "PATH")]
    pub management_socket: PathBuf,

    /// Print the JSON-RPC result as it came (one JSON object), for scripts.
    #[arg(long)]
    pub json: bool,

    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `ctl` asks the daemon.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// List the targets and LUNs with their source, options and state.
    List,
    /// Add a LUN: the same SPEC as the daemon's --lun. The daemon opens SOURCE (it must be
    /// under one of its --image-dir directories), unless a descriptor is passed.
    AddLun {
        #[arg(long = "lun", value_name = "[TARGET:LUN=]SOURCE[,OPTION]...")]
        spec: String,
        /// Pass this inherited, already open descriptor instead of a path (SOURCE is then only
        /// a name shown by `list`).
        #[arg(long, value_name = "FD", conflicts_with = "pass_fd")]
        fd: Option<RawFd>,
        /// Open SOURCE here, with this client's own permissions, and pass the descriptor.
        #[arg(long)]
        pass_fd: bool,
    },
    /// Remove a LUN: in-flight requests drain, the image is released and unlocked.
    RemoveLun {
        #[arg(value_name = "TARGET:LUN", value_parser = parse_address)]
        address: Address,
    },
    /// Re-read the size of a LUN's source after it grew or shrank.
    Resize {
        #[arg(value_name = "TARGET:LUN", value_parser = parse_address)]
        address: Address,
    },
    /// Make a LUN read-only (on) or read-write (off).
    SetReadonly {
        #[arg(value_name = "TARGET:LUN", value_parser = parse_address)]
        address: Address,
        #[arg(value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
        read_only: bool,
    },
    /// Write a LUN's cached data to stable storage.
    Flush {
        #[arg(value_name = "TARGET:LUN", value_parser = parse_address)]
        address: Address,
    },
    /// Retry now the writes held because their storage was full (LUNs with enospc=hold),
    /// e.g. right after freeing space; otherwise they are retried within a second.
    RetryHeld,
    /// Per-LUN statistics (all LUNs without an address).
    Stats {
        #[arg(value_name = "TARGET:LUN", value_parser = parse_address)]
        address: Option<Address>,
        /// The Prometheus text exposition format instead of a table.
        #[arg(long)]
        prometheus: bool,
    },
    /// Put a new medium (an ISO or image) into a type=cdrom or removable LUN, replacing the one
    /// loaded. The daemon opens PATH (under one of its --image-dir directories) with the LUN's
    /// options, unless a descriptor is passed.
    ChangeMedium {
        #[arg(value_name = "TARGET:LUN", value_parser = parse_address)]
        address: Address,
        /// The new image (with --fd, only a name shown by `list`).
        #[arg(value_name = "PATH")]
        path: String,
        /// Pass this inherited, already open descriptor instead of the path.
        #[arg(long, value_name = "FD")]
        fd: Option<RawFd>,
        /// Change it even though the guest prevents medium removal.
        #[arg(long)]
        force: bool,
    },
    /// Take the medium out of a type=cdrom or removable LUN (the guest sees no medium).
    Eject {
        #[arg(value_name = "TARGET:LUN", value_parser = parse_address)]
        address: Address,
        /// Eject even though the guest prevents medium removal.
        #[arg(long)]
        force: bool,
    },
}

/// A LUN address, `TARGET:LUN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub target: u8,
    pub lun: u16,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.target, self.lun)
    }
}

/// Parses `TARGET:LUN` (decimal, within the ranges the daemon serves).
pub fn parse_address(s: &str) -> Result<Address, String> {
    let bad = || format!("'{s}' is not TARGET:LUN (0-{MAX_TARGET}:0-{MAX_LUN})");
    let (t, l) = s.split_once(':').ok_or_else(bad)?;
    let all_digits =
        |x: &str| !x.is_empty() && x.len() <= 5 && x.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(t) || !all_digits(l) {
        return Err(bad());
    }
    let target: u8 = t.parse().map_err(|_| bad())?;
    let lun: u16 = l.parse().map_err(|_| bad())?;
    if lun > MAX_LUN {
        return Err(bad());
    }
    Ok(Address { target, lun })
}

/// `on`/`off` (and the `yes|no`, `true|false` spellings of the LUN grammar).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("0:0"), Ok(Address { target: 0, lun: 0 }));
        assert_eq!(
            parse_address("255:16383"),
            Ok(Address {
                target: 255,
                lun: 16383
            })
        );
        for bad in [
            "", "0", "0:", ":0", "256:0", "0:16384", "a:b", "0:0:0", "-1:0", "0: 1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn on_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }
}
