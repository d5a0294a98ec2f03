//! Order-Entry: the TPC-C shape as Vista ran it (Christodoulopoulou et al., PPoPP 2006).
//!
//! A wholesale supplier with warehouses, ten districts each, customers, items and stock; the
//! five transactions in TPC-C's standard mix — new-order 45%, payment 43%, order-status 4%,
//! delivery 4%, stock-level 4% — with TPC-C's 1% of new-orders rolled back on an unknown item.
//!
//! In memory, as in Vista: each district keeps its orders (with their lines inline) in a ring
//! of [`ORDER_SLOTS`] slots. A new-order may only reuse a delivered order's slot; when a
//! district's ring is full of undelivered orders the worker runs a delivery instead (the
//! backlog TPC-C lets grow on disk is bounded here). There is no initial order population.
//!
//! The consistency check implements TPC-C's conditions 1 to 4 (clause 3.3.2) on any image.
//!
//! Every input of a transaction is drawn by the client ([`OrderEntry::draw`]) and carried in an
//! [`OrderEntryRequest`]; the transactions themselves draw nothing, so the benchmark, driven
//! directly on a mirror, and the `order-entry` service ([`service`]), driven by a node's
//! clients, run the very same code. A new-order whose last item is unknown (TPC-C's 1%) is
//! rolled back before it writes anything, so it needs no undo and runs the same in transparent
//! mode ([`Mirror::tracked`]), written through [`Update`] instead of declared.

use crate::Workload;
use nonstop_proto::PAGE_SIZE;
use nonstop_proto::primary::Ticket;
use nonstop_region::{Mirror, RegionWrite, TxError, Update};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use zerocopy::little_endian::{I32, I64, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

pub mod service;

/// The workload's name.
pub const NAME: &str = "order-entry";
const MAGIC: u64 = 0x4e53_4f45_5450_4331; // "NSOETPC1"
/// Districts per warehouse.
pub const DISTRICTS: u64 = 10;
/// Customers per district.
pub const CUSTOMERS: u64 = 3000;
/// Items in the catalogue (item numbers `0..ITEMS`; a new-order naming another is rolled back).
pub const ITEMS: u64 = 100_000;
/// Order slots per district.
pub const ORDER_SLOTS: u64 = 4096;
/// Lines a new-order may have.
pub const MAX_LINES: usize = 15;
const HISTORY_SLOTS: u64 = 1 << 16;
const MAX_WORKERS: usize = 32;

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: U64,
    warehouses: U64,
    workers: U64,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Warehouse {
    ytd: I64,
    tax_bp: U32,
    _pad: [u8; 4],
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct District {
    ytd: I64,
    tax_bp: U32,
    next_o_id: U32,
    next_deliver_o_id: U32,
    _pad: [u8; 12],
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Customer {
    balance: I64,
    ytd_payment: I64,
    payment_cnt: U32,
    delivery_cnt: U32,
    discount_bp: U32,
    last_o_id: U32,
    _filler: [u8; 16],
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Item {
    price: U32,
    _pad: [u8; 4],
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Stock {
    quantity: I32,
    order_cnt: U32,
    remote_cnt: U32,
    _pad: [u8; 4],
    ytd: I64,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct OrderLine {
    item: U32,
    supply_w: U32,
    quantity: U32,
    amount: U32,
    delivery_d: U64,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Order {
    o_id: U32,
    c_id: U32,
    ol_cnt: U32,
    carrier_id: U32,
    entry_d: U64,
    all_local: U32,
    _pad: [u8; 4],
    lines: [OrderLine; MAX_LINES],
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HistoryRecord {
    c_id: U32,
    d_id: U32,
    amount: I64,
}

/// One of TPC-C's five transactions, with every input chosen by the client: the service draws
/// no randomness and reads no clock of its own, so every node computes the same state.
/// Warehouses, districts, customers and items are numbered from 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEntryRequest {
    /// Enter an order of 1 to [`MAX_LINES`] lines of distinct items.
    NewOrder(NewOrder),
    /// A customer pays `amount` cents to its district and warehouse.
    Payment {
        /// The warehouse.
        warehouse: u32,
        /// The district.
        district: u32,
        /// The customer.
        customer: u32,
        /// Cents, 1 to [`MAX_PAYMENT`].
        amount: i64,
    },
    /// The status of a customer's last order (read-only).
    OrderStatus {
        /// The warehouse.
        warehouse: u32,
        /// The district.
        district: u32,
        /// The customer.
        customer: u32,
    },
    /// Deliver the oldest undelivered order of each district of a warehouse.
    Delivery {
        /// The warehouse.
        warehouse: u32,
        /// The carrier, 1 to 10.
        carrier: u32,
        /// The delivery date (the client's clock, as data).
        delivered_at: u64,
    },
    /// How many items of a district's last 20 orders are below `threshold` in stock (read-only).
    StockLevel {
        /// The warehouse.
        warehouse: u32,
        /// The district.
        district: u32,
        /// The stock threshold.
        threshold: i32,
    },
}

/// A new-order's inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// The warehouse.
    pub warehouse: u32,
    /// The district.
    pub district: u32,
    /// The customer.
    pub customer: u32,
    /// The entry date (the client's clock, as data).
    pub entered_at: u64,
    /// The lines; an item of [`ITEMS`] or more rolls the order back, as TPC-C's unused item does.
    pub lines: Vec<NewOrderLine>,
}

/// One line of a new-order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrderLine {
    /// The item.
    pub item: u32,
    /// The warehouse that supplies it.
    pub supply_warehouse: u32,
    /// How many, 1 to 10.
    pub quantity: u32,
}

/// The largest payment, in cents (TPC-C's 5,000.00).
pub const MAX_PAYMENT: i64 = 500_000;

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEntryReply {
    /// The order was entered: its number in its district and its total in cents.
    Entered {
        /// The order's number.
        order: u32,
        /// Its total, tax and discount applied.
        total: u64,
    },
    /// An item is unknown: the order was rolled back and nothing written.
    RolledBack,
    /// The district's ring is full of undelivered orders: nothing entered; deliver first.
    BacklogFull,
    /// The payment was made: the customer's balance after it.
    Paid {
        /// The customer's balance, in cents.
        balance: i64,
    },
    /// The customer's last order (`order` 0: none yet, or no longer in the ring).
    Status {
        /// The order's number.
        order: u32,
        /// Its lines.
        lines: u32,
        /// Its total.
        total: u64,
        /// Whether it was delivered.
        delivered: bool,
    },
    /// Orders delivered (at most one per district).
    Delivered {
        /// How many.
        orders: u32,
    },
    /// Distinct items of the district's last 20 orders below the threshold.
    StockLevel {
        /// How many.
        low: u32,
    },
}

fn size<T>() -> u64 {
    std::mem::size_of::<T>() as u64
}

/// The shape of an Order-Entry database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderEntry {
    /// Warehouses (TPC-C scale factor).
    pub warehouses: u64,
    /// Workers issuing transactions; each owns a payment-history segment.
    pub workers: usize,
}

impl OrderEntry {
    /// A database of `warehouses` warehouses.
    pub fn new(warehouses: u64, workers: usize) -> OrderEntry {
        OrderEntry { warehouses: warehouses.max(1), workers: workers.clamp(1, MAX_WORKERS) }
    }

    fn worker_at(worker: usize) -> u64 {
        64 + worker as u64 * 64
    }
    fn warehouse_at(&self, w: u64) -> u64 {
        PAGE_SIZE as u64 + w * size::<Warehouse>()
    }
    fn district_at(&self, w: u64, d: u64) -> u64 {
        self.warehouse_at(self.warehouses) + (w * DISTRICTS + d) * size::<District>()
    }
    fn customer_at(&self, w: u64, d: u64, c: u64) -> u64 {
        self.district_at(self.warehouses, 0) + ((w * DISTRICTS + d) * CUSTOMERS + c) * size::<Customer>()
    }
    fn item_at(&self, i: u64) -> u64 {
        self.customer_at(self.warehouses, 0, 0) + i * size::<Item>()
    }
    fn stock_at(&self, w: u64, i: u64) -> u64 {
        self.item_at(ITEMS) + (w * ITEMS + i) * size::<Stock>()
    }
    fn orders_at(&self) -> u64 {
        self.stock_at(self.warehouses, 0).next_multiple_of(PAGE_SIZE as u64)
    }
    fn order_at(&self, w: u64, d: u64, o_id: u64) -> u64 {
        self.orders_at() + ((w * DISTRICTS + d) * ORDER_SLOTS + o_id % ORDER_SLOTS) * size::<Order>()
    }
    fn history_at(&self, worker: usize, n: u64) -> u64 {
        let segment = HISTORY_SLOTS / self.workers as u64;
        self.order_at(self.warehouses, 0, 0) + (worker as u64 * segment + n % segment) * size::<HistoryRecord>()
    }

    fn from_image(image: &[u8]) -> Result<OrderEntry, String> {
        let header = Header::read_from_prefix(image).map_err(|_| "image shorter than the header".to_string())?.0;
        if header.magic.get() != MAGIC {
            return Err("no Order-Entry database in this image (bad magic)".into());
        }
        let shape = OrderEntry { warehouses: header.warehouses.get(), workers: header.workers.get() as usize };
        if !(1..=1024).contains(&shape.warehouses)
            || !(1..=MAX_WORKERS).contains(&shape.workers)
            || shape.used_len() > image.len()
        {
            return Err(format!("implausible Order-Entry shape {shape:?} for a {}-byte image", image.len()));
        }
        Ok(shape)
    }

    /// Why `request` cannot run on this database (`None`: it can). Checked before anything is
    /// written, so a refusal changes nothing.
    pub fn refusal(&self, request: &OrderEntryRequest) -> Option<String> {
        let district = |w: u32, d: u32| -> Option<String> {
            if w as u64 >= self.warehouses {
                return Some(format!("warehouse {w} out of range ({} warehouses)", self.warehouses));
            }
            (d as u64 >= DISTRICTS).then(|| format!("district {d} out of range ({DISTRICTS} per warehouse)"))
        };
        let customer = |w: u32, d: u32, c: u32| {
            district(w, d).or_else(|| {
                (c as u64 >= CUSTOMERS).then(|| format!("customer {c} out of range ({CUSTOMERS} per district)"))
            })
        };
        match request {
            OrderEntryRequest::NewOrder(order) => {
                customer(order.warehouse, order.district, order.customer).or_else(|| self.line_refusal(&order.lines))
            }
            OrderEntryRequest::Payment { warehouse, district, customer: c, amount } => {
                customer(*warehouse, *district, *c).or_else(|| {
                    (!(1..=MAX_PAYMENT).contains(amount))
                        .then(|| format!("payment of {amount} cents: pay 1 to {MAX_PAYMENT}"))
                })
            }
            OrderEntryRequest::OrderStatus { warehouse, district, customer: c } => customer(*warehouse, *district, *c),
            OrderEntryRequest::Delivery { warehouse, carrier, .. } => district(*warehouse, 0)
                .or_else(|| (!(1..=10).contains(carrier)).then(|| format!("carrier {carrier}: carriers are 1 to 10"))),
            OrderEntryRequest::StockLevel { warehouse, district: d, .. } => district(*warehouse, *d),
        }
    }

    fn line_refusal(&self, lines: &[NewOrderLine]) -> Option<String> {
        if !(1..=MAX_LINES).contains(&lines.len()) {
            return Some(format!("an order of {} lines: 1 to {MAX_LINES}", lines.len()));
        }
        lines.iter().enumerate().find_map(|(index, line)| {
            if line.supply_warehouse as u64 >= self.warehouses {
                Some(format!("line {index}: supply warehouse {} out of range", line.supply_warehouse))
            } else if !(1..=10).contains(&line.quantity) {
                Some(format!("line {index}: quantity {}: order 1 to 10", line.quantity))
            } else if lines[..index].iter().any(|other| other.item == line.item) {
                Some(format!("line {index}: item {} is on an earlier line", line.item))
            } else {
                None
            }
        })
    }

    /// Runs `request` (which [`OrderEntry::refusal`] accepted) through `tx`; `lane` picks the
    /// payment-history segment.
    pub fn apply(
        &self,
        tx: &impl RegionWrite,
        request: &OrderEntryRequest,
        lane: usize,
    ) -> Result<OrderEntryReply, TxError> {
        match *request {
            OrderEntryRequest::NewOrder(ref order) => self.new_order(tx, order),
            OrderEntryRequest::Payment { warehouse, district, customer, amount } => {
                self.payment(tx, lane, (warehouse as u64, district as u64, customer as u64), amount)
            }
            OrderEntryRequest::OrderStatus { warehouse, district, customer } => {
                self.order_status(tx, (warehouse as u64, district as u64, customer as u64))
            }
            OrderEntryRequest::Delivery { warehouse, carrier, delivered_at } => {
                self.delivery(tx, warehouse as u64, carrier, delivered_at)
            }
            OrderEntryRequest::StockLevel { warehouse, district, threshold } => {
                self.stock_level(tx, warehouse as u64, district as u64, threshold)
            }
        }
    }

    fn new_order(&self, tx: &impl RegionWrite, input: &NewOrder) -> Result<OrderEntryReply, TxError> {
        // TPC-C's unused item: found before anything is written, so nothing needs undoing.
        if input.lines.iter().any(|line| line.item as u64 >= ITEMS) {
            return Ok(OrderEntryReply::RolledBack);
        }
        let (w, d, c) = (input.warehouse as u64, input.district as u64, input.customer as u64);
        let district = tx.write::<District>(self.district_at(w, d))?;
        let o_id = district.next_o_id.get() as u64;
        if o_id - district.next_deliver_o_id.get() as u64 >= ORDER_SLOTS {
            return Ok(OrderEntryReply::BacklogFull);
        }
        district.next_o_id = U32::new(o_id as u32 + 1);
        let tax = tx.read::<Warehouse>(self.warehouse_at(w))?.tax_bp.get() + district.tax_bp.get();
        let customer = tx.write::<Customer>(self.customer_at(w, d, c))?;
        customer.last_o_id = U32::new(o_id as u32);
        let discount = customer.discount_bp.get();
        let order = tx.write::<Order>(self.order_at(w, d, o_id))?;
        *order = Order::new_zeroed();
        order.o_id = U32::new(o_id as u32);
        order.c_id = U32::new(c as u32);
        order.ol_cnt = U32::new(input.lines.len() as u32);
        order.entry_d = U64::new(input.entered_at);
        let mut all_local = 1;
        let mut total = 0u64;
        for (line, input) in order.lines.iter_mut().zip(&input.lines) {
            let (item, supply_w, quantity) = (input.item as u64, input.supply_warehouse as u64, input.quantity);
            if supply_w != w {
                all_local = 0;
            }
            let price = tx.read::<Item>(self.item_at(item))?.price.get();
            let stock = tx.write::<Stock>(self.stock_at(supply_w, item))?;
            let left = stock.quantity.get() - quantity as i32;
            stock.quantity = I32::new(if left >= 10 { left } else { left + 91 });
            stock.ytd = I64::new(stock.ytd.get() + quantity as i64);
            stock.order_cnt = U32::new(stock.order_cnt.get() + 1);
            if supply_w != w {
                stock.remote_cnt = U32::new(stock.remote_cnt.get() + 1);
            }
            let amount =
                price as u64 * quantity as u64 * (10_000 + tax as u64) / 10_000 * (10_000 - discount as u64) / 10_000;
            total += amount;
            *line = OrderLine {
                item: U32::new(item as u32 + 1),
                supply_w: U32::new(supply_w as u32),
                quantity: U32::new(quantity),
                amount: U32::new(amount as u32),
                delivery_d: U64::new(0),
            };
        }
        order.all_local = U32::new(all_local);
        Ok(OrderEntryReply::Entered { order: o_id as u32, total })
    }

    fn payment(
        &self,
        tx: &impl RegionWrite,
        lane: usize,
        (w, d, c): (u64, u64, u64),
        amount: i64,
    ) -> Result<OrderEntryReply, TxError> {
        let warehouse = tx.write::<I64>(self.warehouse_at(w))?;
        *warehouse = I64::new(warehouse.get() + amount);
        let district = tx.write::<I64>(self.district_at(w, d))?;
        *district = I64::new(district.get() + amount);
        let customer = tx.write::<Customer>(self.customer_at(w, d, c))?;
        customer.balance = I64::new(customer.balance.get() - amount);
        customer.ytd_payment = I64::new(customer.ytd_payment.get() + amount);
        customer.payment_cnt = U32::new(customer.payment_cnt.get() + 1);
        let balance = customer.balance.get();
        let lane = lane % self.workers;
        let head = tx.write::<U64>(Self::worker_at(lane))?;
        let n = head.get();
        *head = U64::new(n + 1);
        *tx.write::<HistoryRecord>(self.history_at(lane, n))? =
            HistoryRecord { c_id: U32::new(c as u32), d_id: U32::new(d as u32), amount: I64::new(amount) };
        Ok(OrderEntryReply::Paid { balance })
    }

    fn order_status(&self, tx: &impl RegionWrite, (w, d, c): (u64, u64, u64)) -> Result<OrderEntryReply, TxError> {
        let customer = tx.read::<Customer>(self.customer_at(w, d, c))?;
        let o_id = customer.last_o_id.get() as u64;
        let next = tx.read::<District>(self.district_at(w, d))?.next_o_id.get() as u64;
        if o_id == 0 || o_id + ORDER_SLOTS < next {
            return Ok(OrderEntryReply::Status { order: 0, lines: 0, total: 0, delivered: false });
        }
        let order = tx.read::<Order>(self.order_at(w, d, o_id))?;
        let lines = order.lines.iter().take(order.ol_cnt.get() as usize);
        Ok(OrderEntryReply::Status {
            order: o_id as u32,
            lines: order.ol_cnt.get(),
            total: lines.map(|l| l.amount.get() as u64).sum(),
            delivered: order.carrier_id.get() != 0,
        })
    }

    fn delivery(&self, tx: &impl RegionWrite, w: u64, carrier: u32, now: u64) -> Result<OrderEntryReply, TxError> {
        let mut orders = 0;
        for d in 0..DISTRICTS {
            let district = tx.write::<District>(self.district_at(w, d))?;
            let o_id = district.next_deliver_o_id.get() as u64;
            if o_id >= district.next_o_id.get() as u64 {
                continue; // nothing to deliver in this district
            }
            district.next_deliver_o_id = U32::new(o_id as u32 + 1);
            let order = tx.write::<Order>(self.order_at(w, d, o_id))?;
            order.carrier_id = U32::new(carrier);
            let mut total = 0i64;
            for line in order.lines.iter_mut().take(order.ol_cnt.get() as usize) {
                line.delivery_d = U64::new(now);
                total += line.amount.get() as i64;
            }
            let customer = tx.write::<Customer>(self.customer_at(w, d, order.c_id.get() as u64))?;
            customer.balance = I64::new(customer.balance.get() + total);
            customer.delivery_cnt = U32::new(customer.delivery_cnt.get() + 1);
            orders += 1;
        }
        Ok(OrderEntryReply::Delivered { orders })
    }

    fn stock_level(&self, tx: &impl RegionWrite, w: u64, d: u64, threshold: i32) -> Result<OrderEntryReply, TxError> {
        let next = tx.read::<District>(self.district_at(w, d))?.next_o_id.get() as u64;
        let mut low = 0;
        let mut seen = [0u32; 20 * MAX_LINES];
        let mut distinct = 0;
        for o_id in next.saturating_sub(20).max(1)..next {
            let order = tx.read::<Order>(self.order_at(w, d, o_id))?;
            for line in order.lines.iter().take((order.ol_cnt.get() as usize).min(MAX_LINES)) {
                let item = line.item.get();
                if item == 0 || seen[..distinct].contains(&item) {
                    continue;
                }
                seen[distinct] = item;
                distinct += 1;
                if tx.read::<Stock>(self.stock_at(w, item as u64 - 1))?.quantity.get() < threshold {
                    low += 1;
                }
            }
        }
        Ok(OrderEntryReply::StockLevel { low })
    }

    /// Draws a request from TPC-C's mix: new-order 45%, payment 43%, order-status, delivery and
    /// stock-level 4% each; 1% of new-orders name an unknown last item and roll back.
    pub fn draw(&self, rng: &mut SmallRng) -> OrderEntryRequest {
        let w = rng.random_range(0..self.warehouses) as u32;
        let d = rng.random_range(0..DISTRICTS) as u32;
        let c = rng.random_range(0..CUSTOMERS) as u32;
        match rng.random_range(0..100) {
            0..45 => OrderEntryRequest::NewOrder(self.draw_new_order(rng, w, d, c)),
            45..88 => OrderEntryRequest::Payment {
                warehouse: w,
                district: d,
                customer: c,
                amount: rng.random_range(100..=MAX_PAYMENT),
            },
            88..92 => OrderEntryRequest::OrderStatus { warehouse: w, district: d, customer: c },
            92..96 => self.draw_delivery(rng),
            _ => OrderEntryRequest::StockLevel { warehouse: w, district: d, threshold: rng.random_range(10..=20) },
        }
    }

    fn draw_new_order(&self, rng: &mut SmallRng, w: u32, d: u32, c: u32) -> NewOrder {
        let count = rng.random_range(5..=MAX_LINES);
        let mut lines: Vec<NewOrderLine> = Vec::with_capacity(count);
        while lines.len() < count {
            let item = rng.random_range(0..ITEMS) as u32;
            if lines.iter().any(|line| line.item == item) {
                continue; // distinct items, so that each stock row is written once
            }
            let supply_warehouse = if self.warehouses > 1 && rng.random_ratio(1, 100) {
                rng.random_range(0..self.warehouses) as u32
            } else {
                w
            };
            lines.push(NewOrderLine { item, supply_warehouse, quantity: rng.random_range(1..=10) });
        }
        if rng.random_ratio(1, 100) {
            lines[count - 1].item = ITEMS as u32;
        }
        NewOrder { warehouse: w, district: d, customer: c, entered_at: rng.random::<u32>() as u64, lines }
    }

    /// Draws a delivery (what a client runs when a new-order finds its district's ring full).
    pub fn draw_delivery(&self, rng: &mut SmallRng) -> OrderEntryRequest {
        OrderEntryRequest::Delivery {
            warehouse: rng.random_range(0..self.warehouses) as u32,
            carrier: rng.random_range(1..=10),
            delivered_at: rng.random::<u32>() as u64,
        }
    }

    /// Writes the initial database (the header, warehouses, districts, customers, items and
    /// stock) into an empty region. The large tables are declared one range each: a range
    /// per row would make a transaction of hundreds of thousands of ranges.
    pub fn init(&self, tx: &impl RegionWrite) -> Result<(), TxError> {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        *tx.write::<Header>(0)? = Header {
            magic: U64::new(MAGIC),
            warehouses: U64::new(self.warehouses),
            workers: U64::new(self.workers as u64),
        };
        for w in 0..self.warehouses {
            let warehouse = tx.write::<Warehouse>(self.warehouse_at(w))?;
            warehouse.ytd = I64::new(30_000_000 * DISTRICTS as i64);
            warehouse.tax_bp = U32::new(rng.random_range(0..=2000));
        }
        for_each_row::<District>(tx, self.district_at(0, 0), self.warehouses * DISTRICTS, |district| {
            district.ytd = I64::new(30_000_000);
            district.tax_bp = U32::new(rng.random_range(0..=2000));
            district.next_o_id = U32::new(1);
            district.next_deliver_o_id = U32::new(1);
        })?;
        for_each_row::<Customer>(tx, self.customer_at(0, 0, 0), self.warehouses * DISTRICTS * CUSTOMERS, |customer| {
            customer.balance = I64::new(-1000);
            customer.discount_bp = U32::new(rng.random_range(0..=5000));
        })?;
        for_each_row::<Item>(tx, self.item_at(0), ITEMS, |item| item.price = U32::new(rng.random_range(100..=10_000)))?;
        for_each_row::<Stock>(tx, self.stock_at(0, 0), self.warehouses * ITEMS, |stock| {
            stock.quantity = I32::new(rng.random_range(10..=100))
        })
    }

    /// Runs `request` on `mirror` as one transaction (or update), retrying lock conflicts.
    fn run_request(&self, mirror: &Mirror, request: &OrderEntryRequest, lane: usize) -> (OrderEntryReply, Ticket) {
        if mirror.is_transparent() {
            let (reply, ticket) = mirror.update(|image| self.apply(&Update::new(image), request, lane));
            return (reply.unwrap_or_else(|error| panic!("Order-Entry layout bug: {error}")), ticket);
        }
        loop {
            let tx = mirror.begin();
            match self.apply(&tx, request, lane) {
                Ok(reply) => return (reply, tx.commit()),
                Err(TxError::Conflict { .. }) => {
                    tx.abort();
                    std::thread::yield_now();
                }
                Err(other) => panic!("Order-Entry layout bug: {other}"),
            }
        }
    }
}

/// Declares `count` rows of `T` from `at` as one range and sets each with `set`.
fn for_each_row<T: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned>(
    tx: &impl RegionWrite,
    at: u64,
    count: u64,
    mut set: impl FnMut(&mut T),
) -> Result<(), TxError> {
    let rows = tx.write_bytes(at, (count * size::<T>()) as usize)?;
    for row in rows.chunks_exact_mut(size::<T>() as usize) {
        set(T::mut_from_bytes(row).expect("a row's size and no alignment"));
    }
    Ok(())
}

impl Workload for OrderEntry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn used_len(&self) -> usize {
        (self.history_at(0, 0) + HISTORY_SLOTS * size::<HistoryRecord>()) as usize
    }

    fn load(&self, mirror: &Mirror) {
        assert!(self.used_len() <= mirror.len(), "region too small for this Order-Entry shape");
        if mirror.is_transparent() {
            mirror.update(|image| self.init(&Update::new(image))).0.expect("in region");
        } else {
            let tx = mirror.begin();
            self.init(&tx).expect("in region");
            tx.commit();
        }
    }

    fn run_one(&self, mirror: &Mirror, worker: usize, rng: &mut SmallRng) -> Ticket {
        let mut request = self.draw(rng);
        loop {
            match self.run_request(mirror, &request, worker) {
                // The district's ring is full of undelivered orders: deliver instead.
                (OrderEntryReply::BacklogFull, _) => request = self.draw_delivery(rng),
                (_, ticket) => return ticket,
            }
        }
    }
}

/// TPC-C's consistency conditions 1-4 (clause 3.3.2) on an image:
/// 1. each warehouse's YTD equals the sum of its districts' YTD;
/// 2. each district's next order id minus one is its newest order's id;
/// 3. the undelivered orders of a district are exactly the ids from its delivery pointer to its
///    newest order, and no others;
/// 4. every order holds as many lines as its line count says.
pub fn check(image: &[u8]) -> Result<String, String> {
    let db = OrderEntry::from_image(image)?;
    let read = |at: u64, len: u64| &image[at as usize..(at + len) as usize];
    let mut orders = 0u64;
    let mut undelivered = 0u64;
    for w in 0..db.warehouses {
        let warehouse = Warehouse::read_from_bytes(read(db.warehouse_at(w), size::<Warehouse>())).expect("size");
        let mut districts_ytd = 0i64;
        for d in 0..DISTRICTS {
            let district = District::read_from_bytes(read(db.district_at(w, d), size::<District>())).expect("size");
            districts_ytd += district.ytd.get();
            let next = district.next_o_id.get() as u64;
            let deliver = district.next_deliver_o_id.get() as u64;
            if deliver > next || next - deliver > ORDER_SLOTS || next == 0 {
                return Err(format!(
                    "district {w}/{d}: delivery pointer {deliver} and next order {next} are inconsistent"
                ));
            }
            let oldest = next.saturating_sub(ORDER_SLOTS).max(1);
            for o_id in oldest..next {
                let order = Order::read_from_bytes(read(db.order_at(w, d, o_id), size::<Order>())).expect("size");
                if order.o_id.get() as u64 != o_id {
                    return Err(format!(
                        "condition 2: district {w}/{d} slot of order {o_id} holds order {}",
                        order.o_id.get()
                    ));
                }
                let pending = order.carrier_id.get() == 0;
                if pending != (o_id >= deliver) {
                    return Err(format!(
                        "condition 3: district {w}/{d} order {o_id} is {} but the delivery pointer is {deliver}",
                        if pending { "undelivered" } else { "delivered" }
                    ));
                }
                let count = order.ol_cnt.get() as usize;
                let lines = order.lines.iter().filter(|l| l.item.get() != 0).count();
                if count > MAX_LINES || lines != count {
                    return Err(format!(
                        "condition 4: district {w}/{d} order {o_id} says {count} lines and holds {lines}"
                    ));
                }
                orders += 1;
                undelivered += pending as u64;
            }
        }
        if warehouse.ytd.get() != districts_ytd {
            return Err(format!(
                "condition 1: warehouse {w} YTD {} differs from its districts' sum {districts_ytd}",
                warehouse.ytd.get()
            ));
        }
    }
    Ok(format!(
        "order-entry consistent (TPC-C conditions 1-4): {} warehouses, {orders} orders in the rings, {undelivered} undelivered",
        db.warehouses
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_proto::CheckpointId;
    use nonstop_region::Region;

    #[test]
    fn the_mix_keeps_tpcc_conditions_and_corruption_is_caught() {
        let db = OrderEntry::new(2, 2);
        let region = Region::map(0x2510_0000_0000, db.used_len().next_multiple_of(1 << 20)).unwrap();
        let mirror = Mirror::new(region, None, CheckpointId(1));
        db.load(&mirror);
        let mut rng = SmallRng::seed_from_u64(3);
        for i in 0..200_000 {
            db.run_one(&mirror, i % 2, &mut rng);
        }
        let verdict = mirror.quiesced(|image, _| check(image));
        assert!(verdict.is_ok(), "{verdict:?}");
        let mut image = mirror.quiesced(|image, _| image.to_vec());
        let at = db.warehouse_at(1) as usize;
        image[at] ^= 1;
        assert!(check(&image).unwrap_err().contains("condition 1"));
        let mut image = mirror.quiesced(|image, _| image.to_vec());
        let at = db.district_at(0, 3) as usize + 12; // next_o_id
        image[at] = image[at].wrapping_add(1);
        assert!(check(&image).is_err());
    }

    #[test]
    fn the_mix_written_plainly_ends_byte_equal_to_the_mix_declared() {
        // The transactions draw nothing themselves, so one seed makes the same requests in
        // either mode, and a rolled-back new-order writes nothing in either.
        let db = OrderEntry::new(1, 1);
        let len = db.used_len().next_multiple_of(1 << 20);
        let plain = Mirror::transparent_unreplicated(Region::map(0x2530_0000_0000, len).unwrap(), CheckpointId(1));
        let declared = Mirror::new(Region::map(0x2540_0000_0000, len).unwrap(), None, CheckpointId(1));
        for mirror in [&plain, &declared] {
            db.load(mirror);
            let mut rng = SmallRng::seed_from_u64(9);
            for _ in 0..100_000 {
                db.run_one(mirror, 0, &mut rng);
            }
        }
        let (verdict, delivered, image) = plain.quiesced(|image, _| {
            let district = District::read_from_prefix(&image[db.district_at(0, 0) as usize..]).unwrap().0;
            (check(image), district.next_deliver_o_id.get(), image[..db.used_len()].to_vec())
        });
        assert!(verdict.is_ok(), "{verdict:?}");
        assert!(delivered > 1, "deliveries ran");
        assert!(declared.quiesced(|other, _| other[..db.used_len()] == image[..]), "the two modes' images differ");
    }

    #[test]
    fn requests_out_of_range_are_refused_before_anything_is_written() {
        let db = OrderEntry::new(2, 1);
        let line = |item, supply_warehouse, quantity| NewOrderLine { item, supply_warehouse, quantity };
        let order = |lines: Vec<NewOrderLine>| {
            OrderEntryRequest::NewOrder(NewOrder { warehouse: 1, district: 9, customer: 2999, entered_at: 0, lines })
        };
        assert_eq!(
            db.refusal(&order(vec![line(7, 0, 10), line(ITEMS as u32, 1, 1)])),
            None,
            "an unknown item rolls back"
        );
        for bad in [
            order(vec![]),
            order(vec![line(1, 0, 1); MAX_LINES + 1]),
            order(vec![line(1, 0, 1), line(1, 0, 2)]),
            order(vec![line(1, 2, 1)]),
            order(vec![line(1, 0, 0)]),
            order(vec![line(1, 0, 11)]),
            OrderEntryRequest::Payment { warehouse: 2, district: 0, customer: 0, amount: 100 },
            OrderEntryRequest::Payment { warehouse: 0, district: 10, customer: 0, amount: 100 },
            OrderEntryRequest::Payment { warehouse: 0, district: 0, customer: 3000, amount: 100 },
            OrderEntryRequest::Payment { warehouse: 0, district: 0, customer: 0, amount: 0 },
            OrderEntryRequest::Payment { warehouse: 0, district: 0, customer: 0, amount: MAX_PAYMENT + 1 },
            OrderEntryRequest::Delivery { warehouse: 0, carrier: 0, delivered_at: 0 },
            OrderEntryRequest::StockLevel { warehouse: 5, district: 0, threshold: 15 },
        ] {
            assert!(db.refusal(&bad).is_some(), "{bad:?} accepted");
        }
    }
}
