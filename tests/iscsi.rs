//! The iSCSI initiator against a real `tgtd` (Debian package `tgt`) on 127.0.0.1, with file-backed
//! LUNs. Each test starts its own tgtd on a free port with a private control port, and checks the
//! data against the backing file.
//!
//! If tgtd is not installed or cannot start, each test prints `SKIPPED: ...` and returns.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost_user_scsi::iscsi::login::{
    self, Chap, DigestPolicy, LoginConfig, LoginError, Secret, SessionParams,
};
use vhost_user_scsi::iscsi::recovery::{self, Backoff};
use vhost_user_scsi::iscsi::session::{Data, DataRef, Residual, Session, SessionError, TaskError};

use vus_test_support::tgtd::{free_port, Tgtd, BLOCK, LUN_SIZE};

const INITIATOR: &str = "iqn.2026-01.org.vhost-user-scsi:test-initiator";
const TIMEOUT: Duration = Duration::from_secs(10);

fn cfg(target: &str) -> LoginConfig {
    LoginConfig::new(INITIATOR, Some(target.to_string()))
}

fn connect_session(t: &Tgtd, cfg: &LoginConfig) -> Session<TcpStream> {
    let (s, p) = login::login_tcp(t.addr(), cfg, TIMEOUT, 0, &|_| false).expect("login");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = Session::new(s, p).expect("session");
    clear_unit_attention(&mut s);
    s
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

const SYNC_CACHE10: [u8; 10] = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn file_bytes(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, off).unwrap();
    v
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Consumes the unit attention a fresh I_T nexus gets (power on / reset), then expects GOOD.
fn clear_unit_attention(s: &mut Session<TcpStream>) {
    for _ in 0..4 {
        let r = s.submit(1, &[0u8; 6], DataRef::None).unwrap();
        if r.status == 0 {
            return;
        }
        assert_eq!(
            (r.status, r.sense[2] & 0xf),
            (2, 6),
            "not a unit attention: {r:?}"
        );
    }
    panic!("unit attention does not clear");
}

/// Writes `data` at `lba`, syncs, checks the backing file, reads back through iSCSI.
fn write_verify(s: &mut Session<TcpStream>, path: &Path, lba: u32, data: &[u8]) {
    let blocks = (data.len() / BLOCK) as u16;
    let r = s
        .submit(1, &write10(lba, blocks), DataRef::Out(data))
        .unwrap();
    assert_eq!((r.status, r.residual), (0, Residual::None), "{r:?}");
    let r = s.submit(1, &SYNC_CACHE10, DataRef::None).unwrap();
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        file_bytes(path, lba as u64 * BLOCK as u64, data.len()) == data,
        "backing file differs after a write of {} bytes at LBA {lba}",
        data.len()
    );
    let mut back = vec![0u8; data.len()];
    let r = s
        .submit(1, &read10(lba, blocks), DataRef::In(&mut back))
        .unwrap();
    assert_eq!((r.status, r.data_in_len), (0, data.len()), "{r:?}");
    assert!(
        back == data,
        "read back differs ({} bytes at LBA {lba})",
        data.len()
    );
}

/// Reads and writes of many sizes, from one block to several MaxBurstLengths.
fn io_sizes(s: &mut Session<TcpStream>, path: &Path) {
    // First, a read of data put into the file behind tgtd's back.
    let mut buf = vec![0u8; 64 * 1024];
    let r = s
        .submit(1, &read10(100, 128), DataRef::In(&mut buf))
        .unwrap();
    assert_eq!(r.status, 0);
    assert!(buf == file_bytes(path, 100 * BLOCK as u64, buf.len()));
    let mut lba = 0u32;
    for (i, blocks) in [1usize, 2, 7, 8, 16, 31, 64, 129, 256, 512, 1000, 2048, 4096]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u32 + 1, blocks * BLOCK);
        write_verify(s, path, lba, &data);
        lba += blocks as u32;
    }
}

#[test]
fn discovery_lists_targets() {
    let Some(mut t) = Tgtd::start("discovery_lists_targets") else {
        return;
    };
    t.add_target(1, "iqn.2026-01.test:disc-a");
    t.add_target(2, "iqn.2026-01.test:disc-b");
    let found = login::discover(t.addr(), &LoginConfig::new(INITIATOR, None), TIMEOUT).unwrap();
    let mut names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["iqn.2026-01.test:disc-a", "iqn.2026-01.test:disc-b"]
    );
    for d in &found {
        assert!(
            d.addresses
                .iter()
                .any(|a| a.starts_with(&format!("127.0.0.1:{},", t.port))),
            "{d:?}"
        );
    }
}

/// A SendTargets answer longer than our MaxRecvDataSegmentLength arrives in several Text
/// Responses (C bit) that the initiator asks for and reassembles.
#[test]
fn discovery_with_continuation() {
    let Some(mut t) = Tgtd::start("discovery_with_continuation") else {
        return;
    };
    let names: Vec<String> = (1..=40)
        .map(|i| format!("iqn.2026-01.test:a-rather-long-target-name-to-fill-the-segment-{i:03}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        t.add_bare_target(i as u32 + 1, n);
    }
    let mut c = LoginConfig::new(INITIATOR, None);
    c.max_recv_data_segment_length = 512;
    let found = login::discover(t.addr(), &c, TIMEOUT).unwrap();
    let mut got: Vec<String> = found.into_iter().map(|d| d.name).collect();
    got.sort();
    assert_eq!(got, names);
}

#[test]
fn login_without_chap_and_io_of_all_sizes() {
    let Some(mut t) = Tgtd::start("login_without_chap_and_io_of_all_sizes") else {
        return;
    };
    let iqn = "iqn.2026-01.test:plain";
    let path = t.add_target(1, iqn);
    let mut s = connect_session(&t, &cfg(iqn));
    let p = s.params().clone();
    assert!(p.tsih != 0 && !p.header_digest && !p.data_digest, "{p:?}");
    // TEST UNIT READY reports the power-on unit attention first, then GOOD.
    clear_unit_attention(&mut s);
    // READ CAPACITY(10).
    let mut cap = [0u8; 8];
    let r = s
        .submit(1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], DataRef::In(&mut cap))
        .unwrap();
    assert_eq!(r.status, 0);
    assert_eq!(
        u32::from_be_bytes(cap[..4].try_into().unwrap()) as u64 + 1,
        LUN_SIZE / BLOCK as u64
    );
    assert_eq!(u32::from_be_bytes(cap[4..].try_into().unwrap()), 512);
    io_sizes(&mut s, &path);
    s.ping().unwrap();
    let l = s.logout().unwrap();
    assert_eq!(l.response, 0);
    assert!(matches!(s.ping(), Err(SessionError::Failed)));
}

#[test]
fn check_condition_sense_and_residuals() {
    let Some(mut t) = Tgtd::start("check_condition_sense_and_residuals") else {
        return;
    };
    let iqn = "iqn.2026-01.test:sense";
    t.add_target(1, iqn);
    let mut s = connect_session(&t, &cfg(iqn));
    // A read beyond the end: CHECK CONDITION, ILLEGAL REQUEST, LBA OUT OF RANGE (0x21).
    let mut buf = vec![0u8; BLOCK];
    let r = s
        .submit(
            1,
            &read16(LUN_SIZE / BLOCK as u64, 1),
            DataRef::In(&mut buf),
        )
        .unwrap();
    assert_eq!(r.status, 2, "{r:?}");
    assert!(r.sense.len() >= 14, "{r:?}");
    assert_eq!(r.sense[2] & 0xf, 5, "sense key: {r:?}");
    assert_eq!(r.sense[12], 0x21, "ASC: {r:?}");
    // INQUIRY with a 255-byte allocation length: the target sends less, reported as underflow.
    let mut inq = vec![0u8; 255];
    let r = s
        .submit(1, &[0x12, 0, 0, 0, 255, 0], DataRef::In(&mut inq))
        .unwrap();
    assert_eq!(r.status, 0);
    let Residual::Underflow(n) = r.residual else {
        panic!("expected an underflow: {r:?}")
    };
    assert_eq!(r.data_in_len + n as usize, 255);
    assert_eq!(inq[0] & 0x1f, 0, "disk");
    // A read of more than the CDB asks for: the target reports the excess as underflow.
    let mut big = vec![0u8; 4 * BLOCK];
    let r = s.submit(1, &read10(0, 2), DataRef::In(&mut big)).unwrap();
    assert_eq!(
        (r.status, r.residual),
        (0, Residual::Underflow(2 * BLOCK as u32))
    );
    assert_eq!(r.data_in_len, 2 * BLOCK);
    // A 32-byte CDB travels in an Extended CDB AHS: READ(32) of one block.
    let mut cdb = [0u8; 32];
    cdb[0] = 0x7f;
    cdb[7] = 0x18; // additional CDB length
    cdb[9] = 0x09; // service action READ(32)
    cdb[19] = 3; // LBA 3
    cdb[31] = 1; // one block
    let mut one = vec![0u8; BLOCK];
    // tgtd takes the AHS and answers INVALID COMMAND OPERATION CODE (it has no READ(32)).
    let r = s.submit(1, &cdb, DataRef::In(&mut one)).unwrap();
    assert_eq!(
        (r.status, r.sense[2] & 0xf, r.sense[12]),
        (2, 5, 0x20),
        "{r:?}"
    );
    // Unknown LUN: LOGICAL UNIT NOT SUPPORTED.
    let r = s.submit(7, &[0u8; 6], DataRef::None).unwrap();
    assert_eq!(r.status, 2, "{r:?}");
    assert_eq!(r.sense[12], 0x25, "{r:?}");
    s.logout().unwrap();
}

#[test]
fn chap_login_and_wrong_secret() {
    let Some(mut t) = Tgtd::start("chap_login_and_wrong_secret") else {
        return;
    };
    let iqn = "iqn.2026-01.test:chap";
    let path = t.add_target(1, iqn);
    t.add_account(1, "alice", "alice-secret-123", false);

    // Without credentials: refused with an authentication/authorization failure.
    let e = login::login_tcp(t.addr(), &cfg(iqn), TIMEOUT, 0, &|_| false).unwrap_err();
    println!("no credentials -> {e}");
    assert!(e.is_auth_failure(), "{e}");
    assert!(e.to_string().contains("no CHAP credentials"), "{e}");

    // Wrong secret: a clear error that does not contain the secret.
    let mut c = cfg(iqn);
    c.chap = Some(Chap {
        user: "alice".into(),
        secret: Secret::new(b"not-the-secret-xyz".to_vec()),
    });
    let e = login::login_tcp(t.addr(), &c, TIMEOUT, 0, &|_| false).unwrap_err();
    let msg = format!("{e} / {e:?}");
    println!("wrong secret -> {e}");
    assert!(e.is_auth_failure(), "{msg}");
    assert!(msg.contains("authentication"), "{msg}");
    assert!(!msg.contains("not-the-secret"), "{msg}");

    // Right secret.
    c.chap = Some(Chap {
        user: "alice".into(),
        secret: Secret::new(b"alice-secret-123".to_vec()),
    });
    let mut s = connect_session(&t, &c);
    let data = pattern(77, 16 * BLOCK);
    write_verify(&mut s, &path, 10, &data);
    s.logout().unwrap();
}

#[test]
fn mutual_chap() {
    let Some(mut t) = Tgtd::start("mutual_chap") else {
        return;
    };
    let iqn = "iqn.2026-01.test:mutual";
    let path = t.add_target(1, iqn);
    t.add_account(1, "bob", "bob-secret-4567", false);
    t.add_account(1, "tgt-user", "target-secret-89", true);
    let mut c = cfg(iqn);
    c.chap = Some(Chap {
        user: "bob".into(),
        secret: Secret::new(b"bob-secret-4567".to_vec()),
    });
    c.mutual_chap = Some(Chap {
        user: "tgt-user".into(),
        secret: Secret::new(b"target-secret-89".to_vec()),
    });
    let mut s = connect_session(&t, &c);
    write_verify(&mut s, &path, 0, &pattern(5, 8 * BLOCK));
    s.logout().unwrap();

    // The target proves a different secret than we expect: we refuse it.
    let mut bad = c.clone();
    bad.mutual_chap = Some(Chap {
        user: "tgt-user".into(),
        secret: Secret::new(b"other-target-secret".to_vec()),
    });
    let e = login::login_tcp(t.addr(), &bad, TIMEOUT, 0, &|_| false).unwrap_err();
    println!("wrong target secret -> {e}");
    assert!(matches!(e, LoginError::Auth(_)), "{e}");
    assert!(!format!("{e:?}").contains("other-target-secret"));
}

#[test]
fn digests_crc32c() {
    let Some(mut t) = Tgtd::start("digests_crc32c") else {
        return;
    };
    let iqn = "iqn.2026-01.test:digest";
    let path = t.add_target(1, iqn);
    // Required digests the target will not do: a clear negotiation error.
    let mut c = cfg(iqn);
    c.header_digest = DigestPolicy::Crc32c;
    let e = login::login_tcp(t.addr(), &c, TIMEOUT, 0, &|_| false).unwrap_err();
    println!("CRC32C refused -> {e}");
    assert!(
        matches!(e, LoginError::Negotiation(ref m) if m.contains("HeaderDigest")),
        "{e}"
    );
    // tgtd only agrees to digests listed in its target parameters (default None).
    t.set_param(1, "HeaderDigest", "CRC32C,None");
    t.set_param(1, "DataDigest", "CRC32C,None");
    let mut c = cfg(iqn);
    c.header_digest = DigestPolicy::Crc32c;
    c.data_digest = DigestPolicy::Crc32c;
    let mut s = connect_session(&t, &c);
    assert!(s.params().header_digest && s.params().data_digest);
    io_sizes(&mut s, &path);
    s.ping().unwrap();
    s.logout().unwrap();
}

/// Small bursts on the target force the R2T path: transfers far beyond FirstBurstLength and
/// MaxBurstLength, Data-Out PDUs bounded by the target's MaxRecvDataSegmentLength.
#[test]
fn r2t_small_bursts() {
    let Some(mut t) = Tgtd::start("r2t_small_bursts") else {
        return;
    };
    let iqn = "iqn.2026-01.test:r2t";
    let path = t.add_target(1, iqn);
    t.set_param(1, "MaxBurstLength", "16384");
    t.set_param(1, "FirstBurstLength", "8192");
    t.set_param(1, "MaxRecvDataSegmentLength", "4096");
    t.set_param(1, "InitialR2T", "No");
    t.set_param(1, "HeaderDigest", "CRC32C,None");
    t.set_param(1, "DataDigest", "CRC32C,None");
    for (imm, initial_r2t, digests) in [
        (true, false, false),
        (false, true, true),
        (true, true, false),
    ] {
        let mut c = cfg(iqn);
        c.immediate_data = imm;
        c.initial_r2t = initial_r2t;
        if digests {
            c.header_digest = DigestPolicy::Crc32c;
            c.data_digest = DigestPolicy::Crc32c;
        }
        let mut s = connect_session(&t, &c);
        let p = s.params().clone();
        assert_eq!(p.max_burst_length, 16384, "{p:?}");
        assert_eq!(p.first_burst_length, 8192, "{p:?}");
        assert_eq!(p.max_send_data_segment_length, 4096, "{p:?}");
        assert_eq!(p.immediate_data, imm);
        assert_eq!(p.initial_r2t, initial_r2t);
        io_sizes(&mut s, &path);
        let st = s.stats();
        println!("imm={imm} initial_r2t={initial_r2t}: {st:?}");
        assert!(
            st.r2ts > 0 && st.solicited_data_out_pdus >= st.r2ts,
            "{st:?}"
        );
        assert_eq!(st.immediate_data_bytes > 0, imm, "{st:?}");
        assert_eq!(st.unsolicited_data_out_pdus > 0, !initial_r2t, "{st:?}");
        s.logout().unwrap();
    }
}

/// tgtd pings idle initiators (NOP-In with a target transfer tag) and drops them after
/// `nop_count` unanswered pings: an idle session that answers stays up and usable.
#[test]
fn target_pings_are_answered() {
    let Some(mut t) = Tgtd::start_with("target_pings_are_answered", ",nop_interval=1,nop_count=2")
    else {
        return;
    };
    let iqn = "iqn.2026-01.test:nop";
    let path = t.add_target(1, iqn);
    let mut s = connect_session(&t, &cfg(iqn));
    s.stream()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match s.receive_one() {
            Ok(()) | Err(SessionError::Idle) => {}
            Err(e) => panic!("idle session failed: {e}"),
        }
    }
    let st = s.stats();
    println!("{st:?}");
    assert!(st.target_pings_answered >= 2, "{st:?}");
    s.stream()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Our own keepalive ping, then I/O.
    s.ping().unwrap();
    write_verify(&mut s, &path, 8, &pattern(21, 4 * BLOCK));
    s.logout().unwrap();
}

/// Many commands in flight at once, completing in any order, within the CmdSN window.
#[test]
fn many_commands_outstanding() {
    let Some(mut t) = Tgtd::start("many_commands_outstanding") else {
        return;
    };
    let iqn = "iqn.2026-01.test:queue";
    let path = t.add_target(1, iqn);
    t.set_param(1, "MaxBurstLength", "65536");
    let mut s: Session<TcpStream> = connect_session(&t, &cfg(iqn));
    let window = s.params().max_cmd_sn.wrapping_sub(s.params().cmd_sn) + 1;
    println!("initial CmdSN window: {window}");
    const N: usize = 200;
    let size = 16 * BLOCK * 4; // 32 KiB each
    let mut tags = Vec::new();
    let mut max_outstanding = 0;
    for i in 0..N {
        let data = pattern(1000 + i as u32, size);
        let lba = (i * size / BLOCK) as u32;
        tags.push(
            s.start(1, &write10(lba, (size / BLOCK) as u16), Data::Out(data))
                .unwrap(),
        );
        max_outstanding = max_outstanding.max(s.outstanding());
    }
    let mut done = 0;
    while let Some(c) = s.poll().unwrap() {
        assert_eq!(c.outcome.unwrap().status, 0);
        assert!(tags.contains(&c.tag));
        done += 1;
    }
    assert_eq!(done, N);
    println!("max outstanding: {max_outstanding}");
    assert!(max_outstanding > 1, "commands were not pipelined");
    s.submit(1, &SYNC_CACHE10, DataRef::None).unwrap();
    // Read everything back, pipelined too, and compare with the file and the patterns.
    let mut reads = std::collections::HashMap::new();
    for i in 0..N {
        let lba = (i * size / BLOCK) as u32;
        let tag = s
            .start(
                1,
                &read10(lba, (size / BLOCK) as u16),
                Data::In(vec![0u8; size]),
            )
            .unwrap();
        reads.insert(tag, i);
    }
    let mut got = 0;
    while let Some(c) = s.poll().unwrap() {
        let i = reads[&c.tag];
        let r = c.outcome.unwrap();
        assert_eq!((r.status, r.data_in_len), (0, size));
        let buf = c.buffer.unwrap();
        assert!(buf == pattern(1000 + i as u32, size), "read {i} differs");
        got += 1;
    }
    assert_eq!(got, N);
    assert!(file_bytes(&path, 0, size) == pattern(1000, size));
    assert!(file_bytes(&path, ((N - 1) * size) as u64, size) == pattern(1000 + N as u32 - 1, size));
    s.logout().unwrap();
}

/// Large reads and writes in flight together: while the initiator is busy sending a write burst
/// the target is sending Data-In for reads; neither side may stall the other.
#[test]
fn mixed_large_reads_and_writes_in_flight() {
    let Some(mut t) = Tgtd::start("mixed_large_reads_and_writes_in_flight") else {
        return;
    };
    let iqn = "iqn.2026-01.test:mixed";
    let path = t.add_target(1, iqn);
    t.set_param(1, "MaxRecvDataSegmentLength", "262144");
    let mut s: Session<TcpStream> = connect_session(&t, &cfg(iqn));
    const CHUNK: usize = 256 * 1024;
    let blocks = (CHUNK / BLOCK) as u16;
    let slots = (LUN_SIZE as usize / CHUNK) as u32; // 32
                                                    // Even slots are written (each round the same data: concurrent SIMPLE writes to one LBA
                                                    // may complete in any order), odd slots are read (their original pattern is known).
    let original: Vec<u8> = file_bytes(&path, 0, LUN_SIZE as usize);
    let mut kinds = std::collections::HashMap::new();
    for _ in 0..4u32 {
        for slot in 0..slots {
            let lba = slot * blocks as u32;
            if slot % 2 == 0 {
                let tag = s
                    .start(
                        1,
                        &write10(lba, blocks),
                        Data::Out(pattern(1000 + slot, CHUNK)),
                    )
                    .unwrap();
                kinds.insert(tag, (slot, true));
            } else {
                let tag = s
                    .start(1, &read10(lba, blocks), Data::In(vec![0u8; CHUNK]))
                    .unwrap();
                kinds.insert(tag, (slot, false));
            }
        }
    }
    let mut n = 0;
    while let Some(c) = s.poll().unwrap() {
        let (slot, write) = kinds[&c.tag];
        assert_eq!(c.outcome.unwrap().status, 0);
        if !write {
            let off = slot as usize * CHUNK;
            assert!(
                c.buffer.unwrap() == original[off..off + CHUNK],
                "read of slot {slot}"
            );
        }
        n += 1;
    }
    assert_eq!(n, 4 * slots);
    println!("{:?}", s.stats());
    s.submit(1, &SYNC_CACHE10, DataRef::None).unwrap();
    for slot in (0..slots).step_by(2) {
        let got = file_bytes(&path, slot as u64 * CHUNK as u64, CHUNK);
        assert!(got == pattern(1000 + slot, CHUNK), "write of slot {slot}");
    }
    s.logout().unwrap();
}

#[test]
fn task_management() {
    let Some(mut t) = Tgtd::start("task_management") else {
        return;
    };
    let iqn = "iqn.2026-01.test:tmf";
    let path = t.add_target(1, iqn);
    let mut s: Session<TcpStream> = connect_session(&t, &cfg(iqn));
    // LUN RESET with nothing in flight: function complete.
    assert_eq!(s.lun_reset(1).unwrap(), 0);
    // After a reset the LUN reports a unit attention, then works.
    clear_unit_attention(&mut s);
    // LUN RESET with commands in flight: each one either completed or was terminated.
    let mut tags = Vec::new();
    for i in 0..16u32 {
        tags.push(
            s.start(1, &read10(i * 256, 256), Data::In(vec![0u8; 256 * BLOCK]))
                .unwrap(),
        );
    }
    assert_eq!(s.lun_reset(1).unwrap(), 0);
    assert_eq!(
        s.outstanding(),
        0,
        "every task must be accounted for after a LUN reset"
    );
    let mut seen = 0;
    while let Some(c) = s.poll().unwrap() {
        assert!(tags.contains(&c.tag));
        match c.outcome {
            Ok(r) => assert!(r.status == 0 || r.status == 2, "{r:?}"),
            Err(e) => assert_eq!(e, TaskError::Aborted),
        }
        seen += 1;
    }
    assert_eq!(seen, tags.len());
    // ABORT TASK of a command: either aborted or already done; the session goes on.
    let tag = s
        .start(1, &read10(0, 2048), Data::In(vec![0u8; 2048 * BLOCK]))
        .unwrap();
    let resp = s.abort_task(tag).unwrap();
    assert!(resp == 0 || resp == 1, "TMF response {resp}");
    let c = s.poll().unwrap().expect("the aborted task completes");
    assert_eq!(c.tag, tag);
    // Still usable (clear the reset's unit attention).
    clear_unit_attention(&mut s);
    write_verify(&mut s, &path, 5000, &pattern(9, 4 * BLOCK));
    s.logout().unwrap();
}

/// The split the daemon uses: one party logs in and serialises the parameters; another
/// continues the full feature phase on the same connection from the parameters alone.
#[test]
fn session_handover_after_login() {
    let Some(mut t) = Tgtd::start("session_handover_after_login") else {
        return;
    };
    let iqn = "iqn.2026-01.test:handover";
    let path = t.add_target(1, iqn);
    t.add_account(1, "carol", "carol-secret-42", false);
    let mut c = cfg(iqn);
    c.chap = Some(Chap {
        user: "carol".into(),
        secret: Secret::new(b"carol-secret-42".to_vec()),
    });
    c.header_digest = DigestPolicy::PreferCrc32c;
    let (stream, params) = login::login_tcp(t.addr(), &c, TIMEOUT, 0, &|_| false).unwrap();
    // The supervisor checks the LUN before handing the connection over (a missing LUN is a
    // start-up error there), then takes the stream and the advanced sequence numbers back.
    let mut check: Session<TcpStream> = Session::new(stream, params).unwrap();
    clear_unit_attention(&mut check);
    let mut cap = [0u8; 8];
    let r = check
        .submit(1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], DataRef::In(&mut cap))
        .unwrap();
    assert_eq!(r.status, 0);
    let r = check.submit(3, &[0u8; 6], DataRef::None).unwrap();
    assert_eq!((r.status, r.sense[12]), (2, 0x25), "LUN 3 does not exist");
    let (stream, params) = check.into_parts().unwrap();
    let msg = params.encode();
    assert!(!String::from_utf8_lossy(&msg).contains("carol-secret"));
    drop(c);
    let fd: std::os::fd::OwnedFd = stream.into();
    let worker = std::thread::spawn(move || {
        let params = SessionParams::decode(&msg).unwrap();
        let stream = TcpStream::from(fd);
        let mut s: Session<TcpStream> = Session::new(stream, params).unwrap();
        write_verify(&mut s, &path, 64, &pattern(3, 64 * BLOCK));
        s.logout().unwrap();
    });
    worker.join().unwrap();
}

#[test]
fn login_redirection() {
    let Some(mut a) = Tgtd::start("login_redirection") else {
        return;
    };
    let Some(mut b) = Tgtd::start("login_redirection") else {
        return;
    };
    let iqn = "iqn.2026-01.test:moved";
    a.add_target(1, iqn);
    let path_b = b.add_target(1, iqn);
    // tgtd skips the redirect when the redirect address equals the initiator's address
    // (both 127.0.0.1 here): give it the IPv4-mapped spelling, which it compares as different
    // and which the initiator maps back to 127.0.0.1.
    a.set_param(1, "RedirectAddress", "[::ffff:127.0.0.1]");
    a.set_param(1, "RedirectPort", &b.port.to_string());
    a.set_param(1, "RedirectReason", "Temporary");
    // Not allowed by the caller's policy: refused with the address named.
    let e = login::login_tcp(a.addr(), &cfg(iqn), TIMEOUT, 2, &|_| false).unwrap_err();
    assert!(
        matches!(e, LoginError::RedirectNotAllowed(ref s) if s.contains(&b.port.to_string())),
        "{e}"
    );
    // Allowed: the login lands on the second target.
    let allowed = b.addr();
    let (s, p) = login::login_tcp(a.addr(), &cfg(iqn), TIMEOUT, 2, &|x| *x == allowed).unwrap();
    assert_eq!(s.peer_addr().unwrap(), b.addr());
    let mut s: Session<TcpStream> = Session::new(s, p).unwrap();
    clear_unit_attention(&mut s);
    write_verify(&mut s, &path_b, 1, &pattern(11, 2 * BLOCK));
    s.logout().unwrap();
}

#[test]
fn unknown_target_is_a_clear_error() {
    let Some(mut t) = Tgtd::start("unknown_target_is_a_clear_error") else {
        return;
    };
    t.add_target(1, "iqn.2026-01.test:exists");
    let e = login::login_tcp(
        t.addr(),
        &cfg("iqn.2026-01.test:missing"),
        TIMEOUT,
        0,
        &|_| false,
    )
    .unwrap_err();
    println!("unknown target -> {e}");
    assert!(
        matches!(
            e,
            LoginError::Refused {
                class: 2,
                detail: 3
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not found"));
    // Nothing listening: a connect error naming the portal.
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let e = login::login_tcp(addr, &cfg("iqn.x"), TIMEOUT, 0, &|_| false).unwrap_err();
    assert!(e.to_string().contains(&port.to_string()), "{e}");
}

/// The connection is cut under outstanding commands: the session fails with a typed error and
/// hands back every command to reissue; reissuing them on a new login completes them.
#[test]
fn connection_loss_hands_back_outstanding_commands() {
    let Some(mut t) = Tgtd::start("connection_loss_hands_back_outstanding_commands") else {
        return;
    };
    let iqn = "iqn.2026-01.test:loss";
    let path = t.add_target(1, iqn);
    let c = cfg(iqn);
    let mut s: Session<TcpStream> = connect_session(&t, &c);
    let mut tags = Vec::new();
    for i in 0..8u32 {
        let data = pattern(500 + i, 64 * BLOCK);
        tags.push(s.start(1, &write10(i * 64, 64), Data::Out(data)).unwrap());
    }
    s.stream().shutdown(std::net::Shutdown::Both).unwrap();
    // Drain: completions that arrived before the cut, then the failure.
    let mut completed = Vec::new();
    let err = loop {
        match s.poll() {
            Ok(Some(c)) => completed.push(c.tag),
            Ok(None) => panic!("the cut connection was not noticed"),
            Err(e) => break e,
        }
    };
    println!("after the cut: {err}");
    assert!(matches!(s.poll(), Err(SessionError::Failed)));
    let left = s.take_outstanding();
    assert_eq!(left.len() + completed.len(), tags.len());
    // Reinstate the session (same ISID, new connection) and reissue.
    let mut c2 = c.clone();
    c2.isid = s.params().isid;
    let mut s2: Session<TcpStream> = connect_session(&t, &c2);
    for o in left {
        s2.start(o.lun, &o.cdb, o.data).unwrap();
    }
    while let Some(c) = s2.poll().unwrap() {
        assert_eq!(c.outcome.unwrap().status, 0);
    }
    s2.submit(1, &SYNC_CACHE10, DataRef::None).unwrap();
    // Everything (whether completed before the cut or reissued) is on disk.
    for i in 0..8u32 {
        let got = file_bytes(&path, (i * 64) as u64 * BLOCK as u64, 64 * BLOCK);
        assert!(got == pattern(500 + i, 64 * BLOCK), "write {i} lost");
    }
    s2.logout().unwrap();
}

/// tgtd crashes and comes back under sustained pipelined writes: the session fails, the
/// outstanding writes are handed back, the session is reinstated with backoff and the writes
/// reissued; every write ends up on disk.
#[test]
fn tgtd_restart_under_writes() {
    let Some(mut t) = Tgtd::start("tgtd_restart_under_writes") else {
        return;
    };
    let iqn = "iqn.2026-01.test:restart";
    let path = t.add_target(1, iqn);
    let c = cfg(iqn);
    let mut s = connect_session(&t, &c);
    const N: u32 = 96;
    const BLOCKS: u32 = 128; // 64 KiB per write
    let size = BLOCKS as usize * BLOCK;
    let mut next = 0u32;
    let mut completed = 0u32;
    let mut restarted = false;
    let mut reissued = 0usize;
    let mut attempts = 0;
    while completed < N {
        // Keep 16 writes in flight.
        while next < N && s.outstanding() < 16 {
            let data = pattern(7000 + next, size);
            match s.start(1, &write10(next * BLOCKS, BLOCKS as u16), Data::Out(data)) {
                Ok(_) => next += 1,
                Err(e) => {
                    // The command was recorded: it comes back from take_outstanding.
                    println!("start failed: {e}");
                    next += 1;
                    break;
                }
            }
        }
        if completed >= N / 3 && !restarted {
            t.restart();
            restarted = true;
        }
        match s.poll() {
            Ok(Some(c)) => {
                assert_eq!(c.outcome.unwrap().status, 0);
                completed += 1;
            }
            Ok(None) => {}
            Err(e) => {
                println!("session failed after {completed} completions: {e}");
                let mut left = s.take_outstanding();
                // Anything completed before the failure is still delivered by poll.
                while let Some(c) = s.try_completion() {
                    assert_eq!(c.outcome.unwrap().status, 0);
                    completed += 1;
                }
                let lost = s.params().clone();
                let mut backoff = Backoff::new(lost.default_time2wait)
                    .with_limits(Duration::from_millis(50), Duration::from_secs(1));
                let (stream, p) = recovery::reconnect(
                    t.addr(),
                    &recovery::reinstatement_config(&c, &lost),
                    &mut backoff,
                    Instant::now() + Duration::from_secs(60),
                    TIMEOUT,
                    0,
                    &|_| false,
                )
                .expect("reconnect");
                attempts += backoff.attempts();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                s = Session::new(stream, p).unwrap();
                clear_unit_attention(&mut s);
                reissued += left.len();
                for o in left.drain(..) {
                    s.start(o.lun, &o.cdb, o.data).unwrap();
                }
            }
        }
    }
    assert!(restarted);
    println!("reissued {reissued} writes after {attempts} login attempts");
    assert!(reissued > 0, "the restart hit no write in flight");
    s.submit(1, &SYNC_CACHE10, DataRef::None).unwrap();
    for i in 0..N {
        let got = file_bytes(&path, (i * BLOCKS) as u64 * BLOCK as u64, size);
        assert!(got == pattern(7000 + i, size), "write {i} lost");
    }
    s.logout().unwrap();
}

/// Throughput of the initiator against tgtd (not a pass/fail test; run with
/// `cargo test --release --test iscsi -- --ignored --nocapture throughput`). The LUN lives in
/// /dev/shm when available so that the numbers measure the protocol path, not a disk.
#[test]
#[ignore]
fn throughput() {
    let Some(mut t) = Tgtd::start("throughput") else {
        return;
    };
    let iqn = "iqn.2026-01.test:bench";
    let shm = Path::new("/dev/shm");
    let path = if shm.is_dir() {
        shm.join(format!("vus-iscsi-bench-{}.img", std::process::id()))
    } else {
        t.dir.path().join("bench.img")
    };
    const SIZE: u64 = 256 << 20;
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    t.create_target(1, iqn, &path);
    // VUS_ISCSI_BENCH_MRDSL=N raises the target's MaxRecvDataSegmentLength (default 8192).
    if let Ok(v) = std::env::var("VUS_ISCSI_BENCH_MRDSL") {
        t.set_param(1, "MaxRecvDataSegmentLength", &v);
    }
    let mut s = connect_session(&t, &cfg(iqn));
    println!("{:?}", s.params());
    let blocks_total = SIZE / BLOCK as u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut run = |s: &mut Session<TcpStream>,
                   name: &str,
                   write: bool,
                   size: usize,
                   qd: usize,
                   n: usize,
                   random: bool| {
        let blocks = (size / BLOCK) as u32;
        let start = Instant::now();
        let mut issued = 0usize;
        let mut done = 0usize;
        let mut bufs: Vec<Vec<u8>> = (0..qd).map(|_| vec![0x5au8; size]).collect();
        while done < n {
            while issued < n && s.outstanding() < qd {
                let lba = if random {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % (blocks_total / blocks as u64)) * blocks as u64
                } else {
                    (issued as u64 * blocks as u64) % (blocks_total - blocks as u64)
                };
                let mut cdb = read16(lba, blocks);
                let buf = bufs.pop().unwrap();
                let data = if write {
                    cdb[0] = 0x8a;
                    Data::Out(buf)
                } else {
                    Data::In(buf)
                };
                s.start(1, &cdb, data).unwrap();
                issued += 1;
            }
            let c = s.poll().unwrap().unwrap();
            assert_eq!(c.outcome.unwrap().status, 0);
            bufs.push(c.buffer.unwrap());
            done += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:<28} {:>9.0} IOPS {:>8.1} MiB/s",
            n as f64 / secs,
            (n * size) as f64 / secs / (1 << 20) as f64
        );
    };
    run(&mut s, "seq write 1 MiB QD1", true, 1 << 20, 1, 256, false);
    run(&mut s, "seq read 1 MiB QD1", false, 1 << 20, 1, 256, false);
    run(&mut s, "seq write 1 MiB QD8", true, 1 << 20, 8, 512, false);
    run(&mut s, "seq read 1 MiB QD8", false, 1 << 20, 8, 512, false);
    run(&mut s, "rand read 4 KiB QD1", false, 4096, 1, 10000, true);
    run(&mut s, "rand write 4 KiB QD1", true, 4096, 1, 10000, true);
    run(&mut s, "rand read 4 KiB QD32", false, 4096, 32, 50000, true);
    run(&mut s, "rand write 4 KiB QD32", true, 4096, 32, 50000, true);
    println!("{:?}", s.stats());
    s.logout().unwrap();
    drop(t);
    if path.starts_with(shm) {
        let _ = std::fs::remove_file(&path);
    }
}
