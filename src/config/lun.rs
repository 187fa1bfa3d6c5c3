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

use super::{
    error::LunError, BlockSize, CacheMode, EnospcPolicy, IscsiDigest, IscsiSource, LunConfig,
    LunSource, LunType, DEFAULT_INITIATOR_NAME, ISCSI_DEFAULT_PORT, MAX_LUN,
};

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
    /// `disk` (the default) or `cdrom`.
    #[serde(rename = "type")]
    pub lun_type: Option<String>,
    pub removable: Option<bool>,
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
    /// iSCSI only: our initiator name (IQN).
    pub initiator_name: Option<String>,
    /// iSCSI only: the file holding the CHAP secret (read by the supervisor).
    pub chap_secret_file: Option<PathBuf>,
    /// iSCSI only: `crc32c` or `none`.
    pub header_digest: Option<String>,
    pub data_digest: Option<String>,
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
                "type" => "type",
                "removable" => "removable",
                "initiator-name" => "initiator-name",
                "chap-secret-file" => "chap-secret-file",
                "header-digest" => "header-digest",
                "data-digest" => "data-digest",
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
                "type" => lun.lun_type = Some(need()?),
                "removable" => {
                    lun.removable = Some(value.map_or(Ok(true), |v| parse_bool("removable", v))?)
                }
                "initiator-name" => lun.initiator_name = Some(need()?),
                "chap-secret-file" => lun.chap_secret_file = Some(PathBuf::from(need()?)),
                "header-digest" => lun.header_digest = Some(need()?),
                "data-digest" => lun.data_digest = Some(need()?),
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
        if let Some(url) = self
            .source
            .to_str()
            .and_then(|s| s.strip_prefix(ISCSI_SCHEME))
        {
            return self.validate_iscsi(address, url);
        }
        for (set, name) in [
            (self.initiator_name.is_some(), "initiator-name"),
            (self.chap_secret_file.is_some(), "chap-secret-file"),
            (self.header_digest.is_some(), "header-digest"),
            (self.data_digest.is_some(), "data-digest"),
        ] {
            if set {
                return Err(LunError::OnlyForIscsi(name));
            }
        }
        let mut spec = new_spec(address, LunSource::Path(self.source.clone()));
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
        if let Some(v) = &self.lun_type {
            c.lun_type = parse_lun_type(v)?;
        }
        c.removable = self.removable.unwrap_or(false);
        if c.lun_type == LunType::Cdrom {
            self.apply_cdrom(c)?;
        } else if c.block_size == BlockSize::B2048 {
            return Err(LunError::InvalidValue {
                option: "block-size",
                value: "2048".to_owned(),
                expected: "512 or 4096 (2048 is a type=cdrom LUN's)",
            });
        }
        check_block_sizes(c)?;
        Ok(spec)
    }

    /// A CD-ROM: read-only, 2048-byte blocks, removable, nothing to create or deallocate.
    /// Options that contradict that are refused rather than silently overridden.
    fn apply_cdrom(&self, c: &mut LunConfig) -> Result<(), LunError> {
        let conflict = |option, reason| Err(LunError::CdromOption { option, reason });
        if self.block_size.is_some() && c.block_size != BlockSize::B2048 {
            return conflict("block-size", "a CD-ROM's logical blocks are 2048 bytes");
        }
        if self.read_only == Some(false) {
            return conflict("readonly=off", "a CD-ROM is read-only");
        }
        if self.size.is_some() {
            return conflict("size", "an ISO image is never created empty");
        }
        if self.phys_block_size.is_some() {
            return conflict("phys-block-size", "a CD-ROM's blocks are 2048 bytes");
        }
        if self.discard == Some(true) {
            return conflict("discard=on", "a CD-ROM is read-only");
        }
        if self.removable == Some(false) {
            return conflict("removable=off", "a CD-ROM's medium is always removable");
        }
        c.block_size = BlockSize::B2048;
        c.read_only = true;
        c.removable = true;
        c.discard = false;
        Ok(())
    }
}

impl LunFields {
    /// An `iscsi://` source (`url` is what follows the scheme) with its options. The options
    /// that describe an emulated disk (block sizes, serial, WWN, cache, discard, size,
    /// pr-file, readonly) are refused: the target's LUN answers for itself.
    fn validate_iscsi(&self, address: Option<(u8, u16)>, url: &str) -> Result<LunSpec, LunError> {
        for (set, name) in [
            (self.read_only.is_some(), "readonly"),
            (self.discard.is_some(), "discard"),
            (self.cache.is_some(), "cache"),
            (self.block_size.is_some(), "block-size"),
            (self.serial.is_some(), "serial"),
            (self.wwn.is_some(), "wwn"),
            (self.size.is_some(), "size"),
            (self.phys_block_size.is_some(), "phys-block-size"),
            (self.pr_file.is_some(), "pr-file"),
        ] {
            if set {
                return Err(LunError::NotForIscsi(name));
            }
        }
        let mut src = parse_iscsi_url(url)?;
        if let Some(n) = &self.initiator_name {
            src.initiator_name = check_iqn("initiator-name", n)?;
        }
        if let Some(p) = &self.chap_secret_file {
            if p.as_os_str().is_empty() {
                return Err(LunError::InvalidValue {
                    option: "chap-secret-file",
                    value: String::new(),
                    expected: "a file path",
                });
            }
            src.chap_secret_file = Some(p.clone());
        }
        if let Some(v) = &self.header_digest {
            src.header_digest = parse_digest("header-digest", v)?;
        }
        if let Some(v) = &self.data_digest {
            src.data_digest = parse_digest("data-digest", v)?;
        }
        match (&src.user, &src.chap_secret_file) {
            (Some(u), None) => return Err(LunError::ChapUserWithoutSecret(u.clone())),
            (None, Some(_)) => return Err(LunError::ChapSecretWithoutUser),
            _ => {}
        }
        Ok(new_spec(address, LunSource::Iscsi(src)))
    }
}

/// Scheme of an iSCSI LUN's source.
pub const ISCSI_SCHEME: &str = "iscsi://";

/// Longest iSCSI name (RFC 7143 §4.2.7.1: 223 bytes).
const MAX_ISCSI_NAME: usize = 223;

/// Parses `[USER@]HOST[:PORT]/TARGET-IQN/LUN` (after `iscsi://`). A `USER:PASSWORD@` is refused
/// without echoing it.
pub fn parse_iscsi_url(url: &str) -> Result<IscsiSource, LunError> {
    let (authority, path) = url
        .split_once('/')
        .ok_or(LunError::IscsiUrl("no target name"))?;
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => {
            if u.contains(':') {
                return Err(LunError::IscsiPassword);
            }
            if u.is_empty() || u.len() > 255 || !u.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(LunError::IscsiUrl(
                    "the CHAP user name must be 1 to 255 printable characters",
                ));
            }
            (Some(u.to_owned()), h)
        }
        None => (None, authority),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or(LunError::IscsiUrl("unclosed '[' in the host"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(LunError::IscsiUrl(
                "not an IPv6 address between '[' and ']'",
            ));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(LunError::IscsiUrl("junk after ']'"))?,
            ),
        };
        (h.to_owned(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(LunError::IscsiUrl("no host"));
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(LunError::IscsiUrl("the host must be a name or an address"));
    }
    let port = match port {
        None => ISCSI_DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(LunError::IscsiUrl(
                "the port must be a number from 1 to 65535",
            ))?,
    };
    let (target, lun) = path
        .rsplit_once('/')
        .ok_or(LunError::IscsiUrl("no LUN number after the target name"))?;
    if target.is_empty() {
        return Err(LunError::IscsiUrl("no target name"));
    }
    let target_iqn = check_iqn("target name", target).map_err(|_| {
        LunError::IscsiUrl("the target name is not an iSCSI name (iqn., eui., naa.)")
    })?;
    if lun.is_empty() || !lun.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LunError::IscsiUrl("the LUN must be a number"));
    }
    let lun = u16::try_from(parse_decimal(lun))
        .ok()
        .filter(|l| *l <= MAX_LUN)
        .ok_or(LunError::IscsiUrl("the LUN must be 0 to 16383"))?;
    Ok(IscsiSource {
        host,
        port,
        target_iqn,
        lun,
        user,
        initiator_name: DEFAULT_INITIATOR_NAME.to_owned(),
        chap_secret_file: None,
        header_digest: IscsiDigest::None,
        data_digest: IscsiDigest::None,
    })
}

/// An iSCSI name (RFC 7143 §4.2.7): `iqn.`, `eui.` or `naa.` and the characters stringprep
/// leaves (lower case letters, digits, '.', '-', ':'), at most 223 bytes.
fn check_iqn(option: &'static str, v: &str) -> Result<String, LunError> {
    let ok = v.len() <= MAX_ISCSI_NAME
        && ["iqn.", "eui.", "naa."].iter().any(|p| v.starts_with(p))
        && v.len() > 4
        && v.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':')
        });
    if ok {
        Ok(v.to_owned())
    } else {
        Err(LunError::InvalidValue {
            option,
            value: v.to_owned(),
            expected:
                "an iSCSI name: iqn./eui./naa. then lower-case letters, digits, '.', '-', ':'",
        })
    }
}

fn parse_digest(option: &'static str, v: &str) -> Result<IscsiDigest, LunError> {
    match v {
        "none" => Ok(IscsiDigest::None),
        "crc32c" => Ok(IscsiDigest::Crc32c),
        _ => Err(LunError::InvalidValue {
            option,
            value: v.to_owned(),
            expected: "crc32c or none",
        }),
    }
}

/// The text of a `--lun` argument fit for messages and logs: a `USER:PASSWORD@` in an
/// `iscsi://` source (refused anyway) is shown as `USER:<redacted>@`.
pub fn redact_arg(arg: &str) -> String {
    let Some(start) = arg.find(ISCSI_SCHEME) else {
        return arg.to_owned();
    };
    let auth_start = start + ISCSI_SCHEME.len();
    let rest = &arg[auth_start..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{user}:<redacted>@{host}{}",
                &arg[..auth_start],
                &rest[auth_end..]
            )
        }
        _ => arg.to_owned(),
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

pub(crate) fn new_spec(address: Option<(u8, u16)>, source: LunSource) -> LunSpec {
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

/// A `type=` value.
pub(crate) fn parse_lun_type(value: &str) -> Result<LunType, LunError> {
    match value {
        "disk" => Ok(LunType::Disk),
        "cdrom" => Ok(LunType::Cdrom),
        _ => Err(LunError::InvalidValue {
            option: "type",
            value: value.to_owned(),
            expected: "disk or cdrom",
        }),
    }
}

/// A `block-size=` value; 2048 is only valid with `type=cdrom` (checked by `validate`).
pub(crate) fn block_size_from(n: u64, value: &str) -> Result<BlockSize, LunError> {
    match n {
        512 => Ok(BlockSize::B512),
        2048 => Ok(BlockSize::B2048),
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
