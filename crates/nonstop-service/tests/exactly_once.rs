//! The platform's side of a service: every request applied once, retries answered from the
//! client table, refusals and bad bytes changing nothing, in both ways of writing the region.

use nonstop_proto::CheckpointId;
use nonstop_region::heap::RegionVec;
use nonstop_region::{Mirror, Region, RegionWrite};
use nonstop_service::{CallError, Caller, Executed, Hosted, Image, Service, ServiceError, Store, View, Writes};
use serde::{Deserialize, Serialize};

/// Counters at fixed offsets: a request adds to one and answers its new value.
struct Counters;

#[derive(Serialize, Deserialize)]
enum Op {
    Add {
        counter: u64,
        by: u64,
    },
    /// Refused: nothing is written.
    Refuse,
    /// A reply longer than the client table keeps.
    Long,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Reply {
    Value(u64),
    Long(Vec<u8>),
}

const COUNTERS: u64 = 16;

impl Service for Counters {
    type Request = Op;
    type Reply = Reply;
    type Query = u64;
    type Answer = (u64, Option<u64>);
    const WRITES: Writes = Writes::AtOffsets;
    const MAX_REPLY: usize = 32;
    const MAX_CLIENTS: usize = 64;

    fn state_len(&self) -> usize {
        // A total, then the counters.
        (8 + COUNTERS * 8) as usize
    }

    fn execute(&self, store: &mut Store<'_>, op: &Op) -> Result<Reply, ServiceError> {
        match op {
            Op::Refuse => Err(ServiceError::refused("refused as asked")),
            Op::Long => Ok(Reply::Long(vec![7; 100])),
            Op::Add { counter, by } => {
                if *counter >= COUNTERS {
                    return Err(ServiceError::refused(format!("no counter {counter}")));
                }
                let writer = store.writer();
                let value = writer.write::<u64>(8 + counter * 8)?;
                *value += by;
                *writer.write::<u64>(0)? += by;
                Ok(Reply::Value(*value))
            }
        }
    }

    fn query(&self, view: &View<'_>, client: &u64) -> Result<(u64, Option<u64>), ServiceError> {
        Ok((view.read::<u64>(0)?, view.client(*client)?.map(|memory| memory.request)))
    }

    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        let state = image.state();
        let word = |at: usize| u64::from_le_bytes(state[at..at + 8].try_into().unwrap());
        let sum: u64 = (0..COUNTERS as usize).map(|c| word(8 + c * 8)).sum();
        if sum != word(0) {
            return Err(format!("counters sum to {sum}, the total says {}", word(0)));
        }
        Ok(format!("total {sum} over {} clients", image.clients().count()))
    }
}

fn body<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap()
}

fn caller(client: u64, request: u64) -> Caller {
    Caller { client, request, lane: 0 }
}

fn value(executed: Executed) -> (bool, Reply) {
    match executed {
        Executed::Applied(reply) => (false, postcard::from_bytes(&reply).unwrap()),
        Executed::Duplicate(reply) => (true, postcard::from_bytes(&reply).unwrap()),
        other => panic!("not an answer: {other:?}"),
    }
}

fn image(mirror: &Mirror) -> Vec<u8> {
    mirror.quiesced(|image, _| image.to_vec())
}

#[test]
fn declared_requests_are_applied_once_and_refusals_change_nothing() {
    let hosted = Hosted::new("counters", Counters);
    let mirror = Mirror::new(Region::map(0x4100_0000_0000, hosted.region_len()).unwrap(), None, CheckpointId(1));
    hosted.init(&mirror).unwrap();
    let add = body(&Op::Add { counter: 3, by: 5 });
    let run = |client, request, body: &[u8]| hosted.execute(&mirror, caller(client, request), 0, body);

    assert_eq!(value(run(9, 1, &add).unwrap().0), (false, Reply::Value(5)));
    assert_eq!(value(run(9, 1, &add).unwrap().0), (true, Reply::Value(5)), "a retry is answered, not applied");
    assert_eq!(value(run(9, 2, &add).unwrap().0), (false, Reply::Value(10)));
    assert_eq!(run(9, 1, &add).unwrap().0, Executed::Stale { last: 2 });

    let before = image(&mirror);
    for (client, request, bytes, refusal) in [
        (9, 4, add.clone(), "skips"),
        (0, 1, add.clone(), "start at 1"),
        (9, 0, add.clone(), "start at 1"),
        (9, 3, vec![0xff, 0xff, 0xff], "does not decode"),
        (9, 3, body(&Op::Refuse), "refused as asked"),
        (9, 3, body(&Op::Add { counter: COUNTERS, by: 1 }), "no counter"),
        (9, 3, body(&Op::Long), "MAX_REPLY"),
    ] {
        let error = run(client, request, &bytes).unwrap_err();
        assert!(error.to_string().contains(refusal), "{error}");
    }
    assert!(image(&mirror) == before, "a refusal changes nothing");
    // The refused number is still the next one.
    assert_eq!(value(run(9, 3, &add).unwrap().0), (false, Reply::Value(15)));

    let answer: (u64, Option<u64>) = postcard::from_bytes(&hosted.query(&mirror, &body(&9u64)).unwrap().0).unwrap();
    assert_eq!(answer, (15, Some(3)));
    let audit = mirror.quiesced(|image, _| hosted.audit(image, &[9, 10], Some(&body(&10u64))));
    let summary = audit.check.unwrap();
    assert!(summary.contains("total 15 over 1 clients") && summary.contains("each request applied once"), "{summary}");
    let memory = audit.clients[0].1.clone().unwrap();
    assert_eq!((memory.request, memory.applied), (3, 3));
    assert_eq!(postcard::from_bytes::<Reply>(&memory.reply.unwrap()).unwrap(), Reply::Value(15));
    assert_eq!(audit.clients[1], (10, None));
    assert_eq!(postcard::from_bytes::<(u64, Option<u64>)>(&audit.answer.unwrap().unwrap()).unwrap(), (15, None));
}

#[test]
fn concurrent_clients_on_shared_counters_are_each_applied_once() {
    let hosted = Hosted::new("counters", Counters);
    let mirror = Mirror::new(Region::map(0x4200_0000_0000, hosted.region_len()).unwrap(), None, CheckpointId(1));
    hosted.init(&mirror).unwrap();
    std::thread::scope(|scope| {
        for client in 1..=4u64 {
            let (hosted, mirror) = (&hosted, &mirror);
            scope.spawn(move || {
                for request in 1..=300u64 {
                    let add = body(&Op::Add { counter: request % 2, by: 1 });
                    hosted.execute(mirror, caller(client, request), 0, &add).unwrap();
                    if request % 7 == 0 {
                        let (duplicate, _) = value(hosted.execute(mirror, caller(client, request), 0, &add).unwrap().0);
                        assert!(duplicate);
                    }
                }
            });
        }
    });
    let summary = mirror.quiesced(|image, _| hosted.check(image)).unwrap();
    assert!(summary.contains("total 1200 over 4 clients"), "{summary}");
}

#[test]
fn a_full_client_table_refuses_new_clients_until_one_has_been_idle_for_its_expiry() {
    let hosted = Hosted::new("counters", Counters);
    let mirror = Mirror::new(Region::map(0x4300_0000_0000, hosted.region_len()).unwrap(), None, CheckpointId(1));
    hosted.init(&mirror).unwrap();
    let add = body(&Op::Add { counter: 0, by: 1 });
    let expiry = Counters::CLIENT_EXPIRY_MS;
    let mut admitted = Vec::new();
    for client in 1..=100 {
        match hosted.execute(&mirror, caller(client, 1), 1_000 + client, &add) {
            Ok(_) => admitted.push(client),
            Err(CallError::Full { slots, expiry_ms }) => {
                assert_eq!((slots, expiry_ms), (Counters::MAX_CLIENTS, expiry))
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(admitted.len(), Counters::MAX_CLIENTS);
    assert!(hosted.execute(&mirror, caller(1, 2), 1_000, &add).is_ok(), "a known client goes on");
    // Just short of the expiry, every slot is still someone's.
    let refused = hosted.execute(&mirror, caller(500, 1), 1_001 + expiry, &add);
    assert!(matches!(refused, Err(CallError::Full { .. })), "{refused:?}");
    // Past it, a new client takes the slot of the one idle longest among its probes.
    let now = 1_000 + 100 + expiry;
    assert!(hosted.execute(&mirror, caller(500, 1), now, &add).is_ok());
    let remembered = mirror.quiesced(|image, _| hosted.audit(image, &admitted, None)).clients;
    let displaced: Vec<u64> =
        remembered.iter().filter(|(_, memory)| memory.is_none()).map(|(client, _)| *client).collect();
    assert_eq!(displaced.len(), 1, "one client gave up its slot: {remembered:?}");
    // The displaced client is a stranger now: its next request skips numbers and is refused,
    // not applied, and the table still holds every request applied once.
    let back = hosted.execute(&mirror, caller(displaced[0], 2), now, &add);
    assert!(matches!(back, Err(CallError::Skips { expected: 1, got: 2 })), "{back:?}");
    let summary = mirror.quiesced(|image, _| hosted.check(image)).unwrap();
    assert!(summary.contains("each request applied once"), "{summary}");
}

#[test]
fn a_damaged_client_table_fails_the_check() {
    let hosted = Hosted::new("counters", Counters);
    let mirror = Mirror::new(Region::map(0x4400_0000_0000, hosted.region_len()).unwrap(), None, CheckpointId(1));
    hosted.init(&mirror).unwrap();
    hosted.execute(&mirror, caller(5, 1), 0, &body(&Op::Add { counter: 1, by: 2 })).unwrap();
    let mut image = image(&mirror);
    assert!(hosted.check(&image).is_ok());
    // The slot's `applied` count one higher: a request applied twice.
    let table_at = Counters.state_len().next_multiple_of(4096);
    let slot = (table_at + 64..table_at + hosted.region_len())
        .step_by(64)
        .find(|&at| image[at..at + 8] == 5u64.to_le_bytes())
        .unwrap();
    image[slot + 16] += 1;
    assert!(hosted.check(&image).unwrap_err().contains("client 5: last request 1 but 2 applied"));
    image[table_at] ^= 1;
    assert!(hosted.check(&image).unwrap_err().contains("bad magic"));
    assert!(hosted.check(&image[..100]).unwrap_err().contains("shorter"));
}

/// A list of values on the region's heap: ordinary collections, transparent mode.
struct Journal;

#[derive(Debug)]
struct Entries {
    values: RegionVec<u64>,
}

impl Service for Journal {
    type Request = u64;
    type Reply = usize;
    type Query = ();
    type Answer = Vec<u64>;
    const WRITES: Writes = Writes::Collections;

    fn state_len(&self) -> usize {
        1 << 20
    }

    fn execute(&self, store: &mut Store<'_>, value: &u64) -> Result<usize, ServiceError> {
        if *value == 0 {
            return Err(ServiceError::refused("zero is not a value"));
        }
        let mut heap = store.heap()?;
        let alloc = heap.allocator();
        let entries = heap.root(|| Entries { values: RegionVec::new_in(alloc) })?;
        entries.values.push(*value);
        Ok(entries.values.len())
    }

    fn query(&self, view: &View<'_>, _: &()) -> Result<Vec<u64>, ServiceError> {
        Ok(view.root::<Entries>()?.map(|entries| entries.values.to_vec()).unwrap_or_default())
    }

    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        let applied: u64 = image.clients().map(|client| client.applied).sum();
        let entries = nonstop_region::heap::Heap::root_in::<Entries>(image.state())
            .map_err(|error| error.to_string())?
            .map_or(0, |entries| entries.values.len() as u64);
        if entries != applied {
            return Err(format!("{entries} entries for {applied} requests applied"));
        }
        Ok(format!("{entries} entries"))
    }
}

#[test]
fn transparent_requests_are_applied_once_and_refusals_change_nothing() {
    let hosted = Hosted::new("journal", Journal);
    assert!(hosted.needs_transparent());
    let declared = Mirror::new(Region::map(0x4500_0000_0000, hosted.region_len()).unwrap(), None, CheckpointId(1));
    assert!(hosted.init(&declared).unwrap_err().to_string().contains("transparent mode"));
    drop(declared);
    let mirror =
        Mirror::transparent_unreplicated(Region::map(0x4600_0000_0000, hosted.region_len()).unwrap(), CheckpointId(1));
    hosted.init(&mirror).unwrap();
    let run = |client, request, value: u64| hosted.execute(&mirror, caller(client, request), 0, &body(&value));
    assert_eq!(run(1, 1, 10).unwrap().0, Executed::Applied(body(&1usize)));
    assert_eq!(run(2, 1, 20).unwrap().0, Executed::Applied(body(&2usize)));
    assert_eq!(run(1, 1, 10).unwrap().0, Executed::Duplicate(body(&1usize)));
    let before = image(&mirror);
    assert!(matches!(run(1, 2, 0), Err(CallError::Refused(_))));
    assert!(matches!(run(1, 5, 1), Err(CallError::Skips { expected: 2, got: 5 })));
    assert!(image(&mirror) == before, "a refusal changes nothing");
    let values: Vec<u64> = postcard::from_bytes(&hosted.query(&mirror, &body(&())).unwrap().0).unwrap();
    assert_eq!(values, [10, 20]);
    let summary = mirror.quiesced(|image, _| hosted.check(image)).unwrap();
    assert!(summary.contains("2 entries; 2 clients, each request applied once"), "{summary}");
}
