//! What the in-process queue-worker tests (`tests/aio_queue.rs`, `tests/alloc_free.rs`) need
//! beyond the shared split ring (`vus_test_support::ring::VringHarness`): a bus over a real LUN
//! file and synchronous command execution, both of which use the daemon crate's types and so
//! cannot live in the test-support crate.

#![allow(dead_code)]

use std::sync::Arc;

use vhost_user_scsi::{
    block::FileBackend,
    scsi::{LogicalUnit, LunOptions, ScsiBus},
};

/// A bus with one 1 MiB file LU (512-byte blocks, page cache) at 0:0, its power-on unit
/// attention consumed.
pub fn file_bus() -> (Arc<ScsiBus>, tempfile::NamedTempFile) {
    file_bus_with(|_| {})
}

/// [`file_bus`] with the LU adjusted by `setup` before it joins the bus.
pub fn file_bus_with(
    setup: impl FnOnce(&mut LogicalUnit),
) -> (Arc<ScsiBus>, tempfile::NamedTempFile) {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let backend = FileBackend::new(img.reopen().unwrap(), false).unwrap();
    let opts = LunOptions {
        device_type: Default::default(),
        removable: false,
        read_only: false,
        serial: "S".into(),
        wwn: 0x3000_0000_0000_0001,
        block_size: 512,
        physical_block_size: 0,
        discard: true,
        pr_file: None,
    };
    let mut bus = ScsiBus::new();
    let mut lu = LogicalUnit::new(Arc::new(backend), opts);
    setup(&mut lu);
    bus.add_lun(0, 0, lu);
    let bus = Arc::new(bus);
    // TEST UNIT READY consumes POWER ON OCCURRED.
    let out = execute(&bus, &[0; 6], &[], 0).0;
    assert_eq!(out.status, 2);
    (bus, img)
}

/// Runs one command synchronously at 0:0 (like another queue thread would).
pub fn execute(
    bus: &ScsiBus,
    cdb: &[u8],
    data_out: &[u8],
    in_len: usize,
) -> (vhost_user_scsi::scsi::CmdOutput, Vec<u8>) {
    use vhost_user_scsi::scsi::SgList;
    use vm_memory::VolatileSlice;
    let mut out_buf = data_out.to_vec();
    let mut in_buf = vec![0u8; in_len];
    let out = {
        let mut dout = SgList::new();
        dout.push(VolatileSlice::from(&mut out_buf[..]));
        let mut din = SgList::new();
        din.push(VolatileSlice::from(&mut in_buf[..]));
        bus.execute(0, 0, cdb, &dout, &din)
    };
    (out, in_buf)
}
