//! Login (RFC 7143 §6.3, §11.12-11.13, §13): security negotiation with CHAP and mutual CHAP
//! (§12.1.3, RFC 1994), operational negotiation, login redirection (§11.13.5), and SendTargets
//! discovery (Appendix C).
//!
//! The login runs over any `Read + Write` stream and ends with a [`SessionParams`]: every
//! negotiated value plus the session identity and sequence numbers. It is plain serialisable data
//! holding no secret, so one process (the supervisor, which holds the CHAP secrets and may
//! connect sockets) can log in and hand the socket and the `SessionParams` to another process
//! (the jailed worker), which continues with [`super::session::Session::new`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::pdu::{self, stage, Bhs, Digests, LoginRequest, PduError, RESERVED_TAG};
use super::text::{self, TextError, TextPairs};

/// A CHAP secret. Its `Debug` output never shows the bytes and its memory is wiped on drop.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// CHAP credentials: the name and secret of one side.
#[derive(Clone, Debug)]
pub struct Chap {
    pub user: String,
    pub secret: Secret,
}

/// Digest preference for one of HeaderDigest/DataDigest (§13.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestPolicy {
    /// Offer only None.
    None,
    /// Offer only CRC32C: the login fails if the target refuses it.
    Crc32c,
    /// Offer "CRC32C,None".
    PreferCrc32c,
}

impl DigestPolicy {
    fn offer(self) -> &'static str {
        match self {
            DigestPolicy::None => "None",
            DigestPolicy::Crc32c => "CRC32C",
            DigestPolicy::PreferCrc32c => "CRC32C,None",
        }
    }
}

/// What the initiator asks for. Defaults follow RFC 7143 §13 except where a larger value is
/// simply better for throughput.
#[derive(Clone, Debug)]
pub struct LoginConfig {
    pub initiator_name: String,
    /// The target to log in to; `None` for a discovery session.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// 0 for a new session; a previous TSIH to reinstate a session (§6.3.5, at ERL 0 the target
    /// then terminates the old session's tasks).
    pub tsih: u16,
    pub cid: u16,
    /// Authenticate the initiator to the target.
    pub chap: Option<Chap>,
    /// Also authenticate the target (mutual CHAP): its name (checked if set) and secret.
    pub mutual_chap: Option<Chap>,
    pub header_digest: DigestPolicy,
    pub data_digest: DigestPolicy,
    /// The largest data segment we accept (declared to the target).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
}

impl LoginConfig {
    pub fn new(initiator_name: impl Into<String>, target_name: Option<String>) -> Self {
        Self {
            initiator_name: initiator_name.into(),
            target_name,
            isid: random_isid(),
            tsih: 0,
            cid: 0,
            chap: None,
            mutual_chap: None,
            header_digest: DigestPolicy::None,
            data_digest: DigestPolicy::None,
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 1,
        }
    }
}

/// An ISID of the "random" format (§10.12.5: T=10b, then 30 random bits... the qualifier too).
pub fn random_isid() -> [u8; 6] {
    let mut isid = [0u8; 6];
    random_bytes(&mut isid);
    isid[0] = 0x80 | (isid[0] & 0x3f);
    isid
}

fn random_bytes(buf: &mut [u8]) {
    // getrandom only fails when the OS has no entropy source at all; the fallback still yields a
    // challenge that differs per call (time and address based), never a constant.
    if getrandom::fill(buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
}

/// The negotiated state of a logged-in connection, enough for another process to run the full
/// feature phase on the same socket. Contains no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    pub initiator_name: String,
    /// Empty for a discovery session.
    pub target_name: String,
    pub discovery: bool,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub target_portal_group_tag: Option<u16>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment the target may send us (our declaration).
    pub max_recv_data_segment_length: u32,
    /// Largest data segment we may send (the target's declaration, §13.12).
    pub max_send_data_segment_length: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    /// Next CmdSN to use.
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// Next initiator task tag.
    pub next_itt: u32,
}

impl SessionParams {
    /// The parameters of a made-up session (target "iqn.t", TSIH 1, CmdSN 10, ExpStatSN 100,
    /// window up to 40, no digests), for unit tests that need a `Session` on a socket pair.
    #[cfg(test)]
    pub(crate) fn example() -> Self {
        Self {
            initiator_name: "iqn.i".into(),
            target_name: "iqn.t".into(),
            discovery: false,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 1,
            cid: 0,
            target_portal_group_tag: Some(1),
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_send_data_segment_length: 8192,
            first_burst_length: 8192,
            max_burst_length: 16384,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 0,
            cmd_sn: 10,
            exp_stat_sn: 100,
            exp_cmd_sn: 10,
            max_cmd_sn: 40,
            next_itt: 1,
        }
    }

    /// Checks the invariants the session relies on (the values may come from another process).
    pub fn validate(&self) -> Result<(), LoginError> {
        let ok_len = |v: u32| (512..=pdu::MAX_DATA_SEGMENT).contains(&v);
        let bad = |what: &'static str| Err(LoginError::Negotiation(what.to_string()));
        if !ok_len(self.max_recv_data_segment_length) || !ok_len(self.max_send_data_segment_length)
        {
            return bad("MaxRecvDataSegmentLength out of range");
        }
        if !ok_len(self.max_burst_length) || !ok_len(self.first_burst_length) {
            return bad("burst length out of range");
        }
        if self.first_burst_length > self.max_burst_length {
            return bad("FirstBurstLength exceeds MaxBurstLength");
        }
        if self.error_recovery_level != 0 {
            return bad("only ErrorRecoveryLevel=0 is supported");
        }
        if !self.data_pdu_in_order || !self.data_sequence_in_order {
            return bad("only DataPDUInOrder=Yes and DataSequenceInOrder=Yes are supported");
        }
        if self.max_outstanding_r2t == 0 {
            return bad("MaxOutstandingR2T is 0");
        }
        Ok(())
    }

    /// The handover message body (JSON): what the supervisor sends the worker along with the
    /// socket fd.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and validates a handover message ([`SessionParams::encode`]); bounded in size.
    pub fn decode(bytes: &[u8]) -> Result<Self, LoginError> {
        if bytes.len() > MAX_PARAMS_LEN {
            return Err(LoginError::Protocol("session parameters too long".into()));
        }
        let p: Self = serde_json::from_slice(bytes)
            .map_err(|_| LoginError::Protocol("malformed session parameters".into()))?;
        p.validate()?;
        Ok(p)
    }

    pub fn digests(&self) -> Digests {
        Digests {
            header: self.header_digest,
            data: self.data_digest,
        }
    }
}

/// Why a login failed. Messages name the cause, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("malformed text from the target: {0}")]
    Text(#[from] TextError),
    #[error("cannot connect to {portal}: {source}")]
    Connect {
        portal: String,
        source: std::io::Error,
    },
    #[error("target redirects the login to {address} ({})", if *.permanent { "permanently" } else { "temporarily" })]
    Redirect { address: String, permanent: bool },
    #[error("too many login redirections")]
    TooManyRedirects,
    #[error("redirection to {0} is not allowed")]
    RedirectNotAllowed(String),
    #[error("target refused the login: {} (status class {class:#04x}, detail {detail:#04x})", status_text(*.class, *.detail))]
    Refused { class: u8, detail: u8 },
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    #[error("protocol violation during login: {0}")]
    Protocol(String),
}

impl LoginError {
    /// True if the target said the credentials were wrong (status 0x0201/0x0202) or the target
    /// failed mutual authentication.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            LoginError::Refused {
                class: 2,
                detail: 1 | 2
            } | LoginError::Auth(_)
        )
    }
}

/// Status-Class/Status-Detail in words (§11.13.5).
pub fn status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (0, _) => "success",
        (1, 1) => "target moved temporarily",
        (1, 2) => "target moved permanently",
        (2, 0) => "initiator error",
        (2, 1) => "authentication failure (wrong CHAP name or secret?)",
        (2, 2) => "authorization failure (initiator not allowed)",
        (2, 3) => "target not found",
        (2, 4) => "target removed",
        (2, 5) => "unsupported version",
        (2, 6) => "too many connections",
        (2, 7) => "missing parameter",
        (2, 8) => "cannot include in session",
        (2, 9) => "session type not supported",
        (2, 10) => "session does not exist",
        (2, 11) => "invalid request during login",
        (3, 0) => "target error",
        (3, 1) => "service unavailable",
        (3, 2) => "out of resources",
        _ => "unknown status",
    }
}

/// During login the RFC default MaxRecvDataSegmentLength (8192) applies; accept a little more
/// from lenient targets but stay bounded.
const LOGIN_MAX_DATA: u32 = 64 * 1024;
/// Bound on an encoded [`SessionParams`] (names are at most 223 bytes, RFC 7143 §4.2.7.1).
pub const MAX_PARAMS_LEN: usize = 16 * 1024;
/// Bound on a reassembled (C bit) text exchange.
const MAX_TEXT_TOTAL: usize = 1024 * 1024;
/// Bound on login round trips (a target cannot keep us negotiating forever).
const MAX_ROUNDS: usize = 32;
const NEEDS_CHAP: &str =
    "the target requires authentication and no CHAP credentials are configured";
/// Our mutual CHAP challenge length.
const CHAP_CHALLENGE_LEN: usize = 16;
/// Longest CHAP challenge we answer (§12.1.3: at most 1024 bytes).
const CHAP_MAX_CHALLENGE: usize = 1024;

struct LoginConn<'a, S> {
    stream: &'a mut S,
    cfg: &'a LoginConfig,
    cmd_sn: u32,
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    tsih: u16,
    first: bool,
    rounds: usize,
}

impl<S: Read + Write> LoginConn<'_, S> {
    /// One login request/response exchange, reassembling a response split with the C bit.
    fn exchange(
        &mut self,
        transit: bool,
        csg: u8,
        nsg: u8,
        keys: &TextPairs,
    ) -> Result<(pdu::LoginResponse, TextPairs), LoginError> {
        let mut data = keys.encode();
        let mut collected = Vec::new();
        loop {
            self.rounds += 1;
            if self.rounds > MAX_ROUNDS {
                return Err(LoginError::Protocol("too many login round trips".into()));
            }
            let req = Bhs::LoginRequest(LoginRequest {
                transit,
                continue_: false,
                csg,
                nsg: if transit { nsg } else { 0 },
                version_max: 0,
                version_min: 0,
                isid: self.cfg.isid,
                tsih: self.tsih,
                itt: 0,
                cid: self.cfg.cid,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            });
            pdu::write_pdu(self.stream, Digests::default(), &req, &[], &data)?;
            let h = pdu::read_header(self.stream, Digests::default(), LOGIN_MAX_DATA)?;
            let Bhs::LoginResponse(resp) = h.bhs else {
                if let Bhs::Reject(r) = h.bhs {
                    return Err(LoginError::Protocol(format!(
                        "target rejected the login request: {} (reason {:#04x})",
                        pdu::reject_reason::text(r.reason),
                        r.reason
                    )));
                }
                return Err(LoginError::Protocol(format!(
                    "unexpected opcode {:#04x} during login",
                    h.bhs.opcode()
                )));
            };
            let payload = pdu::read_data(self.stream, Digests::default(), h.data_len)?;
            if resp.status_class == 1 {
                let t = TextPairs::decode(&payload)?;
                let address = t
                    .get("TargetAddress")
                    .ok_or_else(|| LoginError::Protocol("redirect without TargetAddress".into()))?
                    .to_string();
                return Err(LoginError::Redirect {
                    address,
                    permanent: resp.status_detail == 2,
                });
            }
            if resp.status_class != 0 {
                return Err(LoginError::Refused {
                    class: resp.status_class,
                    detail: resp.status_detail,
                });
            }
            if resp.isid != self.cfg.isid || resp.itt != 0 {
                return Err(LoginError::Protocol(
                    "login response for another ISID or task".into(),
                ));
            }
            if resp.version_active != 0 {
                return Err(LoginError::Protocol(format!(
                    "unsupported protocol version {}",
                    resp.version_active
                )));
            }
            if !self.first && resp.stat_sn != self.exp_stat_sn {
                return Err(LoginError::Protocol(format!(
                    "login StatSN {} where {} was expected",
                    resp.stat_sn, self.exp_stat_sn
                )));
            }
            self.first = false;
            self.exp_stat_sn = resp.stat_sn.wrapping_add(1);
            self.exp_cmd_sn = resp.exp_cmd_sn;
            self.max_cmd_sn = resp.max_cmd_sn;
            if resp.csg != csg {
                return Err(LoginError::Protocol(
                    "login response in another stage".into(),
                ));
            }
            if collected.len() + payload.len() > MAX_TEXT_TOTAL {
                return Err(LoginError::Protocol("login text too long".into()));
            }
            collected.extend_from_slice(&payload);
            if resp.continue_ {
                // §11.13.2: more text follows; ask for it with an empty request.
                if resp.transit {
                    return Err(LoginError::Protocol(
                        "login response with both T and C".into(),
                    ));
                }
                data.clear();
                continue;
            }
            if resp.transit {
                if !transit || resp.nsg != nsg {
                    // The target may only transit when we asked to, and to a stage no further.
                    if !(transit && resp.nsg < nsg && resp.nsg > csg) {
                        return Err(LoginError::Protocol(
                            "unexpected login stage transition".into(),
                        ));
                    }
                }
                self.tsih = resp.tsih;
            }
            return Ok((resp, TextPairs::decode(&collected)?));
        }
    }
}

/// Logs in on a connected stream. On success the stream is in the full feature phase; on a
/// redirect returns [`LoginError::Redirect`] (the caller connects elsewhere, see
/// [`login_tcp`]).
pub fn login<S: Read + Write>(
    stream: &mut S,
    cfg: &LoginConfig,
) -> Result<SessionParams, LoginError> {
    let mut c = LoginConn {
        stream,
        cfg,
        cmd_sn: 1,
        exp_stat_sn: 0,
        exp_cmd_sn: 1,
        max_cmd_sn: 1,
        tsih: cfg.tsih,
        first: true,
        rounds: 0,
    };
    let mut neg = Negotiator::new(cfg);
    let mut tpgt = None;
    let mut note_tpgt = |t: &TextPairs| -> Result<(), LoginError> {
        if let Some(v) = t.get("TargetPortalGroupTag") {
            let n = text::parse_number(v)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| LoginError::Protocol("bad TargetPortalGroupTag".into()))?;
            tpgt = Some(n);
        }
        Ok(())
    };

    // Security stage (§6.3.1).
    let mut first_keys = TextPairs::new();
    first_keys.push("InitiatorName", cfg.initiator_name.clone());
    match &cfg.target_name {
        Some(t) => {
            first_keys.push("SessionType", "Normal");
            first_keys.push("TargetName", t.clone());
        }
        None => first_keys.push("SessionType", "Discovery"),
    }
    let csg;
    if cfg.mutual_chap.is_some() && cfg.chap.is_none() {
        return Err(LoginError::Negotiation(
            "mutual CHAP needs the initiator's CHAP credentials too".into(),
        ));
    }
    match &cfg.chap {
        None => {
            first_keys.push("AuthMethod", "None");
            let (resp, t) = match c.exchange(true, stage::SECURITY, stage::OPERATIONAL, &first_keys)
            {
                Err(LoginError::Refused {
                    class: 2,
                    detail: 1,
                }) => return Err(LoginError::Auth(NEEDS_CHAP)),
                r => r?,
            };
            note_tpgt(&t)?;
            match t.get("AuthMethod") {
                Some("None") | None => {}
                Some(_) => return Err(LoginError::Auth(NEEDS_CHAP)),
            }
            csg = after_transit(&mut c, resp, stage::SECURITY, stage::OPERATIONAL)?;
        }
        Some(chap) => {
            // With mutual CHAP the target must authenticate: do not let it choose None.
            first_keys.push(
                "AuthMethod",
                if cfg.mutual_chap.is_some() {
                    "CHAP"
                } else {
                    "CHAP,None"
                },
            );
            let (resp, t) = c.exchange(false, stage::SECURITY, stage::OPERATIONAL, &first_keys)?;
            note_tpgt(&t)?;
            match t.get("AuthMethod") {
                Some("CHAP") => {
                    let _ = resp;
                    csg = chap_exchange(&mut c, chap, cfg.mutual_chap.as_ref())?;
                }
                Some("None") if cfg.mutual_chap.is_none() => {
                    let (resp, _) =
                        c.exchange(true, stage::SECURITY, stage::OPERATIONAL, &TextPairs::new())?;
                    csg = after_transit(&mut c, resp, stage::SECURITY, stage::OPERATIONAL)?;
                }
                _ => return Err(LoginError::Auth("target does not agree to CHAP")),
            }
        }
    }

    // Operational stage (§6.3.2, §13).
    if csg == stage::OPERATIONAL {
        let mut keys = neg.offer();
        loop {
            let (resp, t) = c.exchange(true, stage::OPERATIONAL, stage::FULL_FEATURE, &keys)?;
            note_tpgt(&t)?;
            keys = neg.answer(&t)?;
            if resp.transit {
                if !keys.is_empty() {
                    return Err(LoginError::Protocol(
                        "target left the operational stage with keys unanswered".into(),
                    ));
                }
                break;
            }
        }
    } else if csg != stage::FULL_FEATURE {
        return Err(LoginError::Protocol(
            "login ended in an unknown stage".into(),
        ));
    }
    neg.finish()?;
    let n = neg.result;
    let params = SessionParams {
        initiator_name: cfg.initiator_name.clone(),
        target_name: cfg.target_name.clone().unwrap_or_default(),
        discovery: cfg.target_name.is_none(),
        isid: cfg.isid,
        tsih: c.tsih,
        cid: cfg.cid,
        target_portal_group_tag: tpgt,
        header_digest: n.header_digest,
        data_digest: n.data_digest,
        max_recv_data_segment_length: cfg.max_recv_data_segment_length,
        max_send_data_segment_length: n.max_send_dsl,
        first_burst_length: n.first_burst_length,
        max_burst_length: n.max_burst_length,
        immediate_data: n.immediate_data,
        initial_r2t: n.initial_r2t,
        max_outstanding_r2t: n.max_outstanding_r2t,
        data_pdu_in_order: n.data_pdu_in_order,
        data_sequence_in_order: n.data_sequence_in_order,
        error_recovery_level: n.error_recovery_level,
        default_time2wait: n.default_time2wait,
        default_time2retain: n.default_time2retain,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        exp_cmd_sn: c.exp_cmd_sn,
        max_cmd_sn: c.max_cmd_sn,
        next_itt: 1,
    };
    params.validate()?;
    Ok(params)
}

/// After a response to a transit request: the stage we are in now. If the target did not transit
/// yet (it may want another round, §6.3), repeat empty transit requests.
fn after_transit<S: Read + Write>(
    c: &mut LoginConn<'_, S>,
    mut resp: pdu::LoginResponse,
    csg: u8,
    nsg: u8,
) -> Result<u8, LoginError> {
    while !resp.transit {
        let (r, t) = c.exchange(true, csg, nsg, &TextPairs::new())?;
        if !t.is_empty() && csg == stage::SECURITY {
            return Err(LoginError::Protocol(
                "target sent unexpected security keys".into(),
            ));
        }
        resp = r;
    }
    Ok(resp.nsg)
}

/// CHAP (§12.1.3): answers the target's challenge and, with mutual CHAP, checks the target's
/// answer to ours. Returns the stage after the security stage.
fn chap_exchange<S: Read + Write>(
    c: &mut LoginConn<'_, S>,
    chap: &Chap,
    mutual: Option<&Chap>,
) -> Result<u8, LoginError> {
    let mut k = TextPairs::new();
    k.push("CHAP_A", "5");
    let (_, t) = c.exchange(false, stage::SECURITY, stage::OPERATIONAL, &k)?;
    if t.get("CHAP_A") != Some("5") {
        return Err(LoginError::Auth("target does not offer CHAP with MD5"));
    }
    let id = t
        .get("CHAP_I")
        .and_then(text::parse_number)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(LoginError::Auth("target sent no valid CHAP_I"))?;
    let challenge = t
        .get("CHAP_C")
        .and_then(|v| text::parse_binary(v, CHAP_MAX_CHALLENGE))
        .ok_or(LoginError::Auth("target sent no valid CHAP_C"))?;
    let mut k = TextPairs::new();
    k.push("CHAP_N", chap.user.clone());
    k.push(
        "CHAP_R",
        text::hex_value(&chap_response(id, &chap.secret, &challenge)),
    );
    let mut ours = None;
    if mutual.is_some() {
        let mut id = [0u8; 1];
        let mut ch = [0u8; CHAP_CHALLENGE_LEN];
        // Never send the target its own challenge back (reflection, §12.1.3).
        loop {
            random_bytes(&mut id);
            random_bytes(&mut ch);
            if ch[..] != challenge[..] {
                break;
            }
        }
        k.push("CHAP_I", id[0].to_string());
        k.push("CHAP_C", text::hex_value(&ch));
        ours = Some((id[0], ch));
    }
    let (resp, t) = match c.exchange(true, stage::SECURITY, stage::OPERATIONAL, &k) {
        Err(LoginError::Refused {
            class: 2,
            detail: 1,
        }) => {
            return Err(LoginError::Auth(
                "the target refused our CHAP response (wrong user name or secret)",
            ))
        }
        r => r?,
    };
    if let (Some(m), Some((id, ch))) = (mutual, ours) {
        let name = t.get("CHAP_N").ok_or(LoginError::Auth(
            "target did not answer the mutual CHAP challenge",
        ))?;
        if !m.user.is_empty() && name != m.user {
            return Err(LoginError::Auth(
                "target answered mutual CHAP with an unexpected name",
            ));
        }
        let r = t
            .get("CHAP_R")
            .and_then(|v| text::parse_binary(v, 64))
            .ok_or(LoginError::Auth("target sent no valid CHAP_R"))?;
        let expected = chap_response(id, &m.secret, &ch);
        if !constant_time_eq(&r, &expected) {
            return Err(LoginError::Auth(
                "the target's mutual CHAP response is wrong (target secret mismatch)",
            ));
        }
    } else if t.get("CHAP_R").is_some() {
        return Err(LoginError::Protocol(
            "unsolicited CHAP_R from the target".into(),
        ));
    }
    after_transit(c, resp, stage::SECURITY, stage::OPERATIONAL)
}

/// RFC 1994 §4.1: MD5(identifier || secret || challenge).
pub fn chap_response(id: u8, secret: &Secret, challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret.bytes());
    h.update(challenge);
    h.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The outcome of operational negotiation, starting from the RFC 7143 §13 defaults.
#[derive(Clone, Copy, Debug)]
struct Negotiated {
    header_digest: bool,
    data_digest: bool,
    max_send_dsl: u32,
    first_burst_length: u32,
    max_burst_length: u32,
    immediate_data: bool,
    initial_r2t: bool,
    max_outstanding_r2t: u32,
    data_pdu_in_order: bool,
    data_sequence_in_order: bool,
    error_recovery_level: u8,
    default_time2wait: u16,
    default_time2retain: u16,
}

struct Negotiator<'a> {
    cfg: &'a LoginConfig,
    result: Negotiated,
    /// Keys we offered and have not seen answered.
    pending: Vec<&'static str>,
    discovery: bool,
}

impl<'a> Negotiator<'a> {
    fn new(cfg: &'a LoginConfig) -> Self {
        Self {
            cfg,
            result: Negotiated {
                header_digest: false,
                data_digest: false,
                max_send_dsl: 8192,
                first_burst_length: 65536,
                max_burst_length: 262144,
                immediate_data: true,
                initial_r2t: true,
                max_outstanding_r2t: 1,
                data_pdu_in_order: true,
                data_sequence_in_order: true,
                error_recovery_level: 0,
                default_time2wait: 2,
                default_time2retain: 20,
            },
            pending: Vec::new(),
            discovery: cfg.target_name.is_none(),
        }
    }

    fn yes(b: bool) -> &'static str {
        if b {
            "Yes"
        } else {
            "No"
        }
    }

    /// Our value for a key, as we offer it.
    fn our_value(&self, key: &str) -> Option<String> {
        let c = self.cfg;
        Some(match key {
            "HeaderDigest" => c.header_digest.offer().into(),
            "DataDigest" => c.data_digest.offer().into(),
            "MaxRecvDataSegmentLength" => c.max_recv_data_segment_length.to_string(),
            "ErrorRecoveryLevel" => "0".into(),
            "DefaultTime2Wait" => "0".into(),
            "DefaultTime2Retain" => "0".into(),
            "MaxConnections" => "1".into(),
            "InitialR2T" => Self::yes(c.initial_r2t).into(),
            "ImmediateData" => Self::yes(c.immediate_data).into(),
            "MaxBurstLength" => c.max_burst_length.to_string(),
            "FirstBurstLength" => c.first_burst_length.min(c.max_burst_length).to_string(),
            "MaxOutstandingR2T" => c.max_outstanding_r2t.max(1).to_string(),
            "DataPDUInOrder" | "DataSequenceInOrder" => "Yes".into(),
            _ => return None,
        })
    }

    fn offer(&mut self) -> TextPairs {
        let mut keys: Vec<&'static str> = vec![
            "HeaderDigest",
            "DataDigest",
            "MaxRecvDataSegmentLength",
            "ErrorRecoveryLevel",
            "DefaultTime2Wait",
            "DefaultTime2Retain",
        ];
        if !self.discovery {
            // Session-wide keys that are irrelevant to discovery sessions (§13).
            keys.extend([
                "MaxConnections",
                "InitialR2T",
                "ImmediateData",
                "MaxBurstLength",
                "FirstBurstLength",
                "MaxOutstandingR2T",
                "DataPDUInOrder",
                "DataSequenceInOrder",
            ]);
        }
        let mut t = TextPairs::new();
        for k in keys {
            if let Some(v) = self.our_value(k) {
                t.push(k, v);
                if k != "MaxRecvDataSegmentLength" {
                    self.pending.push(k);
                }
            }
        }
        t
    }

    /// Applies the target's keys; returns the keys we must send back (answers to keys the target
    /// offered on its own).
    fn answer(&mut self, t: &TextPairs) -> Result<TextPairs, LoginError> {
        let mut reply = TextPairs::new();
        for (k, v) in t.iter() {
            let offered = if let Some(i) = self.pending.iter().position(|p| *p == k) {
                self.pending.remove(i);
                true
            } else {
                false
            };
            match k {
                // Declarative (§13.12): the target's receive limit is our send limit.
                "MaxRecvDataSegmentLength" => {
                    self.result.max_send_dsl = num(k, v, 512, pdu::MAX_DATA_SEGMENT as u64)? as u32;
                    continue;
                }
                "TargetAlias" | "TargetPortalGroupTag" | "TargetAddress" => continue,
                _ => {}
            }
            if v == "NotUnderstood" || v == "Irrelevant" || v == "Reject" {
                if offered {
                    // Keep the RFC default for this key.
                    continue;
                }
                return Err(LoginError::Protocol(format!("target sent {k}={v} unasked")));
            }
            let Some(ours) = self.our_value(k) else {
                // §6.2: unknown keys are answered NotUnderstood.
                reply.push(k, "NotUnderstood");
                continue;
            };
            let r = &mut self.result;
            let result: String = match k {
                "HeaderDigest" | "DataDigest" => {
                    let choice = if offered {
                        if !ours.split(',').any(|o| o == v) {
                            return Err(LoginError::Negotiation(format!(
                                "the target answered {k}={v} to our offer {k}={ours}"
                            )));
                        }
                        v.to_string()
                    } else {
                        // Pick the first of our preferences the target offers.
                        let theirs: Vec<&str> = v.split(',').collect();
                        ours.split(',')
                            .find(|o| theirs.contains(o))
                            .ok_or_else(|| {
                                LoginError::Negotiation(format!("no common {k} with the target"))
                            })?
                            .to_string()
                    };
                    let on = choice == "CRC32C";
                    if k == "HeaderDigest" {
                        r.header_digest = on;
                    } else {
                        r.data_digest = on;
                    }
                    choice
                }
                "MaxBurstLength" | "FirstBurstLength" => {
                    let v = num(k, v, 512, pdu::MAX_DATA_SEGMENT as u64)? as u32;
                    let mine: u32 = ours.parse().unwrap_or(512);
                    if offered && v > mine {
                        return Err(LoginError::Negotiation(format!(
                            "target answered {k}={v}, above our {mine}"
                        )));
                    }
                    let m = v.min(mine);
                    if k == "MaxBurstLength" {
                        r.max_burst_length = m;
                    } else {
                        r.first_burst_length = m;
                    }
                    m.to_string()
                }
                "MaxOutstandingR2T" => {
                    let v = num(k, v, 1, 65535)? as u32;
                    r.max_outstanding_r2t = v.min(self.cfg.max_outstanding_r2t.max(1));
                    r.max_outstanding_r2t.to_string()
                }
                "MaxConnections" => {
                    num(k, v, 1, 65535)?;
                    "1".into()
                }
                "ErrorRecoveryLevel" => {
                    num(k, v, 0, 2)?;
                    r.error_recovery_level = 0;
                    "0".into()
                }
                "DefaultTime2Wait" => {
                    let v = num(k, v, 0, 3600)? as u16;
                    r.default_time2wait = v;
                    v.to_string()
                }
                "DefaultTime2Retain" => {
                    num(k, v, 0, 3600)?;
                    r.default_time2retain = 0;
                    "0".into()
                }
                "InitialR2T" => {
                    // OR function (§13.10).
                    r.initial_r2t = self.cfg.initial_r2t || yes_no(k, v)?;
                    Self::yes(r.initial_r2t).into()
                }
                "ImmediateData" | "DataPDUInOrder" | "DataSequenceInOrder" => {
                    // AND functions (§13.11, §13.18, §13.19).
                    let mine = ours == "Yes";
                    let b = mine && yes_no(k, v)?;
                    match k {
                        "ImmediateData" => r.immediate_data = b,
                        "DataPDUInOrder" => r.data_pdu_in_order = b,
                        _ => r.data_sequence_in_order = b,
                    }
                    Self::yes(b).into()
                }
                _ => ours,
            };
            if !offered {
                reply.push(k, result);
            }
        }
        Ok(reply)
    }

    fn finish(&mut self) -> Result<(), LoginError> {
        let r = &mut self.result;
        // FirstBurstLength must not exceed MaxBurstLength (§13.14).
        r.first_burst_length = r.first_burst_length.min(r.max_burst_length);
        if self.cfg.header_digest == DigestPolicy::Crc32c && !r.header_digest
            || self.cfg.data_digest == DigestPolicy::Crc32c && !r.data_digest
        {
            return Err(LoginError::Negotiation(
                "the target does not agree to CRC32C digests".into(),
            ));
        }
        if !r.data_pdu_in_order || !r.data_sequence_in_order {
            return Err(LoginError::Negotiation(
                "the target requires out-of-order data, which is not supported".into(),
            ));
        }
        Ok(())
    }
}

fn num(k: &str, v: &str, min: u64, max: u64) -> Result<u64, LoginError> {
    text::parse_number(v)
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| LoginError::Negotiation(format!("bad value for {k}")))
}

fn yes_no(k: &str, v: &str) -> Result<bool, LoginError> {
    match v {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(LoginError::Negotiation(format!("bad value for {k}"))),
    }
}

/// Parses a TargetAddress value (`host[:port][,tpgt]`, §13.8; IPv6 in brackets) into a
/// socket address (numeric hosts only: no name resolution of target-supplied strings).
/// IPv4-mapped IPv6 addresses are returned as IPv4, so that policy checks compare like with like.
pub fn parse_target_address(v: &str) -> Option<SocketAddr> {
    let hostport = v.split(',').next()?;
    let a = if let Ok(a) = hostport.parse::<SocketAddr>() {
        a
    } else {
        let host = hostport.trim_start_matches('[').trim_end_matches(']');
        SocketAddr::new(host.parse::<std::net::IpAddr>().ok()?, 3260)
    };
    Some(SocketAddr::new(a.ip().to_canonical(), a.port()))
}

/// Connects to `portal` and logs in, following up to `max_redirects` login redirections to
/// addresses that `allow` accepts (the daemon only allows configured portals). Returns the
/// connected stream (in the full feature phase, TCP_NODELAY set, [`STALL_TIMEOUT`]) and the
/// negotiated parameters.
pub fn login_tcp(
    portal: SocketAddr,
    cfg: &LoginConfig,
    timeout: Duration,
    max_redirects: usize,
    allow: &dyn Fn(&SocketAddr) -> bool,
) -> Result<(TcpStream, SessionParams), LoginError> {
    let mut addr = portal;
    for _ in 0..=max_redirects {
        let mut s = connect(addr, timeout)?;
        match login(&mut s, cfg) {
            Ok(p) => {
                set_stall_timeout(&s).map_err(PduError::Io)?;
                return Ok((s, p));
            }
            Err(LoginError::Redirect { address, .. }) => {
                let next = parse_target_address(&address)
                    .ok_or_else(|| LoginError::RedirectNotAllowed(address.clone()))?;
                if !allow(&next) {
                    return Err(LoginError::RedirectNotAllowed(address));
                }
                addr = next;
            }
            Err(e) => return Err(e),
        }
    }
    Err(LoginError::TooManyRedirects)
}

/// How long a connection in the full feature phase may go without moving a byte where one is
/// owed before it is given up as lost (then replaced and its commands reissued): a target
/// that stops part-way through a PDU (whoever reads it, a LUN's thread or a request queue's,
/// would otherwise hold the LUN's lock for good), stops reading what we send, or keeps the
/// CmdSN window closed or a task management request unanswered without sending anything.
/// Readers only read when the socket is readable, so an idle connection never times out.
/// Linux's virtio-scsi never times a command out itself (its `eh_timed_out` only resets the
/// timer: the device is to answer every command), so bounds like this one are the daemon's
/// own; 10 s keeps a reissued command well within the 30 s a SCSI layer allows elsewhere.
/// (The `--help` text, `LUN_HELP` in config/cli.rs, and docs/iscsi.md name this value.)
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets [`STALL_TIMEOUT`] as the socket's receive and send timeouts (`SO_RCVTIMEO`,
/// `SO_SNDTIMEO`): done by whoever hands a connection to the full feature phase (the socket
/// options travel with the descriptor; the worker cannot set them).
pub fn set_stall_timeout(s: &TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(STALL_TIMEOUT))?;
    s.set_write_timeout(Some(STALL_TIMEOUT))
}

/// Connects with a timeout, sets TCP_NODELAY (PDUs are written whole) and I/O timeouts for the
/// login.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, LoginError> {
    let err = |source| LoginError::Connect {
        portal: addr.to_string(),
        source,
    };
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(err)?;
    s.set_nodelay(true).map_err(err)?;
    s.set_read_timeout(Some(timeout)).map_err(err)?;
    s.set_write_timeout(Some(timeout)).map_err(err)?;
    Ok(s)
}

/// Resolves `host:port` (used by tests and tools; the daemon resolves configured portals itself).
pub fn resolve(portal: &str) -> Result<SocketAddr, LoginError> {
    portal
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| LoginError::Connect {
            portal: portal.to_string(),
            source: std::io::ErrorKind::NotFound.into(),
        })
}

/// A target found by SendTargets discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    /// TargetAddress values (`host:port,tpgt`); empty means "the portal we asked".
    pub addresses: Vec<String>,
}

/// SendTargets discovery (Appendix C): on a stream logged in as a discovery session
/// (`cfg.target_name == None`), asks for all targets, then logs out.
pub fn send_targets<S: Read + Write>(
    stream: &mut S,
    params: &mut SessionParams,
) -> Result<Vec<DiscoveredTarget>, LoginError> {
    let digests = params.digests();
    let mut req = TextPairs::new();
    req.push("SendTargets", "All");
    let mut data = req.encode();
    let itt = params.next_itt;
    params.next_itt = params.next_itt.wrapping_add(1);
    let mut ttt = RESERVED_TAG;
    let mut collected = Vec::new();
    for _ in 0..1024 {
        let bhs = Bhs::TextRequest(pdu::TextRequest {
            immediate: false,
            final_: true,
            continue_: false,
            lun: 0,
            itt,
            ttt,
            cmd_sn: params.cmd_sn,
            exp_stat_sn: params.exp_stat_sn,
        });
        pdu::write_pdu(stream, digests, &bhs, &[], &data)?;
        params.cmd_sn = params.cmd_sn.wrapping_add(1);
        let h = pdu::read_header(stream, digests, params.max_recv_data_segment_length)?;
        let payload = pdu::read_data(stream, digests, h.data_len)?;
        let Bhs::TextResponse(r) = h.bhs else {
            return Err(LoginError::Protocol(format!(
                "unexpected opcode {:#04x} during discovery",
                h.bhs.opcode()
            )));
        };
        if r.itt != itt {
            return Err(LoginError::Protocol(
                "text response for another task".into(),
            ));
        }
        params.exp_stat_sn = r.stat_sn.wrapping_add(1);
        params.exp_cmd_sn = r.exp_cmd_sn;
        params.max_cmd_sn = r.max_cmd_sn;
        if collected.len() + payload.len() > MAX_TEXT_TOTAL {
            return Err(LoginError::Protocol("SendTargets response too long".into()));
        }
        collected.extend_from_slice(&payload);
        if r.final_ && !r.continue_ {
            let mut out: Vec<DiscoveredTarget> = Vec::new();
            for (k, v) in TextPairs::decode(&collected)?.iter() {
                match k {
                    "TargetName" => out.push(DiscoveredTarget {
                        name: v.to_string(),
                        addresses: Vec::new(),
                    }),
                    "TargetAddress" => {
                        if let Some(t) = out.last_mut() {
                            t.addresses.push(v.to_string());
                        }
                    }
                    _ => {}
                }
            }
            logout_simple(stream, params)?;
            return Ok(out);
        }
        // §11.11: continue with an empty request carrying the target's TTT.
        ttt = r.ttt;
        data.clear();
    }
    Err(LoginError::Protocol(
        "SendTargets response never ended".into(),
    ))
}

/// Logout of a session with no task outstanding (discovery).
fn logout_simple<S: Read + Write>(
    stream: &mut S,
    params: &mut SessionParams,
) -> Result<(), LoginError> {
    let digests = params.digests();
    let itt = params.next_itt;
    params.next_itt = params.next_itt.wrapping_add(1);
    let bhs = Bhs::LogoutRequest(pdu::LogoutRequest {
        immediate: true,
        reason: 0,
        itt,
        cid: params.cid,
        cmd_sn: params.cmd_sn,
        exp_stat_sn: params.exp_stat_sn,
    });
    pdu::write_pdu(stream, digests, &bhs, &[], &[])?;
    let h = pdu::read_header(stream, digests, params.max_recv_data_segment_length)?;
    pdu::skip_data(stream, digests, h.data_len)?;
    match h.bhs {
        Bhs::LogoutResponse(r) if r.itt == itt && r.response == 0 => Ok(()),
        Bhs::LogoutResponse(r) => Err(LoginError::Protocol(format!(
            "logout refused (response {})",
            r.response
        ))),
        other => Err(LoginError::Protocol(format!(
            "unexpected opcode {:#04x} awaiting logout",
            other.opcode()
        ))),
    }
}

/// Convenience: connect, log in as a discovery session, SendTargets, log out.
pub fn discover(
    portal: SocketAddr,
    cfg: &LoginConfig,
    timeout: Duration,
) -> Result<Vec<DiscoveredTarget>, LoginError> {
    let mut cfg = cfg.clone();
    cfg.target_name = None;
    let mut s = connect(portal, timeout)?;
    let mut p = login(&mut s, &cfg)?;
    send_targets(&mut s, &mut p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1994 CHAP with MD5, checked against an independently computed value
    /// (`printf '\x01secret\x00\x01\x02\x03' | md5sum`).
    #[test]
    fn chap_md5() {
        let r = chap_response(1, &Secret::new(b"secret".to_vec()), &[0, 1, 2, 3]);
        assert_eq!(text::hex_value(&r), "0xe82cb2ed1efe04893c9cf73d4dd12e2d");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Chap {
            user: "alice".into(),
            secret: Secret::new(b"hunter2-very-secret".to_vec()),
        };
        let mut cfg = LoginConfig::new("iqn.x", Some("iqn.y".into()));
        cfg.chap = Some(c.clone());
        cfg.mutual_chap = Some(c);
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn negotiation_functions() {
        let mut cfg = LoginConfig::new("iqn.x", Some("iqn.y".into()));
        cfg.header_digest = DigestPolicy::PreferCrc32c;
        cfg.initial_r2t = false;
        let mut n = Negotiator::new(&cfg);
        let offer = n.offer();
        assert_eq!(offer.get("HeaderDigest"), Some("CRC32C,None"));
        assert_eq!(offer.get("MaxRecvDataSegmentLength"), Some("262144"));
        let mut t = TextPairs::new();
        t.push("HeaderDigest", "CRC32C");
        t.push("DataDigest", "None");
        t.push("MaxRecvDataSegmentLength", "8192");
        t.push("MaxBurstLength", "16384");
        t.push("FirstBurstLength", "8192");
        t.push("InitialR2T", "Yes");
        t.push("ImmediateData", "No");
        t.push("MaxOutstandingR2T", "1");
        t.push("DataPDUInOrder", "Yes");
        t.push("DataSequenceInOrder", "Yes");
        t.push("ErrorRecoveryLevel", "0");
        t.push("MaxConnections", "1");
        t.push("DefaultTime2Wait", "2");
        t.push("DefaultTime2Retain", "0");
        // A key the target proposes on its own, and an unknown one.
        t.push("X-vendor-key", "1");
        let reply = n.answer(&t).unwrap();
        assert_eq!(reply.get("X-vendor-key"), Some("NotUnderstood"));
        n.finish().unwrap();
        let r = n.result;
        assert!(r.header_digest && !r.data_digest);
        assert_eq!(r.max_send_dsl, 8192);
        assert_eq!(r.max_burst_length, 16384);
        assert_eq!(r.first_burst_length, 8192);
        assert!(r.initial_r2t && !r.immediate_data);

        // A digest we did not offer, a burst above ours: refused.
        let mut n = Negotiator::new(&cfg);
        n.offer();
        let mut t = TextPairs::new();
        t.push("DataDigest", "CRC32C");
        assert!(matches!(n.answer(&t), Err(LoginError::Negotiation(_))));
        let mut n = Negotiator::new(&cfg);
        n.offer();
        let mut t = TextPairs::new();
        t.push("MaxBurstLength", "99999999");
        assert!(n.answer(&t).is_err());
        // Required CRC32C refused by the target.
        let mut cfg2 = cfg.clone();
        cfg2.data_digest = DigestPolicy::Crc32c;
        let mut n = Negotiator::new(&cfg2);
        n.offer();
        let mut t = TextPairs::new();
        t.push("DataDigest", "Reject");
        n.answer(&t).unwrap();
        assert!(n.finish().is_err());
        // Out-of-order data is refused.
        let mut n = Negotiator::new(&cfg);
        n.offer();
        let mut t = TextPairs::new();
        t.push("DataPDUInOrder", "No");
        n.answer(&t).unwrap();
        assert!(n.finish().is_err());
        // Target-initiated digest negotiation picks our first preference it offers.
        let mut n = Negotiator::new(&cfg);
        let mut t = TextPairs::new();
        t.push("HeaderDigest", "None,CRC32C");
        let reply = n.answer(&t).unwrap();
        assert_eq!(reply.get("HeaderDigest"), Some("CRC32C"));
    }

    /// A "target" that answers with arbitrary bytes: the login fails with an error, never a
    /// panic, a hang or an unbounded allocation.
    #[test]
    fn random_login_responses_never_panic() {
        struct Hostile {
            input: std::io::Cursor<Vec<u8>>,
        }
        impl Read for Hostile {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.input.read(b)
            }
        }
        impl Write for Hostile {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut x = 0xdead_beef_cafe_f00du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cfg = LoginConfig::new("iqn.i", Some("iqn.t".into()));
        for i in 0..3000 {
            cfg.chap = (i % 2 == 0).then(|| Chap {
                user: "u".into(),
                secret: Secret::new(b"s".to_vec()),
            });
            let mut input = Vec::new();
            // A few plausible login responses with random text, then random bytes.
            for _ in 0..(next() % 4) {
                let text = match next() % 4 {
                    0 => b"AuthMethod=CHAP\0".to_vec(),
                    1 => b"CHAP_A=5\0CHAP_I=7\0CHAP_C=0x0102\0".to_vec(),
                    2 => b"MaxRecvDataSegmentLength=512\0HeaderDigest=None\0".to_vec(),
                    _ => (0..next() % 64).map(|_| next() as u8).collect(),
                };
                let bhs = Bhs::LoginResponse(pdu::LoginResponse {
                    transit: next() % 2 == 0,
                    continue_: next() % 5 == 0,
                    csg: (next() % 4) as u8,
                    nsg: (next() % 4) as u8,
                    isid: cfg.isid,
                    tsih: 1,
                    stat_sn: (next() % 3) as u32,
                    status_class: (next() % 5 == 0) as u8,
                    ..Default::default()
                });
                pdu::write_pdu(&mut input, Digests::default(), &bhs, &[], &text).unwrap();
            }
            input.extend((0..next() % 100).map(|_| next() as u8));
            let mut h = Hostile {
                input: std::io::Cursor::new(input),
            };
            assert!(login(&mut h, &cfg).is_err());
        }
    }

    #[test]
    fn target_addresses() {
        assert_eq!(
            parse_target_address("127.0.0.1:3261,1"),
            Some("127.0.0.1:3261".parse().unwrap())
        );
        assert_eq!(
            parse_target_address("[::1]:3262,1"),
            Some("[::1]:3262".parse().unwrap())
        );
        assert_eq!(
            parse_target_address("10.0.0.1"),
            Some("10.0.0.1:3260".parse().unwrap())
        );
        assert_eq!(
            parse_target_address("[::ffff:127.0.0.1]:3263,1"),
            Some("127.0.0.1:3263".parse().unwrap())
        );
        assert_eq!(parse_target_address("example.com:3260"), None);
    }

    #[test]
    fn params_serialise_and_validate() {
        let p = SessionParams {
            initiator_name: "iqn.i".into(),
            target_name: "iqn.t".into(),
            discovery: false,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 7,
            cid: 0,
            target_portal_group_tag: Some(1),
            header_digest: true,
            data_digest: false,
            max_recv_data_segment_length: 262144,
            max_send_data_segment_length: 8192,
            first_burst_length: 65536,
            max_burst_length: 262144,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 0,
            cmd_sn: 1,
            exp_stat_sn: 2,
            exp_cmd_sn: 1,
            max_cmd_sn: 32,
            next_itt: 1,
        };
        let s = serde_json::to_string(&p).unwrap();
        let q: SessionParams = serde_json::from_str(&s).unwrap();
        assert_eq!(p, q);
        assert_eq!(SessionParams::decode(&p.encode()).unwrap(), p);
        assert!(SessionParams::decode(b"{").is_err());
        assert!(SessionParams::decode(&vec![b' '; MAX_PARAMS_LEN + 1]).is_err());
        q.validate().unwrap();
        let mut bad = p.clone();
        bad.max_send_data_segment_length = 1 << 24;
        assert!(bad.validate().is_err());
        let mut bad = p.clone();
        bad.first_burst_length = bad.max_burst_length + 1;
        assert!(bad.validate().is_err());
    }
}
