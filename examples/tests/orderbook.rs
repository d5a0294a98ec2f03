//! The `orderbook` example through the platform: matching by price then time, checked against
//! a plain reference model over thousands of random orders, and refusals that change nothing.

use nonstop::{CallError, Caller, CheckpointId, Executed, Hosted, Mirror, Region, Settings};
use nonstop_examples::orderbook::{Depth, OrderBook, OrderReply, OrderRequest, Side};

mod common;
use common::Reference;

struct Engine {
    hosted: Hosted,
    mirror: Mirror,
    next: u64,
}

impl Engine {
    fn new(max_orders: u64, base: usize) -> Engine {
        let settings = Settings::new(format!("max_orders = {max_orders}").parse().unwrap());
        let hosted = Hosted::new("orderbook", OrderBook::from_settings(&settings).unwrap());
        let region = Region::map(base, hosted.region_len()).unwrap();
        let mirror = Mirror::transparent_unreplicated(region, CheckpointId(1));
        hosted.init(&mirror).unwrap();
        Engine { hosted, mirror, next: 1 }
    }

    fn call(&mut self, request: &OrderRequest) -> Result<OrderReply, CallError> {
        let caller = Caller { client: 1, request: self.next, lane: 0 };
        match self.hosted.execute(&self.mirror, caller, 0, &postcard::to_allocvec(request).unwrap())?.0 {
            Executed::Applied(reply) => {
                self.next += 1;
                Ok(postcard::from_bytes(&reply).unwrap())
            }
            other => panic!("{other:?}"),
        }
    }

    fn depth(&self, levels: u32) -> Depth {
        postcard::from_bytes(&self.hosted.query(&self.mirror, &postcard::to_allocvec(&levels).unwrap()).unwrap().0)
            .unwrap()
    }

    fn check(&self) -> String {
        self.mirror.quiesced(|image, _| self.hosted.check(image)).unwrap()
    }
}

use OrderRequest::{Cancel, Limit, Market};
use Side::{Buy, Sell};

#[test]
fn orders_match_by_price_then_time() {
    let mut engine = Engine::new(1000, 0x5300_0000_0000);
    let placed = |id, filled, cost, resting| OrderReply::Placed { id, filled, cost, resting };
    assert_eq!(engine.call(&Limit { side: Sell, price: 102, quantity: 5 }).unwrap(), placed(1, 0, 0, 5));
    assert_eq!(engine.call(&Limit { side: Sell, price: 101, quantity: 3 }).unwrap(), placed(2, 0, 0, 3));
    assert_eq!(engine.call(&Limit { side: Sell, price: 101, quantity: 4 }).unwrap(), placed(3, 0, 0, 4));
    assert_eq!(engine.depth(5), Depth { bids: vec![], asks: vec![(101, 7), (102, 5)] });
    // 101 first (order 2 before order 3), then nothing above the limit.
    assert_eq!(engine.call(&Limit { side: Buy, price: 101, quantity: 5 }).unwrap(), placed(4, 5, 505, 0));
    assert_eq!(engine.depth(5).asks, vec![(101, 2), (102, 5)]);
    // A market order sweeps the rest; what is left of it is cancelled, not rested.
    assert_eq!(engine.call(&Market { side: Buy, quantity: 10 }).unwrap(), placed(5, 7, 2 * 101 + 5 * 102, 0));
    assert_eq!(engine.call(&Limit { side: Buy, price: 99, quantity: 8 }).unwrap(), placed(6, 0, 0, 8));
    assert_eq!(engine.call(&Cancel { id: 6 }).unwrap(), OrderReply::Cancelled { id: 6, quantity: 8 });
    assert_eq!(engine.depth(5), Depth::default());
    let summary = engine.check();
    assert!(summary.contains("0 orders resting") && summary.contains("35 placed"), "{summary}");
}

#[test]
fn refusals_change_nothing() {
    let mut engine = Engine::new(2, 0x5400_0000_0000);
    engine.call(&Limit { side: Buy, price: 10, quantity: 1 }).unwrap();
    engine.call(&Limit { side: Buy, price: 11, quantity: 1 }).unwrap();
    let before = engine.mirror.quiesced(|image, _| image.to_vec());
    for request in [
        Cancel { id: 99 },
        Limit { side: Buy, price: 0, quantity: 1 },
        Limit { side: Buy, price: 1, quantity: 0 },
        Market { side: Sell, quantity: 1 << 41 },
        Limit { side: Sell, price: 20, quantity: 1 }, // a third resting order: max_orders is 2
    ] {
        assert!(matches!(engine.call(&request), Err(CallError::Refused(_))), "{request:?}");
    }
    assert!(engine.mirror.quiesced(|image, _| image == before.as_slice()), "a refusal changes nothing");
    assert!(engine.check().contains("2 orders resting"));
}

#[test]
fn random_orders_match_as_a_plain_reference_book_does() {
    let mut engine = Engine::new(10_000, 0x5500_0000_0000);
    let mut reference = Reference::default();
    for _ in 0..5000 {
        let request = reference.random_order();
        let expected = reference.apply(&request);
        match (engine.call(&request), expected) {
            (Ok(reply), Some(expected)) => assert_eq!(reply, expected, "{request:?}"),
            (Err(CallError::Refused(_)), None) => {}
            (got, expected) => panic!("{request:?}: {got:?}, expected {expected:?}"),
        }
    }
    let summary = engine.check();
    assert!(summary.contains(&format!("{} orders resting", reference.resting.len())), "{summary}");
}
