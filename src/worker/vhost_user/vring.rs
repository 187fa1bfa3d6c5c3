//! A virtqueue as the queue threads use it: vhost-user-backend's `VringRwLock` with the
//! front-end's kick, call and err fds tamed. They must be eventfds and are used non-blocking; a
//! kick another reader consumed first is not an error, nor is a call counter at its maximum
//! (the guest has a notification pending anyway).

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, RawFd},
};

use log::warn;
use vhost_user_backend::{VringRwLock, VringStateGuard, VringStateMutGuard, VringT};

use super::GuestMemory;

/// `fstatfs(2)` magic of the anonymous-inode filesystem: eventfds (and epoll, timerfd …) live
/// there; pipes, sockets and files do not.
const ANON_INODE_FS_MAGIC: i64 = 0x0904_1934;

/// Why a kick/call/err fd from the front-end is not used.
#[derive(Debug, thiserror::Error)]
pub enum RingFdError {
    #[error("not an eventfd (filesystem magic {0:#x})")]
    NotAnEventFd(i64),
    #[error("cannot inspect it: {0}")]
    Inspect(io::Error),
    #[error("cannot make it non-blocking: {0}")]
    NonBlocking(io::Error),
}

/// Checks that `file` (a kick, call or err fd the front-end sent) is an eventfd and makes it
/// non-blocking, so that no daemon thread ever blocks on it: a front-end that reads its own
/// kick, or leaves its call counter at the maximum, then only gets EAGAIN on our side.
/// (O_NONBLOCK is shared with the front-end's own descriptor; QEMU's are non-blocking anyway.)
fn checked_ring_fd(file: &File) -> Result<(), RingFdError> {
    let fd = file.as_raw_fd();
    // SAFETY: `st` is a valid out-buffer for fstatfs on a descriptor we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::fstatfs(fd, &mut st) } < 0 {
        return Err(RingFdError::Inspect(io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    if magic != ANON_INODE_FS_MAGIC {
        return Err(RingFdError::NotAnEventFd(magic));
    }
    // SAFETY: F_GETFL/F_SETFL only read and set the status flags of a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(RingFdError::NonBlocking(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// A kick/call/err fd as the vring may keep it: refused ones are dropped with one log line
/// (the queue then stays without that fd: never kicked, or never signalling).
fn ring_fd(file: Option<File>, what: &str) -> Option<File> {
    let file = file?;
    match checked_ring_fd(&file) {
        Ok(()) => Some(file),
        Err(e) => {
            warn!("{what} fd refused: {e}; the queue is left without it");
            None
        }
    }
}

/// The virtqueue as vhost-user-backend keeps it, with the front-end's fds tamed: kick, call
/// and err must be eventfds and are used non-blocking; a kick another reader consumed first
/// is not an error, nor is a call counter at its maximum (the guest has a notification
/// pending anyway).
#[derive(Clone)]
pub struct ScsiVring(VringRwLock);

impl<'a> VringStateGuard<'a, GuestMemory> for ScsiVring {
    type G = <VringRwLock as VringStateGuard<'a, GuestMemory>>::G;
}

impl<'a> VringStateMutGuard<'a, GuestMemory> for ScsiVring {
    type G = <VringRwLock as VringStateMutGuard<'a, GuestMemory>>::G;
}

/// Adds one to the counter of eventfd `fd` (a kick or call fd `ring_fd` accepted: an eventfd,
/// non-blocking). EAGAIN (counter at its maximum) means one is pending anyway.
fn signal_eventfd(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd the vring owns.
    let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl VringT<GuestMemory> for ScsiVring {
    fn new(mem: GuestMemory, max_queue_size: u16) -> Result<Self, virtio_queue::Error> {
        VringRwLock::new(mem, max_queue_size).map(ScsiVring)
    }
    fn get_ref(&self) -> <Self as VringStateGuard<'_, GuestMemory>>::G {
        self.0.get_ref()
    }
    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, GuestMemory>>::G {
        self.0.get_mut()
    }
    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), virtio_queue::Error> {
        self.0.add_used(desc_index, len)
    }
    fn signal_used_queue(&self) -> io::Result<()> {
        match self.0.signal_used_queue() {
            Err(e) if would_block(&e) => Ok(()),
            other => other,
        }
    }
    fn enable_notification(&self) -> Result<bool, virtio_queue::Error> {
        self.0.enable_notification()
    }
    fn disable_notification(&self) -> Result<(), virtio_queue::Error> {
        self.0.disable_notification()
    }
    fn needs_notification(&self) -> Result<bool, virtio_queue::Error> {
        self.0.needs_notification()
    }
    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled)
    }
    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), virtio_queue::Error> {
        self.0.set_queue_info(desc_table, avail_ring, used_ring)
    }
    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }
    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }
    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }
    fn queue_used_idx(&self) -> Result<u16, virtio_queue::Error> {
        self.0.queue_used_idx()
    }
    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }
    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }
    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready)
    }
    fn set_kick(&self, file: Option<File>) {
        self.0.set_kick(ring_fd(file, "SET_VRING_KICK"));
        // One kick of our own: the queue's thread looks at the ring once it is registered,
        // whatever the guest does. After a reconnection the guest's event buffers are already
        // posted and it will not kick for them again (this is when we learn the new event
        // queue and deliver the events raised meanwhile), and requests resubmitted from the
        // inflight region (or made available while nobody served the queue) would otherwise
        // wait for a kick that the guest, waiting for them, never sends. (libvhost-user does
        // the same.) A look at any other ring finds what a kick would have found: nothing, or
        // requests to serve; EAGAIN (a full counter) means the ring is kicked already.
        if let Some(kick) = self.0.get_ref().get_kick() {
            signal_eventfd(kick.as_raw_fd());
        }
    }
    fn read_kick(&self) -> io::Result<bool> {
        match self.0.read_kick() {
            // Somebody else (the front-end itself) consumed the kick: look at the ring anyway.
            Err(e) if would_block(&e) => Ok(self.0.get_ref().is_enabled()),
            other => other,
        }
    }
    fn set_call(&self, file: Option<File>) {
        self.0.set_call(ring_fd(file, "SET_VRING_CALL"));
        // Interrupt the guest once: a worker that died between publishing a used element and
        // signalling it left the guest waiting for a notification nobody would send (its
        // driver never looks at the used ring on its own). The driver checks the used ring
        // and finds nothing new, or what was never signalled. (libvhost-user does the same.)
        if let Some(call) = self.0.get_ref().get_call() {
            signal_eventfd(call.as_raw_fd());
        }
    }
    fn set_err(&self, file: Option<File>) {
        self.0.set_err(ring_fd(file, "SET_VRING_ERR"))
    }
}
