//! `order-entry`: TPC-C's five transactions as a nonstop service, at fixed offsets through
//! declared transactions (or, in transparent mode, plain writes at the same offsets).
//!
//! Each request is one transaction with all its inputs ([`OrderEntryRequest`]); the reply says
//! what it did ([`OrderEntryReply`]). The platform makes each exactly-once, and the backups
//! check TPC-C's consistency conditions 1 to 4 on every image they verify.

use super::{DISTRICTS, District, NAME, OrderEntry, OrderEntryReply, OrderEntryRequest};
use crate::Workload;
use nonstop_service::{Image, Service, ServiceError, Settings, Store, View, Writes};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

/// Payment-history lanes: client connections take them in turn, so up to this many commit
/// payments without sharing a history row. Part of the region's layout.
pub const LANES: usize = 8;

/// The service's settings (`[services.settings]`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderEntrySettings {
    /// Warehouses (TPC-C's scale factor; about 22 MiB of region each).
    pub warehouses: u64,
}

impl Default for OrderEntrySettings {
    fn default() -> Self {
        OrderEntrySettings { warehouses: 1 }
    }
}

/// A read-only question: one district's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistrictQuery {
    /// The warehouse.
    pub warehouse: u32,
    /// The district.
    pub district: u32,
}

/// A district's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistrictState {
    /// Payments received this year, in cents.
    pub ytd: i64,
    /// The number the next order will get.
    pub next_order: u32,
    /// The oldest undelivered order's number (`next_order` if none).
    pub next_delivery: u32,
}

/// The Order-Entry service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderEntryService {
    db: OrderEntry,
}

impl OrderEntryService {
    /// A database of `warehouses` warehouses.
    pub fn new(warehouses: u64) -> OrderEntryService {
        OrderEntryService { db: OrderEntry::new(warehouses, LANES) }
    }

    /// The service a config's settings describe, checked.
    pub fn from_settings(settings: &Settings) -> Result<OrderEntryService, String> {
        let parsed: OrderEntrySettings = settings.parse()?;
        if !(1..=1024).contains(&parsed.warehouses) {
            return Err(format!("warehouses = {} is out of range: use 1 to 1024", parsed.warehouses));
        }
        Ok(OrderEntryService::new(parsed.warehouses))
    }

    /// The database shape.
    pub fn database(&self) -> &OrderEntry {
        &self.db
    }
}

impl Service for OrderEntryService {
    type Request = OrderEntryRequest;
    type Reply = OrderEntryReply;
    type Query = DistrictQuery;
    type Answer = DistrictState;
    const WRITES: Writes = Writes::AtOffsets;

    fn state_len(&self) -> usize {
        self.db.used_len()
    }

    fn init(&self, store: &mut Store<'_>) -> Result<(), ServiceError> {
        Ok(self.db.init(&store.writer())?)
    }

    fn execute(&self, store: &mut Store<'_>, request: &OrderEntryRequest) -> Result<OrderEntryReply, ServiceError> {
        if let Some(reason) = self.db.refusal(request) {
            return Err(ServiceError::refused(reason));
        }
        let lane = store.caller().lane;
        Ok(self.db.apply(&store.writer(), request, lane)?)
    }

    fn query(&self, view: &View<'_>, query: &DistrictQuery) -> Result<DistrictState, ServiceError> {
        if query.warehouse as u64 >= self.db.warehouses || query.district as u64 >= DISTRICTS {
            return Err(ServiceError::refused(format!(
                "no district {}/{} ({} warehouses of {DISTRICTS})",
                query.warehouse, query.district, self.db.warehouses
            )));
        }
        let district: District = view.read(self.db.district_at(query.warehouse as u64, query.district as u64))?;
        Ok(DistrictState {
            ytd: district.ytd.get(),
            next_order: district.next_o_id.get(),
            next_delivery: district.next_deliver_o_id.get(),
        })
    }

    /// A request from TPC-C's mix ([`OrderEntry::draw`]).
    fn sample(&self, _client: u64, draw: u64) -> Option<OrderEntryRequest> {
        Some(self.db.draw(&mut SmallRng::seed_from_u64(draw)))
    }

    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        let shape = OrderEntry::from_image(image.state())?;
        if (shape.warehouses, shape.workers) != (self.db.warehouses, self.db.workers) {
            return Err(format!(
                "the region holds {} warehouses and {} lanes, this node is configured for {} and {}",
                shape.warehouses, shape.workers, self.db.warehouses, self.db.workers
            ));
        }
        super::check(image.state())
    }
}

/// Registers the service as kind [`NAME`].
pub(crate) fn register(registry: &mut nonstop_service::Registry) -> &mut nonstop_service::Registry {
    registry.register(NAME, OrderEntryService::from_settings)
}
