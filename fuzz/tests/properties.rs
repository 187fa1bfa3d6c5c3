//! Property tests of the data-path invariants, on any toolchain: thousands of random but
//! well-formed requests (the shapes a fuzzer takes long to find: valid chains, real LUN
//! addresses, READ/WRITE/VERIFY/WRITE SAME/UNMAP around the end of each LUN, buffers across
//! the guest-memory region boundary and through indirect tables), run through the fuzz
//! targets' bodies, which assert on every input:
//! - a request never touches guest memory outside its writable descriptors (`virtio_request`),
//!   nor blocks outside its LUN (`scsi_cdb`: every planned I/O lies inside the LUN);
//! - every request gets exactly one completion, naming its head, no longer than its buffers;
//! - a LUN never grows (the image keeps its size).

use std::sync::Mutex;

use vhost_user_scsi::config::AioMode;

/// The targets share one image file and count descriptors: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// xorshift64*: deterministic, so a failure reproduces from its round number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Addresses of the fuzz bus's LUNs (and two that do not exist), with their block counts.
const LUNS: [((u8, u16), u64); 6] = [
    ((0, 0), 512),  // 256 KiB image, 512-byte blocks
    ((0, 1), 4096), // 16 MiB null LUN, 4 KiB blocks
    ((1, 0), 64),   // the image read-only, 4 KiB blocks
    ((0, 7), 0),    // no such LUN
    ((9, 0), 0),    // no such target
    ((1, 1), 128),  // the image as a CD-ROM's medium, 2 KiB blocks
];

/// The block size of `LUNS[which]`.
fn block_size(which: usize) -> u64 {
    match which {
        0 => 512,
        5 => 2048,
        _ => 4096,
    }
}

/// A medium-access CDB around the end of a LUN of `blocks` blocks, and its transfer length
/// in blocks.
fn io_cdb(rng: &mut Rng, blocks: u64) -> (Vec<u8>, u64) {
    let lba = rng.below(blocks + 16).saturating_sub(rng.below(2) * 8);
    let len = rng.below(9);
    let cdb = match rng.below(8) {
        0 => [
            &[0x28, 0][..],
            &(lba as u32).to_be_bytes(),
            &[0],
            &(len as u16).to_be_bytes(),
            &[0],
        ]
        .concat(),
        1 => [
            &[0x2a, 0][..],
            &(lba as u32).to_be_bytes(),
            &[0],
            &(len as u16).to_be_bytes(),
            &[0],
        ]
        .concat(),
        2 => [
            &[0x88, 0][..],
            &lba.to_be_bytes(),
            &(len as u32).to_be_bytes(),
            &[0, 0],
        ]
        .concat(),
        3 => [
            &[0x8a, 0x08][..],
            &lba.to_be_bytes(),
            &(len as u32).to_be_bytes(),
            &[0, 0],
        ]
        .concat(),
        4 => [
            &[0x2f, 0x02][..],
            &(lba as u32).to_be_bytes(),
            &[0],
            &(len as u16).to_be_bytes(),
            &[0],
        ]
        .concat(),
        5 => [
            &[0x93, [0, 0x08][rng.below(2) as usize]][..],
            &lba.to_be_bytes(),
            &(len as u32).to_be_bytes(),
            &[0, 0],
        ]
        .concat(),
        6 => [
            &[0x89, 0][..],
            &lba.to_be_bytes(),
            &[0, 0, 0, len.min(1) as u8, 0, 0],
        ]
        .concat(),
        _ => vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    (cdb, len)
}

#[test]
fn scsi_commands_stay_inside_their_lun_and_buffers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut input = Vec::new();
        // Mostly past the power-on unit attention (a fresh bus per input reports it to the
        // first command of each LUN): TEST UNIT READY to each first.
        if rng.below(4) != 0 {
            for which in 0..3u8 {
                input.extend_from_slice(&[which, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
        }
        for _ in 0..1 + rng.below(6) {
            let which = rng.below(LUNS.len() as u64);
            let (_, blocks) = LUNS[which as usize];
            let block = block_size(which as usize);
            let (cdb, len) = io_cdb(&mut rng, blocks.max(8));
            let bytes = (len * block) as usize;
            // Buffers of the right size, or a bit short or long.
            let buf =
                (bytes + rng.below(3) as usize * 512).saturating_sub(rng.below(2) as usize * 700);
            input.push(which as u8);
            input.push(cdb.len() as u8);
            input.extend_from_slice(&cdb);
            let writes = matches!(cdb[0], 0x2a | 0x8a | 0x93 | 0x89);
            let (din, dout) = if writes {
                (0, buf.min(65535))
            } else {
                (buf.min(65535), 0)
            };
            input.extend_from_slice(&(din as u16).to_le_bytes());
            input.extend_from_slice(&(dout as u16).to_le_bytes());
            input.extend((0..dout).map(|_| rng.next() as u8));
        }
        vhost_user_scsi_fuzz::scsi_cdb::run(&input);
    }
}

/// The next free slot of at least `len` bytes (at a random offset into it), outside the
/// window [0x7000, 0x9000) around the region boundary.
fn area(next: &mut u64, rng: &mut Rng, len: u64) -> u64 {
    let mut a = *next + rng.below(64);
    if a < 0x9000 && a + len > 0x7000 {
        a = 0x9000 + rng.below(64);
    }
    *next = (a + len + 0x7ff) & !0x7ff;
    a
}

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const DATA: usize = 0x400;
const MEM_END: usize = 0x10000;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

#[test]
fn virtio_requests_touch_only_their_buffers_and_complete_once() {
    virtio_requests(AioMode::Sync, 0x0123_4567_89ab_cdef, 1500);
}

/// The same on the thread pool: completions come back in any order (as on io_uring), and
/// each request must still get exactly one.
#[test]
fn virtio_requests_complete_once_out_of_order() {
    virtio_requests(AioMode::Threads, 0x0fed_cba9_8765_4321, 800);
}

fn virtio_requests(aio: AioMode, seed: u64, rounds: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(seed);
    for _ in 0..rounds {
        let mut mem = vec![0u8; MEM_END];
        let mut table = vec![0u8; 256];
        let mut heads = Vec::new();
        let mut slot = 0u16;
        // Free space handed out in 0x800-byte slots above the data start, so that buffers of
        // different requests never overlap (their writes would then be the other's business);
        // the window around the region boundary is kept for one straddling buffer.
        let mut next_area = DATA as u64;
        let mut straddled = false;
        if rng.below(4) != 0 {
            // Past the power-on unit attention first (see above), one chain per LUN.
            for (target, lun) in [(0u8, 0u8), (0, 1), (1, 0)] {
                let h = area(&mut next_area, &mut rng, 51);
                mem[h as usize..][..8].copy_from_slice(&[1, target, 0, lun, 0, 0, 0, 0]);
                let resp = area(&mut next_area, &mut rng, 108);
                table[16 * usize::from(slot)..][..16].copy_from_slice(&desc(h, 51, NEXT, slot + 1));
                table[16 * usize::from(slot + 1)..][..16]
                    .copy_from_slice(&desc(resp, 108, WRITE, 0));
                heads.push(slot);
                slot += 2;
            }
        }
        for _ in 0..1 + rng.below(4) {
            if slot + 4 > 16 || next_area > (MEM_END - 0x3000) as u64 {
                break;
            }
            let which = rng.below(LUNS.len() as u64) as usize;
            let ((target, lun), blocks) = LUNS[which];
            let block = block_size(which);
            let (cdb, len) = io_cdb(&mut rng, blocks.max(8));
            let writes = matches!(cdb[0], 0x2a | 0x8a | 0x93 | 0x89);
            let data_len = ((len * block).min(0x1800) as u32 + rng.below(3) as u32 * 100)
                .saturating_sub(rng.below(2) as u32 * 300);
            // Header: LUN field, id, task attribute, priority, CRN, 32-byte CDB.
            let mut header = vec![
                1,
                target,
                if lun > 255 { 0x40 } else { 0 },
                lun as u8,
                0,
                0,
                0,
                0,
            ];
            header.extend_from_slice(&rng.next().to_le_bytes());
            header.extend_from_slice(&[0, 0, 0]);
            let mut c = [0u8; 32];
            c[..cdb.len()].copy_from_slice(&cdb);
            header.extend_from_slice(&c);
            let h = area(&mut next_area, &mut rng, 51);
            mem[h as usize..][..51].copy_from_slice(&header);
            let resp = area(&mut next_area, &mut rng, 108);
            let data = if writes || data_len == 0 {
                None
            } else if !straddled && rng.below(3) == 0 {
                // Data-in straddling the boundary between the two guest-memory regions.
                straddled = true;
                Some(0x8000 - u64::from(data_len / 2))
            } else {
                Some(area(&mut next_area, &mut rng, u64::from(data_len)))
            };
            let out = (writes && data_len > 0)
                .then(|| area(&mut next_area, &mut rng, u64::from(data_len)));
            let mut chain = vec![(h, 51, 0)];
            if let Some(o) = out {
                for b in &mut mem[o as usize..][..data_len as usize] {
                    *b = rng.next() as u8;
                }
                chain.push((o, data_len, 0));
            }
            chain.push((resp, 108, WRITE));
            if let Some(d) = data {
                chain.push((d, data_len, WRITE));
            }
            heads.push(slot);
            if rng.below(4) == 0 {
                // Through an indirect table in guest memory.
                let t = area(&mut next_area, &mut rng, 16 * chain.len() as u64);
                for (i, &(a, l, f)) in chain.iter().enumerate() {
                    let f = if i + 1 < chain.len() { f | NEXT } else { f };
                    mem[t as usize + 16 * i..][..16].copy_from_slice(&desc(a, l, f, i as u16 + 1));
                }
                table[16 * usize::from(slot)..][..16].copy_from_slice(&desc(
                    t,
                    16 * chain.len() as u32,
                    INDIRECT,
                    0,
                ));
                slot += 1;
            } else {
                let first = slot;
                for (i, &(a, l, f)) in chain.iter().enumerate() {
                    let f = if i + 1 < chain.len() { f | NEXT } else { f };
                    table[16 * usize::from(slot)..][..16].copy_from_slice(&desc(
                        a,
                        l,
                        f,
                        first + i as u16 + 1,
                    ));
                    slot += 1;
                }
            }
        }
        let mut input = vec![rng.below(2) as u8, heads.len() as u8];
        for i in 0..16 {
            input.extend_from_slice(&heads.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        input.extend_from_slice(&table);
        input.extend_from_slice(&mem[DATA..]);
        vhost_user_scsi_fuzz::virtio_request::run_on(&input, aio);
    }
}
