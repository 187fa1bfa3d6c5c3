//! Test helpers shared by the unit tests (`src/**/tests`), the integration tests
//! (`tests/*.rs`) and the host bench (`benches/host.rs`) of vhost-user-scsi:
//!
//! - [`wire`]: virtio and virtio-scsi constants, request and response header encoders and
//!   decoders, the LUN field;
//! - [`cdb`]: SCSI CDB and parameter-list builders;
//! - [`ring`]: the driver side of a split virtqueue laid out in vm-memory guest memory, and
//!   descriptor chains for code that takes descriptors directly;
//! - [`tgtd`]: a real iSCSI target (tgtd) owned by one test;
//! - [`relay`]: a TCP relay in front of it that can stall part-way through what the target
//!   sends;
//! - [`frontend`]: the vhost-user front-end (memfd guest memory, the rust-vmm `vhost` front-end
//!   driver, the handshake QEMU performs) and `TestVm`, a mini QEMU on top of it;
//! - [`e2e`]: the host side of the guest end-to-end tests (which QEMU to boot).
//!
//! This crate does not depend on the daemon crate (so the daemon's unit tests can use it without
//! a dependency cycle), and its wire constants are written out from the specs (virtio 1.2 §2.7,
//! §5.6; SPC/SBC) rather than taken from the daemon's own bindings, so a wrong constant in the
//! daemon cannot make a test agree with it.

pub mod cdb;
pub mod e2e;
pub mod frontend;
pub mod relay;
pub mod ring;
pub mod rng;
pub mod tgtd;
pub mod wire;
