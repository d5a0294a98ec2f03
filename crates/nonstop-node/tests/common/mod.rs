//! A one-node cluster run inside the test process.

// Each test file uses what it needs of this.
#![allow(dead_code)]

use nonstop_proto::auth::ClusterKey;
use nonstop_workloads::bank::BankClient;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One node of a one-node cluster, run in this process until dropped.
pub struct Node {
    /// Its client address.
    pub client: SocketAddr,
    /// Its control address.
    pub control: SocketAddr,
    /// The cluster key.
    pub key: ClusterKey,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), (bool, String)>>>,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && let Ok(Err((_, error))) = thread.join()
        {
            eprintln!("the node stopped with an error: {error}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the node failed because an address it was to listen on was taken.
fn address_taken(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |error| error.source())
        .filter_map(|error| error.downcast_ref::<std::io::Error>())
        .any(|error| error.kind() == std::io::ErrorKind::AddrInUse)
}

fn free_port(ip: &str) -> SocketAddr {
    TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap()
}

/// Starts a node whose `[node]` section also has `limits` (TOML lines), serving one bank.
pub fn node(name: &str, region_base: u64, limits: &str) -> Node {
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).unwrap();
    let dir = std::env::temp_dir().join(format!("nonstop-client-port-{name}-{}", u32::from_le_bytes(tag)));
    std::fs::create_dir_all(&dir).unwrap();
    let key = ClusterKey::from_bytes([3; 32]);
    std::fs::write(dir.join("key"), key.to_hex()).unwrap();
    let ip = "127.0.0.1";
    // A port found free can be taken again before the node binds it (another test's outgoing
    // connection gets it as its own port): then the node is started again on other ports.
    let mut attempts = 0;
    let (control, client, stop, thread) = loop {
        attempts += 1;
        let (control, client, replication) = (free_port(ip), free_port(ip), free_port(ip));
        let text = format!(
            "[node]\nid = 1\ncontrol = \"{control}\"\nclient = \"{client}\"\nreplication = \"{replication}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n{limits}\n\n[[services]]\nname = \"bank\"\nprimary = 1\nbackups = 0\nregion_base = \"{region_base:#x}\"\nregion_size_mib = 32\n",
            dir.join("data").display(),
            dir.join("key").display()
        );
        let path = dir.join("node.toml");
        std::fs::write(&path, &text).unwrap();
        let config = nonstop_node::config::NodeConfig::load(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, key) = (stop.clone(), key.clone());
            std::thread::spawn(move || {
                let mut registry = nonstop_service::Registry::new();
                nonstop_workloads::register_builtins(&mut registry);
                nonstop_node::run_node(config, &registry, key, &stop, move || ready_tx.send(()).unwrap())
                    .map_err(|error| (address_taken(&error), error.to_string()))
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => break (control, client, stop, thread),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the node did not say ready within 10 s"),
            // It stopped: why is in its result.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        }
        match thread.join().expect("the node's thread does not panic") {
            Err((true, _)) if attempts < 5 => continue,
            Err((_, error)) => panic!("the node runs: {error}"),
            Ok(()) => panic!("the node stopped before it was ready"),
        }
    };
    let node = Node { client, control, key: ClusterKey::from_bytes([3; 32]), stop, thread: Some(thread), dir };
    // Wait until the bank serves: a transfer answered.
    let mut bank = BankClient::new(vec![client], "bank", 1);
    bank.client().deadline = Duration::from_secs(20);
    bank.transfer(1, 1, 1).expect("the bank serves");
    node
}
