//! `--aio=sync`: the engine that takes nothing, so that every command's I/O runs to completion
//! on the queue thread, through the queue loop's one synchronous fallback (the same path the
//! other engines use for what they cannot take).

use std::{io, os::fd::RawFd};

use super::{Engine, Op};

/// Runs nothing asynchronously; no thread, no ring, no system call of its own.
#[derive(Debug, Default)]
pub struct InlineEngine;

impl Engine for InlineEngine {
    fn accepts(&self, _fd: RawFd, _fixed: Option<u32>) -> bool {
        false
    }

    fn push(&mut self, _op: &Op) -> bool {
        false
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, _out: &mut Vec<(u64, i32)>) {}

    fn wait(&mut self, _kick_fd: Option<RawFd>) -> io::Result<bool> {
        // Nothing is ever in flight, so the queue loop never waits for a completion here.
        Ok(false)
    }

    fn ready(&mut self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "inline"
    }
}
