//! `add-lun` of an `iscsi://` source: the supervisor checks the portal against its allow-list,
//! logs in (reading the CHAP secret itself: it never reaches the worker), checks the LUN as at
//! start-up, and hands the idle, logged-in connection with its negotiated parameters to the
//! worker, which starts a passthrough LU on it (docs/management.md, docs/iscsi.md).
//!
//! Portals: the supervisor confines itself once the worker runs (Landlock: TCP connect to the
//! allowed ports only; no DNS), so the portals `add-lun` may use are fixed at start-up: those
//! of the configured iSCSI LUNs and each `--iscsi-portal HOST[:PORT]`, resolved then. A
//! runtime source must name one of them as written (host, case-insensitive, and port) and is
//! connected to the addresses resolved at start-up; anything else is refused before any
//! connection (`-32003`). CHAP secret files: a configured LUN's, or one inside an
//! `--image-dir` (the only files the supervisor may still read).

use std::{
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
};

use super::protocol::{code, RpcError};
use crate::{
    block::iscsi::IscsiHandover,
    config::{ctl::Address, LunConfig},
    iscsi::login::{self, SessionParams},
    supervisor::{
        iscsi::{check_lun, IscsiPortal, RECONNECT_TIMEOUT},
        open::{LunBackend, OpenedLun, RuntimeLun},
    },
};

/// A portal `add-lun` may log in to, with its addresses resolved at start-up.
#[derive(Debug, Clone)]
pub struct AllowedPortal {
    /// As written, lower case.
    pub host: String,
    pub port: u16,
    pub addrs: Vec<SocketAddr>,
}

/// What `add-lun` may reach for iSCSI sources.
#[derive(Debug, Default)]
pub struct IscsiAllow {
    pub portals: Vec<AllowedPortal>,
    /// The configured LUNs' CHAP secret files (the supervisor may read these).
    pub secret_files: Vec<PathBuf>,
}

impl IscsiAllow {
    /// The portals of the configured iSCSI LUNs and the `--iscsi-portal`s, resolved now (before
    /// the supervisor's confinement). A portal that does not resolve is an error.
    pub fn new<'a>(
        configured: impl IntoIterator<Item = &'a LunConfig>,
        extra: &[(String, u16)],
    ) -> Result<Self, (String, std::io::Error)> {
        let mut allow = Self::default();
        let mut wanted: Vec<(String, u16)> = Vec::new();
        for c in configured {
            if let Some(src) = c.source.iscsi() {
                wanted.push((src.host.to_ascii_lowercase(), src.port));
                allow.secret_files.extend(src.chap_secret_file.clone());
            }
        }
        wanted.extend(extra.iter().cloned());
        wanted.sort();
        wanted.dedup();
        for (host, port) in wanted {
            let addrs: Vec<SocketAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| (format!("{host}:{port}"), e))?
                .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                .collect();
            allow.portals.push(AllowedPortal { host, port, addrs });
        }
        Ok(allow)
    }

    /// The TCP ports the supervisor's Landlock ruleset must let it connect to.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.portals.iter().map(|p| p.port).collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    fn describe(&self) -> String {
        if self.portals.is_empty() {
            return "none: give --iscsi-portal HOST:PORT".into();
        }
        self.portals
            .iter()
            .map(|p| format!("{}:{}", p.host, p.port))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A login made for `add-lun`: what the worker gets and what the supervisor keeps.
pub struct Login {
    /// The LUN's configuration (its `chap-secret-file` the real path that was read).
    pub config: LunConfig,
    /// What READ CAPACITY said, in bytes.
    pub size: u64,
    /// The negotiated state of the connection, for the worker's `Session::new`.
    pub params: SessionParams,
    /// The idle, logged-in connection: the worker's.
    pub stream: TcpStream,
    /// The supervisor's record: the LUN without a connection (a restarted worker asks for a
    /// fresh one) and the portal for the worker's reconnections.
    pub retained: RuntimeLun,
}

/// Logs in for `add-lun` of `config` (an `iscsi://` source) at `address`, which is free.
/// `secret_path` checks a `chap-secret-file` that is not a configured LUN's (the
/// `--image-dir` check) and returns the path to read.
pub fn login(
    allow: &IscsiAllow,
    mut config: LunConfig,
    address: Address,
    secret_path: impl Fn(&Path) -> Result<PathBuf, RpcError>,
) -> Result<Login, RpcError> {
    let Some(mut src) = config.source.iscsi().cloned() else {
        return Err(RpcError::invalid_params("not an iscsi:// source"));
    };
    if config.pr_file.is_some() || config.create_size.is_some() {
        return Err(RpcError::invalid_params(
            "an iSCSI LUN is passed through: pr-file= and size= do not apply",
        ));
    }
    let host = src.host.to_ascii_lowercase();
    let Some(allowed) = allow
        .portals
        .iter()
        .find(|p| p.host == host && p.port == src.port)
    else {
        return Err(RpcError::new(
            code::PATH_NOT_ALLOWED,
            format!(
                "iSCSI portal {} is not one this daemon may connect to (allowed: {})",
                src.portal(),
                allow.describe()
            ),
        ));
    };
    if let Some(secret) = &src.chap_secret_file {
        if !allow.secret_files.contains(secret) {
            src.chap_secret_file = Some(secret_path(secret)?);
        }
    }
    let portal = IscsiPortal {
        source: src.clone(),
        addrs: allowed.addrs.clone(),
        isid: login::random_isid(),
    };
    // The supervisor's loop waits meanwhile (bounded, as for a worker's reconnection).
    let ((stream, params), (blocks, block_size)) = portal
        .login(RECONNECT_TIMEOUT)
        .and_then(|c| check_lun(c, &src, RECONNECT_TIMEOUT))
        .map_err(|e| RpcError::new(code::CANNOT_OPEN, format!("LUN {address} ({src}): {e}")))?;
    let size = blocks.saturating_mul(u64::from(block_size));
    log::info!(
        "LUN {address}: {src} ({size} bytes, {block_size}-byte blocks, passthrough): logged in \
         for add-lun"
    );
    config.source = crate::config::LunSource::Iscsi(src.clone());
    // The record's handover has no connection: the supervisor keeps none.
    let handover = IscsiHandover::new(
        src.lun,
        src.to_string(),
        stream
            .try_clone()
            .map_err(|e| RpcError::new(code::CANNOT_OPEN, format!("LUN {address}: {e}")))?,
        params.clone(),
    );
    drop(handover.take());
    Ok(Login {
        retained: RuntimeLun {
            lun: OpenedLun {
                config: config.clone(),
                backend: LunBackend::Iscsi(handover),
                pr_file: None,
            },
            fds: Vec::new(),
            iscsi_portal: Some(Box::new(portal)),
        },
        config,
        size,
        params,
        stream,
    })
}
