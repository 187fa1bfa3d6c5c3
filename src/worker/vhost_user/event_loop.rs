// Portions copyright 2019 Intel Corporation. All Rights Reserved.
// Portions copyright 2019-2021 Alibaba Cloud. All rights reserved.
// (from vhost-user-backend 0.24.0, rust-vmm; modified as the module documentation says)
//
// SPDX-License-Identifier: Apache-2.0

//! The event loop of one queue thread: waits on its queues' kick eventfds (and on listeners
//! the backend adds, such as a request queue's retry timer) and calls
//! [`ScsiBackend::handle_event`] for each.
//!
//! Adapted from vhost-user-backend 0.24.0, `src/event_loop.rs` (rust-vmm, Apache-2.0, like this
//! project; copyright notices above), whose constructor
//! and loop are private to that crate. Kept: the epoll set, the "ring started" event that makes
//! a ring registered after a kick was sent get looked at anyway (no lost kick), and
//! `register_listener` with the same reserved numbers. Changed: not generic (it serves
//! [`ScsiBackend`]), the exit event is an eventfd this loop owns and closes (vhost-user-backend
//! left the backend's exit fds open: 63 fds per connection with 62 queues), the exit and
//! ring-started events have numbers of their own, and errors are typed.

use std::{
    collections::HashSet,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex},
};

use vhost_user_backend::VringT;
use vmm_sys_util::{
    epoll::{ControlOperation, Epoll, EpollEvent, EventSet},
    eventfd::{EventFd, EFD_NONBLOCK},
};

use super::{ScsiBackend, ScsiVring};

/// Why a queue thread's loop could not be set up, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the epoll set: {0}")]
    Epoll(io::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(io::Error),
    #[error("cannot watch an eventfd: {0}")]
    Register(io::Error),
    #[error("waiting for events failed: {0}")]
    Wait(io::Error),
    #[error("cannot read a kick: {0}")]
    ReadKick(io::Error),
    #[error("the backend failed to handle an event: {0}")]
    Backend(io::Error),
}

/// Event number of the exit event: past anything a listener may use.
const EXIT_EVENT: u64 = u64::MAX;
/// Event number of the "ring started" event.
const STARTED_EVENT: u64 = u64::MAX - 1;

/// One queue thread's epoll set, its vrings (in queue order), and its exit event.
pub struct EventLoop {
    epoll: Epoll,
    backend: Arc<ScsiBackend>,
    /// The device's queue count: event numbers up to it are reserved (queues, exit).
    num_queues: usize,
    vrings: Vec<ScsiVring>,
    thread_id: usize,
    exit: EventFd,
    /// Signalled when a ring's kick fd is registered: the rings in `started` are looked at
    /// once without a kick (one sent before the registration would otherwise be lost).
    started_event: EventFd,
    started: Mutex<HashSet<u16>>,
}

impl EventLoop {
    /// The loop of queue thread `thread_id`, serving `vrings` (its queues, in order).
    pub fn new(
        backend: Arc<ScsiBackend>,
        vrings: Vec<ScsiVring>,
        thread_id: usize,
    ) -> Result<Self, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
        let exit = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let started_event = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        for (fd, data) in [
            (exit.as_raw_fd(), EXIT_EVENT),
            (started_event.as_raw_fd(), STARTED_EVENT),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )
                .map_err(EventLoopError::Register)?;
        }
        Ok(EventLoop {
            epoll,
            num_queues: backend.num_queues(),
            backend,
            vrings,
            thread_id,
            exit,
            started_event,
            started: Mutex::new(HashSet::new()),
        })
    }

    /// Makes [`EventLoop::run`] return (at its next wake-up, which this causes).
    pub fn send_exit_event(&self) {
        // A full counter means an exit is pending already.
        let _ = self.exit.write(1);
    }

    /// Watches `fd` for `ev_type`; when it fires, the backend's `handle_event` gets `data`.
    /// Numbers up to the queue count are reserved for the queues.
    pub fn register_listener(&self, fd: RawFd, ev_type: EventSet, data: u64) -> io::Result<()> {
        if data <= self.num_queues as u64 || data >= STARTED_EVENT {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(ev_type, data))
    }

    /// Watches ring `index` (of this thread's) through its kick fd `fd`, and has the ring looked
    /// at once now.
    pub(super) fn register_kick(&self, fd: RawFd, index: u16) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, u64::from(index)),
        )?;
        lock(&self.started).insert(index);
        // A full counter: a wake-up is pending anyway.
        let _ = self.started_event.write(1);
        Ok(())
    }

    /// Stops watching ring `index`'s kick fd `fd`.
    pub(super) fn unregister_kick(&self, fd: RawFd, index: u16) -> io::Result<()> {
        lock(&self.started).remove(&index);
        self.epoll.ctl(
            ControlOperation::Delete,
            fd,
            EpollEvent::new(EventSet::IN, u64::from(index)),
        )
    }

    /// Serves events until the exit event (or an error that ends the thread).
    pub fn run(&self) -> Result<(), EventLoopError> {
        const EVENTS: usize = 100;
        let mut events = vec![EpollEvent::new(EventSet::empty(), 0); EVENTS];
        loop {
            let n = match self.epoll.wait(-1, &mut events[..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EventLoopError::Wait(e)),
            };
            for event in &events[..n] {
                let Some(evset) = EventSet::from_bits(event.events) else {
                    log::warn!(
                        "queue thread {}: unknown epoll events {:#x}",
                        self.thread_id,
                        { event.events }
                    );
                    continue;
                };
                match event.data() {
                    EXIT_EVENT => return Ok(()),
                    STARTED_EVENT => self.handle_started(evset)?,
                    data => self.handle_event(data, evset)?,
                }
            }
        }
    }

    fn handle_started(&self, evset: EventSet) -> Result<(), EventLoopError> {
        // Non-blocking: EAGAIN when another wake-up consumed it already.
        if self.started_event.read().is_err() {
            return Ok(());
        }
        let started = std::mem::take(&mut *lock(&self.started));
        for index in started {
            if usize::from(index) < self.vrings.len() {
                self.backend
                    .handle_event(index, evset, &self.vrings, self.thread_id)
                    .map_err(EventLoopError::Backend)?;
            }
        }
        Ok(())
    }

    fn handle_event(&self, data: u64, evset: EventSet) -> Result<(), EventLoopError> {
        // Listener numbers are below STARTED_EVENT and past the queues; queue numbers fit.
        let Ok(device_event) = u16::try_from(data) else {
            return Ok(());
        };
        if let Some(vring) = self.vrings.get(usize::from(device_event)) {
            let enabled = vring.read_kick().map_err(EventLoopError::ReadKick)?;
            // A disabled ring is not served.
            if !enabled {
                return Ok(());
            }
        }
        self.backend
            .handle_event(device_event, evset, &self.vrings, self.thread_id)
            .map_err(EventLoopError::Backend)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
