//! The iSCSI login exchange against a hostile target: the initiator's whole login (security
//! negotiation with CHAP and mutual CHAP, operational negotiation, redirects, rejects) reading
//! the target's answers from the input and writing its own requests nowhere.
//!
//! Input: `[flags u8][target's byte stream]`: flags bit 0 discovery session, bit 1 CHAP,
//! bit 2 mutual CHAP, bits 3-4 header/data digests offered (CRC32C preferred).
//! Invariants: no panic; the login always ends (the stream is finite); negotiated parameters
//! that come out validate and survive the handover encoding.

use std::io::{self, Read, Write};

use vhost_user_scsi::iscsi::login::{
    login, Chap, DigestPolicy, LoginConfig, Secret, SessionParams,
};

use crate::Cursor;

/// The target's side: reads come from the input, writes are accepted and dropped.
struct Target<'a>(&'a [u8]);

impl Read for Target<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Target<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One input (the fuzz target's body; also replayed by `tests/corpus.rs`).
pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let target = (flags & 1 == 0).then(|| "iqn.2026-01.test:disk".to_owned());
    let mut cfg = LoginConfig::new("iqn.2026-01.test:initiator", target);
    // Fixed, so that a target's answer can be written to match it (seeds, crashes reproduce).
    cfg.isid = [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a];
    if flags & 2 != 0 {
        cfg.chap = Some(Chap {
            user: "user".into(),
            secret: Secret::new(b"secretsecret".to_vec()),
        });
    }
    if flags & 4 != 0 {
        cfg.mutual_chap = Some(Chap {
            user: "target".into(),
            secret: Secret::new(b"targetsecret".to_vec()),
        });
    }
    if flags & 8 != 0 {
        cfg.header_digest = DigestPolicy::PreferCrc32c;
    }
    if flags & 16 != 0 {
        cfg.data_digest = DigestPolicy::PreferCrc32c;
    }
    let mut stream = Target(c.rest());
    if let Ok(params) = login(&mut stream, &cfg) {
        params
            .validate()
            .expect("login produced parameters that do not validate");
        let again = SessionParams::decode(&params.encode()).expect("handover encoding");
        assert_eq!(again, params, "handover encoding changed the parameters");
    }
}
