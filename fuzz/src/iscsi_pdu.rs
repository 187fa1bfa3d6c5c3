//! iSCSI PDUs from a hostile target: the header reader (BHS decoding, AHS, header digest,
//! data segment bound), the data segment reader (padding, data digest), the AHS decoder and the
//! text key=value decoder with its number and binary value parsers.
//!
//! Input: `[flags u8][max_data u32][stream]`: flags bit 0 header digest, bit 1 data digest; the
//! stream is read PDU after PDU until an error.
//! Invariants: no panic; a header's announced data segment never exceeds the bound
//! (`max_data` and `MAX_DATA_SEGMENT`), so no allocation is driven by the peer beyond it; reads
//! end (a finite stream always ends in an error).

use std::io::Cursor as IoCursor;

use vhost_user_scsi::iscsi::{
    pdu::{decode_ahs, read_data, read_header, Digests, MAX_DATA_SEGMENT},
    text::{parse_binary, parse_number, TextPairs},
};

use crate::Cursor;

/// One input (the fuzz target's body; also replayed by `tests/corpus.rs`).
pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let digests = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    // What we declare as MaxRecvDataSegmentLength: up to 1 MiB here (the decoder caps at
    // 16 MiB; larger values only make every input allocate more).
    let max_data = c.u32() % ((1 << 20) + 1);
    let mut stream = IoCursor::new(c.rest());
    for _ in 0..64 {
        let Ok(hdr) = read_header(&mut stream, digests, max_data) else {
            return;
        };
        assert!(
            hdr.data_len <= max_data.min(MAX_DATA_SEGMENT),
            "data segment of {} bytes accepted (max {max_data})",
            hdr.data_len
        );
        let _ = decode_ahs(&hdr.ahs);
        let Ok(seg) = read_data(&mut stream, digests, hdr.data_len) else {
            return;
        };
        if let Ok(pairs) = TextPairs::decode(&seg) {
            for (_, v) in pairs.iter() {
                let _ = parse_number(v);
                let _ = parse_binary(v, 1024);
            }
        }
    }
}
