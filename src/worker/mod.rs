//! The jailed worker process: the vhost-user backend, the serving loop and the bus it serves.

pub mod assemble;
pub mod broker;
pub mod guest_memory;
pub mod inflight;
pub mod manage;
mod medium;
pub mod serve;
pub mod spawner;
pub mod startup;
pub mod vhost_user;
