//! The kinds of service a node binary can run, and the settings each one is configured with.
//!
//! A node's config names a service's `kind`; the program that runs the node fills a
//! [`Registry`] with the kinds it knows (`nonstop node` registers the built-in ones, a user's
//! own binary registers its own) and the node builds each service from its `[services.settings]`.

use crate::hosted::Hosted;
use crate::service::{Service, Writes};
use crate::threaded::{HostedThreads, ThreadedService};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// A service's own settings: the `[services.settings]` table of its config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings(toml::Table);

impl Settings {
    /// Settings from a TOML table.
    pub fn new(table: toml::Table) -> Settings {
        Settings(table)
    }

    /// The settings as the service's own type: give it `#[serde(deny_unknown_fields)]` and
    /// defaults, so that a misspelt key is an error and an absent one a default.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        self.0.clone().try_into().map_err(|error: toml::de::Error| error.message().to_string())
    }

    /// The raw table.
    pub fn table(&self) -> &toml::Table {
        &self.0
    }
}

type Factory = Box<dyn Fn(&Settings) -> Result<Built, String> + Send + Sync>;

/// A registered kind: how its services are built, and where they keep their state.
struct Kind {
    make: Factory,
    runs: Runs,
}

/// Where a kind's services keep their state, and so how they may be replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// In the node's region, one request at a time ([`Service`]): passively or actively
    /// replicated, written as given.
    InRegion(Writes),
    /// In mutexes shared by worker threads ([`ThreadedService`]): actively replicated only.
    OnThreads,
}

/// A service built from its config: one of the two kinds of service a node runs.
#[derive(Clone, Debug)]
pub enum Built {
    /// A [`Service`], its state in the region.
    InRegion(Hosted),
    /// A [`ThreadedService`], its state in its worker threads' mutexes.
    OnThreads(HostedThreads),
}

impl Built {
    /// Its kind, as the registry knows it.
    pub fn kind(&self) -> &str {
        match self {
            Built::InRegion(hosted) => hosted.kind(),
            Built::OnThreads(hosted) => hosted.kind(),
        }
    }

    /// A request for load tests, encoded (`None`: the kind draws none).
    pub fn sample(&self, client: u64, draw: u64) -> Option<Vec<u8>> {
        match self {
            Built::InRegion(hosted) => hosted.sample(client, draw),
            Built::OnThreads(hosted) => hosted.sample(client, draw),
        }
    }

    /// Bytes of region it needs (none for a service on threads).
    pub fn region_len(&self) -> usize {
        match self {
            Built::InRegion(hosted) => hosted.region_len(),
            Built::OnThreads(_) => 0,
        }
    }
}

/// The kinds of service a node binary can run.
///
/// ```
/// use nonstop_service::{Registry, Settings};
/// # use nonstop_service::{Image, Service, ServiceError, Store, View, Writes};
/// # struct Counter;
/// # impl Service for Counter {
/// #     type Request = u64; type Reply = u64; type Query = (); type Answer = u64;
/// #     const WRITES: Writes = Writes::AtOffsets;
/// #     fn state_len(&self) -> usize { 8 }
/// #     fn execute(&self, _: &mut Store<'_>, by: &u64) -> Result<u64, ServiceError> { Ok(*by) }
/// #     fn query(&self, _: &View<'_>, _: &()) -> Result<u64, ServiceError> { Ok(0) }
/// #     fn check(&self, _: &Image<'_>) -> Result<String, String> { Ok(String::new()) }
/// # }
/// let mut registry = Registry::new();
/// registry.register("counter", |_settings: &Settings| Ok(Counter));
/// assert!(registry.make("counter", &Settings::default()).is_ok());
/// assert!(registry.make("countr", &Settings::default()).unwrap_err().to_string().contains("\"counter\""));
/// ```
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<String, Kind>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("kinds", &self.kinds.keys().collect::<Vec<_>>()).finish()
    }
}

/// Why a service could not be built from its config.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RegistryError {
    /// No such kind in this binary.
    #[error("{kind:?} is not a service kind this binary knows: use one of {known}")]
    Unknown {
        /// The kind asked for.
        kind: String,
        /// The kinds known, quoted and comma-separated.
        known: String,
    },
    /// The kind refused its settings.
    #[error("{kind}: {reason}")]
    Settings {
        /// The kind.
        kind: String,
        /// What was wrong.
        reason: String,
    },
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `kind`, built by `make` from its settings (replacing a kind of that name).
    pub fn register<S: Service>(
        &mut self,
        kind: &str,
        make: impl Fn(&Settings) -> Result<S, String> + Send + Sync + 'static,
    ) -> &mut Registry {
        let name = kind.to_string();
        let make: Factory = Box::new(move |settings| Ok(Built::InRegion(Hosted::new(&name, make(settings)?))));
        self.kinds.insert(kind.to_string(), Kind { make, runs: Runs::InRegion(S::WRITES) });
        self
    }

    /// Registers multithreaded `kind`, built by `make` from its settings (replacing a kind of
    /// that name). Its services run only with `replication = "active"`.
    pub fn register_threaded<S: ThreadedService>(
        &mut self,
        kind: &str,
        make: impl Fn(&Settings) -> Result<S, String> + Send + Sync + 'static,
    ) -> &mut Registry {
        let name = kind.to_string();
        let make: Factory = Box::new(move |settings| Ok(Built::OnThreads(HostedThreads::new(&name, make(settings)?))));
        self.kinds.insert(kind.to_string(), Kind { make, runs: Runs::OnThreads });
        self
    }

    /// Where services of `kind` keep their state (`None`: no such kind): a kind that keeps
    /// [`Writes::Collections`] needs transparent mode, one [`Runs::OnThreads`] active
    /// replication.
    pub fn runs(&self, kind: &str) -> Option<Runs> {
        self.kinds.get(kind).map(|kind| kind.runs)
    }

    /// The kinds registered.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Builds a service of `kind` from `settings`.
    pub fn make(&self, kind: &str, settings: &Settings) -> Result<Built, RegistryError> {
        let known = self.kinds.get(kind).ok_or_else(|| RegistryError::Unknown {
            kind: kind.to_string(),
            known: self.kinds().map(|kind| format!("{kind:?}")).collect::<Vec<_>>().join(", "),
        })?;
        (known.make)(settings).map_err(|reason| RegistryError::Settings { kind: kind.to_string(), reason })
    }
}
