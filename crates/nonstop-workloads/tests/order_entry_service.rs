//! Order-Entry as a service, hosted as a node hosts it: TPC-C's mix from several clients, each
//! request applied once (retries answered from the client table), refusals changing nothing,
//! and the same final image as the benchmark's transactions called directly.

use nonstop_proto::CheckpointId;
use nonstop_region::{Mirror, Region};
use nonstop_service::{CallError, Caller, Executed, Hosted};
use nonstop_workloads::Workload;
use nonstop_workloads::order_entry::service::{DistrictQuery, DistrictState, OrderEntryService};
use nonstop_workloads::order_entry::{NAME, OrderEntryReply, OrderEntryRequest};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn hosted_on(base: usize) -> (Hosted, Mirror) {
    let hosted = Hosted::new(NAME, OrderEntryService::new(1));
    let region = Region::map(base, hosted.region_len().next_multiple_of(1 << 20)).unwrap();
    let mirror = Mirror::new(region, None, CheckpointId(1));
    hosted.init(&mirror).unwrap();
    (hosted, mirror)
}

fn call(hosted: &Hosted, mirror: &Mirror, client: u64, request: u64, body: &[u8]) -> Result<Executed, CallError> {
    hosted.execute(mirror, Caller { client, request, lane: client as usize }, 0, body).map(|(executed, _)| executed)
}

#[test]
fn the_mix_through_the_service_is_applied_once_and_keeps_tpcc_conditions() {
    let (hosted, mirror) = hosted_on(0x2550_0000_0000);
    let (direct, direct_mirror) = {
        let db = *OrderEntryService::new(1).database();
        let mirror = Mirror::new(
            Region::map(0x2560_0000_0000, db.used_len().next_multiple_of(1 << 20)).unwrap(),
            None,
            CheckpointId(1),
        );
        db.load(&mirror);
        (db, mirror)
    };
    let mut rng = SmallRng::seed_from_u64(17);
    let mut counts = [0u64; 4]; // entered, rolled back, backlog full, other
    for n in 0..20_000u64 {
        let client = n % 4 + 1;
        let request = n / 4 + 1;
        let drawn = direct.draw(&mut rng);
        let body = postcard::to_allocvec(&drawn).unwrap();
        let Executed::Applied(reply) = call(&hosted, &mirror, client, request, &body).unwrap() else {
            panic!("request {request} of client {client} was not applied")
        };
        // Every fifth request is sent twice: the retry is answered, not applied again.
        if n % 5 == 0 {
            let retry = call(&hosted, &mirror, client, request, &body).unwrap();
            assert_eq!(retry, Executed::Duplicate(reply.clone()));
        }
        let reply: OrderEntryReply = postcard::from_bytes(&reply).unwrap();
        counts[match reply {
            OrderEntryReply::Entered { .. } => 0,
            OrderEntryReply::RolledBack => 1,
            OrderEntryReply::BacklogFull => 2,
            _ => 3,
        }] += 1;
        // The same request through the benchmark's path (lane = client, as above).
        let tx = direct_mirror.begin();
        assert_eq!(direct.apply(&tx, &drawn, client as usize), Ok(reply));
        tx.commit();
    }
    assert!(counts[0] > 8_000 && counts[1] > 20 && counts[3] > 9_000, "{counts:?}");
    let check = mirror.quiesced(|image, _| hosted.check(image));
    assert!(check.as_ref().is_ok_and(|c| c.contains("TPC-C") && c.contains("4 clients")), "{check:?}");
    let state_len = direct.used_len();
    let same = mirror.quiesced(|image, _| direct_mirror.quiesced(|other, _| image[..state_len] == other[..state_len]));
    assert!(same, "the service's state differs from the same requests run directly");
    let answer = hosted.query(&mirror, &postcard::to_allocvec(&DistrictQuery { warehouse: 0, district: 3 }).unwrap());
    let district: DistrictState = postcard::from_bytes(&answer.unwrap().0).unwrap();
    assert!(district.next_order > 1 && district.next_delivery <= district.next_order, "{district:?}");
}

#[test]
fn a_request_out_of_range_is_refused_and_changes_nothing() {
    let (hosted, mirror) = hosted_on(0x2570_0000_0000);
    let before = mirror.quiesced(|image, _| image[..hosted.region_len()].to_vec());
    let bad = OrderEntryRequest::Payment { warehouse: 1, district: 0, customer: 0, amount: 100 };
    let refused = call(&hosted, &mirror, 1, 1, &postcard::to_allocvec(&bad).unwrap());
    assert!(matches!(&refused, Err(CallError::Refused(reason)) if reason.contains("warehouse 1")), "{refused:?}");
    assert!(matches!(call(&hosted, &mirror, 1, 1, b"\xff\xff\xff"), Err(CallError::BadRequest(_))));
    assert!(mirror.quiesced(|image, _| image[..hosted.region_len()] == before[..]), "a refusal wrote");
    // The number was not used up: the client's first valid request is still number 1.
    let good = OrderEntryRequest::Payment { warehouse: 0, district: 0, customer: 0, amount: 100 };
    let paid = call(&hosted, &mirror, 1, 1, &postcard::to_allocvec(&good).unwrap()).unwrap();
    let Executed::Applied(reply) = paid else { panic!("{paid:?}") };
    assert_eq!(postcard::from_bytes::<OrderEntryReply>(&reply).unwrap(), OrderEntryReply::Paid { balance: -1100 });
}
