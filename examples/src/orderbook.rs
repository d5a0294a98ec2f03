//! `orderbook`: a price-time priority matching engine, in transparent mode.
//!
//! The book is ordinary Rust on the region's heap: two ordered maps of resting orders (best
//! price first, then oldest first) and a hash map of every resting order. A request assigns to
//! them; the kernel finds the pages written. Nothing can be undone in transparent mode, so every
//! refusal is decided before the first write.

use nonstop::heap::{FixedState, RegionHashMap, RegionOrderedMap};
use nonstop::{Image, Service, ServiceError, Settings, Store, View, Writes};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OrderRequest {
    /// Buys (sells) up to `quantity` at `price` or better; the rest rests in the book.
    Limit { side: Side, price: u64, quantity: u64 },
    /// Buys (sells) up to `quantity` at any price; what the book cannot fill is cancelled.
    Market { side: Side, quantity: u64 },
    /// Takes what rests of order `id` out of the book.
    Cancel { id: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderReply {
    /// `filled` at a total `cost` (price x quantity), `resting` left in the book.
    Placed { id: u64, filled: u64, cost: u64, resting: u64 },
    /// `quantity` was resting, and is cancelled.
    Cancelled { id: u64, quantity: u64 },
}

/// The best `levels` prices of each side, with the quantity resting at each.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Depth {
    pub bids: Vec<(u64, u64)>,
    pub asks: Vec<(u64, u64)>,
}

/// A resting order. Its key in its side's map orders the best price first on both sides (bids
/// by inverted price), then the older id first, as big-endian bytes.
#[derive(Clone, Copy)]
struct Resting {
    side: Side,
    price: u64,
    left: u64,
}

impl Resting {
    fn key(&self, id: u64) -> [u8; 16] {
        let ordered = if self.side == Side::Buy { !self.price } else { self.price };
        (((ordered as u128) << 64) | id as u128).to_be_bytes()
    }
}

struct Book {
    sides: [RegionOrderedMap<[u8; 16], u64>; 2],
    orders: RegionHashMap<u64, Resting>,
    next_id: u64,
    /// Lots over every order ever placed: placed = resting + filled + cancelled.
    placed: u64,
    filled: u64,
    cancelled: u64,
}

impl Book {
    /// Fills up to `quantity` against the other side at `limit` or better; returns (filled, cost).
    fn take(&mut self, side: Side, mut quantity: u64, limit: Option<u64>) -> (u64, u64) {
        let makers = if side == Side::Buy { Side::Sell } else { Side::Buy } as usize;
        let (mut filled, mut cost) = (0, 0);
        while quantity > 0
            && let Some((&key, &id)) = self.sides[makers].first_key_value()
        {
            let maker = self.orders.get_mut(&id).expect("every resting order is indexed");
            let price = maker.price;
            if limit.is_some_and(|limit| if side == Side::Buy { price > limit } else { price < limit }) {
                break;
            }
            let traded = quantity.min(maker.left);
            maker.left -= traded;
            if maker.left == 0 {
                self.orders.remove(&id);
                self.sides[makers].remove(&key);
            }
            (quantity, filled, cost) = (quantity - traded, filled + traded, cost + traded * price);
        }
        self.filled += 2 * filled; // the taker's and the makers'
        (filled, cost)
    }
}

/// The matching engine of one instrument: at most `max_orders` orders rest at once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBook {
    max_orders: u64,
}

impl OrderBook {
    /// `[services.settings] max_orders = N`.
    pub fn from_settings(settings: &Settings) -> Result<OrderBook, String> {
        let book: OrderBook = settings.parse()?;
        let ok = (1..=10_000_000).contains(&book.max_orders);
        ok.then_some(book).ok_or("max_orders: use 1 to 10,000,000".into())
    }

    fn book<'a>(&self, store: &'a mut Store<'_>) -> Result<&'a mut Book, ServiceError> {
        let mut heap = store.heap()?;
        let (alloc, capacity) = (heap.allocator(), self.max_orders as usize);
        // Built only the first time: an allocation in the region is a write, even one dropped.
        Ok(heap.root(|| Book {
            sides: [RegionOrderedMap::new_in(alloc), RegionOrderedMap::new_in(alloc)],
            orders: RegionHashMap::with_capacity_and_hasher_in(capacity, FixedState::default(), alloc),
            next_id: 1,
            placed: 0,
            filled: 0,
            cancelled: 0,
        })?)
    }
}

impl Service for OrderBook {
    type Request = OrderRequest;
    type Reply = OrderReply;
    type Query = u32;
    type Answer = Depth;
    const WRITES: Writes = Writes::Collections;

    /// The index reserved whole, and room for the maps' nodes: 512 bytes an order in all.
    fn state_len(&self) -> usize {
        (self.max_orders as usize * 512 + (1 << 20)).next_multiple_of(1 << 20)
    }

    fn init(&self, store: &mut Store<'_>) -> Result<(), ServiceError> {
        self.book(store).map(drop)
    }

    fn execute(&self, store: &mut Store<'_>, request: &OrderRequest) -> Result<OrderReply, ServiceError> {
        let max_orders = self.max_orders;
        let book = self.book(store)?;
        let (side, quantity, limit) = match *request {
            OrderRequest::Cancel { id } => {
                let order = book.orders.remove(&id).ok_or_else(|| ServiceError::refused(format!("no order {id}")))?;
                book.sides[order.side as usize].remove(&order.key(id));
                book.cancelled += order.left;
                return Ok(OrderReply::Cancelled { id, quantity: order.left });
            }
            OrderRequest::Limit { side, price, quantity } => (side, quantity, Some(price)),
            OrderRequest::Market { side, quantity } => (side, quantity, None),
        };
        if quantity == 0 || limit == Some(0) || quantity > 1 << 40 || limit.is_some_and(|p| p > 1 << 40) {
            return Err(ServiceError::refused("quantities and prices are 1 to 2^40"));
        }
        if limit.is_some() && book.orders.len() as u64 >= max_orders {
            return Err(ServiceError::refused(format!("the book holds {max_orders} orders, its max_orders")));
        }
        // Every refusal is behind us: from here on the request only writes.
        let id = book.next_id;
        book.next_id += 1;
        book.placed += quantity;
        let (filled, cost) = book.take(side, quantity, limit);
        let left = quantity - filled;
        match limit {
            Some(price) if left > 0 => {
                let order = Resting { side, price, left };
                book.sides[side as usize].insert(order.key(id), id);
                book.orders.insert(id, order);
            }
            _ => book.cancelled += left,
        }
        Ok(OrderReply::Placed { id, filled, cost, resting: if limit.is_some() { left } else { 0 } })
    }

    fn query(&self, view: &View<'_>, levels: &u32) -> Result<Depth, ServiceError> {
        let Some(book) = view.root::<Book>()? else { return Ok(Depth::default()) };
        let depth = |side: Side| {
            let mut depth: Vec<(u64, u64)> = Vec::new();
            for order in book.sides[side as usize].values().map(|id| &book.orders[id]) {
                let full = depth.len() == *levels as usize;
                match depth.last_mut() {
                    Some((price, lots)) if *price == order.price => *lots += order.left,
                    _ if full => break,
                    _ => depth.push((order.price, order.left)),
                }
            }
            depth
        };
        Ok(Depth { bids: depth(Side::Buy), asks: depth(Side::Sell) })
    }

    /// Limit orders around 100 that often cross, some market orders, and cancels of the first
    /// thousand ids (refused once those are filled or gone).
    fn sample(&self, _client: u64, draw: u64) -> Option<OrderRequest> {
        let side = if draw & 1 == 0 { Side::Buy } else { Side::Sell };
        let quantity = 1 + (draw >> 8) % 20;
        Some(match (draw >> 1) % 10 {
            0 => OrderRequest::Cancel { id: 1 + (draw >> 16) % 1000 },
            1 => OrderRequest::Market { side, quantity },
            _ => OrderRequest::Limit { side, price: 95 + (draw >> 32) % 10, quantity },
        })
    }

    /// Each resting order is in its side's map once, and only there; the book is not crossed;
    /// over all orders, placed = resting + filled + cancelled.
    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        let book = nonstop::heap::Heap::root_in::<Book>(image.state()).map_err(|e| e.to_string())?;
        let Some(book) = book else { return Ok("no book yet".into()) };
        let mut resting = 0;
        for (id, order) in book.orders.iter() {
            let in_book = book.sides[order.side as usize].get(&order.key(*id));
            if order.left == 0 || in_book != Some(id) {
                return Err(format!("order {id}: {} left, in its book as {in_book:?}", order.left));
            }
            resting += order.left;
        }
        let [bids, asks] = &book.sides;
        if bids.len() + asks.len() != book.orders.len() {
            return Err(format!("{} + {} orders in the books, {} indexed", bids.len(), asks.len(), book.orders.len()));
        }
        let (placed, filled, cancelled) = (book.placed, book.filled, book.cancelled);
        if placed != resting + filled + cancelled {
            return Err(format!("placed {placed} != resting {resting} + filled {filled} + cancelled {cancelled}"));
        }
        let best = |side: Side| book.sides[side as usize].first_key_value().map(|(_, id)| book.orders[id].price);
        if let (Some(bid), Some(ask)) = (best(Side::Buy), best(Side::Sell))
            && bid >= ask
        {
            return Err(format!("the book is crossed: bid {bid} >= ask {ask}"));
        }
        Ok(format!("{} orders resting ({resting} lots), {placed} placed, {filled} filled", book.orders.len()))
    }
}
