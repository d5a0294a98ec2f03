//! Hosts of their own: a network namespace per node and one for clients, joined by a bridge in a
//! hub namespace, with nftables chains in every host for network faults (cuts, one-way cuts,
//! random loss). Needs root, `ip` (iproute2) and `nft` (nftables).
//!
//! Host `n<id>` has address `10.77.0.<id>`, the clients' host `10.77.0.200`; each testbed has
//! its own hub, so several testbeds (parallel tests) use the same addresses without meeting.
//! Everything is removed on drop; namespaces left by a process that died without dropping are
//! swept when the next testbed is created.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use thiserror::Error;

/// The last octet of the clients' address.
const CLIENT_OCTET: u8 = 200;

/// Why a testbed could not be made or changed.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// Not running as root.
    #[error("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run as root, e.g. with sudo")]
    NotRoot,
    /// A tool is missing.
    #[error("`{tool}` is not installed; install the {package} package (e.g. `apt-get install {package}`)")]
    Missing {
        /// The command.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        /// The namespace.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether this machine can make testbeds; the error says what is missing.
pub fn available() -> Result<(), NetnsError> {
    if !rustix::process::geteuid().is_root() {
        return Err(NetnsError::NotRoot);
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        if !found {
            return Err(NetnsError::Missing { tool, package });
        }
    }
    Ok(())
}

/// The chains every host gets: faults are rules added to `output`, removed by flushing it.
const NFT_TABLE: &str =
    "table inet chaos {\n  chain output {\n    type filter hook output priority 0; policy accept;\n  }\n}\n";

/// A set of hosts joined by a bridge; removed on drop.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    nodes: u8,
    made: Vec<String>,
}

impl Testbed {
    /// Makes hosts `n1..=n<nodes>` and `c` (clients), bridged, each with its fault chain.
    pub fn create(nodes: u8) -> Result<Testbed, NetnsError> {
        available()?;
        sweep_stale();
        let tag = getrandom::u32()
            .map_err(|e| NetnsError::Command { command: "getrandom".into(), stderr: e.to_string() })?
            as u16;
        let prefix = format!("nst{}-{tag:04x}", std::process::id());
        let mut testbed = Testbed { prefix, nodes, made: Vec::new() };
        let hub = testbed.namespace("hub");
        testbed.add_namespace(&hub)?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        let hosts: Vec<(String, u8)> =
            (1..=nodes).map(|id| (format!("n{id}"), id)).chain([("c".to_string(), CLIENT_OCTET)]).collect();
        for (host, octet) in hosts {
            let ns = testbed.namespace(&host);
            testbed.add_namespace(&ns)?;
            run(&["ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &host, "netns", &hub])?;
            run(&["ip", "-n", &hub, "link", "set", &host, "master", "br0", "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("10.77.0.{octet}/24"), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run_with_input(&["ip", "netns", "exec", &ns, "nft", "-f", "-"], NFT_TABLE)?;
        }
        Ok(testbed)
    }

    fn namespace(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), NetnsError> {
        run(&["ip", "netns", "add", name])?;
        self.made.push(name.to_string());
        run(&["ip", "-n", name, "link", "set", "lo", "up"])
    }

    /// Node `id`'s namespace.
    pub fn node_namespace(&self, id: u64) -> String {
        self.namespace(&format!("n{id}"))
    }

    /// The clients' namespace.
    pub fn client_namespace(&self) -> String {
        self.namespace("c")
    }

    /// Node `id`'s address.
    pub fn node_ip(id: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, id as u8)
    }

    /// The clients' address.
    pub fn client_ip() -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, CLIENT_OCTET)
    }

    /// Nodes in the testbed.
    pub fn nodes(&self) -> u8 {
        self.nodes
    }

    /// Moves the calling thread (only it) into `namespace`: its sockets from now on live there.
    pub fn enter(namespace: &str) -> Result<(), NetnsError> {
        let enter = || -> std::io::Result<()> {
            let file = std::fs::File::open(Path::new("/run/netns").join(namespace))?;
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
            Ok(())
        };
        enter().map_err(|source| NetnsError::Enter { name: namespace.to_string(), source })
    }

    /// Drops every packet node `from` sends to `to` (a one-way cut; TCP from `to` stalls too,
    /// as its acknowledgements are lost).
    pub fn cut_one_way(&self, from: u64, to: Ipv4Addr) -> Result<(), NetnsError> {
        self.nft(from, &format!("add rule inet chaos output ip daddr {to} drop"))
    }

    /// Cuts node `a` from `b` both ways.
    pub fn cut(&self, a: u64, b: u64) -> Result<(), NetnsError> {
        self.cut_one_way(a, Testbed::node_ip(b))?;
        self.cut_one_way(b, Testbed::node_ip(a))
    }

    /// Drops `percent`% of the packets node `id` sends on TCP ports `ports` (either end), at
    /// random.
    pub fn lose(&self, id: u64, percent: u8, ports: (u16, u16)) -> Result<(), NetnsError> {
        let (low, high) = ports;
        for end in ["dport", "sport"] {
            self.nft(
                id,
                &format!("add rule inet chaos output tcp {end} {low}-{high} numgen random mod 100 < {percent} drop"),
            )?;
        }
        Ok(())
    }

    /// Removes every network fault.
    pub fn heal(&self) -> Result<(), NetnsError> {
        for id in 1..=self.nodes as u64 {
            self.nft(id, "flush chain inet chaos output")?;
        }
        Ok(())
    }

    fn nft(&self, id: u64, rule: &str) -> Result<(), NetnsError> {
        let ns = self.node_namespace(id);
        let mut command = vec!["ip", "netns", "exec", &ns, "nft"];
        command.extend(rule.split(' '));
        run(&command)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// Deletes testbed namespaces whose creating process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("nst").and_then(|rest| rest.split('-').next()?.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(namespace = %name, "removing a namespace left by a testbed whose process is gone");
            let _ = run(&["ip", "netns", "del", &name]);
        }
    }
}

fn run(command: &[&str]) -> Result<(), NetnsError> {
    run_with_input(command, "")
}

fn run_with_input(command: &[&str], input: &str) -> Result<(), NetnsError> {
    use std::io::Write;
    let failed = |stderr: String| NetnsError::Command { command: command.join(" "), stderr };
    let mut child = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| failed(e.to_string()))?;
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(String::from_utf8_lossy(&output.stderr).trim().to_string()))
    }
}
