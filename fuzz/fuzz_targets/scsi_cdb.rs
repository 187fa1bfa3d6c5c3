#![no_main]
//! Input format and invariants: see `src/scsi_cdb.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi_fuzz::scsi_cdb::run(data));
