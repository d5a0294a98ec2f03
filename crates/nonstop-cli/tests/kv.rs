//! The `kv` service through a node's Redis port: a client speaking plain RESP sets, reads and
//! counts on the primary, pipelined, in a transaction and in RESP3; a backup answers
//! `-READONLY`; bad RESP gets Redis's protocol error.

use nonstop_region::tracking::{TrackingMode, probe};
use nonstop_testbed::cluster::{ClusterSpec, LocalCluster};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Sends `requests` (RESP bytes) and reads until `done` says so, or five seconds passed.
fn exchange(addr: SocketAddr, requests: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.write_all(requests).unwrap();
    let (mut got, due) = (Vec::new(), Instant::now() + Duration::from_secs(5));
    let mut buffer = [0u8; 4096];
    while !done(&got) && Instant::now() < due {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
    got
}

fn inline(commands: &[&str]) -> Vec<u8> {
    commands.iter().flat_map(|command| format!("{command}\r\n").into_bytes()).collect()
}

/// Transparent mode's best write tracking here.
fn tracking() -> TrackingMode {
    match probe(TrackingMode::Uffd) {
        Ok(()) => TrackingMode::Uffd,
        Err(_) => TrackingMode::Mprotect,
    }
}

/// A running cluster of three nodes on `ip_prefix`.1-3 with a protected `kv` service, each
/// node with a Redis port and a sentinel port.
fn kv_cluster(ip_prefix: &str) -> LocalCluster {
    kv_cluster_with(ip_prefix, None)
}

/// [`kv_cluster`], its ports asking for `password` if given.
fn kv_cluster_with(ip_prefix: &str, password: Option<&str>) -> LocalCluster {
    kv_cluster_spec(ClusterSpec {
        ip_prefix: ip_prefix.into(),
        redis_password: password.map(str::to_string),
        ..ClusterSpec::default()
    })
}

/// A running three-node `kv` cluster shaped by `base` (its address prefix, password, TLS).
fn kv_cluster_spec(base: ClusterSpec) -> LocalCluster {
    let spec = ClusterSpec {
        region_size_mib: 32,
        kind: "kv".into(),
        tracking: Some(tracking()),
        services: vec![("kv".into(), 1)],
        redis: true,
        settings: toml::from_str("memory_mib = 8").unwrap(),
        ..base
    };
    let mut cluster = LocalCluster::create(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &spec).unwrap();
    cluster.start_all().unwrap();
    cluster.wait_service_protected("kv", 1, Duration::from_secs(30)).unwrap();
    cluster
}

#[test]
fn redis_clients_use_the_kv_service_through_the_primary() {
    let cluster = kv_cluster("127.0.10");
    let primary = cluster.nodes[0].redis.expect("a Redis port");
    let backup = cluster.nodes[1].redis.expect("a Redis port");

    // Pipelined, in both request forms; a transaction; counters.
    let requests = [
        &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv a l\r\n"[..],
        &inline(&["GET k", "INCR n", "INCRBY n 41", "MULTI", "INCR n", "GET k", "EXEC", "GET nope", "PING"]),
    ]
    .concat();
    let expected: &[u8] =
        b"+OK\r\n$5\r\nv a l\r\n:1\r\n:42\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:43\r\n$5\r\nv a l\r\n$-1\r\n+PONG\r\n";
    let got = exchange(primary, &requests, |got| got.len() >= expected.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected));

    // RESP3 after HELLO 3: nulls and maps in their own types.
    let tail = "_\r\n:1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n";
    let got = exchange(primary, &inline(&["HELLO 3", "GET nope", "HSET h f v", "HGETALL h"]), |got| {
        got.ends_with(tail.as_bytes())
    });
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("%7\r\n") && text.ends_with(tail), "HELLO 3, then RESP3: {text}");

    // INFO's figures come from the keyspace and the region's heap; a backup reports itself a
    // replica of the primary.
    let got = exchange(primary, &inline(&["INFO keyspace", "INFO memory"]), |got| got.ends_with(b"noeviction\r\n\r\n"));
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("db0:keys=3,expires=0") && text.contains("used_memory:"), "{text}");
    let got = exchange(backup, &inline(&["INFO replication"]), |got| got.ends_with(b"master_repl_offset:0\r\n\r\n"));
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("role:slave") && text.contains(&format!("master_port:{}", primary.port())), "{text}");

    // Lists, sets and sorted sets, in RESP2.
    let got = exchange(
        primary,
        &inline(&["RPUSH l x y", "LPOP l", "SADD s m m", "SCARD s", "ZADD z 2 b 1 a", "ZRANGE z 0 -1 WITHSCORES"]),
        |got| got.ends_with(b"$1\r\n2\r\n"),
    );
    let expected = ":2\r\n$1\r\nx\r\n:1\r\n:1\r\n:2\r\n*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n";
    assert_eq!(String::from_utf8_lossy(&got), expected);

    // A backup sends clients to look for the primary, for reads and writes alike.
    let readonly = "-READONLY You can't write against a read only replica.\r\n";
    let got = exchange(backup, &inline(&["SET k w", "GET k"]), |got| got.len() >= 2 * readonly.len());
    assert_eq!(String::from_utf8_lossy(&got), readonly.repeat(2));

    // A request begun must arrive whole within the message deadline (5 s): a client that
    // stops halfway is closed, though an idle one is not.
    let mut stalled = TcpStream::connect(primary).unwrap();
    stalled.write_all(b"*2\r\n$3\r\nGET\r\n").unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    assert_eq!(stalled.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed");
    assert!(started.elapsed() < Duration::from_secs(15), "closed after {:?}", started.elapsed());

    // Bad RESP: Redis's protocol error, then the connection closes.
    let got = exchange(primary, b"*1\r\nfoo\r\n", |got| got.ends_with(b"\r\n"));
    assert_eq!(String::from_utf8_lossy(&got), "-ERR Protocol error: expected '$', got 'f'\r\n");
}

/// A client configured with the cluster's sentinels, as it would be with Redis Sentinel: the
/// `redis` crate's `SentinelClient` finds the primary, writes, and after the primary is killed
/// finds the new one, where every acknowledged write is; a subscriber hears `+switch-master`.
#[test]
fn sentinel_clients_follow_the_primary_through_a_failover() {
    use redis::sentinel::{SentinelClient, SentinelServerType};
    let mut cluster = kv_cluster("127.0.11");
    let sentinels: Vec<String> =
        cluster.nodes.iter().map(|node| format!("redis://{}", node.sentinel.expect("a sentinel port"))).collect();
    let primary_redis = cluster.nodes[0].redis.unwrap();

    // Any sentinel names the primary, in every form clients ask.
    let mut asked = redis::Client::open(sentinels[2].as_str()).unwrap().get_connection().unwrap();
    let addr: (String, u16) =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("kv").query(&mut asked).unwrap();
    assert_eq!(addr, (primary_redis.ip().to_string(), primary_redis.port()));
    let replicas: Vec<std::collections::HashMap<String, String>> =
        redis::cmd("SENTINEL").arg("replicas").arg("kv").query(&mut asked).unwrap();
    assert_eq!(replicas.len(), 1, "{replicas:?}");

    let mut client = SentinelClient::build(sentinels.clone(), "kv".into(), None, SentinelServerType::Master).unwrap();
    let mut connection = client.get_connection().unwrap();
    for i in 0..100 {
        let () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut connection).unwrap();
    }

    let mut subscriber = redis::Client::open(sentinels[1].as_str()).unwrap().get_connection().unwrap();
    subscriber.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe("+switch-master").unwrap();

    cluster.kill(1).unwrap();
    let due = Instant::now() + Duration::from_secs(20);
    let mut connection = loop {
        // Every failed attempt asks the sentinels again, as a client's retry would.
        let written = client.get_connection().and_then(|mut connection| {
            redis::cmd("SET").arg("after").arg("failover").query::<()>(&mut connection).map(|()| connection)
        });
        match written {
            Ok(connection) => break connection,
            Err(error) if Instant::now() < due => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("no primary found within 20 s: {error}\n{}", cluster.post_mortem(20)),
        }
    };
    for i in 0..100 {
        let value: Option<i64> = redis::cmd("GET").arg(format!("k{i}")).query(&mut connection).unwrap();
        assert_eq!(value, Some(i), "acknowledged write k{i} lost");
    }
    let message = pubsub.get_message().expect("+switch-master within 10 s");
    assert_eq!(message.get_channel_name(), "+switch-master");
    let payload: String = message.get_payload().unwrap();
    let words: Vec<&str> = payload.split(' ').collect();
    assert_eq!(words[..3], ["kv", "127.0.11.1", "6379"], "{payload}");
    assert!(words[3] == "127.0.11.2" || words[3] == "127.0.11.3", "{payload}");
}

/// Whether a Redis client program is here (`probe` runs and succeeds); without it the test
/// says what to install and skips, unless `NONSTOP_REQUIRE_REDIS_CLIENTS=1` (CI) makes its
/// absence a failure.
fn client_present(probe: &[&str], missing: &str) -> bool {
    let found =
        std::process::Command::new(probe[0]).args(&probe[1..]).output().is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            std::env::var_os("NONSTOP_REQUIRE_REDIS_CLIENTS").is_none(),
            "redis client tests are required: {missing}"
        );
        eprintln!("skipped: {missing}");
    }
    found
}

fn redis_py() -> bool {
    client_present(&["python3", "-c", "import redis.sentinel"], "python3 with redis-py is missing (pip install redis)")
}

fn redis_cli() -> bool {
    client_present(&["redis-cli", "-v"], "redis-cli is missing (Debian: apt-get install redis-tools)")
}

/// redis-py's `Sentinel`, unchanged, through a kill -9 of the primary.
#[test]
fn redis_py_sentinel_clients_lose_nothing_in_a_failover() {
    use std::io::BufRead;
    if !redis_py() {
        return;
    }
    let mut cluster = kv_cluster("127.0.12");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/redis_py_sentinel.py");
    let mut python = std::process::Command::new("python3")
        .arg(script)
        .args(cluster.nodes.iter().map(|node| node.sentinel.unwrap().to_string()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(python.stdout.take().unwrap()).lines();
    let mut line = || said.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(line(), "written");
    cluster.kill(1).unwrap();
    writeln!(python.stdin.as_mut().unwrap(), "killed").unwrap();
    let last = line();
    let status = python.wait().unwrap();
    assert!(status.success() && last.starts_with("ok "), "redis-py: {status}, {last:?}\n{}", cluster.post_mortem(20));
    eprintln!("redis-py: {last}");
}

/// With a password configured, nothing runs before `AUTH`, on the Redis port and the sentinel
/// port alike; clients that give it (the `redis` crate, directly and through the sentinels)
/// work as before.
#[test]
fn a_password_guards_both_ports() {
    use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
    let cluster = kv_cluster_with("127.0.14", Some("open sesame"));
    let (primary, sentinel) = (cluster.nodes[0].redis.unwrap(), cluster.nodes[1].sentinel.unwrap());
    let noauth = "-NOAUTH Authentication required.\r\n";
    for port in [primary, sentinel] {
        let got = exchange(port, &inline(&["GET k", "AUTH wrong"]), |got| got.ends_with(b"disabled.\r\n"));
        let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
        assert_eq!(String::from_utf8_lossy(&got), format!("{noauth}{wrongpass}"), "{port}");
    }

    let mut direct =
        redis::Client::open(format!("redis://:open%20sesame@{primary}")).unwrap().get_connection().unwrap();
    let () = redis::cmd("SET").arg("k").arg("v").query(&mut direct).unwrap();
    let sentinels: Vec<String> =
        cluster.nodes.iter().map(|node| format!("redis://:open%20sesame@{}", node.sentinel.unwrap())).collect();
    let through = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(redis::RedisConnectionInfo::default().set_password("open sesame"));
    let mut client = SentinelClient::build(sentinels, "kv".into(), Some(through), SentinelServerType::Master).unwrap();
    let value: String = redis::cmd("GET").arg("k").query(&mut client.get_connection().unwrap()).unwrap();
    assert_eq!(value, "v");
}

/// With TLS configured, both ports speak TLS only: a client that trusts the certificate talks
/// RESP through it (a rustls client here, and redis-py with `ssl=True` where it is installed);
/// plain RESP gets no answer.
#[test]
fn tls_guards_both_ports() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.15.1".into(), "127.0.15.2".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let cluster = kv_cluster_spec(ClusterSpec {
        ip_prefix: "127.0.15".into(),
        redis_tls: Some((cert.clone(), key)),
        ..ClusterSpec::default()
    });
    let (primary, sentinel) = (cluster.nodes[0].redis.unwrap(), cluster.nodes[1].sentinel.unwrap());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let ask = |addr: SocketAddr, request: &[u8], expected: &[u8]| {
        let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string()).unwrap();
        let connection = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let socket = TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, socket);
        tls.write_all(request).unwrap();
        let mut got = vec![0u8; expected.len()];
        tls.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected), "{addr}");
    };
    ask(primary, b"SET k v\r\nGET k\r\n", b"+OK\r\n$1\r\nv\r\n");
    let expected = format!("*2\r\n$10\r\n127.0.15.1\r\n$4\r\n{}\r\n", primary.port());
    ask(sentinel, b"SENTINEL get-master-addr-by-name kv\r\n", expected.as_bytes());

    // Plain RESP on a TLS port: no reply, the connection is closed.
    let got = exchange(primary, b"PING\r\n", |got| !got.is_empty());
    assert!(!got.starts_with(b"+PONG"), "plain text answered on a TLS port: {:?}", String::from_utf8_lossy(&got));

    if redis_py() {
        let script = format!(
            "import redis; r = redis.Redis(host='{}', port={}, ssl=True, ssl_ca_certs='{}'); r.set('py', 'tls'); print(r.get('py').decode())",
            primary.ip(),
            primary.port(),
            cert.display()
        );
        let output = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "tls",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// redis-cli, unchanged, against a sentinel port and the primary it names.
#[test]
fn redis_cli_finds_the_primary_and_uses_it() {
    if !redis_cli() {
        return;
    }
    let cluster = kv_cluster("127.0.16");
    let cli = |addr: SocketAddr, args: &[&str]| -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let sentinel = cluster.nodes[2].sentinel.unwrap();
    let named = cli(sentinel, &["SENTINEL", "get-master-addr-by-name", "kv"]);
    let primary = cluster.nodes[0].redis.unwrap();
    assert_eq!(named, format!("{}\n{}", primary.ip(), primary.port()));
    assert_eq!(cli(primary, &["SET", "cli", "works"]), "OK");
    assert_eq!(cli(primary, &["GET", "cli"]), "works");
    assert_eq!(cli(primary, &["ROLE"]).lines().next(), Some("master"));
    let backup = cluster.nodes[1].redis.unwrap();
    assert!(cli(backup, &["SET", "cli", "no"]).starts_with("READONLY"), "a backup refuses writes");
}
