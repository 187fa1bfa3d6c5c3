//! The fd broker: the message channel between the supervisor and its worker.
//!
//! One `AF_UNIX` `SOCK_SEQPACKET` socketpair per worker (created in `supervisor::spawn`; the
//! worker holds its end from its first instruction, so it never has to open anything to talk to
//! the supervisor). A message is one datagram: a JSON [`Envelope`] of at most
//! [`MAX_MESSAGE`] bytes, with at most [`MAX_FDS`] descriptors attached (SCM_RIGHTS). Both
//! sides can send requests; a reply carries the id of the request it answers.
//!
//! Each side treats the other's messages as input to validate: the supervisor trusts the worker
//! less than itself (the worker parses guest bytes), so every decoder here is bounded and a
//! malformed datagram is an error for that message, never a panic. Descriptors that arrive with
//! a message that fails to decode are closed (they are [`OwnedFd`]s from the moment they are
//! received), and they are received with `MSG_CMSG_CLOEXEC`.
//!
//! What travels: the iSCSI reconnect exchange ([`iscsi`]) and the management requests of the
//! running worker ([`manage`]). [`endpoint`] is the worker's side (one thread owning the
//! socket); the supervisor, which stays single-threaded, polls the socket itself
//! (`supervisor::broker`).

pub mod endpoint;
pub mod iscsi;
pub mod manage;

use std::{
    io::{IoSlice, IoSliceMut},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

use nix::{
    errno::Errno,
    sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags},
};
use serde::{Deserialize, Serialize};

/// The largest datagram either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 16;

/// Whether a message asks for something or answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Request,
    /// The answer to the request with the same [`Envelope::id`].
    Reply,
}

/// What a message is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// iSCSI connections: the worker asks for a fresh logged-in connection to a LUN's target.
    Iscsi(iscsi::IscsiMsg),
    /// Runtime management of the worker's LUNs (issued by the supervisor).
    Manage(manage::ManageMsg),
    /// A request could not be carried out; the text is for the log / the management client.
    Error { message: String },
}

impl Body {
    /// An error reply.
    pub fn error(message: impl Into<String>) -> Self {
        Body::Error {
            message: message.into(),
        }
    }
}

/// One datagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Chosen by the requester, unique among its requests in flight; copied into the reply.
    pub id: u64,
    pub kind: Kind,
    pub body: Body,
}

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("fd broker: message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("fd broker: {0} descriptors exceed the limit of {MAX_FDS}")]
    TooManyFds(usize),
    #[error("fd broker: truncated message (data or descriptors cut off)")]
    Truncated,
    #[error("fd broker: malformed message: {0}")]
    Malformed(String),
    #[error("fd broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("fd broker: the other side is gone")]
    Closed,
    #[error("fd broker: unexpected reply: {0}")]
    Unexpected(String),
}

impl From<Errno> for BrokerError {
    fn from(e: Errno) -> Self {
        BrokerError::Io(e.into())
    }
}

/// A fresh `SOCK_SEQPACKET` socketpair (close-on-exec): the broker's channel, and the
/// supervisor's set-up channel with each worker.
pub fn socket_pair() -> std::io::Result<(UnixStream, UnixStream)> {
    let (a, b) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((UnixStream::from(a), UnixStream::from(b)))
}

/// Encodes an envelope, refusing what the other side would refuse.
pub fn encode(env: &Envelope) -> Result<Vec<u8>, BrokerError> {
    let bytes = serde_json::to_vec(env).map_err(|e| BrokerError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(BrokerError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes one datagram's payload (already bounded by [`MAX_MESSAGE`]).
pub fn decode(bytes: &[u8]) -> Result<Envelope, BrokerError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(BrokerError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| BrokerError::Malformed(e.to_string()))
}

/// Sends one message with `fds` attached. One `sendmsg`: a SEQPACKET datagram arrives whole
/// or not at all, so several threads may send on the same socket.
pub fn send(sock: &UnixStream, env: &Envelope, fds: &[BorrowedFd<'_>]) -> Result<(), BrokerError> {
    if fds.len() > MAX_FDS {
        return Err(BrokerError::TooManyFds(fds.len()));
    }
    let bytes = encode(env)?;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let iov = [IoSlice::new(&bytes)];
    loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            // SEQPACKET never sends part of a datagram; a short count would be a kernel bug.
            Ok(_) => return Err(BrokerError::Truncated),
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(BrokerError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message. `Ok(None)`: the other side closed its end. Blocks unless the socket
/// is non-blocking (then `Err(Io(WouldBlock))` when nothing is queued).
pub fn recv(sock: &UnixStream) -> Result<Option<(Envelope, Vec<OwnedFd>)>, BrokerError> {
    // One byte more than the limit, so that an oversized datagram shows up as MSG_TRUNC (the
    // kernel drops the rest of a SEQPACKET datagram that does not fit).
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, flags, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: SCM_RIGHTS installed these descriptors in this process just
                        // now; nothing else owns them.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                break (msg.bytes, msg.flags, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || len > MAX_MESSAGE {
        return Err(BrokerError::Truncated);
    }
    if fds.len() > MAX_FDS {
        return Err(BrokerError::TooManyFds(fds.len()));
    }
    let env = decode(&buf[..len])?;
    Ok(Some((env, fds)))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        socket_pair().unwrap()
    }

    fn request(id: u64) -> Envelope {
        Envelope {
            id,
            kind: Kind::Request,
            body: Body::error("ping"),
        }
    }

    #[test]
    fn message_with_fds_round_trips() {
        let (a, b) = pair();
        let file = tempfile::tempfile().unwrap();
        send(&a, &request(7), &[file.as_fd(), a.as_fd()]).unwrap();
        let (env, fds) = recv(&b).unwrap().unwrap();
        assert_eq!(env, request(7));
        assert_eq!(fds.len(), 2);
        // Received with close-on-exec.
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn closed_peer_is_none() {
        let (a, b) = pair();
        drop(a);
        assert!(recv(&b).unwrap().is_none());
        assert!(matches!(
            send(&b, &request(1), &[]),
            Err(BrokerError::Closed)
        ));
    }

    #[test]
    fn hostile_datagrams_are_errors() {
        let (a, b) = pair();
        // Not JSON, JSON of the wrong shape, and a datagram over the limit.
        for raw in [&b"\xff\x00garbage"[..], br#"{"id":1,"kind":"request"}"#] {
            socket::send(a.as_raw_fd(), raw, MsgFlags::empty()).unwrap();
            assert!(matches!(recv(&b), Err(BrokerError::Malformed(_))));
        }
        let big = vec![b' '; MAX_MESSAGE + 100];
        socket::send(a.as_raw_fd(), &big, MsgFlags::empty()).unwrap();
        assert!(matches!(recv(&b), Err(BrokerError::Truncated)));
        // The channel is still usable afterwards.
        send(&a, &request(2), &[]).unwrap();
        assert_eq!(recv(&b).unwrap().unwrap().0.id, 2);
    }

    #[test]
    fn oversized_messages_are_refused_before_sending() {
        let (a, _b) = pair();
        let env = Envelope {
            id: 1,
            kind: Kind::Request,
            body: Body::error("x".repeat(MAX_MESSAGE)),
        };
        assert!(matches!(send(&a, &env, &[]), Err(BrokerError::TooLarge(_))));
        let file = tempfile::tempfile().unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..MAX_FDS + 1).map(|_| file.as_fd()).collect();
        assert!(matches!(
            send(&a, &request(1), &many),
            Err(BrokerError::TooManyFds(_))
        ));
    }
}
