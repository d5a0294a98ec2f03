//! What the examples' tests share: where the example binaries are, and a plain reference
//! order book to compare the engine's every answer with.

#![allow(dead_code)] // each test file uses part of it

use nonstop_examples::orderbook::OrderReply;
use nonstop_examples::orderbook::OrderRequest::{self, Cancel, Limit, Market};
use nonstop_examples::orderbook::Side::{self, Buy, Sell};
use std::path::PathBuf;

/// The example binary `cargo test` built beside this test.
pub fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let exe = deps.parent().unwrap().join("examples").join(name);
    assert!(exe.exists(), "{} is built by cargo test (cargo build --release --examples)", exe.display());
    exe
}

/// A plain book: a list of resting orders, matched by scanning for the best.
pub struct Reference {
    pub resting: Vec<(u64, Side, u64, u64)>, // id, side, price, remaining
    next: u64,
    seed: u64,
}

impl Reference {
    /// What the engine must answer to `request` (`None`: a refusal).
    pub fn apply(&mut self, request: &OrderRequest) -> Option<OrderReply> {
        let (side, price, mut quantity) = match *request {
            Cancel { id } => {
                let at = self.resting.iter().position(|o| o.0 == id)?;
                let (_, _, _, quantity) = self.resting.remove(at);
                return Some(OrderReply::Cancelled { id, quantity });
            }
            Limit { side, price, quantity } => (side, Some(price), quantity),
            Market { side, quantity } => (side, None, quantity),
        };
        self.next += 1;
        let (id, mut filled, mut cost) = (self.next, 0, 0);
        while quantity > 0 {
            let crosses = |o: &&mut (u64, Side, u64, u64)| {
                o.1 != side && price.is_none_or(|p| if side == Buy { o.2 <= p } else { o.2 >= p })
            };
            let best = self
                .resting
                .iter_mut()
                .filter(crosses)
                .min_by_key(|o| (if side == Buy { o.2 } else { u64::MAX - o.2 }, o.0));
            let Some(maker) = best else { break };
            let traded = quantity.min(maker.3);
            (maker.3, quantity, filled, cost) =
                (maker.3 - traded, quantity - traded, filled + traded, cost + traded * maker.2);
            self.resting.retain(|o| o.3 > 0);
        }
        let resting = if price.is_some() { quantity } else { 0 };
        if resting > 0 {
            self.resting.push((id, side, price.unwrap(), resting));
        }
        Some(OrderReply::Placed { id, filled, cost, resting })
    }
}

impl Default for Reference {
    fn default() -> Reference {
        Reference { resting: Vec::new(), next: 0, seed: 0x2545_f491_4f6c_dd1d }
    }
}

impl Reference {
    /// A random order around price 100, from a fixed seed: cancels of any id so far, market
    /// orders, and limit orders that often cross.
    pub fn random_order(&mut self) -> OrderRequest {
        let mut random = |n: u64| {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            self.seed % n
        };
        let side = if random(2) == 0 { Buy } else { Sell };
        match random(10) {
            0 => Cancel { id: 1 + random(self.next.max(1)) },
            1 => Market { side, quantity: 1 + random(20) },
            _ => Limit { side, price: 95 + random(10), quantity: 1 + random(20) },
        }
    }
}
