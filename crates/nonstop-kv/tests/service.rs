//! The `kv` service hosted as a node hosts it: commands as calls and queries, retries answered
//! from the platform's client table, and the state found again through the region's heap.

use nonstop_kv::command::parse;
use nonstop_kv::resp::Reply;
use nonstop_kv::service::{Kv, KvRequest, NAME};
use nonstop_proto::CheckpointId;
use nonstop_region::{Mirror, Region};
use nonstop_service::{CallError, Caller, Executed, Hosted};

/// A `kv` service in a region of its own at `base`, as a node hosts it.
fn hosted_kv(base: usize) -> (Hosted, Mirror) {
    let hosted = Hosted::new(NAME, Kv::new(4));
    let region = Region::map(base, hosted.region_len()).unwrap();
    let mirror = Mirror::transparent_unreplicated(region, CheckpointId(1));
    hosted.init(&mirror).unwrap();
    (hosted, mirror)
}

fn command(text: &str, now_ms: u64) -> nonstop_kv::command::Command {
    parse(&text.split(' ').map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>(), now_ms).unwrap()
}

fn request(now_ms: u64, commands: &[&str]) -> Vec<u8> {
    let commands = commands.iter().map(|text| command(text, now_ms)).collect();
    postcard::to_allocvec(&KvRequest { now_ms, commands }).unwrap()
}

fn replies(executed: Executed) -> (bool, Vec<Reply>) {
    match executed {
        Executed::Applied(bytes) => (false, postcard::from_bytes(&bytes).unwrap()),
        Executed::Duplicate(bytes) => (true, postcard::from_bytes(&bytes).unwrap()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn commands_run_once_through_the_platform_and_reads_are_queries() {
    let (hosted, mirror) = hosted_kv(0x5a00_0000_0000);
    let call = |request: u64, body: &[u8]| {
        hosted.execute(&mirror, Caller { client: 7, request, lane: 0 }, 0, body).map(|(executed, _)| replies(executed))
    };
    let incr = request(1_000, &["INCR n", "SET k v PX 100"]);
    assert_eq!(call(1, &incr).unwrap(), (false, vec![Reply::Integer(1), Reply::ok()]));
    assert_eq!(call(1, &incr).unwrap(), (true, vec![Reply::Integer(1), Reply::ok()]), "a retry is answered, not run");
    assert_eq!(call(2, &request(1_050, &["INCRBY n 9"])).unwrap(), (false, vec![Reply::Integer(10)]));
    let read = |now_ms, commands: &[&str]| -> Vec<Reply> {
        postcard::from_bytes(&hosted.query(&mirror, &request(now_ms, commands)).unwrap().0).unwrap()
    };
    assert_eq!(read(1_050, &["GET n", "GET k", "TTL k"]), vec![Reply::bulk("10"), Reply::bulk("v"), Reply::Integer(0)]);
    assert_eq!(read(1_100, &["GET k", "EXISTS k n"]), vec![Reply::Null, Reply::Integer(1)], "k expired at 1,100");
    let refused = hosted.query(&mirror, &request(0, &["INCR n"]));
    assert!(matches!(&refused, Err(CallError::Refused(reason)) if reason.contains("writes")), "{refused:?}");
    let check = mirror.quiesced(|image, _| hosted.check(image)).unwrap();
    assert!(check.contains("2 keys") && check.contains("each request applied once"), "{check}");
}

/// A transaction guarded by `WATCH` runs only if the watched keys are as they were watched:
/// the guard and the commands are one request, so nothing comes between them.
#[test]
fn a_watched_key_written_since_stops_the_transaction() {
    use nonstop_kv::command::Command;
    let (hosted, mirror) = hosted_kv(0x5b00_0000_0000);
    let run = |request: u64, commands: Vec<Command>| {
        let body = postcard::to_allocvec(&KvRequest { now_ms: 0, commands }).unwrap();
        let (executed, _) = hosted.execute(&mirror, Caller { client: 9, request, lane: 0 }, 0, &body).unwrap();
        replies(executed).1
    };
    let command = |text: &str| command(text, 0);
    let keys = vec![b"w".to_vec()];
    assert_eq!(run(1, vec![command("SET w 1")]), vec![Reply::ok()]);
    let Reply::Array(digests) = &run(2, vec![Command::Digest { keys: keys.clone() }])[0] else { panic!() };
    let Reply::Integer(watched) = digests[0] else { panic!() };
    let guard = |digest: i64| Command::Unchanged { keys: keys.clone(), digests: vec![digest as u64] };
    // Unchanged: the transaction runs.
    assert_eq!(run(3, vec![guard(watched), command("INCR n")]), vec![Reply::Integer(1), Reply::Integer(1)]);
    assert_eq!(run(4, vec![command("SET w 2")]), vec![Reply::ok()]);
    // Written since: the guard answers 0 and nothing after it runs.
    assert_eq!(run(5, vec![guard(watched), command("INCR n")]), vec![Reply::Integer(0)]);
    assert_eq!(run(6, vec![command("GET n")]), vec![Reply::bulk("1")]);
}

/// A Redis connection's writes are unnumbered: applied each time they are sent, with nothing
/// kept in the client table.
#[test]
fn unnumbered_calls_apply_each_time_and_keep_nothing() {
    let (hosted, mirror) = hosted_kv(0x5c00_0000_0000);
    let incr = request(0, &["INCR n"]);
    for expected in 1..=2 {
        let (reply, _) = hosted.execute_unnumbered(&mirror, 0, 0, &incr).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<Reply>>(&reply).unwrap(), vec![Reply::Integer(expected)]);
    }
    let check = mirror.quiesced(|image, _| hosted.check(image)).unwrap();
    assert!(check.contains("0 clients"), "nothing in the client table: {check}");
}

/// What an I/O thread may try without blocking: a call or a query that finds the region held
/// is turned away with nothing applied, and otherwise runs as the blocking form does.
#[test]
fn calls_and_queries_that_must_not_wait_run_only_on_a_free_region() {
    let (hosted, mirror) = hosted_kv(0x5d00_0000_0000);
    let incr = request(0, &["INCR n"]);
    let get = request(0, &["GET n"]);
    let decode = |bytes: Vec<u8>| postcard::from_bytes::<Vec<Reply>>(&bytes).unwrap();
    let busy = mirror.read(|_| hosted.try_execute_unnumbered(&mirror, 0, 0, &incr).is_none()).0;
    assert!(busy, "a read holds the region: the write is turned away");
    let (reply, _) = hosted.try_execute_unnumbered(&mirror, 0, 0, &incr).expect("free").unwrap();
    assert_eq!(decode(reply), vec![Reply::Integer(1)], "the turned-away write was not applied");
    let (answer, _) = hosted.try_query(&mirror, &get).expect("free").unwrap();
    assert_eq!(decode(answer), vec![Reply::bulk("1")]);
    let damaged = hosted.try_query(&mirror, &[0xff, 0xff]).expect("free");
    assert!(matches!(damaged, Err(CallError::BadRequest(_))), "{damaged:?}");
}
