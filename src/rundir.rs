//! The private runtime directory: the upgrade socket, the pid file and the upgrade marker.
//!
//! The directory is mode 0700 and owned by the gateway's user, so no other local user can
//! reach the upgrade socket (which hands over the listening sockets) or forge the files. A
//! process started with `--upgrade` writes the marker `cardgate-<port>.successor` (its pid)
//! while it waits for the sockets; the running process hands them over on SIGQUIT only when
//! that marker names a live process, and otherwise keeps serving. The pid file names the
//! process that serves now, so `--upgrade` can tell at once when there is nothing to take
//! over from.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::ServerSection;

/// This instance's files in its runtime directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
    pub pid_file: PathBuf,
    pub successor: PathBuf,
    pub upgrade_sock: String,
}

impl RunDir {
    pub fn new(server: &ServerSection) -> RunDir {
        RunDir {
            dir: server.runtime_dir(),
            pid_file: server.runtime_file("pid"),
            successor: server.runtime_file("successor"),
            upgrade_sock: server.upgrade_sock(),
        }
    }

    /// Create the directory (0700) or check that the one there is private and ours.
    pub fn prepare(&self) -> Result<(), String> {
        let dir = &self.dir;
        let fail = |e: io::Error| format!("server.runtime_dir: cannot use {}: {e}", dir.display());
        match fs::DirBuilder::new().mode(0o700).recursive(true).create(dir) {
            Ok(()) => {}
            Err(e) => return Err(fail(e)),
        }
        let meta = fs::symlink_metadata(dir).map_err(fail)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != uid {
            return Err(format!(
                "server.runtime_dir: {} is not a directory owned by this user (uid {uid})",
                dir.display()
            ));
        }
        if meta.mode() & 0o077 != 0 {
            // Ours: make it private rather than refuse (a directory made by hand).
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
        }
        Ok(())
    }

    /// Record that this process serves now.
    pub fn write_pid(&self) -> io::Result<()> {
        write_private(&self.pid_file, &std::process::id().to_string())
    }

    /// Remove the pid file if it still names this process (at exit).
    pub fn remove_pid(&self) {
        if read_pid(&self.pid_file) == Some(std::process::id()) {
            let _ = fs::remove_file(&self.pid_file);
        }
    }

    /// The process that serves now, when one is alive.
    pub fn running(&self) -> Option<u32> {
        read_pid(&self.pid_file).filter(|pid| *pid != std::process::id() && alive(*pid))
    }

    /// Announce that this process waits for the listening sockets.
    pub fn announce_successor(&self) -> io::Result<()> {
        write_private(&self.successor, &std::process::id().to_string())
    }

    /// The sockets arrived (or never will): the announcement is over.
    pub fn withdraw_successor(&self) {
        if read_pid(&self.successor) == Some(std::process::id()) {
            let _ = fs::remove_file(&self.successor);
        }
    }

    /// A live process that waits for this one's sockets, if any.
    pub fn successor(&self) -> Option<u32> {
        let pid = read_pid(&self.successor)?;
        (pid != std::process::id() && alive(pid) && Path::new(&self.upgrade_sock).exists()).then_some(pid)
    }
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    fs::rename(&tmp, path)
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether a process with this pid exists (signal 0 checks without sending anything).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rundir(dir: &Path) -> RunDir {
        let server = ServerSection {
            runtime_dir: dir.join("run").to_string_lossy().into_owned(),
            listen: "127.0.0.1:8123".into(),
            ..ServerSection::default()
        };
        RunDir::new(&server)
    }

    #[test]
    fn the_directory_is_private_and_names_files_by_port() {
        let tmp = tempfile::tempdir().unwrap();
        let r = rundir(tmp.path());
        r.prepare().unwrap();
        let mode = fs::metadata(&r.dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(
            r.upgrade_sock.ends_with("run/cardgate-8123.upgrade.sock"),
            "{}",
            r.upgrade_sock
        );
        fs::set_permissions(&r.dir, fs::Permissions::from_mode(0o755)).unwrap();
        r.prepare().unwrap();
        assert_eq!(fs::metadata(&r.dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn pid_file_and_successor_name_live_processes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let r = rundir(tmp.path());
        r.prepare().unwrap();
        assert_eq!(r.running(), None);
        r.write_pid().unwrap();
        assert_eq!(fs::metadata(&r.pid_file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(r.running(), None, "this process is not another one");
        // A pid that cannot be alive.
        fs::write(&r.pid_file, "2147483646").unwrap();
        assert_eq!(r.running(), None);
        // A live process other than this one: our parent.
        let parent = std::os::unix::process::parent_id();
        fs::write(&r.pid_file, parent.to_string()).unwrap();
        assert_eq!(r.running(), Some(parent));

        fs::write(&r.successor, parent.to_string()).unwrap();
        assert_eq!(r.successor(), None, "no socket waits");
        fs::write(&r.upgrade_sock, "").unwrap();
        assert_eq!(r.successor(), Some(parent));
        r.announce_successor().unwrap();
        assert_eq!(r.successor(), None, "this process is not its own successor");
        r.withdraw_successor();
        assert!(!r.successor.exists());
    }
}
