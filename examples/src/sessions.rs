//! `sessions`: a session store on declared transactions.
//!
//! Each session has an id (up to 32 bytes), up to 64 bytes of data, a counter and an expiry
//! time. The store is an open-addressing hash table at fixed offsets of the region; every
//! request declares the slots it writes, so a conflict or a refusal is rolled back whole. The
//! time comes with the request (`now_ms`): a service never reads a clock, or a promoted backup
//! could decide differently.

use nonstop::{Image, RegionWrite, Service, ServiceError, Settings, Store, View, Writes};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A request to the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SessionRequest {
    /// Creates or replaces session `id`, alive until `now_ms + ttl_ms`.
    Open { id: String, data: Vec<u8>, now_ms: u64, ttl_ms: u64 },
    /// Adds `delta` to the session's counter; answers the new value.
    Add { id: String, delta: i64, now_ms: u64 },
    /// Ends the session.
    Close { id: String, now_ms: u64 },
}

/// A session, as a query sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub data: Vec<u8>,
    pub counter: i64,
    pub expires_ms: u64,
}

/// One slot of the table: 128 bytes, two cache lines.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Slot {
    key: [u8; 32],
    key_len: u64, // 0: never used
    expires_ms: u64,
    counter: i64,
    data_len: u64,
    data: [u8; 64],
}

const SLOT: u64 = size_of::<Slot>() as u64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SessionSettings {
    slots: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings { slots: 65_536 }
    }
}

/// The session store: `slots` sessions at most.
pub struct Sessions {
    slots: u64,
}

impl Sessions {
    /// The store its `[services.settings]` describe (`slots`, default 65,536).
    pub fn from_settings(settings: &Settings) -> Result<Sessions, String> {
        let SessionSettings { slots } = settings.parse()?;
        (1..=1 << 24).contains(&slots).then_some(Sessions { slots }).ok_or(format!("slots = {slots}: use 1 to 2^24"))
    }

    /// The slot of `id`, or the first free (expired or never used) one on its probe path.
    fn find(
        &self,
        read: impl Fn(u64) -> Result<Slot, ServiceError>,
        id: &[u8],
        now_ms: u64,
    ) -> Result<(u64, Option<Slot>), ServiceError> {
        let home = home(id);
        let mut free = None;
        for probe in 0..self.slots {
            let at = (home.wrapping_add(probe) % self.slots) * SLOT;
            let slot = read(at)?;
            if slot.key_len == 0 {
                return Ok((free.unwrap_or(at), None)); // the end of the probe path
            }
            let live = slot.expires_ms > now_ms;
            if live && slot.key[..slot.key_len as usize] == *id {
                return Ok((at, Some(slot)));
            }
            if !live && free.is_none() {
                free = Some(at);
            }
        }
        free.map(|at| (at, None)).ok_or_else(|| ServiceError::refused("the store is full"))
    }
}

/// Where the probe path of `id` starts: FNV-1a, the same on every node.
fn home(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

impl Service for Sessions {
    type Request = SessionRequest;
    type Reply = i64;
    type Query = (String, u64);
    type Answer = Option<Session>;
    const WRITES: Writes = Writes::AtOffsets;

    fn state_len(&self) -> usize {
        (self.slots * SLOT) as usize
    }

    fn execute(&self, store: &mut Store<'_>, request: &SessionRequest) -> Result<i64, ServiceError> {
        let writer = store.writer();
        let (id, now_ms) = match request {
            SessionRequest::Open { id, now_ms, .. }
            | SessionRequest::Add { id, now_ms, .. }
            | SessionRequest::Close { id, now_ms } => (id.as_bytes(), *now_ms),
        };
        if id.is_empty() || id.len() > 32 {
            return Err(ServiceError::refused("a session id has 1 to 32 bytes"));
        }
        let (at, found) = self.find(|at| Ok(writer.read::<Slot>(at)?), id, now_ms)?;
        match (request, found) {
            (SessionRequest::Open { data, ttl_ms, .. }, _) => {
                if data.len() > 64 {
                    return Err(ServiceError::refused("session data has at most 64 bytes"));
                }
                let slot = writer.write::<Slot>(at)?;
                *slot = Slot {
                    key: [0; 32],
                    key_len: id.len() as u64,
                    expires_ms: now_ms.saturating_add(*ttl_ms),
                    counter: 0,
                    data_len: data.len() as u64,
                    data: [0; 64],
                };
                slot.key[..id.len()].copy_from_slice(id);
                slot.data[..data.len()].copy_from_slice(data);
                Ok(0)
            }
            (SessionRequest::Add { delta, .. }, Some(_)) => {
                let slot = writer.write::<Slot>(at)?;
                slot.counter = slot.counter.saturating_add(*delta);
                Ok(slot.counter)
            }
            // A closed session stays on its probe path (key_len > 0), expired.
            (SessionRequest::Close { .. }, Some(_)) => {
                let slot = writer.write::<Slot>(at)?;
                slot.expires_ms = 0;
                Ok(slot.counter)
            }
            (_, None) => Err(ServiceError::refused(format!("no session {:?}", String::from_utf8_lossy(id)))),
        }
    }

    fn query(&self, view: &View<'_>, (id, now_ms): &(String, u64)) -> Result<Option<Session>, ServiceError> {
        let (_, found) = self.find(|at| Ok(view.read::<Slot>(at)?), id.as_bytes(), *now_ms)?;
        Ok(found.map(|s| Session {
            data: s.data[..s.data_len as usize].to_vec(),
            counter: s.counter,
            expires_ms: s.expires_ms,
        }))
    }

    /// Client `c` keeps session `c{c}`: mostly adds, now and then opened anew (which also
    /// brings it back after a refusal).
    fn sample(&self, client: u64, draw: u64) -> Option<SessionRequest> {
        let id = format!("c{client}");
        Some(match draw % 16 {
            0 => SessionRequest::Open { id, data: draw.to_le_bytes().to_vec(), now_ms: 1, ttl_ms: 1 << 40 },
            _ => SessionRequest::Add { id, delta: (draw >> 8) as i64 % 100, now_ms: 2 },
        })
    }

    /// Every used slot is well formed and lies on its id's probe path: no never-used slot
    /// between the id's home and it, or a lookup would stop before reaching it.
    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        let slot = |index: u64| Slot::read_from_prefix(&image.state()[(index * SLOT) as usize..]).unwrap().0;
        let (mut used, mut open) = (0, 0);
        for index in 0..self.slots {
            let s = slot(index);
            if s.key_len == 0 {
                continue;
            }
            if s.key_len > 32 || s.data_len > 64 {
                return Err(format!("slot {index}: key of {} or data of {} bytes", s.key_len, s.data_len));
            }
            let home = home(&s.key[..s.key_len as usize]) % self.slots;
            let path = (index + self.slots - home) % self.slots;
            if (0..path).any(|step| slot((home + step) % self.slots).key_len == 0) {
                return Err(format!("slot {index}: a lookup of its session stops before reaching it"));
            }
            used += 1;
            open += (s.expires_ms > 0) as u64;
        }
        Ok(format!("{used} of {} slots used, {open} sessions not closed", self.slots))
    }
}
