//! The Prometheus text exposition (format 0.0.4) of the per-LUN statistics that `stats`
//! returns as JSON (`{"luns": [{"target", "lun", "in-flight", "read"|"write"|"other": {"ops",
//! "bytes", "errors", "latency-us": [32 log2 buckets]}}]}`, made by
//! [`super::link::stats_json`]).
//!
//! Metrics (labels `target`, `lun`, and `kind` = read, write or other):
//! `vhost_user_scsi_lun_commands_total`, `vhost_user_scsi_lun_bytes_total`,
//! `vhost_user_scsi_lun_errors_total` (counters), `vhost_user_scsi_lun_in_flight` (gauge) and
//! `vhost_user_scsi_lun_latency_seconds` (a histogram without `_sum`: the worker counts buckets,
//! not time).

use std::fmt::Write;

use serde_json::Value;

use super::link::bucket_le;

const KINDS: [&str; 3] = ["read", "write", "other"];

/// The exposition of a `stats` result.
pub fn prometheus(stats: &Value) -> String {
    let empty = Vec::new();
    let luns: Vec<(u64, u64, &Value)> = stats
        .get("luns")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .filter_map(|l| Some((l.get("target")?.as_u64()?, l.get("lun")?.as_u64()?, l)))
        .collect();
    let mut out = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    for (name, field, help) in [
        ("commands_total", "ops", "Commands completed."),
        (
            "bytes_total",
            "bytes",
            "Bytes transferred by commands that succeeded.",
        ),
        (
            "errors_total",
            "errors",
            "Commands that ended with CHECK CONDITION.",
        ),
    ] {
        let _ = writeln!(out, "# HELP vhost_user_scsi_lun_{name} {help}");
        let _ = writeln!(out, "# TYPE vhost_user_scsi_lun_{name} counter");
        for (t, l, s) in &luns {
            for kind in KINDS {
                let _ = writeln!(
                    out,
                    "vhost_user_scsi_lun_{name}{{target=\"{t}\",lun=\"{l}\",kind=\"{kind}\"}} {}",
                    n(&s[kind][field])
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP vhost_user_scsi_lun_in_flight Commands in flight (queue depth)."
    );
    let _ = writeln!(out, "# TYPE vhost_user_scsi_lun_in_flight gauge");
    for (t, l, s) in &luns {
        let _ = writeln!(
            out,
            "vhost_user_scsi_lun_in_flight{{target=\"{t}\",lun=\"{l}\"}} {}",
            n(&s["in-flight"])
        );
    }
    let _ = writeln!(
        out,
        "# HELP vhost_user_scsi_lun_latency_seconds Command completion latency."
    );
    let _ = writeln!(out, "# TYPE vhost_user_scsi_lun_latency_seconds histogram");
    for (t, l, s) in &luns {
        for kind in KINDS {
            let labels = format!("target=\"{t}\",lun=\"{l}\",kind=\"{kind}\"");
            let buckets = s[kind]["latency-us"].as_array().unwrap_or(&empty);
            let mut total: u64 = 0;
            for (i, b) in buckets.iter().enumerate() {
                total = total.saturating_add(n(b));
                let le = match bucket_le(i) {
                    Some(le) if i + 1 < buckets.len() => format!("{le:e}"),
                    _ => "+Inf".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "vhost_user_scsi_lun_latency_seconds_bucket{{{labels},le=\"{le}\"}} {total}"
                );
            }
            let _ = writeln!(
                out,
                "vhost_user_scsi_lun_latency_seconds_count{{{labels}}} {total}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::manage::{LunAddress, LunStats, OpStats, LATENCY_BUCKETS};

    #[test]
    fn exposition() {
        let mut read = OpStats {
            ops: 5,
            bytes: 2560,
            errors: 1,
            latency_us: [0; LATENCY_BUCKETS],
        };
        read.latency_us[0] = 1;
        read.latency_us[3] = 4;
        let s = LunStats {
            address: LunAddress::new(0, 1),
            read,
            write: OpStats::default(),
            other: OpStats::default(),
            in_flight: 3,
        };
        let v = serde_json::json!({ "luns": [super::super::link::stats_json(&s)] });
        let text = prometheus(&v);
        for line in [
            "vhost_user_scsi_lun_commands_total{target=\"0\",lun=\"1\",kind=\"read\"} 5",
            "vhost_user_scsi_lun_bytes_total{target=\"0\",lun=\"1\",kind=\"read\"} 2560",
            "vhost_user_scsi_lun_errors_total{target=\"0\",lun=\"1\",kind=\"write\"} 0",
            "vhost_user_scsi_lun_in_flight{target=\"0\",lun=\"1\"} 3",
            "vhost_user_scsi_lun_latency_seconds_bucket{target=\"0\",lun=\"1\",kind=\"read\",le=\"1e-6\"} 1",
            "vhost_user_scsi_lun_latency_seconds_bucket{target=\"0\",lun=\"1\",kind=\"read\",le=\"4e-6\"} 1",
            "vhost_user_scsi_lun_latency_seconds_bucket{target=\"0\",lun=\"1\",kind=\"read\",le=\"8e-6\"} 5",
            "vhost_user_scsi_lun_latency_seconds_bucket{target=\"0\",lun=\"1\",kind=\"read\",le=\"+Inf\"} 5",
            "vhost_user_scsi_lun_latency_seconds_count{target=\"0\",lun=\"1\",kind=\"read\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        // Every sample line is `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = l.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
        assert!(!prometheus(&serde_json::json!({})).contains("} "));
    }
}
