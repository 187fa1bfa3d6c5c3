//! One LUN's configuration as written: the grammar that `--lun [T:L=]SOURCE[,OPTION]...` and a
//! TOML `[[lun]]` table share.
//!
//! [`LunFields`] is that grammar: one field per option, named as the option is (TOML reads it
//! with serde; [`LunFields::parse_arg`] reads the command-line text form into the same struct),
//! and [`LunFields::validate`] is the one validation path both take. Nothing here looks at the
//! source: whether it exists and opens is the supervisor's preflight.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};

use super::{error::LunError, BlockSize, CacheMode, EnospcPolicy, LunConfig, MAX_LUN};

/// Longest unit serial number accepted (as QEMU's scsi-disk).
pub const MAX_SERIAL_LEN: usize = 36;

/// A number as written: its value, and its text for error messages (`block-size=4k` reads as
/// 0 and is reported as `4k`). TOML gives integers only (its type errors are serde's, as for a
/// `u64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    pub value: u64,
    pub text: String,
}

impl From<u64> for Number {
    fn from(value: u64) -> Self {
        Self {
            value,
            text: value.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Self::from)
    }
}

/// One LUN as written (a `--lun` argument or a `[[lun]]` table), not yet validated.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LunFields {
    pub target: Option<u64>,
    pub lun: Option<u64>,
    pub source: PathBuf,
    pub read_only: Option<bool>,
    pub discard: Option<bool>,
    pub cache: Option<String>,
    /// What a write failing with ENOSPC does: `report` or `hold`.
    pub enospc: Option<String>,
    pub block_size: Option<Number>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    /// Create the source with this size when missing (`"1G"`).
    pub size: Option<String>,
    pub phys_block_size: Option<Number>,
    /// Persistent reservation state file.
    pub pr_file: Option<PathBuf>,
}

impl LunFields {
    /// Reads the command-line form `[TARGET:LUN=]SOURCE[,OPTION[=VALUE]]...` (`,,` is a literal
    /// comma). Rejects what only this form can get wrong (unknown, repeated, empty options,
    /// missing values, on/off spellings); the values themselves are checked by [`validate`].
    ///
    /// [`validate`]: LunFields::validate
    pub fn parse_arg(arg: &str) -> Result<Self, LunError> {
        let mut fields = split_commas(arg).into_iter();
        let first = fields.next().unwrap_or_default();
        let mut lun = match split_address(&first) {
            Some((t, l, rest)) => LunFields {
                target: Some(parse_decimal(t)),
                lun: Some(parse_decimal(l)),
                source: PathBuf::from(rest),
                ..Default::default()
            },
            None => LunFields {
                source: PathBuf::from(&first),
                ..Default::default()
            },
        };
        // The address is checked before any option, as written.
        if let (Some(t), Some(l)) = (lun.target, lun.lun) {
            check_address(t, l)?;
        }
        if lun.source.as_os_str().is_empty() {
            return Err(LunError::EmptySource);
        }
        let mut seen: HashSet<&'static str> = HashSet::new();
        for field in fields {
            if field.is_empty() {
                return Err(LunError::EmptyOption);
            }
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (field.as_str(), None),
            };
            let canonical: &'static str = match key {
                "readonly" | "ro" | "read-only" => "readonly",
                "discard" => "discard",
                "serial" => "serial",
                "wwn" => "wwn",
                "block-size" => "block-size",
                "phys-block-size" => "phys-block-size",
                "cache" => "cache",
                "enospc" => "enospc",
                "size" => "size",
                "pr-file" => "pr-file",
                _ => return Err(LunError::UnknownOption(key.to_owned())),
            };
            if !seen.insert(canonical) {
                return Err(LunError::RepeatedOption(canonical.to_owned()));
            }
            let need = || {
                value
                    .ok_or(LunError::MissingValue(canonical))
                    .map(str::to_owned)
            };
            let number = |v: String| Number {
                value: parse_number(&v),
                text: v,
            };
            match canonical {
                "readonly" => {
                    lun.read_only = Some(value.map_or(Ok(true), |v| parse_bool("readonly", v))?)
                }
                "discard" => {
                    lun.discard = Some(value.map_or(Ok(true), |v| parse_bool("discard", v))?)
                }
                "serial" => lun.serial = Some(need()?),
                "wwn" => lun.wwn = Some(need()?),
                "block-size" => lun.block_size = Some(number(need()?)),
                "phys-block-size" => lun.phys_block_size = Some(number(need()?)),
                "cache" => lun.cache = Some(need()?),
                "enospc" => lun.enospc = Some(need()?),
                "size" => lun.size = Some(need()?),
                "pr-file" => lun.pr_file = Some(PathBuf::from(need()?)),
                _ => unreachable!(),
            }
        }
        Ok(lun)
    }

    /// The one validation path of both forms: address, source, then every option's value
    /// (syntax and ranges only; the source is not looked at).
    pub fn validate(&self) -> Result<LunSpec, LunError> {
        let address = match (self.target, self.lun) {
            (t, Some(l)) => Some(check_address(t.unwrap_or(0), l)?),
            (Some(t), None) => return Err(LunError::TargetWithoutLun(t)),
            (None, None) => None,
        };
        if self.source.as_os_str().is_empty() {
            return Err(LunError::EmptySource);
        }
        let mut spec = new_spec(address, self.source.clone());
        let c = &mut spec.config;
        c.read_only = self.read_only.unwrap_or(false);
        c.discard = self.discard.unwrap_or(true);
        if let Some(v) = &self.cache {
            c.cache = parse_cache(v)?;
        }
        if let Some(v) = &self.enospc {
            c.enospc = parse_enospc(v)?;
        }
        if let Some(n) = &self.block_size {
            c.block_size = block_size_from(n.value, &n.text)?;
        }
        if let Some(v) = &self.serial {
            c.serial = Some(check_serial(v)?);
        }
        if let Some(v) = &self.wwn {
            c.wwn = Some(parse_wwn(v)?);
        }
        if let Some(v) = &self.size {
            c.create_size = Some(parse_size(v)?);
        }
        if let Some(n) = &self.phys_block_size {
            c.phys_block_size = Some(phys_block_size_from(n.value, &n.text)?);
        }
        if let Some(p) = &self.pr_file {
            c.pr_file = Some(parse_pr_file(p)?);
        }
        check_block_sizes(c)?;
        Ok(spec)
    }
}

/// A LUN whose address may still have to be assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// Explicit (target, LUN), or `None` for auto-numbering.
    pub address: Option<(u8, u16)>,
    /// Everything else; `target` and `lun` are meaningless while `address` is `None`.
    pub config: LunConfig,
}

pub(crate) fn new_spec(address: Option<(u8, u16)>, source: PathBuf) -> LunSpec {
    let (target, lun) = address.unwrap_or((0, 0));
    LunSpec {
        address,
        config: LunConfig::new(target, lun, source),
    }
}

/// Parses an image size: a number of bytes with an optional binary suffix `K`, `M`, `G`, `T`
/// (also written `KiB`, `MiB` …). Zero is refused.
pub(crate) fn parse_size(v: &str) -> Result<u64, LunError> {
    let invalid = || LunError::InvalidValue {
        option: "size",
        value: v.to_owned(),
        expected: "a size such as 65536, 512M, 1G or 2T",
    };
    let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, suffix) = v.split_at(digits_end);
    let shift = match suffix.trim_end_matches("iB") {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(invalid()),
    };
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    n.checked_mul(1u64 << shift)
        .filter(|&bytes| bytes > 0 && bytes <= i64::MAX as u64)
        .ok_or_else(invalid)
}

/// Scheme of a null LUN's source: `null://SIZE`, SIZE as `--lun size=` takes it (`1G`, `512M`).
pub const NULL_SCHEME: &str = "null://";

/// The size of a `null://SIZE` source, `None` when `source` is not one; `Some(Err)` when SIZE
/// does not parse.
pub fn null_source_size(source: &Path) -> Option<Result<u64, LunError>> {
    let size = source.to_str()?.strip_prefix(NULL_SCHEME)?;
    Some(parse_size(size))
}

/// Splits at single commas; `,,` is a literal comma.
pub(crate) fn split_commas(s: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                fields.last_mut().unwrap().push(',');
            } else {
                fields.push(String::new());
            }
        } else {
            fields.last_mut().unwrap().push(c);
        }
    }
    fields
}

/// `DIGITS:DIGITS=` at the start of `field`: returns (target, lun, rest).
pub(crate) fn split_address(field: &str) -> Option<(&str, &str, &str)> {
    let (addr, rest) = field.split_once('=')?;
    let (t, l) = addr.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(t) && digits(l)).then_some((t, l, rest))
}

/// Parses a decimal number, saturating (so out-of-range values are reported as such).
pub(crate) fn parse_decimal(s: &str) -> u64 {
    s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    })
}

pub(crate) fn check_address(target: u64, lun: u64) -> Result<(u8, u16), LunError> {
    let t = u8::try_from(target).map_err(|_| LunError::TargetOutOfRange(target))?;
    let l = u16::try_from(lun)
        .ok()
        .filter(|l| *l <= MAX_LUN)
        .ok_or(LunError::LunOutOfRange(lun))?;
    Ok((t, l))
}

pub(crate) fn parse_bool(option: &'static str, value: &str) -> Result<bool, LunError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(LunError::InvalidValue {
            option,
            value: value.to_owned(),
            expected: "on or off",
        }),
    }
}

/// Parses a `wwn=` value: 16 hex digits, optional `0x`, an 8-byte NAA format (type 2 IEEE
/// extended, 3 locally assigned, 5 IEEE registered) in the first nibble.
pub(crate) fn parse_wwn(value: &str) -> Result<u64, LunError> {
    let invalid = || LunError::InvalidValue {
        option: "wwn",
        value: value.to_owned(),
        expected: "16 hex digits (optional 0x) starting with NAA type 2, 3 or 5",
    };
    let hex = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .unwrap_or(value);
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let wwn = u64::from_str_radix(hex, 16).map_err(|_| invalid())?;
    match wwn >> 60 {
        2 | 3 | 5 => Ok(wwn),
        _ => Err(invalid()),
    }
}

pub(crate) fn check_serial(value: &str) -> Result<String, LunError> {
    if value.is_empty()
        || value.len() > MAX_SERIAL_LEN
        || !value.bytes().all(|b| (0x20..=0x7e).contains(&b))
    {
        return Err(LunError::InvalidValue {
            option: "serial",
            value: value.to_owned(),
            expected: "1 to 36 printable ASCII characters",
        });
    }
    Ok(value.to_owned())
}

pub(crate) fn block_size_from(n: u64, value: &str) -> Result<BlockSize, LunError> {
    match n {
        512 => Ok(BlockSize::B512),
        4096 => Ok(BlockSize::B4096),
        _ => Err(LunError::InvalidValue {
            option: "block-size",
            value: value.to_owned(),
            expected: "512 or 4096",
        }),
    }
}

/// Largest `phys-block-size` accepted (as QEMU's `physical_block_size`).
pub const MAX_PHYS_BLOCK_SIZE: u32 = 32768;

/// A `phys-block-size=` value on its own: a power of two from 512 to [`MAX_PHYS_BLOCK_SIZE`].
/// That it is at least the logical block size is checked by [`check_block_sizes`].
pub(crate) fn phys_block_size_from(n: u64, value: &str) -> Result<u32, LunError> {
    u32::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two() && (512..=MAX_PHYS_BLOCK_SIZE).contains(n))
        .ok_or_else(|| LunError::InvalidValue {
            option: "phys-block-size",
            value: value.to_owned(),
            expected: "a power of two from 512 to 32768",
        })
}

/// The physical block must hold a power of two number of logical blocks (both sizes are powers
/// of two, so "at least as large" is enough).
pub(crate) fn check_block_sizes(c: &LunConfig) -> Result<(), LunError> {
    match c.phys_block_size {
        Some(phys) if phys < c.block_size.bytes() => Err(LunError::PhysBelowLogical {
            phys,
            block: c.block_size.bytes(),
        }),
        _ => Ok(()),
    }
}

/// A `pr-file=` value: any non-empty path.
pub(crate) fn parse_pr_file(value: &Path) -> Result<PathBuf, LunError> {
    if value.as_os_str().is_empty() {
        return Err(LunError::InvalidValue {
            option: "pr-file",
            value: String::new(),
            expected: "a file path",
        });
    }
    Ok(value.to_owned())
}

/// Digits only (anything else makes the number 0, which no size option accepts).
pub(crate) fn parse_number(v: &str) -> u64 {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        parse_decimal(v)
    } else {
        0
    }
}

pub(crate) fn parse_enospc(value: &str) -> Result<EnospcPolicy, LunError> {
    match value {
        "report" => Ok(EnospcPolicy::Report),
        "hold" => Ok(EnospcPolicy::Hold),
        _ => Err(LunError::InvalidValue {
            option: "enospc",
            value: value.to_owned(),
            expected: "report or hold",
        }),
    }
}

pub(crate) fn parse_cache(value: &str) -> Result<CacheMode, LunError> {
    match value {
        "none" => Ok(CacheMode::None),
        "writeback" => Ok(CacheMode::Writeback),
        _ => Err(LunError::InvalidValue {
            option: "cache",
            value: value.to_owned(),
            expected: "none or writeback",
        }),
    }
}
