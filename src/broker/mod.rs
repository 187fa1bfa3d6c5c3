//! The fd broker between the supervisor and the worker (a SOCK_SEQPACKET pair, JSON envelopes,
//! SCM_RIGHTS). Placeholder until the broker itself lands: only the management messages
//! ([`manage`]) exist here so far.

pub mod manage;
