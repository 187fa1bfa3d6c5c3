//! Helpers shared by the fuzz targets: a byte cursor that the targets decode their input with
//! (simple enough that seed files can be written by hand, see `seeds.py`), and the SCSI bus the
//! request-path targets run against.

use std::{fs::File, sync::Arc};

pub mod config;
pub mod iscsi_login;
pub mod iscsi_pdu;
pub mod management;
pub mod scsi_cdb;
pub mod vhost_user;
pub mod virtio_request;

use vhost_user_scsi::{
    block::{FileBackend, NullBackend},
    scsi::{DeviceType, LogicalUnit, LunOptions, ScsiBus},
};

/// Reads little-endian integers and byte strings off the front of the input; past the end
/// everything reads as zero, so every input decodes to something.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Size of the writable test image (512-byte blocks: 512 of them).
pub const IMAGE_SIZE: u64 = 256 * 1024;
/// Size of the null LUN (4096-byte blocks).
pub const NULL_SIZE: u64 = 16 << 20;

/// The LUNs every request-path target runs against:
/// - 0:0 a read-write image file with 512-byte blocks, discard on;
/// - 0:1 a null LUN with 4096-byte blocks;
/// - 1:0 the same image file, read-only, 4096-byte logical and 8 KiB physical blocks;
/// - 1:1 a CD-ROM (`type=cdrom`: MMC, 2048-byte blocks, read-only, removable) whose medium is
///   the same image file.
///
/// Built afresh for every input (LUN state such as unit attentions, mode pages and
/// reservations then never leaks from one input into the next, so crashes reproduce); the
/// image file is shared and only its contents persist.
pub fn bus(image: &File) -> ScsiBus {
    let file = || {
        let f = image.try_clone().expect("dup image fd");
        Arc::new(FileBackend::new(f, false).expect("image backend"))
    };
    let opts = |serial: &str, ro: bool, bs: u32, pbs: u32| LunOptions {
        device_type: Default::default(),
        removable: false,
        read_only: ro,
        serial: serial.into(),
        wwn: 0x3000_0000_0000_0001,
        block_size: bs,
        physical_block_size: pbs,
        discard: true,
        pr_file: None,
    };
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(file(), opts("IMG", false, 512, 0)));
    bus.add_lun(
        0,
        1,
        LogicalUnit::new(
            Arc::new(NullBackend::new(NULL_SIZE)),
            opts("NULL", false, 4096, 0),
        ),
    );
    bus.add_lun(1, 0, LogicalUnit::new(file(), opts("RO", true, 4096, 8192)));
    let cdrom = LunOptions {
        device_type: DeviceType::Cdrom,
        removable: true,
        discard: false,
        ..opts("CD", true, 2048, 0)
    };
    bus.add_lun(1, 1, LogicalUnit::new(file(), cdrom));
    bus
}

/// A new medium for the CD-ROM at 1:1 (the same image, opened again as the management's
/// `change-medium` hands the worker a new file).
pub fn cdrom_medium(image: &File) -> Arc<FileBackend> {
    Arc::new(FileBackend::new(image.try_clone().expect("dup image fd"), false).expect("medium"))
}

/// The image file every input's bus uses: created once per process, in a temp directory.
pub fn image() -> &'static File {
    static IMAGE: std::sync::OnceLock<(tempfile::TempDir, File)> = std::sync::OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("lun.img"))
                .expect("image");
            f.set_len(IMAGE_SIZE).expect("image size");
            (dir, f)
        })
        .1
}

/// The LUN must never grow (no write past its end, whatever the CDB said).
pub fn assert_image_size() {
    let len = image().metadata().expect("stat image").len();
    assert_eq!(len, IMAGE_SIZE, "the LUN's image grew or shrank");
}
