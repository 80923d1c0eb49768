//! The zero-downtime upgrade's handover of the listening sockets, in both processes.
//!
//! Pingora keeps a table of its listening sockets (address to descriptor) that every
//! listening service reads before it binds. The process started with `--upgrade`
//! receives the running process's sockets on the upgrade socket (Pingora's wire
//! format: the addresses, space-separated, with the descriptors in one `SCM_RIGHTS`
//! message, [`Waiting`]), at most [`WAIT`]; the [`Handover`] puts them into Pingora's table
//! before any service listens, so Pingora takes them over instead of binding. The running
//! process, on SIGQUIT, [`Handover::send`]s its table itself, so that it knows whether the
//! new process has the sockets: if not, it keeps serving; if so, the table is emptied (the
//! sockets are the new process's) and it drains.

use std::collections::HashSet;
use std::io::{ErrorKind, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use pingora::server::{Fds, ListenFds};

/// How long a process started with `--upgrade` waits for the sockets.
pub const WAIT: Duration = Duration::from_secs(5);

/// Listening sockets as Pingora's table holds them: addresses, and their descriptors in the
/// same order.
pub type Sockets = (Vec<String>, Vec<RawFd>);

/// Pingora's table of listening sockets, and the sockets received for it.
#[derive(Default)]
pub struct Handover {
    /// Pingora's table, as every service is given it (the same one for all).
    table: OnceLock<ListenFds>,
    /// Sockets from the previous process, until the first service puts them in the table.
    received: Mutex<Option<Sockets>>,
}

impl Handover {
    pub fn new(received: Option<Sockets>) -> Arc<Self> {
        Arc::new(Handover {
            table: OnceLock::new(),
            received: Mutex::new(received),
        })
    }

    /// A service starts with Pingora's table: note it, and put the received sockets in it
    /// before the service looks for its own.
    pub fn adopt(&self, table: &ListenFds) {
        let _ = self.table.set(table.clone());
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((binds, fds)) = received.take() {
            table.lock().deserialize(binds, fds);
        }
    }

    /// Send every listening socket to the process waiting on `path`. Once it has them, this
    /// process's table is empty: the sockets are the new process's to accept on.
    pub fn send(&self, path: &str) -> Result<(), String> {
        let table = self.table.get().ok_or("no listener has started yet")?;
        let mut fds = table.lock();
        if fds.is_empty() {
            return Err("no listening socket to hand over".into());
        }
        fds.send_to_sock(path)
            .map_err(|e| format!("cannot send the sockets to {path}: {e}"))?;
        *fds = Fds::new();
        Ok(())
    }
}

/// Most descriptors one handover carries.
const MAX_FDS: usize = 32;

/// The upgrade socket of a process started with `--upgrade`, listening.
pub struct Waiting {
    listener: UnixListener,
    path: String,
}

impl Waiting {
    /// Listen on `path` (mode 0600) for the running process's sockets.
    pub fn bind(path: &str) -> Result<Waiting, String> {
        // A socket left by a process that died is in the way.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on {path}: {e}"))?;
        // The runtime directory is private already; the socket is too.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        Ok(Waiting {
            listener,
            path: path.to_string(),
        })
    }

    /// Wait (at most `limit`) for the sockets; keep those of the `expected` addresses and
    /// close the others. `Err` says why none arrived; the socket is gone either way.
    pub fn receive(self, expected: &HashSet<String>, limit: Duration) -> Result<Sockets, String> {
        let conn = accept_within(&self.listener, &self.path, limit);
        drop(self.listener);
        let conn = conn?.ok_or_else(|| format!("no sockets arrived within {} s", limit.as_secs()))?;
        receive_on(&conn, expected)
    }
}

/// The sockets of the `expected` addresses sent on `conn`; the others are closed.
fn receive_on(conn: &UnixStream, expected: &HashSet<String>) -> Result<Sockets, String> {
    let (binds, fds) = read_sockets(conn)?;
    let mut kept = (Vec::new(), Vec::new());
    for (bind, fd) in binds.into_iter().zip(fds) {
        if expected.contains(&bind) {
            kept.0.push(bind);
            kept.1.push(fd);
        } else {
            // An address this configuration does not listen on would take connections
            // that nobody accepts.
            // SAFETY: the descriptor was just received and nothing else owns it.
            unsafe { libc::close(fd) };
        }
    }
    Ok(kept)
}

/// The one connection of the handover, or None once `limit` is over. The socket's name is
/// removed first when giving up, so that no sender can connect after the last look.
fn accept_within(listener: &UnixListener, path: &str, limit: Duration) -> Result<Option<UnixStream>, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{path}: {e}"))?;
    let deadline = Instant::now() + limit;
    let mut last_look = false;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = std::fs::remove_file(path);
                return Ok(Some(conn));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(format!("{path}: {e}"));
            }
        }
        if last_look {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            let _ = std::fs::remove_file(path);
            last_look = true;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The addresses and descriptors of one handover message.
fn read_sockets(conn: &UnixStream) -> Result<Sockets, String> {
    let failed = |why: &dyn std::fmt::Display| format!("the handover failed: {why}");
    conn.set_nonblocking(false).map_err(|e| failed(&e))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| failed(&e))?;
    let mut payload = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut payload)];
        let msg = recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| failed(&e))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| failed(&e))? {
            if let ControlMessageOwned::ScmRights(mut received) = c {
                fds.append(&mut received);
            }
        }
        (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_CTRUNC))
    };
    let binds: Vec<String> = std::str::from_utf8(payload.get(..bytes).unwrap_or_default())
        .unwrap_or_default()
        .split_ascii_whitespace()
        .map(String::from)
        .collect();
    if truncated || binds.len() != fds.len() || fds.is_empty() {
        for fd in fds {
            // SAFETY: the descriptor was just received and nothing else owns it.
            unsafe { libc::close(fd) };
        }
        return Err(failed(&format!(
            "{} addresses, and descriptors that do not match them",
            binds.len()
        )));
    }
    Ok((binds, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_sent_as_pingora_sends_them_arrive_and_unexpected_ones_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock").to_string_lossy().into_owned();
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (
            a.local_addr().unwrap().to_string(),
            b.local_addr().unwrap().to_string(),
        );
        let mut table = Fds::new();
        table.add(a_addr.clone(), a.as_raw_fd());
        table.add(b_addr.clone(), b.as_raw_fd());
        let sender = {
            let path = path.clone();
            std::thread::spawn(move || {
                // Pingora's sender retries until the receiving socket exists.
                table.send_to_sock(path.as_str()).unwrap();
            })
        };
        let expected = HashSet::from([a_addr.clone()]);
        let waiting = Waiting::bind(&path).unwrap();
        let (binds, fds) = waiting.receive(&expected, Duration::from_secs(10)).unwrap();
        sender.join().unwrap();
        assert_eq!(binds, vec![a_addr.clone()]);
        // The received descriptor is the same socket: a connection to it is accepted there.
        // SAFETY: the descriptor was just received and is owned here.
        let got = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        assert_eq!(got.local_addr().unwrap().to_string(), a_addr);
        assert!(!std::path::Path::new(&path).exists(), "one handover per socket");
    }

    #[test]
    fn nothing_sent_is_an_error_within_the_limit_and_leaves_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock").to_string_lossy().into_owned();
        let start = Instant::now();
        let waiting = Waiting::bind(&path).unwrap();
        let e = waiting
            .receive(&HashSet::new(), Duration::from_millis(200))
            .unwrap_err();
        assert!(e.contains("no sockets arrived"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!std::path::Path::new(&path).exists());
    }
}
