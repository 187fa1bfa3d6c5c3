//! A TCP relay on 127.0.0.1 between an initiator and a target that can be told to stall: once
//! armed, it passes on only the first few bytes the target sends next on a connection and
//! then nothing more (the connection stays open), as a target or a network path that stops
//! part-way through a PDU would. Connections made afterwards (a reconnection) are relayed
//! whole. Used by the daemon's iSCSI LUN tests to prove that such a stall is bounded.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
};

/// What the relay's threads share with the test.
#[derive(Default)]
struct State {
    /// Pass on only `stall_after` bytes of the next target → initiator data, then nothing.
    armed: AtomicBool,
    stall_after: AtomicUsize,
    /// Connections stalled so far.
    stalled: AtomicUsize,
    /// Connections accepted so far.
    accepted: AtomicUsize,
}

pub struct StallingRelay {
    pub port: u16,
    state: Arc<State>,
}

impl StallingRelay {
    /// Listens on a free port of 127.0.0.1 and relays every connection to `target`. The
    /// threads end with their connections (the listener's with the test process).
    pub fn start(target: SocketAddr) -> StallingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let s = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                s.accepted.fetch_add(1, Ordering::SeqCst);
                relay(client, server, s.clone());
            }
        });
        StallingRelay { port, state }
    }

    /// The next data the target sends (on whichever connection) is passed on only up to
    /// `bytes` bytes; that connection then relays nothing more towards the initiator.
    pub fn stall_after(&self, bytes: usize) {
        self.state.stall_after.store(bytes, Ordering::SeqCst);
        self.state.armed.store(true, Ordering::SeqCst);
    }

    /// Connections stalled so far.
    pub fn stalled(&self) -> usize {
        self.state.stalled.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

fn relay(client: TcpStream, server: TcpStream, state: Arc<State>) {
    let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Initiator → target: whole, until either side closes.
    thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
        let _ = s_out.shutdown(Shutdown::Both);
    });
    let (mut s_in, mut c_out) = (server, client);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut stalled = false;
        loop {
            let n = match s_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if stalled {
                // Read and dropped, so that the target is not blocked; the initiator's side
                // stays open and silent.
                continue;
            }
            let mut pass = n;
            if state.armed.swap(false, Ordering::SeqCst) {
                pass = n.min(state.stall_after.load(Ordering::SeqCst));
                stalled = true;
                state.stalled.fetch_add(1, Ordering::SeqCst);
            }
            if c_out.write_all(&buf[..pass]).is_err() {
                break;
            }
        }
        // The initiator's side closes only when the target's does (the initiator closed
        // its own, which the other thread passed on).
        let _ = c_out.shutdown(Shutdown::Both);
    });
}
