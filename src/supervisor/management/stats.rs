//! The Prometheus text exposition (format 0.0.4) of the worker's per-LUN statistics.
//!
//! The worker answers `stats` with `{"luns": [{"target": T, "lun": L, <counters>...}]}`. Every
//! number becomes a sample `vhost_user_scsi_lun_<name>{target="T",lun="L"}`; an object of
//! numbers (e.g. a latency histogram `{"le_1000": n, ...}` or per-kind counts) becomes one
//! metric with the key as a second label. Names are sanitised to `[a-z0-9_]`, so nothing the
//! worker says can break the exposition's syntax.

use std::{collections::BTreeMap, fmt::Write};

use serde_json::Value;

const PREFIX: &str = "vhost_user_scsi_lun_";

fn metric_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn label_value(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '\\' | '"' => '_',
            c => c,
        })
        .collect()
}

fn number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(u8::from(*b).to_string()),
        _ => None,
    }
}

/// The exposition of a `stats` result.
pub fn prometheus(stats: &Value) -> String {
    // metric -> lines, so that each metric's samples are grouped under one TYPE line.
    let mut metrics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let empty = Vec::new();
    let luns = stats
        .get("luns")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for lun in luns {
        let Some(obj) = lun.as_object() else { continue };
        let (Some(t), Some(l)) = (
            obj.get("target").and_then(Value::as_u64),
            obj.get("lun").and_then(Value::as_u64),
        ) else {
            continue;
        };
        for (key, v) in obj {
            if key == "target" || key == "lun" {
                continue;
            }
            let name = format!("{PREFIX}{}", metric_name(key));
            if let Some(n) = number(v) {
                metrics
                    .entry(name)
                    .or_default()
                    .push(format!("{{target=\"{t}\",lun=\"{l}\"}} {n}"));
            } else if let Some(inner) = v.as_object() {
                for (k, v) in inner {
                    if let Some(n) = number(v) {
                        metrics.entry(name.clone()).or_default().push(format!(
                            "{{target=\"{t}\",lun=\"{l}\",key=\"{}\"}} {n}",
                            label_value(k)
                        ));
                    }
                }
            }
        }
    }
    let mut out = String::new();
    for (name, samples) in metrics {
        let _ = writeln!(out, "# TYPE {name} untyped");
        for s in samples {
            let _ = writeln!(out, "{name}{s}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exposition() {
        let text = prometheus(&json!({"luns": [
            {"target": 0, "lun": 1, "read_ops": 5, "read-bytes": 2560,
             "latency": {"le_100us": 3, "+Inf\"\n": 5}, "name": "x"},
            {"target": 0, "lun": 2, "read_ops": 7},
            {"lun": 9},
        ]}));
        assert_eq!(
            text,
            "# TYPE vhost_user_scsi_lun_latency untyped\n\
             vhost_user_scsi_lun_latency{target=\"0\",lun=\"1\",key=\"+Inf_\"} 5\n\
             vhost_user_scsi_lun_latency{target=\"0\",lun=\"1\",key=\"le_100us\"} 3\n\
             # TYPE vhost_user_scsi_lun_read_bytes untyped\n\
             vhost_user_scsi_lun_read_bytes{target=\"0\",lun=\"1\"} 2560\n\
             # TYPE vhost_user_scsi_lun_read_ops untyped\n\
             vhost_user_scsi_lun_read_ops{target=\"0\",lun=\"1\"} 5\n\
             vhost_user_scsi_lun_read_ops{target=\"0\",lun=\"2\"} 7\n"
        );
        assert_eq!(prometheus(&json!({})), "");
    }
}
