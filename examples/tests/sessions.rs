//! The `sessions` example through the platform, as a node runs it.

use nonstop::{CallError, Caller, CheckpointId, Executed, Hosted, Mirror, Region, Settings};
use nonstop_examples::sessions::{Session, SessionRequest, Sessions};

struct Store {
    hosted: Hosted,
    mirror: Mirror,
    next: u64,
}

impl Store {
    fn new(slots: u64, base: usize) -> Store {
        let settings = Settings::new(format!("slots = {slots}").parse().unwrap());
        let hosted = Hosted::new("sessions", Sessions::from_settings(&settings).unwrap());
        let mirror = Mirror::new(Region::map(base, hosted.region_len()).unwrap(), None, CheckpointId(1));
        hosted.init(&mirror).unwrap();
        Store { hosted, mirror, next: 1 }
    }

    fn call(&mut self, request: SessionRequest) -> Result<i64, CallError> {
        let caller = Caller { client: 1, request: self.next, lane: 0 };
        let body = postcard::to_allocvec(&request).unwrap();
        match self.hosted.execute(&self.mirror, caller, 0, &body)?.0 {
            Executed::Applied(reply) => {
                self.next += 1;
                Ok(postcard::from_bytes(&reply).unwrap())
            }
            other => panic!("{other:?}"),
        }
    }

    fn get(&self, id: &str, now_ms: u64) -> Option<Session> {
        let body = postcard::to_allocvec(&(id.to_string(), now_ms)).unwrap();
        postcard::from_bytes(&self.hosted.query(&self.mirror, &body).unwrap().0).unwrap()
    }

    fn check(&self) -> String {
        self.mirror.quiesced(|image, _| self.hosted.check(image)).unwrap()
    }
}

fn open(id: &str, now_ms: u64, ttl_ms: u64) -> SessionRequest {
    SessionRequest::Open { id: id.into(), data: id.as_bytes().to_vec(), now_ms, ttl_ms }
}

#[test]
fn sessions_open_count_expire_and_close() {
    let mut store = Store::new(64, 0x5100_0000_0000);
    store.call(open("alice", 0, 100)).unwrap();
    assert_eq!(store.call(SessionRequest::Add { id: "alice".into(), delta: 5, now_ms: 10 }).unwrap(), 5);
    assert_eq!(store.call(SessionRequest::Add { id: "alice".into(), delta: -2, now_ms: 20 }).unwrap(), 3);
    let alice = Session { data: b"alice".to_vec(), counter: 3, expires_ms: 100 };
    assert_eq!(store.get("alice", 50), Some(alice));
    assert_eq!(store.get("alice", 100), None, "expired");
    let expired = store.call(SessionRequest::Add { id: "alice".into(), delta: 1, now_ms: 100 }).unwrap_err();
    assert!(expired.to_string().contains("no session"), "{expired}");
    store.call(open("bob", 200, 100)).unwrap();
    assert_eq!(store.call(SessionRequest::Close { id: "bob".into(), now_ms: 250 }).unwrap(), 0);
    assert_eq!(store.get("bob", 250), None);
    for refused in [open("", 0, 1), open(&"x".repeat(33), 0, 1)] {
        assert!(matches!(store.call(refused), Err(CallError::Refused(_))));
    }
    let long = SessionRequest::Open { id: "c".into(), data: vec![0; 65], now_ms: 0, ttl_ms: 1 };
    assert!(matches!(store.call(long), Err(CallError::Refused(_))));
    let summary = store.check();
    assert!(summary.contains("2 of 64 slots used, 1 sessions not closed"), "{summary}");
}

#[test]
fn a_full_store_refuses_and_expired_slots_are_reused() {
    let mut store = Store::new(8, 0x5200_0000_0000);
    for i in 0..8 {
        store.call(open(&format!("s{i}"), 0, 10)).unwrap();
    }
    let full = store.call(open("s8", 5, 10)).unwrap_err();
    assert!(full.to_string().contains("full"), "{full}");
    // At time 10 every session has expired: their slots take new ones, and each stays found.
    for i in 8..16 {
        store.call(open(&format!("s{i}"), 10, 10)).unwrap();
    }
    for i in 8..16 {
        assert!(store.get(&format!("s{i}"), 15).is_some(), "s{i}");
    }
    assert!(store.check().contains("8 of 8 slots used"));
}
