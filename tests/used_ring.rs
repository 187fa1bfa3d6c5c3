//! How a request queue answers the guest: a batch of answers is published at once and notified
//! at most once, as the driver asked — `used_event` with VIRTIO_RING_F_EVENT_IDX,
//! VRING_AVAIL_F_NO_INTERRUPT without it — and a queue going idle asks to be kicked
//! (`avail_event`). The queue worker runs in-process on a hand-built split ring, its commands
//! on a real LUN file (the inline engine: every answer is ready in the pass that popped it).

mod ring;

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd},
    sync::atomic::Ordering,
};

use ring::file_bus;
use vhost_user_backend::VringT;
use vhost_user_scsi::{block::engine::inline::InlineEngine, virtio::queue::QueueWorker};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vus_test_support::{
    cdb::rw10,
    ring::{VringHarness as Ring, DATA},
    wire::{cmd_req_lun0, REQ_HEADER_SIZE, RESP_HEADER_SIZE},
};

const SIZE: u16 = 64;
/// The harness's ring addresses (tests/support/src/ring.rs).
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

/// A ring with a call eventfd whose counter tells how many notifications the daemon sent.
fn ring(event_idx: bool) -> (Ring, EventFd) {
    let ring = Ring::new(SIZE);
    ring.vring.set_queue_event_idx(event_idx);
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    // SAFETY: a fresh duplicate of the eventfd, owned by the File from here on.
    let dup = unsafe { File::from_raw_fd(libc::dup(call.as_raw_fd())) };
    ring.vring.set_call(Some(dup));
    (ring, call)
}

/// Notifications since the last look.
fn calls(call: &EventFd) -> u64 {
    call.read().unwrap_or(0)
}

/// Makes `n` READs of one block available.
fn push_reads(ring: &mut Ring, n: u64) {
    for i in 0..n {
        let base = DATA + i * 0x2000;
        ring.write(base, &cmd_req_lun0(&rw10(0x28, i as u32, 1)));
        ring.push_chain(&[
            (base, REQ_HEADER_SIZE as u32, false),
            (base + 0x1000, RESP_HEADER_SIZE as u32, true),
            (base + 0x100, 512, true),
        ]);
    }
}

fn store16(ring: &Ring, at: u64, v: u16) {
    ring.mem
        .memory()
        .store(v.to_le(), GuestAddress(at), Ordering::Release)
        .unwrap();
}

fn load16(ring: &Ring, at: u64) -> u16 {
    u16::from_le(
        ring.mem
            .memory()
            .load(GuestAddress(at), Ordering::Acquire)
            .unwrap(),
    )
}

/// Serves what is available, as one `handle_event` would.
fn serve(ring: &Ring, event_idx: bool) {
    let (bus, _img) = file_bus();
    let mut w = QueueWorker::with_engine(Box::new(InlineEngine), SIZE);
    w.run(&bus, &ring.vring, &ring.mem.memory(), event_idx)
        .unwrap();
}

#[test]
fn a_batch_is_published_and_notified_once() {
    let (mut ring, call) = ring(true);
    // The driver wants an interrupt for the first answer (used_event 0).
    store16(&ring, AVAIL + 4 + 2 * u64::from(SIZE), 0);
    push_reads(&mut ring, 8);
    serve(&ring, true);
    assert_eq!(ring.take_used().len(), 8, "every request answered");
    assert_eq!(calls(&call), 1, "one notification for the batch of 8");
    // Going idle asked for a kick at the next request (avail_event = avail idx).
    assert_eq!(load16(&ring, USED + 4 + 8 * u64::from(SIZE)), 8);
}

#[test]
fn used_event_beyond_the_batch_gets_no_notification() {
    let (mut ring, call) = ring(true);
    // The driver wants to hear only after the 20th answer.
    store16(&ring, AVAIL + 4 + 2 * u64::from(SIZE), 19);
    push_reads(&mut ring, 8);
    serve(&ring, true);
    assert_eq!(ring.take_used().len(), 8);
    assert_eq!(calls(&call), 0, "used_event 19 is not among answers 0..8");
    // The next batch crosses it: one notification.
    push_reads(&mut ring, 16);
    serve(&ring, true);
    assert_eq!(ring.take_used().len(), 16);
    assert_eq!(calls(&call), 1, "used_event 19 is among answers 8..24");
}

#[test]
fn without_event_idx_no_interrupt_is_honoured() {
    let (mut ring, call) = ring(false);
    // VRING_AVAIL_F_NO_INTERRUPT: the driver is polling.
    store16(&ring, AVAIL, 1);
    push_reads(&mut ring, 4);
    serve(&ring, false);
    assert_eq!(ring.take_used().len(), 4);
    assert_eq!(calls(&call), 0, "the driver asked for no interrupt");
    store16(&ring, AVAIL, 0);
    push_reads(&mut ring, 4);
    serve(&ring, false);
    assert_eq!(ring.take_used().len(), 4);
    assert_eq!(calls(&call), 1, "one interrupt for the batch");
}
