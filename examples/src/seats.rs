//! Seats for shows, sold by several worker threads at once: a multithreaded service, run
//! actively replicated. Each show's seats are behind a mutex of their own; an exchange takes
//! two shows' mutexes, the lower show first, so that no two threads wait for each other.
//! Every replica's threads take the mutexes in the order its scheduler decides, which depends
//! on the requests alone, so every replica sells the same seats.

use nonstop::sync::{HandleError, Mutex, MutexId, Worker};
use nonstop::{Settings, ThreadedService};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SeatRequest {
    Buy {
        show: u32,
        seats: u32,
    },
    Return {
        show: u32,
        seats: u32,
    },
    /// Returns `seats` of show `from` and buys as many of show `to`, both or neither.
    Exchange {
        from: u32,
        to: u32,
        seats: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Show {
    pub capacity: u32,
    pub sold: u32,
}

pub struct Seats {
    shows: Vec<Mutex<Show>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SeatSettings {
    shows: u32,
    capacity: u32,
}

impl Default for SeatSettings {
    fn default() -> Self {
        SeatSettings { shows: 16, capacity: 500 }
    }
}

impl Seats {
    pub fn from_settings(settings: &Settings) -> Result<Seats, String> {
        let SeatSettings { shows, capacity } = settings.parse()?;
        if !(1..=10_000).contains(&shows) {
            return Err(format!("shows = {shows}: use 1 to 10000"));
        }
        let show = Show { capacity, sold: 0 };
        Ok(Seats { shows: (0..shows).map(|id| Mutex::new(MutexId(id), show)).collect() })
    }

    fn show(&self, show: u32) -> Result<&Mutex<Show>, HandleError> {
        self.shows.get(show as usize).ok_or_else(|| HandleError::refused(format!("no show {show}")))
    }
}

/// Refuses to sell more than is left or take back more than was sold; else moves the seats.
fn sell(show: &mut Show, seats: i64) -> Result<(), HandleError> {
    let sold = i64::from(show.sold) + seats;
    if !(0..=i64::from(show.capacity)).contains(&sold) {
        return Err(HandleError::refused(format!("{} seats sold of {}", show.sold, show.capacity)));
    }
    show.sold = sold as u32;
    Ok(())
}

impl ThreadedService for Seats {
    type Request = SeatRequest;
    /// Seats left in the show bought from.
    type Reply = u32;
    type Query = u32;
    type Answer = Show;
    type State = Vec<Show>;

    fn handle(&self, worker: &Worker, request: &SeatRequest) -> Result<u32, HandleError> {
        match *request {
            SeatRequest::Buy { show, seats } | SeatRequest::Return { show, seats } => {
                let mut taken = worker.lock(self.show(show)?)?;
                let sign = if matches!(request, SeatRequest::Buy { .. }) { 1 } else { -1 };
                sell(&mut taken, sign * i64::from(seats))?;
                Ok(taken.capacity - taken.sold)
            }
            SeatRequest::Exchange { from, to, seats } => {
                if from == to {
                    return Err(HandleError::refused("an exchange needs two shows"));
                }
                let mut low = worker.lock(self.show(from.min(to))?)?;
                let mut high = worker.lock(self.show(from.max(to))?)?;
                let (source, target) = if from < to { (&mut *low, &mut *high) } else { (&mut *high, &mut *low) };
                let (before, seats) = (*source, i64::from(seats));
                sell(source, -seats)?;
                if let Err(refused) = sell(target, seats) {
                    *source = before;
                    return Err(refused);
                }
                Ok(target.capacity - target.sold)
            }
        }
    }

    fn query(&self, reader: &Worker, show: &u32) -> Result<Show, HandleError> {
        Ok(*reader.lock(self.show(*show)?)?)
    }

    fn snapshot(&self, reader: &Worker) -> Result<Vec<Show>, HandleError> {
        self.shows.iter().map(|show| Ok(*reader.lock(show)?)).collect()
    }

    fn restore(&self, reader: &Worker, state: Vec<Show>) -> Result<(), String> {
        if state.len() != self.shows.len() {
            return Err(format!("{} shows, not {}: the nodes' settings differ", state.len(), self.shows.len()));
        }
        for (show, restored) in self.shows.iter().zip(state) {
            *reader.lock(show).map_err(|e| e.to_string())? = restored;
        }
        Ok(())
    }

    fn check(&self, reader: &Worker) -> Result<String, String> {
        let shows = self.snapshot(reader).map_err(|e| e.to_string())?;
        if let Some((id, show)) = shows.iter().enumerate().find(|(_, s)| s.sold > s.capacity) {
            return Err(format!("show {id} sold {} of {} seats", show.sold, show.capacity));
        }
        Ok(format!("{} seats sold in {} shows", shows.iter().map(|s| u64::from(s.sold)).sum::<u64>(), shows.len()))
    }

    fn sample(&self, _client: u64, draw: u64) -> Option<SeatRequest> {
        let shows = self.shows.len() as u64;
        let (show, other, seats) = ((draw % shows) as u32, ((draw >> 20) % shows) as u32, (draw >> 40) as u32 % 4 + 1);
        Some(match draw >> 60 {
            0..=7 => SeatRequest::Buy { show, seats },
            8..=12 => SeatRequest::Return { show, seats },
            _ => SeatRequest::Exchange { from: show, to: other, seats },
        })
    }
}
