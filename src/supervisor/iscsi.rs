//! iSCSI LUNs on the supervisor's side: it resolves the configured portal, reads the CHAP
//! secret from `chap-secret-file`, connects (only to the configured portal, redirections only
//! back to it), logs in, checks the LUN (TEST UNIT READY to consume the power-on unit attention,
//! READ CAPACITY; an absent LUN is an error), and hands the idle, logged-in connection to the
//! worker (docs/iscsi.md, "How the daemon uses it"). The worker never sees a secret: the
//! supervisor reads the file for each login and wipes the bytes after it (the worker is a
//! `clone` of this process, so nothing secret may stay in memory when it is created).
//!
//! Reconnections (the worker lost its connection) run the same login, reinstating the session
//! (same ISID, TSIH 0), with short timeouts: the supervisor's loop is single-threaded.

use std::{
    collections::HashMap,
    io::Read,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use zeroize::Zeroizing;

use crate::{
    block::iscsi::{Connection, IscsiHandover},
    broker::{iscsi::IscsiMsg, Body},
    config::{IscsiDigest, IscsiSource, LunConfig},
    iscsi::{
        login::{self, Chap, DigestPolicy, LoginConfig, LoginError, Secret},
        recovery,
        session::{DataRef, ScsiResult, Session},
    },
};

/// Connect and login timeout at start-up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect and login timeout of a reconnection (the supervisor's loop waits meanwhile).
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest CHAP secret file read (RFC 7143 §12.1.3 secrets are at most 1024 bits... allow a
/// generous text form).
const MAX_SECRET_FILE: u64 = 4096;

/// Why an iSCSI LUN could not be set up. `Display` is the cause only; the caller names the LUN.
#[derive(Debug, thiserror::Error)]
pub enum IscsiSetupError {
    #[error("cannot resolve {portal}: {reason}")]
    Resolve { portal: String, reason: String },
    #[error("chap-secret-file {}: {reason}", .path.display())]
    Secret { path: PathBuf, reason: String },
    #[error("login failed: {0}")]
    Login(#[from] LoginError),
    #[error("LUN {lun} does not exist on target {target}")]
    NoSuchLun { lun: u16, target: String },
    #[error("checking LUN {lun}: {reason}")]
    Check { lun: u16, reason: String },
}

/// What the supervisor keeps for each iSCSI LUN to log in again: never the secret itself.
#[derive(Debug, Clone)]
pub struct IscsiPortal {
    pub source: IscsiSource,
    /// The configured portal's addresses (resolved once, at start-up): the only places this
    /// LUN connects to.
    pub addrs: Vec<SocketAddr>,
    /// The ISID of the session (kept across reconnections: reinstatement).
    pub isid: [u8; 6],
}

impl IscsiPortal {
    /// Resolves the configured portal.
    pub fn resolve(source: &IscsiSource) -> Result<Self, IscsiSetupError> {
        let portal = source.portal();
        let addrs: Vec<SocketAddr> = (source.host.as_str(), source.port)
            .to_socket_addrs()
            .map_err(|e| IscsiSetupError::Resolve {
                portal: portal.clone(),
                reason: e.to_string(),
            })?
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
            .collect();
        if addrs.is_empty() {
            return Err(IscsiSetupError::Resolve {
                portal,
                reason: "no address".into(),
            });
        }
        Ok(Self {
            source: source.clone(),
            addrs,
            isid: login::random_isid(),
        })
    }

    /// The login configuration, with the CHAP secret read now from its file.
    fn login_config(&self) -> Result<LoginConfig, IscsiSetupError> {
        let s = &self.source;
        let mut cfg = LoginConfig::new(s.initiator_name.clone(), Some(s.target_iqn.clone()));
        cfg.isid = self.isid;
        cfg.header_digest = digest(s.header_digest);
        cfg.data_digest = digest(s.data_digest);
        if let (Some(user), Some(path)) = (&s.user, &s.chap_secret_file) {
            cfg.chap = Some(Chap {
                user: user.clone(),
                secret: read_secret(path)?,
            });
        }
        Ok(cfg)
    }

    /// Connects to the configured portal (each of its addresses in turn) and logs in.
    pub fn login(&self, timeout: Duration) -> Result<Connection, IscsiSetupError> {
        let cfg = self.login_config()?;
        let allow = |a: &SocketAddr| self.addrs.contains(a);
        let mut last = None;
        for &addr in &self.addrs {
            match login::login_tcp(addr, &cfg, timeout, 2, &allow) {
                Ok((stream, params)) => {
                    keepalive(&stream);
                    return Ok((stream, params));
                }
                Err(e) if recovery::is_permanent(&e) => return Err(e.into()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || IscsiSetupError::Resolve {
                portal: self.source.portal(),
                reason: "no address".into(),
            },
            IscsiSetupError::from,
        ))
    }
}

fn digest(d: IscsiDigest) -> DigestPolicy {
    match d {
        IscsiDigest::None => DigestPolicy::None,
        IscsiDigest::Crc32c => DigestPolicy::Crc32c,
    }
}

/// Reads a CHAP secret file: its bytes, without one trailing newline. The content never
/// appears in an error.
fn read_secret(path: &Path) -> Result<Secret, IscsiSetupError> {
    let err = |reason: String| IscsiSetupError::Secret {
        path: path.to_owned(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| err(crate::config::error::io_msg(&e)))?;
    let mut buf = Zeroizing::new(Vec::with_capacity(256));
    f.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(crate::config::error::io_msg(&e)))?;
    if buf.len() as u64 > MAX_SECRET_FILE {
        return Err(err(format!("longer than {MAX_SECRET_FILE} bytes")));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(Secret::new(buf.to_vec()))
}

/// TCP keepalive and a user timeout on the connection, so that a target that vanished is
/// noticed by the worker's blocking reads and writes (set here: the worker may not call
/// setsockopt).
fn keepalive(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let fd = s.as_fd();
    let _ = setsockopt(&fd, sockopt::KeepAlive, &true);
    let _ = setsockopt(&fd, sockopt::TcpKeepIdle, &10);
    let _ = setsockopt(&fd, sockopt::TcpKeepInterval, &5);
    let _ = setsockopt(&fd, sockopt::TcpKeepCount, &3);
    let _ = setsockopt(&fd, sockopt::TcpUserTimeout, &30_000);
}

/// Sense key and ASC of fixed or descriptor sense data.
fn sense_key_asc(sense: &[u8]) -> (u8, u8) {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) if sense.len() > 12 => (sense[2] & 0x0f, sense[12]),
        Some(0x72 | 0x73) if sense.len() > 2 => (sense[1] & 0x0f, sense[2]),
        _ => (0, 0),
    }
}

/// The LUN's capacity: (blocks, block size).
pub type Capacity = (u64, u32);

/// Checks the LUN on a fresh session: TEST UNIT READY until the unit attentions of the new
/// I_T nexus are consumed, then READ CAPACITY. Returns the connection, idle, with its
/// advanced sequence numbers.
pub fn check_lun(
    conn: Connection,
    src: &IscsiSource,
    timeout: Duration,
) -> Result<(Connection, Capacity), IscsiSetupError> {
    let lun = src.lun;
    let check = |reason: String| IscsiSetupError::Check { lun, reason };
    let (stream, params) = conn;
    // Bounded: the supervisor must not hang on a target that stops answering.
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| check(e.to_string()))?;
    let mut s: Session<TcpStream> =
        Session::new(stream, params).map_err(|e| check(e.to_string()))?;
    let absent = |r: &ScsiResult| r.status == 2 && sense_key_asc(&r.sense) == (0x05, 0x25);
    let mut ready = false;
    for _ in 0..8 {
        let r = s
            .submit(u64::from(lun), &[0u8; 6], DataRef::None)
            .map_err(|e| check(e.to_string()))?;
        if absent(&r) {
            return Err(IscsiSetupError::NoSuchLun {
                lun,
                target: src.target_iqn.clone(),
            });
        }
        match (r.status, sense_key_asc(&r.sense).0) {
            (0, _) => {
                ready = true;
                break;
            }
            // Unit attention (power on, reset, parameters changed): consumed, ask again.
            (2, 0x06) => continue,
            // Not ready (e.g. no medium): the guest will see it too; served anyway.
            (2, 0x02) => break,
            (st, key) => {
                return Err(check(format!(
                    "TEST UNIT READY answered status {st:#04x}, sense key {key:#x}"
                )))
            }
        }
    }
    if !ready {
        log::warn!("iSCSI LUN {lun} of {}: not ready", src.target_iqn);
    }
    let mut cap = [0u8; 8];
    let r = s
        .submit(
            u64::from(lun),
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            DataRef::In(&mut cap),
        )
        .map_err(|e| check(e.to_string()))?;
    let capacity = if r.status != 0 {
        if absent(&r) {
            return Err(IscsiSetupError::NoSuchLun {
                lun,
                target: src.target_iqn.clone(),
            });
        }
        (0, 0)
    } else if cap[..4] == [0xff; 4] {
        let mut cap16 = [0u8; 32];
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let r = s
            .submit(u64::from(lun), &cdb, DataRef::In(&mut cap16))
            .map_err(|e| check(e.to_string()))?;
        if r.status != 0 {
            (0, 0)
        } else {
            let last = u64::from_be_bytes(cap16[..8].try_into().unwrap_or_default());
            let bs = u32::from_be_bytes(cap16[8..12].try_into().unwrap_or_default());
            (last.saturating_add(1), bs)
        }
    } else {
        let last = u32::from_be_bytes(cap[..4].try_into().unwrap_or_default());
        let bs = u32::from_be_bytes(cap[4..8].try_into().unwrap_or_default());
        (u64::from(last) + 1, bs)
    };
    let (stream, params) = s.into_parts().map_err(|e| check(e.to_string()))?;
    // What the worker's full feature phase runs with (see `STALL_TIMEOUT`).
    login::set_stall_timeout(&stream).map_err(|e| check(e.to_string()))?;
    Ok(((stream, params), capacity))
}

/// Start-up: log in to an `iscsi://` LUN and check it. Returns the handover for the worker and
/// what the supervisor keeps for reconnections.
pub fn open_iscsi(
    lun: &LunConfig,
    src: &IscsiSource,
) -> Result<(IscsiHandover, IscsiPortal), IscsiSetupError> {
    let portal = IscsiPortal::resolve(src)?;
    let conn = portal.login(STARTUP_TIMEOUT)?;
    let ((stream, params), (blocks, block_size)) = check_lun(conn, src, STARTUP_TIMEOUT)?;
    log::info!(
        "LUN {}:{}: {src} ({} bytes, {block_size}-byte blocks, header digest {}, data digest {}, \
         MaxBurstLength {}, passthrough)",
        lun.target,
        lun.lun,
        blocks.saturating_mul(u64::from(block_size)),
        if params.header_digest {
            "CRC32C"
        } else {
            "none"
        },
        if params.data_digest { "CRC32C" } else { "none" },
        params.max_burst_length,
    );
    let handover = IscsiHandover::new(src.lun, src.to_string(), stream, params);
    Ok((handover, portal))
}

/// An iSCSI LUN's portal as the supervisor keeps it (for reconnections), with its address.
pub type IscsiLunPortal = ((u8, u16), IscsiPortal);

/// The supervisor's service to the worker: fresh connections for its iSCSI LUNs.
#[derive(Debug, Default)]
pub struct Reconnector {
    luns: Vec<IscsiLunPortal>,
    /// When each LUN last got a login attempt: a worker asking in a loop gets an error until
    /// [`MIN_INTERVAL`] has passed (each attempt holds up the single-threaded supervisor for up
    /// to [`RECONNECT_TIMEOUT`] twice).
    last: HashMap<(u8, u16), Instant>,
}

/// Shortest interval between two logins for one LUN.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

impl Reconnector {
    pub fn new(luns: Vec<IscsiLunPortal>) -> Self {
        Self {
            luns,
            last: HashMap::new(),
        }
    }

    /// An iSCSI LUN added at run time (replacing what an earlier LUN at its address had).
    pub fn add(&mut self, lun: IscsiLunPortal) {
        self.luns.retain(|(a, _)| *a != lun.0);
        self.last.remove(&lun.0);
        self.luns.push(lun);
    }

    /// Answers one [`IscsiMsg`] from the worker: a reconnection gets one login attempt (no
    /// waiting here: the worker backs off between requests).
    pub fn serve(&mut self, msg: IscsiMsg) -> (Body, Vec<OwnedFd>) {
        let IscsiMsg::Reconnect { target, lun } = msg else {
            return (Body::error("not a request"), Vec::new());
        };
        let Some((_, portal)) = self.luns.iter().find(|(a, _)| *a == (target, lun)) else {
            return (
                Body::error(format!("LUN {target}:{lun} is not an iSCSI LUN")),
                Vec::new(),
            );
        };
        let now = Instant::now();
        if let Some(t) = self.last.get(&(target, lun)) {
            if now.duration_since(*t) < MIN_INTERVAL {
                return (
                    Body::error("reconnection attempts too close together"),
                    Vec::new(),
                );
            }
        }
        self.last.insert((target, lun), now);
        // The new I_T nexus's unit attentions are consumed here, as at start-up: the worker
        // reissues its commands, which must not fail on them.
        let conn = portal
            .login(RECONNECT_TIMEOUT)
            .and_then(|c| check_lun(c, &portal.source, RECONNECT_TIMEOUT));
        match conn {
            Ok(((stream, params), _)) => {
                log::info!(
                    "LUN {target}:{lun}: logged in again to {} for the worker",
                    portal.source
                );
                (
                    Body::Iscsi(IscsiMsg::Connected { params }),
                    vec![OwnedFd::from(stream)],
                )
            }
            Err(e) => {
                let msg = format!("LUN {target}:{lun} ({}): {e}", portal.source);
                log::warn!("{msg}");
                (Body::error(msg), Vec::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "topsecret\n").unwrap();
        assert!(read_secret(&p).is_ok());
        std::fs::write(&p, "\n").unwrap();
        let e = read_secret(&p).unwrap_err().to_string();
        assert!(e.ends_with("is empty"), "{e}");
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        let e = read_secret(&p).unwrap_err().to_string();
        assert!(e.contains("longer than") && !e.contains("xxx"), "{e}");
        let e = read_secret(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn sense_parsing() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x05;
        fixed[12] = 0x25;
        assert_eq!(sense_key_asc(&fixed), (5, 0x25));
        assert_eq!(sense_key_asc(&[0x72, 0x06, 0x29, 0]), (6, 0x29));
        assert_eq!(sense_key_asc(&[]), (0, 0));
    }
}
