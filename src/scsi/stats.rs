//! Per-LUN statistics: commands, bytes, errors and a completion-latency histogram per class
//! (read, write, everything else), kept with relaxed atomic adds on the data path (no lock, no
//! allocation). Readers (the management `stats` call) get a [`StatsSnapshot`]; counters are
//! independent, so a snapshot taken under load may be off by the commands completing while it
//! is read, never more.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use super::cdb::opcode;

/// Buckets of a latency histogram: bucket 0 counts commands that took less than 1 µs, bucket
/// `i` (1 ≤ i < 31) those that took `[2^(i-1), 2^i)` µs, the last one everything from
/// `2^30` µs (about 18 minutes) on.
pub const LATENCY_BUCKETS: usize = 32;

/// The class a command is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read,
    Write,
    Other,
}

impl OpClass {
    /// The class of a CDB's opcode.
    pub fn of(op: u8) -> Self {
        use opcode::*;
        match op {
            READ_6 | READ_10 | READ_12 | READ_16 => OpClass::Read,
            WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 | WRITE_AND_VERIFY_10
            | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => OpClass::Write,
            _ => OpClass::Other,
        }
    }
}

/// The histogram bucket of a latency.
pub fn latency_bucket(latency: Duration) -> usize {
    let us = latency.as_micros();
    if us == 0 {
        0
    } else {
        // 1 µs → 1, 2-3 µs → 2, 4-7 µs → 3 ...
        let bits = (u128::BITS - us.leading_zeros()) as usize;
        bits.min(LATENCY_BUCKETS - 1)
    }
}

/// Counters of one class.
#[derive(Debug, Default)]
struct ClassCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl ClassCounters {
    fn snapshot(&self) -> ClassSnapshot {
        ClassSnapshot {
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_us: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        }
    }
}

/// A LUN's live counters.
#[derive(Debug, Default)]
pub struct LunCounters {
    read: ClassCounters,
    write: ClassCounters,
    other: ClassCounters,
}

impl LunCounters {
    /// Counts one finished command: `bytes` moved, whether it failed (any status but GOOD), how
    /// long it took.
    pub fn record(&self, class: OpClass, bytes: u64, failed: bool, latency: Duration) {
        let c = match class {
            OpClass::Read => &self.read,
            OpClass::Write => &self.write,
            OpClass::Other => &self.other,
        };
        c.ops.fetch_add(1, Ordering::Relaxed);
        if failed {
            c.errors.fetch_add(1, Ordering::Relaxed);
        } else if bytes != 0 {
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        c.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            read: self.read.snapshot(),
            write: self.write.snapshot(),
            other: self.other.snapshot(),
        }
    }
}

/// One class's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassSnapshot {
    pub ops: u64,
    /// Bytes moved by the commands that succeeded.
    pub bytes: u64,
    pub errors: u64,
    /// See [`LATENCY_BUCKETS`].
    pub latency_us: [u64; LATENCY_BUCKETS],
}

/// A LUN's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub read: ClassSnapshot,
    pub write: ClassSnapshot,
    pub other: ClassSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2_microseconds() {
        let us = Duration::from_micros;
        assert_eq!(latency_bucket(Duration::from_nanos(999)), 0);
        assert_eq!(latency_bucket(us(1)), 1);
        assert_eq!(latency_bucket(us(2)), 2);
        assert_eq!(latency_bucket(us(3)), 2);
        assert_eq!(latency_bucket(us(4)), 3);
        assert_eq!(latency_bucket(us(1023)), 10);
        assert_eq!(latency_bucket(us(1024)), 11);
        assert_eq!(
            latency_bucket(Duration::from_secs(1 << 40)),
            LATENCY_BUCKETS - 1
        );
    }

    #[test]
    fn records_land_in_their_class() {
        let c = LunCounters::default();
        c.record(
            OpClass::of(opcode::READ_10),
            4096,
            false,
            Duration::from_micros(5),
        );
        c.record(
            OpClass::of(opcode::WRITE_16),
            512,
            true,
            Duration::from_micros(5),
        );
        c.record(OpClass::of(opcode::INQUIRY), 36, false, Duration::ZERO);
        let s = c.snapshot();
        assert_eq!((s.read.ops, s.read.bytes, s.read.errors), (1, 4096, 0));
        assert_eq!((s.write.ops, s.write.bytes, s.write.errors), (1, 0, 1));
        assert_eq!((s.other.ops, s.other.bytes), (1, 36));
        assert_eq!(s.read.latency_us[3], 1);
        assert_eq!(s.other.latency_us[0], 1);
    }
}
