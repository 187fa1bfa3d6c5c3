// Portions copyright 2019 Intel Corporation. All Rights Reserved.
// Portions copyright 2019-2021 Alibaba Cloud. All rights reserved.
// (from vhost-user-backend 0.24.0, rust-vmm; modified as the module documentation says)
//
// SPDX-License-Identifier: Apache-2.0

//! The vhost-user request handler: every message of the front-end, applied to the connection's
//! vrings and queue threads and to [`ScsiBackend`]. `vhost`'s `BackendReqHandler` parses and
//! checks the messages (sizes, fds, negotiated features) and calls this through
//! `VhostUserBackendReqHandlerMut`; it runs on the connection's protocol thread (role
//! `worker-protocol`).
//!
//! Adapted from vhost-user-backend 0.24.0, `src/handler.rs` (rust-vmm, Apache-2.0, like this
//! project; copyright notices above), whose handler is
//! private to that crate and refuses GET/SET_INFLIGHT_FD. Changes:
//! - GET_INFLIGHT_FD and SET_INFLIGHT_FD go to the backend (inflight I/O tracking,
//!   [`crate::worker::inflight`]);
//! - not generic: it serves [`ScsiBackend`] and its [`ScsiVring`]s; the queue threads are
//!   started by [`super::connection`];
//! - left out: dirty-page logging (SET_LOG_BASE; LOG_ALL and LOG_SHMFD are not offered),
//!   postcopy, Xen, shared objects, GPU sockets, device-state transfer, the backend request
//!   channel: each is refused;
//! - a memory table is checked ([`ScsiBackend::check_memory`]: regions within their files,
//!   sealed) before it is installed where the queue threads see it, not after;
//! - typed errors; an inconsistent table (a vring address outside every region) is an error
//!   reply, never a panic; locks that another thread poisoned are taken over, not unwrapped.

use std::{fs::File, io, os::fd::AsRawFd, sync::Arc};

use vhost::{
    vhost_user::{
        message::{
            VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
            VhostUserInflight, VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures,
            VhostUserShMemConfig, VhostUserSharedMsg, VhostUserSingleMemoryRegion,
            VhostUserVirtioFeatures, VhostUserVringAddrFlags, VhostUserVringState,
        },
        Error as VhostUserError, GpuBackend, Result as VhostUserResult,
        VhostUserBackendReqHandlerMut,
    },
    VhostUserMemoryRegionBase,
};
use vhost_user_backend::VringT;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};

use super::{event_loop::EventLoop, GuestMemory, ScsiBackend, ScsiVring};

/// Memory slots offered (CONFIGURE_MEM_SLOTS): what the kernel's vhost usually supports, as
/// vhost-user-backend offers.
const MAX_MEM_SLOTS: u64 = 509;

/// Why a request was refused (the front-end gets an error reply, or the connection ends).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("a vring address is in no memory region the front-end sent")]
    MissingMemoryMapping,
    #[error("a memory region does not fit the guest address space")]
    BadRegion,
    #[error("cannot change the memory table: {0}")]
    MemoryTable(vm_memory::GuestRegionCollectionError),
    #[error("{0} is not supported by this device")]
    Unsupported(&'static str),
}

impl From<HandlerError> for VhostUserError {
    fn from(e: HandlerError) -> Self {
        VhostUserError::ReqHandlerError(io::Error::other(e))
    }
}

/// Where a region of the front-end's address space is in guest-physical memory (vring
/// addresses come in the front-end's address space).
#[derive(Debug)]
struct AddrMapping {
    vmm_addr: u64,
    size: u64,
    gpa_base: u64,
}

/// One connection's request handler.
pub struct RequestHandler {
    backend: Arc<ScsiBackend>,
    /// The queue threads' loops, by thread (see [`ScsiBackend::queues_per_thread`]).
    loops: Vec<Arc<EventLoop>>,
    owned: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    num_queues: usize,
    max_queue_size: usize,
    queues_per_thread: Vec<u64>,
    mappings: Vec<AddrMapping>,
    /// The guest memory the vrings and the backend share.
    atomic_mem: GuestMemory,
    vrings: Vec<ScsiVring>,
}

impl RequestHandler {
    /// A handler over `vrings` (one per queue) served by the queue threads' `loops`.
    pub(super) fn new(
        backend: Arc<ScsiBackend>,
        atomic_mem: GuestMemory,
        vrings: Vec<ScsiVring>,
        loops: Vec<Arc<EventLoop>>,
    ) -> Self {
        RequestHandler {
            num_queues: backend.num_queues(),
            max_queue_size: backend.max_queue_size(),
            queues_per_thread: backend.queues_per_thread(),
            backend,
            loops,
            owned: false,
            acked_features: 0,
            acked_protocol_features: 0,
            mappings: Vec::new(),
            atomic_mem,
            vrings,
        }
    }

    fn vring(&self, index: u32) -> VhostUserResult<&ScsiVring> {
        self.vrings
            .get(index as usize)
            .ok_or(VhostUserError::InvalidParam)
    }

    fn vmm_va_to_gpa(&self, vmm_va: u64) -> Result<u64, HandlerError> {
        self.mappings
            .iter()
            .find(|m| vmm_va >= m.vmm_addr && vmm_va - m.vmm_addr < m.size)
            .map(|m| vmm_va - m.vmm_addr + m.gpa_base)
            .ok_or(HandlerError::MissingMemoryMapping)
    }

    /// A ring with a kick fd starts (is marked ready) on its first SET_VRING_KICK or
    /// SET_VRING_CALL.
    fn start_if_needed(&self, index: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        let needs_start = {
            let state = vring.get_ref();
            !state.get_queue().ready() && state.get_kick().is_some()
        };
        if needs_start {
            vring.set_queue_ready(true);
            self.update_vring_registration(index)?;
        }
        Ok(())
    }

    /// Watches the ring's kick fd in its thread's loop while the ring is both started and
    /// enabled, and not otherwise, so that notifications are handled only then and none is
    /// lost.
    fn update_vring_registration(&self, index: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        let state = vring.get_ref();
        let Some(fd) = state.get_kick().as_ref().map(|k| k.as_raw_fd()) else {
            return Ok(());
        };
        let Some((thread, mask)) = self
            .queues_per_thread
            .iter()
            .enumerate()
            .find(|(_, mask)| index < 64 && (*mask >> index) & 1 == 1)
        else {
            return Ok(());
        };
        // The ring's number among its thread's rings.
        let local = (mask & ((1u64 << index) - 1)).count_ones() as u16;
        let Some(event_loop) = self.loops.get(thread) else {
            return Ok(());
        };
        if state.get_queue().ready() && state.is_enabled() {
            match event_loop.register_kick(fd, local) {
                // Enabling an enabled ring again is not an error.
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(VhostUserError::ReqHandlerError(e))
                }
                _ => {}
            }
        } else {
            // Not registered (never started, or stopped already): nothing to undo.
            let _ = event_loop.unregister_kick(fd, local);
        }
        Ok(())
    }

    fn check_feature(&self, feat: VhostUserVirtioFeatures) -> VhostUserResult<()> {
        if self.acked_features & feat.bits() != 0 {
            Ok(())
        } else {
            Err(VhostUserError::InactiveFeature(feat))
        }
    }

    /// Installs `mem` as the guest memory the vrings and the backend see, once the backend has
    /// checked it. A refused table is never visible to a queue thread (a region past the end
    /// of its file would SIGBUS it); the vrings get an empty table instead, on which every
    /// access fails cleanly, and the request fails (the connection ends).
    fn install_memory(&mut self, mem: GuestMemoryMmap) -> VhostUserResult<()> {
        let checked = self.backend.check_memory(&mem);
        let mem = if checked.is_ok() {
            mem
        } else {
            GuestMemoryMmap::new()
        };
        // The vrings see the new table at their next `memory()`.
        self.atomic_mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(mem);
        checked.map_err(VhostUserError::ReqHandlerError)?;
        self.backend
            .update_memory(self.atomic_mem.clone())
            .map_err(VhostUserError::ReqHandlerError)
    }
}

fn region(
    region: vm_memory::MmapRegion,
    guest_phys_addr: u64,
) -> Result<GuestRegionMmap, HandlerError> {
    GuestRegionMmap::new(region, GuestAddress(guest_phys_addr)).ok_or(HandlerError::BadRegion)
}

impl VhostUserBackendReqHandlerMut for RequestHandler {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        if self.owned {
            return Err(VhostUserError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        // Every ring disabled; the protocol state stays.
        for index in 0..self.vrings.len() as u32 {
            self.vring(index)?.set_enabled(false);
            self.update_vring_registration(index)?;
        }
        self.acked_features = 0;
        self.backend.reset_device();
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        if features & !self.backend.features() != 0 {
            return Err(VhostUserError::InvalidParam);
        }
        self.acked_features = features;
        // Without VHOST_USER_F_PROTOCOL_FEATURES every ring is enabled at once; with it they
        // stay as they are (SET_VRING_ENABLE decides).
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for index in 0..self.vrings.len() as u32 {
                self.vring(index)?.set_enabled(true);
                self.update_vring_registration(index)?;
            }
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for vring in &self.vrings {
            vring.set_queue_event_idx(event_idx);
        }
        self.backend.set_event_idx(event_idx);
        self.backend.acked_features(features);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(HandlerError::Unsupported("postcopy").into());
        }
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (r, file) in ctx.iter().zip(files) {
            regions.push(region(r.mmap_region(file)?, r.guest_phys_addr)?);
            mappings.push(AddrMapping {
                vmm_addr: r.user_addr,
                size: r.memory_size,
                gpa_base: r.guest_phys_addr,
            });
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(HandlerError::MemoryTable)?;
        self.install_memory(mem)?;
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        if num == 0 || num as usize > self.max_queue_size {
            log::warn!(
                "vring {index}: queue size {num} out of range (1-{})",
                self.max_queue_size
            );
            return Err(VhostUserError::InvalidParam);
        }
        vring.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        if self.mappings.is_empty() {
            return Err(VhostUserError::InvalidParam);
        }
        let desc_table = self.vmm_va_to_gpa(descriptor)?;
        let avail_ring = self.vmm_va_to_gpa(available)?;
        let used_ring = self.vmm_va_to_gpa(used)?;
        vring
            .set_queue_info(desc_table, avail_ring, used_ring)
            .map_err(|_| VhostUserError::InvalidParam)?;
        // SET_VRING_BASE only restores the avail index; the used index is the guest's (0 after
        // a reboot), read here as QEMU's libvhost-user does.
        let idx = vring
            .queue_used_idx()
            .map_err(|_| VhostUserError::BackendInternalError)?;
        vring.set_queue_next_used(idx);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        self.vring(index)?.set_queue_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        // The ring stops on GET_VRING_BASE (vhost-user spec): no kicks watched, nothing in
        // flight once the backend's stop_vring returns.
        let vring = self.vring(index)?.clone();
        vring.set_queue_ready(false);
        self.update_vring_registration(index)?;
        self.backend
            .stop_vring(index)
            .map_err(VhostUserError::ReqHandlerError)?;
        let next_avail = vring.queue_next_avail();
        vring.set_kick(None);
        vring.set_call(None);
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, file: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_kick(file);
        self.start_if_needed(u32::from(index))
    }

    fn set_vring_call(&mut self, index: u8, file: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_call(file);
        self.start_if_needed(u32::from(index))
    }

    fn set_vring_err(&mut self, index: u8, file: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_err(file);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        // Valid before SET_FEATURES too.
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        Ok(self.num_queues as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        // Only with VHOST_USER_F_PROTOCOL_FEATURES negotiated.
        self.check_feature(VhostUserVirtioFeatures::PROTOCOL_FEATURES)?;
        // No data passes through a ring until it is enabled, nor after it is disabled.
        self.vring(index)?.set_enabled(enable);
        self.update_vring_registration(index)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        self.backend
            .set_config(offset, buf)
            .map_err(VhostUserError::ReqHandlerError)
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostUserResult<()> {
        Err(HandlerError::Unsupported("GPU_SET_SOCKET").into())
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(HandlerError::Unsupported("GET_SHARED_OBJECT").into())
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        self.backend
            .get_inflight_fd(inflight)
            .map_err(VhostUserError::ReqHandlerError)
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        self.backend
            .set_inflight_fd(inflight, file)
            .map_err(VhostUserError::ReqHandlerError)
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        r: &VhostUserSingleMemoryRegion,
        file: File,
        postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        if postcopy_listening.is_some() {
            return Err(HandlerError::Unsupported("postcopy").into());
        }
        let guest_region = Arc::new(region(r.mmap_region(file)?, r.guest_phys_addr)?);
        let mem = self
            .atomic_mem
            .memory()
            .insert_region(guest_region)
            .map_err(HandlerError::MemoryTable)?;
        self.install_memory(mem)?;
        self.mappings.push(AddrMapping {
            vmm_addr: r.user_addr,
            size: r.memory_size,
            gpa_base: r.guest_phys_addr,
        });
        Ok(None)
    }

    fn remove_mem_region(&mut self, r: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        let (mem, _) = self
            .atomic_mem
            .memory()
            .remove_region(GuestAddress(r.guest_phys_addr), r.memory_size)
            .map_err(HandlerError::MemoryTable)?;
        self.install_memory(mem)?;
        self.mappings.retain(|m| m.gpa_base != r.guest_phys_addr);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _file: File,
    ) -> VhostUserResult<Option<File>> {
        Err(HandlerError::Unsupported("SET_DEVICE_STATE_FD").into())
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(HandlerError::Unsupported("CHECK_DEVICE_STATE").into())
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        Err(HandlerError::Unsupported("GET_SHMEM_CONFIG").into())
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(HandlerError::Unsupported("SET_LOG_BASE (dirty-page logging)").into())
    }
}
