//! Backups as local child processes on their own loopback addresses (127.0.0.2, 127.0.0.3, …),
//! for the demo, the benchmarks and the tests.

use nonstop_proto::auth::ClusterKey;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A cluster key in a private temporary file, removed on drop.
#[derive(Debug)]
pub struct KeyFile {
    /// The key.
    pub key: ClusterKey,
    /// Where it is written.
    pub path: PathBuf,
}

impl KeyFile {
    /// Generates a random key and writes it, readable by this user only.
    pub fn generate() -> std::io::Result<KeyFile> {
        let mut bytes = [0u8; 36];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let key = ClusterKey::from_bytes(bytes[..32].try_into().expect("32 bytes"));
        let tag = u32::from_le_bytes(bytes[32..].try_into().expect("4 bytes"));
        let path = std::env::temp_dir().join(format!("nonstop-{}-{tag:08x}.key", std::process::id()));
        write_private(&path, &key.to_hex())?;
        Ok(KeyFile { key, path })
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

/// The line a backup process prints on stdout once it listens.
pub const LISTENING: &str = "listening on ";

/// A backup running as a child process; killed on drop.
#[derive(Debug)]
pub struct LocalBackup {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl LocalBackup {
    /// Starts `exe backup` on `ip` (port chosen by the OS) for the region at `base` of `len`
    /// bytes, and waits until it listens.
    pub fn spawn(exe: &Path, ip: &str, base: usize, len: usize, key_file: &Path) -> std::io::Result<LocalBackup> {
        let mut child = Command::new(exe)
            .args(["backup", "--listen", &format!("{ip}:0")])
            .args(["--region-base", &format!("{base:#x}"), "--region-size", &len.to_string()])
            .arg("--key-file")
            .arg(key_file)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line.trim().strip_prefix(LISTENING).and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Ok(LocalBackup { child, addr }),
            None => {
                let _ = child.kill();
                let status = child.wait()?;
                Err(std::io::Error::other(format!("backup process did not start ({status}); its stderr says why")))
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalBackup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
