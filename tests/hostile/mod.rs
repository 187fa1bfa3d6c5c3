//! A hostile vhost-user front-end: raw messages over the daemon's unix socket, with whatever
//! header, payload and file descriptors a test asks for (real memfds, eventfds, pipes, sockets).
//! The rust-vmm front-end refuses to send malformed messages; a compromised QEMU does not.
//!
//! Also the worker-side observations every hostile test needs: the worker's pid, its open fd
//! count, and whether it is still the same, live process (a seccomp death must fail a test).
#![allow(dead_code)]

use std::{
    fs,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

/// vhost-user request codes (QEMU docs/interop/vhost-user.rst, "Front-end message types").
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const GPU_SET_SOCKET: u32 = 33;
    pub const REM_MEM_REG: u32 = 38;
    /// The highest code the specification assigns today (GET_SHMEM_CONFIG and friends).
    pub const LAST_KNOWN: u32 = 44;
}

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
pub const VERSION_1: u32 = 0x1;
pub const NEED_REPLY: u32 = 0x8;
pub const HEADER_SIZE: usize = 12;

/// One raw connection to the daemon.
pub struct Raw {
    pub sock: UnixStream,
}

impl Raw {
    pub fn connect(socket: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(socket) {
                Ok(sock) => {
                    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    sock.set_write_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    return Raw { sock };
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("connect {}: {e}", socket.display()),
            }
        }
    }

    /// Sends `header` + `payload` as one message carrying `fds` (SCM_RIGHTS). A send error is
    /// returned, not a panic: the daemon may have closed the connection already.
    pub fn send_raw(
        &mut self,
        header: [u8; HEADER_SIZE],
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(payload);
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
        let mut cbuf = vec![0u64; space.div_ceil(8).max(1)];
        // SAFETY: zeroed msghdr is a valid "no name, no control" header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer is `space` bytes, enough for one cmsg with the fds.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(cmsg).cast(),
                    fds.len(),
                );
            }
        }
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if (n as usize) < bytes.len() {
            self.sock.write_all(&bytes[n as usize..])?;
        }
        Ok(())
    }

    /// A well-formed header: `code`, `flags` (version 1 is added), `size`.
    pub fn header(code: u32, flags: u32, size: u32) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&code.to_le_bytes());
        h[4..8].copy_from_slice(&(flags | VERSION_1).to_le_bytes());
        h[8..12].copy_from_slice(&size.to_le_bytes());
        h
    }

    pub fn send(&mut self, code: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        self.send_raw(Self::header(code, 0, payload.len() as u32), payload, fds)
    }

    /// Reads one reply: (code, payload). Errors on EOF or timeout.
    pub fn recv(&mut self) -> io::Result<(u32, Vec<u8>)> {
        let mut h = [0u8; HEADER_SIZE];
        self.sock.read_exact(&mut h)?;
        let code = u32::from_le_bytes(h[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size.min(4096)];
        self.sock.read_exact(&mut body)?;
        Ok((code, body))
    }

    /// Sends a request that has a u64 reply and returns the value.
    pub fn get_u64(&mut self, code: u32) -> io::Result<u64> {
        self.send(code, &[], &[])?;
        // Replies to earlier requests (a hostile one may have had one) come first: skip them.
        for _ in 0..4 {
            let (c, body) = self.recv()?;
            if c == code && body.len() == 8 {
                return Ok(u64::from_le_bytes(body.try_into().unwrap()));
            }
        }
        Err(io::Error::other(format!("no reply to request {code}")))
    }

    /// SET_OWNER, features with PROTOCOL_FEATURES, and every protocol feature bit the front-end
    /// can claim (a hostile front-end acks what it was not offered, to reach every code path).
    pub fn handshake(&mut self) -> io::Result<()> {
        self.send(req::SET_OWNER, &[], &[])?;
        let features = self.get_u64(req::GET_FEATURES)?;
        self.send(
            req::SET_FEATURES,
            &(features | PROTOCOL_FEATURES).to_le_bytes(),
            &[],
        )?;
        self.get_u64(req::GET_PROTOCOL_FEATURES)?;
        self.send(req::SET_PROTOCOL_FEATURES, &u64::MAX.to_le_bytes(), &[])?;
        Ok(())
    }

    /// Whether the connection is still served: a GET_FEATURES gets its reply.
    pub fn alive(&mut self) -> bool {
        self.get_u64(req::GET_FEATURES).is_ok()
    }

    /// Waits (bounded) for the daemon to close the connection; true if it did.
    pub fn closed_by_daemon(&mut self, within: Duration) -> bool {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

pub fn eventfd(flags: i32) -> OwnedFd {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, flags | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// (read end, write end)
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Writes `value` into an eventfd's counter (u64::MAX - 1 saturates it).
pub fn eventfd_add(fd: RawFd, value: u64) -> io::Result<()> {
    // SAFETY: writes 8 bytes from a live u64.
    let n = unsafe { libc::write(fd, (&value as *const u64).cast(), 8) };
    if n == 8 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Number of open fds of `pid` (None once it is gone).
pub fn fd_count(pid: libc::pid_t) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Waits (bounded) until the worker's fd count is `want`; returns the last count seen.
pub fn settle_fd_count(pid: libc::pid_t, want: usize, within: Duration) -> Option<usize> {
    let deadline = Instant::now() + within;
    loop {
        let n = fd_count(pid);
        if n == Some(want) || Instant::now() >= deadline {
            return n;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until the worker's fd count stops changing for a moment.
pub fn steady_fd_count(pid: libc::pid_t) -> usize {
    let mut last = fd_count(pid).expect("worker gone");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        sleep(Duration::from_millis(20));
        let n = fd_count(pid).expect("worker gone");
        if n != last {
            last = n;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    last
}
