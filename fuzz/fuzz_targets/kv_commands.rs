//! Redis commands, fuzzer-chosen, through a connection's session and into a keyspace: every
//! request is answered (a reply or Redis's error), never a panic, and a command the keyspace
//! reads answers the same through a query as through a call.
#![no_main]

use allocator_api2::alloc::Global;
use libfuzzer_sys::fuzz_target;
use nonstop_kv::keyspace::Keyspace;
use nonstop_kv::resp::{Decoder, Limits, Protocol};
use nonstop_kv::session::{Action, Context, NodeFacts, Session};
use nonstop_kv::topology::{Serves, Topology};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_bulk_len: 1 << 12, max_arguments: 64, max_request_bytes: 1 << 14 };
    let mut decoder = Decoder::new(limits);
    decoder.push(data);
    let mut session = Session::new(1);
    let mut keys = Keyspace::new_in(Global);
    let mut out = Vec::new();
    // Time moves with the requests, so expiries come due along the way.
    let mut now_ms = 1_000u64;
    let topology = Topology { name: "kv".into(), epoch: 1, primary: None, replicas: vec![], sentinels: vec![] };
    let node = NodeFacts::default();
    while let Ok(Some(request)) = decoder.next_request() {
        now_ms += 7;
        let context = Context { now_ms, serves: Serves::Primary, topology: &topology, node: &node, draw: now_ms };
        let reply = match session.handle(&request, &context) {
            Action::Reply(reply) | Action::Close(reply) => reply,
            Action::Run { request, cost } => {
                use nonstop_kv::command::Cost;
                assert_eq!(cost, request.commands.iter().map(|command| command.cost()).fold(Cost::QUICK_READ, Cost::and));
                let replies = request
                    .commands
                    .iter()
                    .map(|command| {
                        let read = keys.read(command, request.now_ms);
                        assert_eq!(read.is_none(), command.writes());
                        let executed = keys.execute(command, request.now_ms);
                        if let Some(read) = read {
                            assert_eq!(read, executed, "{command:?}");
                        }
                        executed
                    })
                    .collect();
                session.replied(Ok(replies))
            }
        };
        out.clear();
        reply.encode(Protocol::Resp3, &mut out);
        assert!(!out.is_empty());
    }
});
