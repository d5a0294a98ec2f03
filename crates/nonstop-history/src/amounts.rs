//! The bank load's amounts. Client `c` numbers its transfers 1, 2, 3, … and each amount follows
//! from `(c, number)`, so the balance of any prefix of a client's requests is known exactly.

/// The amount of request `request` of client `client`, in cents (never 0).
pub fn delta_of(client: u64, request: u64) -> i64 {
    let mixed = (client.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ request.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 40;
    (mixed % 2000) as i64 - 999 + if mixed % 2000 == 999 { 1 } else { 0 }
}

/// The balance client `client`'s account holds after its requests `1..=last`.
pub fn expected_balance(client: u64, last: u64) -> i64 {
    ExpectedBalances::new(client).after(last)
}

/// One client's expected balances, each request's computed once: checking a history asks for
/// every request number, and summing from 1 each time would be quadratic.
#[derive(Clone, Debug)]
pub struct ExpectedBalances {
    client: u64,
    /// `after[k]`: the balance after requests `1..=k`.
    after: Vec<i64>,
}

impl ExpectedBalances {
    /// No request applied yet.
    pub fn new(client: u64) -> ExpectedBalances {
        ExpectedBalances { client, after: vec![0] }
    }

    /// The balance after requests `1..=last`.
    pub fn after(&mut self, last: u64) -> i64 {
        while (self.after.len() as u64) <= last {
            let next = self.after.len() as u64;
            let balance = self.after[next as usize - 1] + delta_of(self.client, next);
            self.after.push(balance);
        }
        self.after[last as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_never_zero_and_sum_as_expected() {
        for client in 1..50 {
            for request in 1..200 {
                let delta = delta_of(client, request);
                assert!(delta != 0 && (-999..=1000).contains(&delta));
            }
        }
        assert_eq!(expected_balance(3, 2), delta_of(3, 1) + delta_of(3, 2));
    }
}
