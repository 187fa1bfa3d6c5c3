#![no_main]
//! Input format and invariants: see `src/management.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi_fuzz::management::run(data));
