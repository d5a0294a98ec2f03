//! What a node checks against the machine before it says it is ready: that every replication
//! port it will listen on can be bound (it is, then, and kept for the node's life), that every region it will map fits where the config puts it
//! (inside user space, clear of what the process already maps), and that the machine has the
//! memory the regions need. The config file can be right and the machine still unable to serve
//! it; either way the node refuses at once, naming the field, the value and the fix, instead of
//! retrying every tick after it said "ready".

use crate::config::{Checked, ServiceSpec};
use nonstop_region::Region;
use std::net::TcpListener;
use thiserror::Error;

/// A config this machine cannot serve.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{field} = {value}: {problem}; {fix}")]
pub struct Refusal {
    /// The config field.
    pub field: String,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// Memory the regions may use, from `/proc/meminfo`: what the kernel reports as available
/// without swapping (`MemAvailable`), in bytes. `None` where it cannot be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_available(&text)
}

fn parse_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Descriptors a node needs besides its client connections: peers, backups, the Raft log,
/// listeners and a margin.
const DESCRIPTORS_BESIDES_CLIENTS: u64 = 256;

/// Raises this process's open-file limit to what `max_clients` connections need, as far as
/// the hard limit allows (as Redis does for `maxclients`), and refuses if that is not enough.
pub fn raise_descriptor_limit(config: &Checked) -> Result<(), Refusal> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let needed = config.clients.max_connections as u64 + DESCRIPTORS_BESIDES_CLIENTS;
    let limit = getrlimit(Resource::Nofile);
    let (current, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum.unwrap_or(u64::MAX));
    if current >= needed {
        return Ok(());
    }
    let raised = rustix::process::Rlimit { current: Some(needed.min(hard)), maximum: limit.maximum };
    let now = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => needed.min(hard),
        Err(_) => current,
    };
    check_descriptors(config.clients.max_connections, now)
}

fn check_descriptors(max_clients: usize, limit: u64) -> Result<(), Refusal> {
    let needed = max_clients as u64 + DESCRIPTORS_BESIDES_CLIENTS;
    if limit >= needed {
        return Ok(());
    }
    Err(Refusal {
        field: "node.max_clients".into(),
        value: max_clients.to_string(),
        problem: format!(
            "the process may open {limit} files and cannot raise it, but that many connections need {needed}"
        ),
        fix: format!(
            "lower node.max_clients to {}, or raise the open-file limit (`ulimit -n {needed}`, or LimitNOFILE={needed} in the systemd unit)",
            limit.saturating_sub(DESCRIPTORS_BESIDES_CLIENTS)
        ),
    })
}

/// The replication ports of a node, bound before it says it is ready and kept for its life,
/// by service index (empty for a witness).
#[derive(Debug, Default)]
pub struct ReplicationPorts(pub Vec<TcpListener>);

/// Checks `config` against this machine and binds its replication ports; `available` is the
/// memory the regions may use ([`available_memory`]; `None` skips that check).
pub fn check(config: &Checked, available: Option<u64>) -> Result<ReplicationPorts, Refusal> {
    if config.me.witness {
        // A witness holds no region and serves no replication port.
        return Ok(ReplicationPorts::default());
    }
    let mut ports = ReplicationPorts::default();
    for service in &config.services {
        ports.0.push(bind_port(config, service)?);
        check_region(service.index, service.region_base, service.region_len)?;
    }
    for replica in &config.active {
        if let Some(region) = replica.region {
            check_region(replica.index, region.base, region.len)?;
        }
    }
    if let Some(available) = available {
        // A backup keeps its whole region resident, so every region needs the memory; an
        // active service's replica holds one too.
        let needed: u64 = config.services.iter().map(|s| s.region_len as u64).sum::<u64>()
            + config.active.iter().filter_map(|s| s.region).map(|region| region.len as u64).sum::<u64>();
        if needed > available {
            let mib = |bytes: u64| bytes >> 20;
            return Err(Refusal {
                field: "services[].region_size_mib".into(),
                value: format!("{} MiB in all", mib(needed)),
                problem: format!(
                    "this machine has {} MiB available, and a backup keeps its whole region resident",
                    mib(available)
                ),
                fix: "make the regions smaller, or run fewer services on this node".into(),
            });
        }
    }
    Ok(ports)
}

fn bind_port(config: &Checked, service: &ServiceSpec) -> Result<TcpListener, Refusal> {
    let addr = config.replication_addr(config.me.id, service).ok_or_else(|| Refusal {
        field: "node.replication".into(),
        value: config.me.replication.to_string(),
        problem: format!("service {} (index {}) would need a port past 65535", service.name, service.index),
        fix: "pick a lower replication port: service i uses that port + i".into(),
    })?;
    TcpListener::bind(addr).map_err(|error| Refusal {
        field: "node.replication".into(),
        value: config.me.replication.to_string(),
        problem: format!("service {} replicates on {addr}, which cannot be bound ({error})", service.name),
        fix: "stop what uses that port, or pick another replication port (service i uses that port + i)".into(),
    })
}

fn check_region(index: u16, region_base: usize, region_len: usize) -> Result<(), Refusal> {
    // Mapped and unmapped at once: reserving the range costs nothing (no page is touched).
    Region::map(region_base, region_len).map(drop).map_err(|error| Refusal {
        field: format!("services[{index}].region_base"),
        value: format!("{region_base:#x}"),
        problem: format!("the {} MiB region cannot be mapped there: {error}", region_len >> 20),
        fix: format!(
            "pick a page-aligned address clear of the program and its libraries, such as the default {:#x} (give each service its own range)",
            nonstop_region::DEFAULT_REGION_BASE
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use std::path::Path;

    fn config(replication: &str, services: &str) -> Checked {
        let text = format!(
            "[node]\nid = 1\ncontrol = \"127.0.0.1:0\"\nclient = \"127.0.0.1:0\"\nreplication = \"{replication}\"\ndata_dir = \"/tmp/n\"\nkey_file = \"/tmp/k\"\n\n[[peers]]\nid = 2\ncontrol = \"127.0.0.2:7001\"\nclient = \"127.0.0.2:7101\"\nreplication = \"127.0.0.2:7201\"\n{services}"
        );
        NodeConfig::parse(&text, Path::new("test.toml")).unwrap().check().unwrap()
    }

    fn service(base: &str, mib: u64) -> String {
        format!("\n[[services]]\nname = \"bank\"\nprimary = 1\nregion_base = \"{base}\"\nregion_size_mib = {mib}\n")
    }

    #[test]
    fn too_few_descriptors_for_max_clients_is_refused_with_a_figure() {
        assert_eq!(check_descriptors(10_000, 20_000), Ok(()));
        let refusal = check_descriptors(10_000, 1024).unwrap_err();
        assert_eq!(refusal.field, "node.max_clients");
        assert!(refusal.fix.contains("768") && refusal.fix.contains("ulimit -n 10256"), "{refusal}");
    }

    #[test]
    fn a_config_that_fits_passes() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = config(&free.to_string(), &service("0x2d0000000000", 64));
        let ports = check(&config, Some(1 << 30)).unwrap();
        // The port is the node's from now on: nothing else can take it before it serves.
        assert_eq!(ports.0.len(), 1);
        assert_eq!(ports.0[0].local_addr().unwrap(), free);
        assert!(TcpListener::bind(free).is_err());
    }

    #[test]
    fn a_replication_port_in_use_is_refused() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = config(&taken.local_addr().unwrap().to_string(), &service("0x2d1000000000", 64));
        let refusal = check(&config, None).unwrap_err();
        assert_eq!(refusal.field, "node.replication");
        assert!(refusal.problem.contains("cannot be bound"), "{refusal}");
    }

    #[test]
    fn a_region_past_user_space_or_on_a_mapping_is_refused() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let past = check(&config(&free, &service("0x7fffc0000000", 2048)), None).unwrap_err();
        assert_eq!(past.field, "services[0].region_base");
        assert!(past.fix.contains("0x"), "{past}");
        // An address this process already maps (a region of its own, here).
        let held = Region::map(0x2d20_0000_0000, 2 << 20).unwrap();
        let taken = check(&config(&free, &service("0x2d2000000000", 64)), None).unwrap_err();
        assert_eq!(taken.field, "services[0].region_base");
        drop(held);
    }

    #[test]
    fn regions_larger_than_the_memory_are_refused_with_the_figure() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = config(&free.to_string(), &service("0x2d3000000000", 4096));
        let refusal = check(&config, Some(1 << 30)).unwrap_err();
        assert_eq!(refusal.field, "services[].region_size_mib");
        assert!(refusal.value.contains("4096 MiB") && refusal.problem.contains("1024 MiB available"), "{refusal}");
    }

    #[test]
    fn an_active_replicas_region_counts_and_must_map() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let active = |base: &str, mib: u64| {
            let third = "\n[[peers]]\nid = 3\ncontrol = \"127.0.0.3:7001\"\nclient = \"127.0.0.3:7101\"\nreplication = \"127.0.0.3:7201\"\n";
            format!(
                "{third}\n[[services]]\nname = \"bank\"\nreplication = \"active\"\nregion_base = \"{base}\"\nregion_size_mib = {mib}\n"
            )
        };
        let big = check(&config(&free, &active("0x2d4000000000", 4096)), Some(1 << 30)).unwrap_err();
        assert_eq!(big.field, "services[].region_size_mib", "{big}");
        let past = check(&config(&free, &active("0x7fffc0000000", 2048)), None).unwrap_err();
        assert_eq!(past.field, "services[0].region_base", "{past}");
        assert!(check(&config(&free, &active("0x2d5000000000", 64)), Some(1 << 30)).is_ok());
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_available(meminfo), Some(2048 * 1024));
        assert_eq!(parse_available("MemTotal: 1 kB\n"), None);
        assert!(available_memory().is_some_and(|bytes| bytes > 0), "this machine's");
    }
}
