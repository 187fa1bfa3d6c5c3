#![no_main]
//! Input format and invariants: see `src/virtio_request.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi_fuzz::virtio_request::run(data));
