//! Text key=value segments (RFC 7143 §6.1): `key=value` pairs, each terminated by a NUL byte,
//! used by Login and Text PDUs.

/// Longest key name (§6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept: 8192 bytes covers the largest binary value (§6.1: a CHAP challenge
/// or response of up to 1024 bytes in hex is ~2 KiB; SendTargets values are short).
pub const MAX_VALUE_LEN: usize = 8192;
/// Most pairs in one (reassembled) text exchange.
pub const MAX_PAIRS: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text segment is not key=value")]
    NoEquals,
    #[error("text key is empty, too long or not printable")]
    BadKey,
    #[error("text value is too long or not UTF-8")]
    BadValue,
    #[error("too many text keys")]
    TooMany,
}

/// An ordered list of key=value pairs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl std::fmt::Debug for TextPairs {
    // CHAP values are not secrets themselves, but keep the key list readable and short.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| format!("{k}={v}")))
            .finish()
    }
}

impl TextPairs {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.0.push((key.to_string(), value.into()));
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All values of `key` (SendTargets repeats TargetName/TargetAddress).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Serialises to the wire form (every pair NUL-terminated).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    /// Parses a (reassembled) data segment. Trailing NUL padding and an unterminated last pair
    /// are accepted.
    pub fn decode(data: &[u8]) -> Result<Self, TextError> {
        let mut pairs = Vec::new();
        for item in data.split(|&b| b == 0) {
            if item.is_empty() {
                continue;
            }
            if pairs.len() >= MAX_PAIRS {
                return Err(TextError::TooMany);
            }
            let eq = item
                .iter()
                .position(|&b| b == b'=')
                .ok_or(TextError::NoEquals)?;
            let (k, v) = (&item[..eq], &item[eq + 1..]);
            if k.is_empty()
                || k.len() > MAX_KEY_LEN
                || !k.iter().all(|b| b.is_ascii_graphic() && *b != b'=')
            {
                return Err(TextError::BadKey);
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(TextError::BadValue);
            }
            let v = std::str::from_utf8(v).map_err(|_| TextError::BadValue)?;
            pairs.push((String::from_utf8_lossy(k).into_owned(), v.to_string()));
        }
        Ok(Self(pairs))
    }
}

/// Parses a numerical value (§6.1: decimal, or hex with 0x).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// Parses a binary value (§6.1: hex with 0x, base64 with 0b), bounded by `max` bytes.
pub fn parse_binary(v: &str, max: usize) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // An odd number of digits has an implied leading zero.
        let digits = h.as_bytes();
        if digits.is_empty() || digits.len().div_ceil(2) > max {
            return None;
        }
        let mut out = Vec::with_capacity(digits.len().div_ceil(2));
        let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut i = 0;
        if digits.len() % 2 == 1 {
            out.push(nib(digits[0])?);
            i = 1;
        }
        while i < digits.len() {
            out.push(nib(digits[i])? << 4 | nib(digits[i + 1])?);
            i += 2;
        }
        Some(out)
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        let out = base64_decode(b)?;
        (!out.is_empty() && out.len() <= max).then_some(out)
    } else {
        None
    }
}

/// Encodes bytes as a hex binary value.
pub fn hex_value(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let mut t = TextPairs::new();
        t.push("InitiatorName", "iqn.2026-01.test:init");
        t.push("HeaderDigest", "CRC32C,None");
        let wire = t.encode();
        assert_eq!(
            wire,
            b"InitiatorName=iqn.2026-01.test:init\0HeaderDigest=CRC32C,None\0"
        );
        assert_eq!(TextPairs::decode(&wire).unwrap(), t);
        // Padding NULs and a missing final NUL are tolerated; an empty value is allowed.
        let t2 = TextPairs::decode(b"A=1\0B=\0\0\0C=x").unwrap();
        assert_eq!(t2.get("A"), Some("1"));
        assert_eq!(t2.get("B"), Some(""));
        assert_eq!(t2.get("C"), Some("x"));
    }

    #[test]
    fn hostile_text() {
        assert_eq!(TextPairs::decode(b"novalue\0"), Err(TextError::NoEquals));
        assert_eq!(TextPairs::decode(b"=x\0"), Err(TextError::BadKey));
        assert_eq!(
            TextPairs::decode(&[b"K".repeat(64), b"=1".to_vec()].concat()),
            Err(TextError::BadKey)
        );
        assert_eq!(
            TextPairs::decode(&[b"K=".to_vec(), vec![b'v'; 8193]].concat()),
            Err(TextError::BadValue)
        );
        assert_eq!(TextPairs::decode(b"K=\xff\0"), Err(TextError::BadValue));
        assert_eq!(
            TextPairs::decode(&b"A=1\0".repeat(MAX_PAIRS + 1)),
            Err(TextError::TooMany)
        );
    }

    #[test]
    fn values() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x2000"), Some(8192));
        assert_eq!(parse_number("x"), None);
        assert_eq!(parse_binary("0x0a0B", 16), Some(vec![10, 11]));
        assert_eq!(parse_binary("0xabc", 16), Some(vec![0x0a, 0xbc]));
        assert_eq!(parse_binary("0bAQID", 16), Some(vec![1, 2, 3]));
        assert_eq!(parse_binary("0x", 16), None);
        assert_eq!(parse_binary("0x0g", 16), None);
        assert_eq!(parse_binary("0x010203", 2), None);
        assert_eq!(parse_binary("1234", 16), None);
        assert_eq!(hex_value(&[0, 0xff, 0x10]), "0x00ff10");
    }
}
