//! The thread that starts iSCSI LUN threads at run time (`add-lun` of an `iscsi://` source).
//!
//! Seccomp filters stack and a thread inherits its creator's: a LUN thread started by the
//! broker thread (which handles `add-lun`) would carry `worker-broker` below its own
//! `worker-iscsi`, and every socket call it makes would have to pass both. Like the LUN threads
//! of start-up, which the main thread starts, those of run time are started by a thread that
//! has only the process-wide `worker-main` filter: this one, `vus-spawn`, started with the
//! serving loop when a management socket is configured. It runs nothing but
//! [`IscsiLun::start`] for the jobs the broker thread hands it (a handover the supervisor
//! made), so it parses nothing from a guest or the front-end.

use std::{
    io,
    sync::{
        mpsc::{self, Sender, SyncSender},
        Arc, Mutex,
    },
    thread,
};

use crate::block::iscsi::{IscsiHandover, IscsiLun, Reconnect};

/// Name of the thread (`ps`, the confinement tests).
pub const SPAWN_THREAD_NAME: &str = "vus-spawn";

struct Job {
    handover: IscsiHandover,
    reconnect: Box<dyn Reconnect>,
    reply: SyncSender<io::Result<Arc<IscsiLun>>>,
}

/// The broker thread's way to the spawning thread.
pub struct IscsiStarter {
    tx: Mutex<Sender<Job>>,
}

impl IscsiStarter {
    /// Starts the spawning thread (from the main thread, under `worker-main` only).
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name(SPAWN_THREAD_NAME.into())
            .spawn(move || {
                // No role of its own (see the module comment); ends with the process, or
                // when the broker thread's handle goes.
                while let Ok(job) = rx.recv() {
                    let _ = job
                        .reply
                        .send(IscsiLun::start(&job.handover, job.reconnect));
                }
            })?;
        Ok(Self { tx: Mutex::new(tx) })
    }

    /// Starts a LUN thread on `handover`'s connection and waits for it.
    pub fn start_lun(
        &self,
        handover: IscsiHandover,
        reconnect: Box<dyn Reconnect>,
    ) -> io::Result<Arc<IscsiLun>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || io::Error::other("the spawning thread is gone");
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job {
                handover,
                reconnect,
                reply,
            })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}
