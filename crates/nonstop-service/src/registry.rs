//! The kinds of service a node binary can run, and the settings each one is configured with.
//!
//! A node's config names a service's `kind`; the program that runs the node fills a
//! [`Registry`] with the kinds it knows (`nonstop node` registers the built-in ones, a user's
//! own binary registers its own) and the node builds each service from its `[services.settings]`.

use crate::hosted::Hosted;
use crate::service::{Service, Writes};
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

type Factory = Box<dyn Fn(&Settings) -> Result<Hosted, String> + Send + Sync>;

/// A registered kind: how its services are built, and how they write the region.
struct Kind {
    make: Factory,
    writes: Writes,
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
        let make: Factory = Box::new(move |settings| Ok(Hosted::new(&name, make(settings)?)));
        self.kinds.insert(kind.to_string(), Kind { make, writes: S::WRITES });
        self
    }

    /// How services of `kind` write the region (`None`: no such kind): a kind that keeps
    /// [`Writes::Collections`] needs transparent mode.
    pub fn writes(&self, kind: &str) -> Option<Writes> {
        self.kinds.get(kind).map(|kind| kind.writes)
    }

    /// The kinds registered.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Builds a service of `kind` from `settings`.
    pub fn make(&self, kind: &str, settings: &Settings) -> Result<Hosted, RegistryError> {
        let known = self.kinds.get(kind).ok_or_else(|| RegistryError::Unknown {
            kind: kind.to_string(),
            known: self.kinds().map(|kind| format!("{kind:?}")).collect::<Vec<_>>().join(", "),
        })?;
        (known.make)(settings).map_err(|reason| RegistryError::Settings { kind: kind.to_string(), reason })
    }
}
