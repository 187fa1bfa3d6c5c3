//! EXTENDED COPY (LID1) between LUs of the bus and RECEIVE COPY RESULTS.

use super::*;

const WWN_A: u64 = 0x5001_4050_0000_0001;
const WWN_B: u64 = 0x5001_4050_0000_0002;

/// Identification CSCD descriptor (E4h) naming an 8-byte NAA designator, block device.
fn cscd(wwn: u64, block_size: u32) -> Vec<u8> {
    let mut d = vec![0xe4, 0x00, 0, 0, 0x01, 0x03, 0, 8];
    d.extend_from_slice(&wwn.to_be_bytes());
    d.resize(28, 0);
    d.extend_from_slice(&block_size.to_be_bytes());
    d[28] = 0;
    d
}

/// Block → block segment descriptor (02h).
fn segment(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0x02, 0, 0, 0x18];
    d.extend_from_slice(&src.to_be_bytes());
    d.extend_from_slice(&dst.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&blocks.to_be_bytes());
    d.extend_from_slice(&src_lba.to_be_bytes());
    d.extend_from_slice(&dst_lba.to_be_bytes());
    d
}

/// LID1 parameter list.
fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
    let c: Vec<u8> = cscds.concat();
    let s: Vec<u8> = segments.concat();
    let mut p = vec![list_id, usage << 3];
    p.extend_from_slice(&(c.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&(s.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&c);
    p.extend_from_slice(&s);
    p
}

fn xcopy(len: usize) -> Vec<u8> {
    let mut c = vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c.extend_from_slice(&(len as u32).to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn receive_copy_results(sa: u8, list_id: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0x84, sa, list_id, 0, 0, 0, 0, 0, 0, 0];
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// LUs 0:0 (WWN_A) and 0:1 (WWN_B), 1 MiB each, with their power-on attentions consumed.
fn two_lu_bus(b_opts: LunOptions) -> (ScsiBus, Arc<MemBackend>, Arc<MemBackend>) {
    let a = MemBackend::new(1 << 20);
    let b = MemBackend::new(1 << 20);
    b.data.lock().unwrap().fill(0xbb);
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(a.clone(), opts()));
    bus.add_lun(0, 1, LogicalUnit::new(b.clone(), b_opts));
    for lun in [0, 1] {
        assert_sense(&bus.run(0, lun, &TUR, &[], 0).0, 0x06, 0x29, 0x00);
    }
    (bus, a, b)
}

fn b_opts() -> LunOptions {
    LunOptions {
        wwn: WWN_B,
        ..opts()
    }
}

#[test]
fn copies_between_lus_and_reports_the_status() {
    let (bus, a, b) = two_lu_bus(b_opts());
    let p = list(
        7,
        0b00,
        &[cscd(WWN_A, 512), cscd(WWN_B, 512)],
        &[segment(0, 1, 16, 100, 10), segment(0, 1, 8, 0, 1000)],
    );
    // Received by LU 0:1 (the copy manager need not be a source or destination).
    let (out, _) = bus.run(0, 1, &xcopy(p.len()), &p, 0);
    assert_eq!(out, CmdOutput::good(p.len()));
    assert_eq!(b.bytes(10 * 512, 16 * 512), a.bytes(100 * 512, 16 * 512));
    assert_eq!(b.bytes(1000 * 512, 8 * 512), a.bytes(0, 8 * 512));
    assert_eq!(b.bytes(26 * 512, 512), vec![0xbb; 512]);
    assert_eq!(b.bytes(9 * 512, 512), vec![0xbb; 512]);
    // COPY STATUS for list 7 from this nexus on the manager: done, 2 segments, 12 KiB.
    let (out, data) = bus.run(0, 1, &receive_copy_results(0x00, 7, 64), &[], 64);
    assert_eq!(out.status, status::GOOD);
    assert_eq!(
        &data[..12],
        &[0, 0, 0, 8, 0x01, 0, 2, 0x00, 0, 0, 0x30, 0x00]
    );
    // Unknown list identifier; another LU knows nothing of it.
    assert_invalid_cdb(
        &bus.run(0, 1, &receive_copy_results(0, 8, 64), &[], 64).0,
        2,
        Some(7),
    );
    assert_invalid_cdb(
        &bus.cmd(&receive_copy_results(0, 7, 64), &[], 64),
        2,
        Some(7),
    );
    // LIST ID USAGE 11b: not held.
    let p = list(
        0,
        0b11,
        &[cscd(WWN_B, 512), cscd(WWN_A, 512)],
        &[segment(0, 1, 1, 0, 0)],
    );
    assert_eq!(bus.cmd(&xcopy(p.len()), &p, 0).status, status::GOOD);
    assert_eq!(a.bytes(0, 512), vec![0xbb; 512]);
    // A PARAMETER LIST LENGTH of 0 copies nothing and is not an error.
    assert_eq!(bus.cmd(&xcopy(0), &[], 0), CmdOutput::good(0));
}

#[test]
fn operating_parameters() {
    let (bus, _, _) = two_lu_bus(b_opts());
    let mut want = vec![0, 0, 0, 42, 0x01, 0, 0, 0, 0, 16, 0, 64, 0, 0, 0x09, 0x00];
    want.extend_from_slice(&[0x04, 0, 0, 0]); // MAXIMUM SEGMENT LENGTH 64 MiB
    want.extend_from_slice(&[0; 14]);
    want.extend_from_slice(&[0, 16, 16, 9, 0, 0, 0, 0, 0, 2, 0x02, 0xe4]);
    assert_eq!(bus.good(&receive_copy_results(0x03, 0, 255), 255), want);
    assert_eq!(bus.good(&receive_copy_results(0x03, 0, 4), 255), &want[..4]);
    assert_invalid_cdb(
        &bus.cmd(&receive_copy_results(0x04, 0, 64), &[], 64),
        1,
        Some(4),
    );
}

#[test]
fn copy_errors() {
    let (bus, _, b) = two_lu_bus(b_opts());
    let good_cscds = [cscd(WWN_A, 512), cscd(WWN_B, 512)];
    let run = |p: &[u8]| bus.cmd(&xcopy(p.len()), p, 0);
    // A CSCD naming no LU of ours.
    let p = list(
        0,
        3,
        &[cscd(WWN_A, 512), cscd(0x5000_dead, 512)],
        &[segment(0, 1, 1, 0, 0)],
    );
    assert_sense(&run(&p), 0x0a, 0x0d, 0x02);
    // Unsupported CSCD and segment descriptor types, with the field pointer.
    let mut bad = cscd(WWN_A, 512);
    bad[0] = 0xe0;
    let p = list(0, 3, &[bad, cscd(WWN_B, 512)], &[segment(0, 1, 1, 0, 0)]);
    let out = run(&p);
    assert_sense(&out, 0x05, 0x26, 0x07);
    assert_eq!(&out.sense[15..18], &[0x8f, 0, 16]);
    let mut seg = segment(0, 1, 1, 0, 0);
    seg[0] = 0x0a;
    let p = list(0, 3, &good_cscds, &[seg]);
    assert_sense(&run(&p), 0x05, 0x26, 0x09);
    // CSCD index out of the list; DISK BLOCK LENGTH that is not the LU's.
    let p = list(0, 3, &good_cscds, &[segment(0, 2, 1, 0, 0)]);
    assert_invalid_param(&run(&p), 16 + 64 + 6, Some(7));
    let p = list(
        0,
        3,
        &[cscd(WWN_A, 512), cscd(WWN_B, 4096)],
        &[segment(0, 1, 1, 0, 0)],
    );
    assert_invalid_param(&run(&p), 16 + 32 + 29, Some(7));
    // LBA ranges of the source and of the destination.
    let p = list(0, 3, &good_cscds, &[segment(0, 1, 2, 2047, 0)]);
    assert_sense(&run(&p), 0x05, 0x21, 0x00);
    let p = list(0, 3, &good_cscds, &[segment(0, 1, 2, 0, 2047)]);
    assert_sense(&run(&p), 0x05, 0x21, 0x00);
    // Overlapping ranges of one LU.
    let p = list(0, 3, &good_cscds, &[segment(1, 1, 8, 0, 4)]);
    assert_sense(&run(&p), 0x05, 0x26, 0x0c);
    // Structure: lengths that disagree, inline data, too many descriptors, LID1 only,
    // LIST ID USAGE 01b and 11b with an identifier, a short buffer.
    let mut p = list(0, 3, &good_cscds, &[segment(0, 1, 1, 0, 0)]);
    assert_sense(&bus.cmd(&xcopy(p.len() - 1), &p, 0), 0x05, 0x1a, 0x00);
    assert_sense(&bus.cmd(&xcopy(8), &p, 0), 0x05, 0x1a, 0x00);
    p[15] = 1;
    assert_sense(&run(&p), 0x05, 0x26, 0x0b);
    let many: Vec<Vec<u8>> = (0..17).map(|_| cscd(WWN_A, 512)).collect();
    assert_sense(&run(&list(0, 3, &many, &[])), 0x05, 0x26, 0x06);
    let segs: Vec<Vec<u8>> = (0..65).map(|_| segment(0, 1, 1, 0, 0)).collect();
    assert_sense(&run(&list(0, 3, &good_cscds, &segs)), 0x05, 0x26, 0x08);
    let mut lid4 = xcopy(64);
    lid4[1] = 0x01;
    assert_invalid_cdb(&bus.cmd(&lid4, &[0; 64], 0), 1, Some(4));
    let p = list(0, 1, &good_cscds, &[segment(0, 1, 1, 0, 0)]);
    assert_invalid_param(&run(&p), 1, Some(4));
    let p = list(5, 3, &good_cscds, &[segment(0, 1, 1, 0, 0)]);
    assert_invalid_param(&run(&p), 0, Some(7));
    let p = list(0, 3, &good_cscds, &[segment(0, 1, 1, 0, 0)]);
    assert_invalid_cdb(&bus.cmd(&xcopy(p.len()), &p[..20], 0), 10, Some(7));
    // Nothing was written by any of these.
    assert_eq!(b.bytes(0, 1 << 20), vec![0xbb; 1 << 20]);
}

#[test]
fn a_failed_copy_is_reported_failed() {
    let (bus, _, b) = two_lu_bus(b_opts());
    *b.write_errno.lock().unwrap() = Some(libc::EIO);
    let p = list(
        3,
        0,
        &[cscd(WWN_A, 512), cscd(WWN_B, 512)],
        &[segment(0, 0, 1, 0, 9), segment(0, 1, 4, 0, 20)],
    );
    // The second segment fails on the destination: WRITE ERROR with its first LBA.
    let out = bus.cmd(&xcopy(p.len()), &p, 0);
    assert_sense(&out, 0x03, 0x0c, 0x00);
    assert_eq!(&out.sense[3..7], &20u32.to_be_bytes());
    let data = bus.good(&receive_copy_results(0, 3, 12), 12);
    assert_eq!(data, [0, 0, 0, 8, 0x02, 0, 1, 0, 0, 0, 0x02, 0x00]);
}

#[test]
fn copies_respect_read_only_stopped_and_reservations() {
    let seg = |p: &[Vec<u8>]| list(0, 3, p, &[segment(0, 1, 1, 0, 0)]);
    let a_to_b = seg(&[cscd(WWN_A, 512), cscd(WWN_B, 512)]);
    let b_to_a = seg(&[cscd(WWN_B, 512), cscd(WWN_A, 512)]);
    // Read-only destination: DATA PROTECT; as a source it is fine.
    let (bus, a, _) = two_lu_bus(LunOptions {
        read_only: true,
        ..b_opts()
    });
    assert_sense(&bus.cmd(&xcopy(a_to_b.len()), &a_to_b, 0), 0x07, 0x27, 0x00);
    assert_eq!(
        bus.cmd(&xcopy(b_to_a.len()), &b_to_a, 0).status,
        status::GOOD
    );
    assert_eq!(a.bytes(0, 512), vec![0xbb; 512]);
    // A stopped destination.
    let (bus, _, _) = two_lu_bus(b_opts());
    assert_eq!(
        bus.run(0, 1, &[0x1b, 0, 0, 0, 0, 0], &[], 0).0.status,
        status::GOOD
    );
    assert_sense(&bus.cmd(&xcopy(a_to_b.len()), &a_to_b, 0), 0x02, 0x04, 0x02);
    // A Write Exclusive reservation of another nexus on the destination: RESERVATION
    // CONFLICT for our nexus; reading from it is still allowed.
    let (bus, _, b) = two_lu_bus(b_opts());
    let on_b = |nexus: u32, cdb: &[u8], data: &[u8]| {
        bus.execute_as(nexus, 0, 1, cdb, &sg(data), &SgList::new())
    };
    assert_sense(&on_b(1, &TUR, &[]), 0x06, 0x29, 0x00);
    let register = vus_test_support::cdb::pr_out(0, 0, 24);
    let params = vus_test_support::cdb::pr_out_params(0, 0x1234, 0);
    assert_eq!(on_b(1, &register, &params).status, status::GOOD);
    let reserve = vus_test_support::cdb::pr_out(1, 1, 24);
    let params = vus_test_support::cdb::pr_out_params(0x1234, 0, 0);
    assert_eq!(on_b(1, &reserve, &params).status, status::GOOD);
    assert_eq!(
        bus.cmd(&xcopy(a_to_b.len()), &a_to_b, 0).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(b.bytes(0, 512), vec![0xbb; 512]);
    assert_eq!(
        bus.cmd(&xcopy(b_to_a.len()), &b_to_a, 0).status,
        status::GOOD
    );
    // The reservation holder's own nexus may copy into it.
    let (out, _) = with_buffers(&a_to_b, 0, |dout, din| {
        bus.execute_as(1, 0, 0, &xcopy(a_to_b.len()), dout, din)
    });
    assert_sense(&out, 0x06, 0x29, 0x00); // nexus 1's first command on LU 0
    let (out, _) = with_buffers(&a_to_b, 0, |dout, din| {
        bus.execute_as(1, 0, 0, &xcopy(a_to_b.len()), dout, din)
    });
    assert_eq!(out.status, status::GOOD);
}

/// A data-out list over a copy of `data`, leaked for the test's lifetime.
fn sg(data: &[u8]) -> SgList<'static> {
    let buf: &'static mut [u8] = Box::leak(data.to_vec().into_boxed_slice());
    let mut l = SgList::new();
    l.push(vm_memory::VolatileSlice::from(buf));
    l
}

/// Between image files the kernel copies (copy_file_range), with the same result.
#[test]
fn copies_between_image_files() {
    use std::os::unix::fs::FileExt;
    let fa = tempfile::tempfile().unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8).collect();
    fa.write_all_at(&data, 0).unwrap();
    let fb = tempfile::tempfile().unwrap();
    fb.set_len(1 << 20).unwrap();
    let fb_read = fb.try_clone().unwrap();
    let mut bus = ScsiBus::new();
    let file_lu = |f, wwn| {
        let backend = crate::block::FileBackend::new(f, false).unwrap();
        LogicalUnit::new(Arc::new(backend), LunOptions { wwn, ..opts() })
    };
    bus.add_lun(0, 0, file_lu(fa, WWN_A));
    bus.add_lun(0, 1, file_lu(fb, WWN_B));
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x29, 0x00);
    let p = list(
        0,
        3,
        &[cscd(WWN_A, 512), cscd(WWN_B, 512)],
        &[segment(0, 1, 2048, 0, 0)],
    );
    assert_eq!(bus.cmd(&xcopy(p.len()), &p, 0).status, status::GOOD);
    let mut got = vec![0u8; 1 << 20];
    fb_read.read_exact_at(&mut got, 0).unwrap();
    assert!(got == data);
}
