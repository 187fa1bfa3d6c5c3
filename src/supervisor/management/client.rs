//! `vhost-user-scsi ctl`: one JSON-RPC call on a daemon's management socket, printed for people
//! (or as JSON with `--json`).
//!
//! Exit status: 0 when the call succeeded, 1 when the daemon answered with an error, 2 when it
//! could not be asked (no socket, refused, no answer in time).

use std::{
    io::{self, BufRead, BufReader, IoSlice, Read as _},
    os::{
        fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    process::ExitCode,
    time::Duration,
};

use nix::sys::socket::{self, ControlMessage, MsgFlags};
use serde_json::{json, Value};

use super::protocol::MAX_LINE;
use crate::config::{
    cli::parse_lun,
    ctl::{CtlArgs, CtlCommand},
};

/// Why a call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot connect to {path}: {}", crate::config::error::io_msg(.error))]
    Connect {
        path: String,
        #[source]
        error: io::Error,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("--lun {spec}: {message}")]
    Spec { spec: String, message: String },
    #[error("cannot open {path} to pass it: {}", crate::config::error::io_msg(.error))]
    OpenSource {
        path: String,
        #[source]
        error: io::Error,
    },
    #[error("the daemon closed the connection without answering")]
    NoAnswer,
    #[error("no answer within {0} s (--timeout)")]
    Timeout(u64),
    #[error("the daemon's answer is not JSON-RPC: {0}")]
    BadAnswer(String),
}

/// The request a command makes, and the descriptor to pass with it.
fn request(cmd: &CtlCommand) -> Result<(&'static str, Value, Option<OwnedFd>), CtlError> {
    Ok(match cmd {
        CtlCommand::List => ("list", json!({}), None),
        CtlCommand::AddLun { spec, fd, pass_fd } => {
            let file = match (fd, pass_fd) {
                (Some(fd), _) => Some(dup_inherited(*fd)?),
                (None, true) => Some(open_here(spec)?),
                (None, false) => None,
            };
            let mut params = json!({ "spec": spec });
            if file.is_some() {
                params["fd"] = json!(true);
            }
            ("add-lun", params, file)
        }
        CtlCommand::RemoveLun { address } => {
            ("remove-lun", json!({"lun": address.to_string()}), None)
        }
        CtlCommand::Resize { address } => ("resize", json!({"lun": address.to_string()}), None),
        CtlCommand::SetReadonly { address, read_only } => (
            "set-readonly",
            json!({"lun": address.to_string(), "read-only": read_only}),
            None,
        ),
        CtlCommand::Flush { address } => ("flush", json!({"lun": address.to_string()}), None),
        CtlCommand::RetryHeld => ("retry-held", json!({}), None),
        CtlCommand::Stats {
            address,
            prometheus,
        } => {
            let mut p = json!({});
            if let Some(a) = address {
                p["lun"] = json!(a.to_string());
            }
            if *prometheus {
                p["format"] = json!("prometheus");
            }
            ("stats", p, None)
        }
        CtlCommand::ChangeMedium {
            address,
            path,
            fd,
            force,
        } => {
            let file = fd.map(dup_inherited).transpose()?;
            let mut p = json!({"lun": address.to_string(), "path": path});
            if file.is_some() {
                p["fd"] = json!(true);
            }
            if *force {
                p["force"] = json!(true);
            }
            ("change-medium", p, file)
        }
        CtlCommand::Eject { address, force } => {
            let mut p = json!({"lun": address.to_string()});
            if *force {
                p["force"] = json!(true);
            }
            ("eject", p, None)
        }
    })
}

/// `--fd N`: a duplicate of an inherited descriptor (which stays ours to close).
fn dup_inherited(fd: RawFd) -> Result<OwnedFd, CtlError> {
    // SAFETY: the caller says `fd` is open in this process; it is only borrowed to duplicate.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(fd.try_clone_to_owned()?)
}

/// `--pass-fd`: opens the SPEC's source with this client's permissions, the way the daemon
/// would open it (read-only or read-write, `O_DIRECT` for `cache=none`).
fn open_here(spec: &str) -> Result<OwnedFd, CtlError> {
    let lun = parse_lun(spec).map_err(|e| CtlError::Spec {
        spec: spec.to_owned(),
        message: e.to_string(),
    })?;
    crate::supervisor::open::open_file(&lun.config)
        .map(OwnedFd::from)
        .map_err(|error| CtlError::OpenSource {
            path: lun.config.source.to_string(),
            error,
        })
}

/// Sends one request (with `fd`, if any) and reads its answer.
pub fn call(
    socket: &std::path::Path,
    method: &str,
    params: Value,
    fd: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<Value, CtlError> {
    let stream = UnixStream::connect(socket).map_err(|error| CtlError::Connect {
        path: socket.display().to_string(),
        error,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 1, "method": method, "params": params,
    }))
    .map_err(|e| CtlError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let mut sent = 0;
    while sent < line.len() {
        let iov = [IoSlice::new(&line[sent..])];
        // The descriptor goes with the first bytes of the request.
        let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !fds.is_empty() {
            &cmsg
        } else {
            &[]
        };
        match socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => sent += n,
            // Refused at once (credentials, too many clients): the reason is waiting to be read.
            Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => break,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Err(CtlError::Timeout(timeout.as_secs())),
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
    let mut reader = BufReader::new(&stream).take(MAX_LINE as u64 * 256);
    let mut answer = Vec::new();
    loop {
        answer.clear();
        match reader.read_until(b'\n', &mut answer) {
            Ok(0) => return Err(CtlError::NoAnswer),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(CtlError::Timeout(timeout.as_secs()))
            }
            Err(e) => return Err(e.into()),
        }
        let v: Value =
            serde_json::from_slice(&answer).map_err(|e| CtlError::BadAnswer(e.to_string()))?;
        // Answers with a null id are about the connection (refused) or the line: still ours.
        if v.get("id") == Some(&json!(1)) || v.get("id") == Some(&Value::Null) {
            return Ok(v);
        }
    }
}

/// Runs `vhost-user-scsi ctl ...`.
pub fn run(args: &CtlArgs) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("vhost-user-scsi ctl: error: {e}");
        ExitCode::from(2)
    };
    let (method, params, fd) = match request(&args.command) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let answer = match call(
        &args.management_socket,
        method,
        params,
        fd.as_ref(),
        Duration::from_secs(args.timeout.max(1)),
    ) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    if let Some(err) = answer.get("error") {
        if args.json {
            println!("{answer}");
        } else {
            eprintln!(
                "vhost-user-scsi ctl: {method}: {} (code {})",
                err.get("message").and_then(Value::as_str).unwrap_or("?"),
                err.get("code").unwrap_or(&Value::Null)
            );
        }
        return ExitCode::from(1);
    }
    let result = answer.get("result").cloned().unwrap_or(Value::Null);
    if args.json {
        println!("{result}");
    } else {
        print!("{}", human(&args.command, &result));
    }
    ExitCode::SUCCESS
}

fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The upper bound of the latency bucket holding the `pct`th percentile, for people ("-"
/// without commands).
fn percentile(hist: &[u64], pct: u64) -> String {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return "-".into();
    }
    let want = (total * pct).div_ceil(100);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return match super::link::bucket_le(i) {
                Some(_) if i + 1 < hist.len() => {
                    let us = 1u64 << i;
                    if us >= 1000 {
                        format!("{} ms", us / 1000)
                    } else {
                        format!("{us} us")
                    }
                }
                _ => "longer".into(),
            };
        }
    }
    "-".into()
}

/// The result for people.
pub fn human(cmd: &CtlCommand, r: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    match cmd {
        CtlCommand::List => {
            let mut out = format!(
                "{:<9} {:>10} {:<3} {:<5} {:<9} {:<9} {}\n",
                "LUN", "SIZE", "RO", "BLOCK", "CACHE", "STATE", "SOURCE"
            );
            for l in r["luns"].as_array().into_iter().flatten() {
                out += &format!(
                    "{:<9} {:>10} {:<3} {:<5} {:<9} {:<9} {}\n",
                    format!("{}:{}", l["target"], l["lun"]),
                    size_text(l["size"].as_u64().unwrap_or(0)),
                    if l["read-only"] == json!(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    s(&l["block-size"]),
                    s(&l["cache"]),
                    s(&l["state"]),
                    if l["medium"] == "none" {
                        "(no medium)".to_owned()
                    } else {
                        s(&l["source"])
                    },
                );
            }
            out
        }
        CtlCommand::AddLun { .. } => format!(
            "added LUN {}:{} ({})\n",
            r["target"],
            r["lun"],
            size_text(r["size"].as_u64().unwrap_or(0))
        ),
        CtlCommand::RemoveLun { address } => format!("removed LUN {address}\n"),
        CtlCommand::Resize { address } => match r["size"].as_u64() {
            Some(n) => format!("LUN {address}: {} ({n} bytes)\n", size_text(n)),
            None => format!("LUN {address}: size re-read\n"),
        },
        CtlCommand::SetReadonly { address, read_only } => format!(
            "LUN {address}: {}\n",
            if *read_only {
                "read-only"
            } else {
                "read-write"
            }
        ),
        CtlCommand::Flush { address } => format!("LUN {address}: flushed\n"),
        CtlCommand::ChangeMedium { address, path, .. } => format!(
            "LUN {address}: medium changed to {path} ({})\n",
            size_text(r["size"].as_u64().unwrap_or(0))
        ),
        CtlCommand::Eject { address, .. } => format!("LUN {address}: medium ejected\n"),
        CtlCommand::RetryHeld => "held writes are being retried\n".to_owned(),
        CtlCommand::Stats {
            prometheus: true, ..
        } => s(&r["text"]),
        CtlCommand::Stats { .. } => {
            let mut out = format!(
                "{:<9} {:<6} {:>12} {:>14} {:>8} {:>10} {:>10} {:>9}\n",
                "LUN", "KIND", "COMMANDS", "BYTES", "ERRORS", "P50<=", "P99<=", "IN-FLIGHT"
            );
            for l in r["luns"].as_array().into_iter().flatten() {
                for kind in ["read", "write", "other"] {
                    let k = &l[kind];
                    let hist: Vec<u64> = k["latency-us"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| v.as_u64().unwrap_or(0))
                        .collect();
                    out += &format!(
                        "{:<9} {:<6} {:>12} {:>14} {:>8} {:>10} {:>10} {:>9}\n",
                        format!("{}:{}", l["target"], l["lun"]),
                        kind,
                        s(&k["ops"]),
                        s(&k["bytes"]),
                        s(&k["errors"]),
                        percentile(&hist, 50),
                        percentile(&hist, 99),
                        if kind == "read" {
                            s(&l["in-flight"])
                        } else {
                            String::new()
                        },
                    );
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ctl::Address;

    #[test]
    fn requests() {
        let (m, p, fd) = request(&CtlCommand::SetReadonly {
            address: Address { target: 1, lun: 2 },
            read_only: true,
        })
        .unwrap();
        assert_eq!(
            (m, p, fd.is_none()),
            (
                "set-readonly",
                json!({"lun": "1:2", "read-only": true}),
                true
            )
        );
        let (m, p, _) = request(&CtlCommand::Stats {
            address: None,
            prometheus: true,
        })
        .unwrap();
        assert_eq!((m, p), ("stats", json!({"format": "prometheus"})));
        let (m, p, fd) = request(&CtlCommand::AddLun {
            spec: "0:1=/x".into(),
            fd: None,
            pass_fd: false,
        })
        .unwrap();
        assert_eq!(
            (m, p, fd.is_none()),
            ("add-lun", json!({"spec": "0:1=/x"}), true)
        );
        let e = request(&CtlCommand::AddLun {
            spec: "/nonexistent/x.img".into(),
            fd: None,
            pass_fd: true,
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot open /nonexistent/x.img"),
            "{e}"
        );
    }

    #[test]
    fn medium_requests_and_output() {
        let a = Address { target: 0, lun: 1 };
        let change = CtlCommand::ChangeMedium {
            address: a,
            path: "/img/b.iso".into(),
            fd: None,
            force: false,
        };
        let (m, p, fd) = request(&change).unwrap();
        assert_eq!(
            (m, p, fd.is_none()),
            (
                "change-medium",
                json!({"lun": "0:1", "path": "/img/b.iso"}),
                true
            )
        );
        let forced = CtlCommand::Eject {
            address: a,
            force: true,
        };
        let (m, p, _) = request(&forced).unwrap();
        assert_eq!((m, p), ("eject", json!({"lun": "0:1", "force": true})));
        // --fd: a duplicate of the inherited descriptor goes with "fd": true.
        let f = tempfile::tempfile().unwrap();
        let with_fd = CtlCommand::ChangeMedium {
            address: a,
            path: "b.iso".into(),
            fd: Some(std::os::fd::AsRawFd::as_raw_fd(&f)),
            force: true,
        };
        let (_, p, fd) = request(&with_fd).unwrap();
        assert_eq!(
            p,
            json!({"lun": "0:1", "path": "b.iso", "fd": true, "force": true})
        );
        assert!(fd.is_some());
        assert_eq!(
            human(&change, &json!({"size": 2 << 20})),
            "LUN 0:1: medium changed to /img/b.iso (2.0 MiB)\n"
        );
        assert_eq!(human(&forced, &json!({})), "LUN 0:1: medium ejected\n");
        let list = json!({"luns": [{"target": 0, "lun": 1, "size": 0, "read-only": true,
            "block-size": 2048, "cache": "writeback", "state": "online", "source": "/i/a.iso",
            "medium": "none"}]});
        assert!(human(&CtlCommand::List, &list).contains("(no medium)"));
    }

    #[test]
    fn human_output() {
        let list = json!({"luns": [{"target": 0, "lun": 1, "size": 1048576, "read-only": false,
            "block-size": 512, "cache": "writeback", "state": "online", "source": "/i/a.img"}]});
        let text = human(&CtlCommand::List, &list);
        assert!(text.lines().nth(1).unwrap().starts_with("0:1"), "{text}");
        assert!(
            text.contains("1.0 MiB") && text.contains("/i/a.img"),
            "{text}"
        );
        assert_eq!(size_text(512), "512 B");
        let mut h = [0u64; 32];
        h[3] = 98;
        h[12] = 2;
        assert_eq!(
            (percentile(&h, 50), percentile(&h, 99)),
            ("8 us".into(), "4 ms".into())
        );
        assert_eq!(percentile(&[0; 32], 50), "-");
    }
}
