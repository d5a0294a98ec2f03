//! The replication survey's synthetic server as a multithreaded service (kind `survey`):
//! worker threads serve requests, each a sequence of sections, each a mutex on shared data with
//! some computing inside, then simulated I/O outside it (Basile, Kalbarczyk and Iyer, "A
//! Preemptive Deterministic Scheduling Algorithm for Multithreaded Replicas", DSN 2003, and
//! "Loose Synchronization of Multithreaded Replicas", SRDS 2002, as Iyer's survey "Design of
//! High Availability Systems and Networks: Replication" describes it).
//!
//! A request is a seed; its sections, drawn from it, fold it into the values they enter, and
//! the reply is what the request saw. So the reply and the state depend on the order in which
//! the threads took the mutexes: two replicas agree only if their scheduler made them take
//! every mutex in the same order, which is what makes it a test of determinism as well as a
//! benchmark. `nonstop bench active` runs the same server in one process.

use nonstop_service::Settings;
use nonstop_service::threaded::{HandleError, Mutex, MutexId, ThreadedService, Worker};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// The kind's name in a node's config.
pub const NAME: &str = "survey";

/// The server's shape (`[services.settings]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SurveySettings {
    /// Mutex sections per request.
    pub sections: u32,
    /// Mutexes over the shared data.
    pub mutexes: u32,
    /// Computing inside each section, in microseconds.
    pub compute_us: u64,
    /// Simulated I/O after each section, outside the mutex, in microseconds.
    pub io_us: u64,
}

impl Default for SurveySettings {
    fn default() -> Self {
        // Short accesses to shared data; the I/O (persistent storage in the survey's model) is
        // most of a request's time.
        SurveySettings { sections: 4, mutexes: 8, compute_us: 5, io_us: 200 }
    }
}

impl SurveySettings {
    /// The settings of a service's config, checked.
    pub fn from(settings: &Settings) -> Result<SurveySettings, String> {
        let parsed: SurveySettings = settings.parse()?;
        parsed.checked()
    }

    /// These settings, if they are in range.
    pub fn checked(self) -> Result<SurveySettings, String> {
        if !(1..=64).contains(&self.sections) {
            return Err(format!("sections = {} is out of range: use 1 to 64", self.sections));
        }
        if !(1..=4096).contains(&self.mutexes) {
            return Err(format!("mutexes = {} is out of range: use 1 to 4096", self.mutexes));
        }
        for (key, us) in [("compute_us", self.compute_us), ("io_us", self.io_us)] {
            if us > 1_000_000 {
                return Err(format!("{key} = {us} is out of range: use 0 to 1000000 microseconds"));
            }
        }
        Ok(self)
    }
}

/// What one request does, whoever keeps the shared data (the service's mutexes, or the
/// passive configuration of `nonstop bench active`, which keeps them in a region).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    sections: u32,
    mutexes: usize,
    compute: Duration,
    io: Duration,
}

impl Shape {
    /// The shape `settings` describe.
    pub fn of(settings: &SurveySettings) -> Shape {
        Shape {
            sections: settings.sections,
            mutexes: settings.mutexes as usize,
            compute: Duration::from_micros(settings.compute_us),
            io: Duration::from_micros(settings.io_us),
        }
    }

    /// Mutexes over the shared data.
    pub fn mutexes(&self) -> usize {
        self.mutexes
    }

    /// Serves the request `seed`: each section enters the mutex its draw names, through
    /// `enter(mutex, fold)`, which runs `fold` on the value under it; each folds the seed into
    /// the value and computes, then the section's I/O follows outside the mutex. Answers what
    /// the request saw.
    pub fn serve<E>(
        &self,
        seed: u64,
        mut enter: impl FnMut(usize, &mut dyn FnMut(&mut u64)) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut seen = 0u64;
        for section in 0..self.sections {
            let draw = mix(seed ^ u64::from(section).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            enter((draw % self.mutexes as u64) as usize, &mut |value: &mut u64| {
                *value = mix(*value ^ seed);
                seen ^= *value;
                spin(self.compute);
            })?;
            if !self.io.is_zero() {
                std::thread::sleep(self.io);
            }
        }
        Ok(seen)
    }
}

/// SplitMix64's finalizer: a seed's draws, and how a section folds a seed into a value.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Computes for `time` (a busy loop: the section's CPU work).
fn spin(time: Duration) {
    let start = Instant::now();
    while start.elapsed() < time {
        std::hint::spin_loop();
    }
}

/// The survey's server: mutexes over shared values.
#[derive(Debug)]
pub struct SurveyServer {
    data: Vec<Mutex<u64>>,
    shape: Shape,
}

impl SurveyServer {
    /// A server of `settings`' shape, every value 0.
    pub fn new(settings: &SurveySettings) -> SurveyServer {
        let data = (0..settings.mutexes).map(|m| Mutex::new(MutexId(m), 0)).collect();
        SurveyServer { data, shape: Shape::of(settings) }
    }

    /// Its shared values, read outside any scheduler (when no worker thread runs).
    pub fn values(&self) -> Vec<u64> {
        let reader = Worker::unscheduled(nonstop_service::threaded::ThreadId(0));
        self.data.iter().map(|value| reader.lock(value).map_or(0, |value| *value)).collect()
    }

    /// Flips one bit of its shared data, which `draw` picks, behind the scheduler's back, as a
    /// memory fault would (the value's own lock keeps the write whole).
    pub fn flip_bit(&self, draw: u64) {
        let reader = Worker::unscheduled(nonstop_service::threaded::ThreadId(0));
        if let Ok(mut value) = reader.lock(&self.data[(draw % self.data.len() as u64) as usize]) {
            *value ^= 1 << (draw >> 58);
        }
    }
}

impl ThreadedService for SurveyServer {
    /// The request's seed.
    type Request = u64;
    /// What it saw.
    type Reply = u64;
    type Query = ();
    /// The shared values.
    type Answer = Vec<u64>;
    /// The shared values.
    type State = Vec<u64>;

    fn handle(&self, worker: &Worker, seed: &u64) -> Result<u64, HandleError> {
        self.shape.serve(*seed, |mutex, fold| {
            fold(&mut *worker.lock(&self.data[mutex])?);
            Ok(())
        })
    }

    fn query(&self, reader: &Worker, _: &()) -> Result<Vec<u64>, HandleError> {
        self.snapshot(reader)
    }

    fn snapshot(&self, reader: &Worker) -> Result<Vec<u64>, HandleError> {
        self.data.iter().map(|value| Ok(*reader.lock(value)?)).collect()
    }

    fn restore(&self, reader: &Worker, state: Vec<u64>) -> Result<(), String> {
        if state.len() != self.data.len() {
            return Err(format!(
                "a state of {} values for a server of {}: the nodes' settings differ",
                state.len(),
                self.data.len()
            ));
        }
        for (value, restored) in self.data.iter().zip(state) {
            *reader.lock(value).map_err(|error| error.to_string())? = restored;
        }
        Ok(())
    }

    fn check(&self, reader: &Worker) -> Result<String, String> {
        // Every value is a fold of seeds: any 64 bits are one. What can be checked is that
        // every value is readable and what they fold to, which replicas compare.
        let values = self.snapshot(reader).map_err(|error| error.to_string())?;
        let folded = values.iter().fold(0u64, |folded, value| mix(folded ^ value));
        Ok(format!("{} values, folding to {folded:016x}", values.len()))
    }

    fn sample(&self, _client: u64, draw: u64) -> Option<u64> {
        Some(draw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_service::HostedThreads;
    use nonstop_service::threaded::{Acquisitions, Scheduler};

    #[test]
    fn replicas_under_one_scheduler_agree_and_settings_are_checked() {
        let settings = SurveySettings { io_us: 0, compute_us: 0, ..SurveySettings::default() };
        for scheduler in Scheduler::ALL {
            let replicas: Vec<HostedThreads> =
                (0..2).map(|_| HostedThreads::new(NAME, SurveyServer::new(&settings))).collect();
            let batches: Vec<Vec<Vec<u8>>> = (0..20u64)
                .map(|b| (0..7u64).map(|r| postcard::to_stdvec(&mix(b * 7 + r)).unwrap()).collect())
                .collect();
            let executors: Vec<_> = replicas.iter().map(|replica| replica.executor(scheduler, 3).unwrap()).collect();
            let mut outcomes = [Vec::new(), Vec::new()];
            for batch in &batches {
                // Under LSA the first replica leads each batch and the second follows it.
                let first = match scheduler.is_loose() {
                    true => Acquisitions::Lead,
                    false => Acquisitions::Scheduled,
                };
                let led = replicas[0].execute(&executors[0], batch.clone(), &first).unwrap();
                let second = led.led.clone().map_or(Acquisitions::Scheduled, Acquisitions::Follow);
                let followed = replicas[1].execute(&executors[1], batch.clone(), &second).unwrap();
                outcomes[0].push(led.outcomes);
                outcomes[1].push(followed.outcomes);
            }
            assert_eq!(outcomes[0], outcomes[1], "{scheduler:?}");
            assert_eq!(replicas[0].snapshot(), replicas[1].snapshot(), "{scheduler:?}");
            assert_eq!(replicas[0].check(), replicas[1].check());
        }
        assert!(SurveySettings { mutexes: 0, ..SurveySettings::default() }.checked().is_err());
        let table: toml::Table = toml::from_str("mutexes = 3\nmutexs = 4").unwrap();
        assert!(SurveySettings::from(&Settings::new(table)).unwrap_err().contains("mutexs"));
    }
}
