//! Applications, and their validation from untrusted JSON with every error reported.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::json::{self, Errors};
use crate::{AppId, Backend, Domain, HealthCheck};

/// The most domains one application may have.
pub const MAX_DOMAINS: usize = 1000;
/// The most backends one application may have.
pub const MAX_BACKENDS: usize = 1000;

/// One problem with an input, and where it is.
///
/// `field` is a path into the JSON: `id`, `domains[1]`, `backends[0].weight`,
/// `health_check.path`; it is empty for a problem with the whole body (malformed
/// JSON, not an object). Displays as `field: message`, or `message` alone when
/// `field` is empty. Serialises as `{"field": .., "message": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where: a path into the input, or empty for the whole input.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// An application: the domains it answers on and the backends that serve it.
///
/// The element types are valid by construction; the rules on the lists (at least
/// one and at most 1000 domains and backends, no domain or backend address twice)
/// are checked by [`App::from_json`] and by deserialisation, and for an `App` built
/// in code by [`App::validate`].
///
/// JSON: `{"id": .., "domains": [..], "backends": [..], "health_check": ..,
/// "version": ..}`; `health_check` may be missing or `null`, `version` missing (0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct App {
    /// Its identifier.
    pub id: AppId,
    /// The names it answers on, at least one.
    pub domains: Vec<Domain>,
    /// Where its requests go, at least one.
    pub backends: Vec<Backend>,
    /// How its backends are probed; none means they are always taken as healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Assigned by the orchestrator on every change. Input may carry one (it is read
    /// as a `u64`, 0 when missing) but it is not trusted: the orchestrator overwrites it.
    pub version: u64,
}

const FIELDS: &[&str] = &["id", "domains", "backends", "health_check", "version"];

impl App {
    /// Reads and validates an application from untrusted JSON, returning every
    /// problem at once. Malformed JSON (including an object with a repeated key) is a
    /// single error with an empty `field` that gives the line and column.
    pub fn from_json(bytes: &[u8]) -> Result<App, Vec<FieldError>> {
        match json::parse(bytes) {
            Ok(v) => App::from_value(&v),
            Err(e) => Err(vec![FieldError {
                field: String::new(),
                message: format!("invalid JSON: {e}"),
            }]),
        }
    }

    /// [`App::from_json`] for an already parsed value.
    pub fn from_value(v: &Value) -> Result<App, Vec<FieldError>> {
        let mut errors = Errors::default();
        match App::read(v, &mut errors) {
            Some(app) if errors.0.is_empty() => Ok(app),
            _ => Err(errors.0),
        }
    }

    /// Checks the rules on the lists, for an `App` built or changed in code: at least
    /// one and at most [`MAX_DOMAINS`] domains and [`MAX_BACKENDS`] backends, no
    /// domain twice, no backend address twice.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        check_domains(
            self.domains.len(),
            self.domains.iter().enumerate(),
            &mut errors,
        );
        check_backends(
            self.backends.len(),
            self.backends.iter().enumerate(),
            &mut errors,
        );
        if errors.0.is_empty() {
            Ok(())
        } else {
            Err(errors.0)
        }
    }

    fn read(v: &Value, errors: &mut Errors) -> Option<App> {
        let map = errors.object(v, "")?;

        let id = match map.get("id") {
            None => {
                errors.push("id", "is required");
                None
            }
            Some(v) => errors
                .string(v, "id")
                .and_then(|s| match AppId::try_from(s.to_owned()) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        errors.push("id", e);
                        None
                    }
                }),
        };

        let domains = read_list(
            map.get("domains"),
            "domains",
            "domain",
            errors,
            |v, at, errors| {
                let s = errors.string(v, at)?;
                Domain::try_from(s.to_owned())
                    .map_err(|e| errors.push(at, e))
                    .ok()
            },
        )
        .and_then(|items| {
            check_domains(
                items.len(),
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| Some((i, d.as_ref()?))),
                errors,
            );
            items.into_iter().collect::<Option<Vec<_>>>()
        });

        let backends = read_list(
            map.get("backends"),
            "backends",
            "backend",
            errors,
            Backend::from_value,
        )
        .and_then(|items| {
            check_backends(
                items.len(),
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| Some((i, b.as_ref()?))),
                errors,
            );
            items.into_iter().collect::<Option<Vec<_>>>()
        });

        let health_check = match map.get("health_check") {
            None | Some(Value::Null) => Some(None),
            Some(v) => HealthCheck::from_value(v, "health_check", errors).map(Some),
        };

        let version = match map.get("version") {
            None => Some(0),
            Some(v) => errors.integer(v, "version").and_then(|n| {
                u64::try_from(n)
                    .map_err(|_| errors.push("version", format!("must not be negative (got {n})")))
                    .ok()
            }),
        };

        errors.unknown_fields(map, "", FIELDS);

        Some(App {
            id: id?,
            domains: domains?,
            backends: backends?,
            health_check: health_check?,
            version: version?,
        })
    }
}

impl App {
    /// Reads an application stored by Switchyard (in ZooKeeper, say): every rule is
    /// checked as [`App::from_json`] checks it, but only the first problem is reported,
    /// which lets the reader skip the generic JSON tree that collecting every problem
    /// needs. For data written by Switchyard that is valid, so the common case is the
    /// fast one; anything else is still refused.
    pub fn from_stored(bytes: &[u8]) -> Result<App, String> {
        /// A backend as stored: `weight` defaults as in [`Backend`]'s own reader.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct StoredBackend {
            addr: String,
            #[serde(default = "default_weight")]
            weight: u64,
        }
        fn default_weight() -> u64 {
            Backend::DEFAULT_WEIGHT.into()
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Stored {
            id: AppId,
            domains: Vec<Domain>,
            backends: Vec<StoredBackend>,
            #[serde(default)]
            health_check: Option<HealthCheck>,
            #[serde(default)]
            version: u64,
        }
        let stored: Stored = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        let backends = stored
            .backends
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let weight = u16::try_from(b.weight).map_err(|_| {
                    format!(
                        "backends[{i}].weight: must be 1 to {} (got {})",
                        Backend::MAX_WEIGHT,
                        b.weight
                    )
                })?;
                Backend::new(b.addr, weight).map_err(|err| format!("backends[{i}]: {err}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let app = App {
            id: stored.id,
            domains: stored.domains,
            backends,
            health_check: stored.health_check,
            version: stored.version,
        };
        app.validate().map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(app)
    }
}

impl<'de> Deserialize<'de> for App {
    /// Validates as [`App::from_json`] does; the errors are joined by `; `.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::deserialize_with(d, |v, _, errors| App::read(v, errors))
    }
}

/// Reads the array `name`, each element by `read`; `None` when it is missing or not an
/// array. An element that `read` rejects is `None` in the result.
fn read_list<T>(
    v: Option<&Value>,
    name: &str,
    what: &str,
    errors: &mut Errors,
    mut read: impl FnMut(&Value, &str, &mut Errors) -> Option<T>,
) -> Option<Vec<Option<T>>> {
    let Some(v) = v else {
        errors.push(name, format!("is required (at least one {what})"));
        return None;
    };
    let items = errors.array(v, name)?;
    Some(
        items
            .iter()
            .enumerate()
            .map(|(i, item)| read(item, &format!("{name}[{i}]"), errors))
            .collect(),
    )
}

fn check_domains<'a>(
    count: usize,
    items: impl Iterator<Item = (usize, &'a Domain)>,
    errors: &mut Errors,
) {
    check_list("domains", "domain", MAX_DOMAINS, count, errors);
    check_duplicates(items, |i| format!("domains[{i}]"), errors);
}

fn check_backends<'a>(
    count: usize,
    items: impl Iterator<Item = (usize, &'a Backend)>,
    errors: &mut Errors,
) {
    check_list("backends", "backend", MAX_BACKENDS, count, errors);
    check_duplicates(
        items.map(|(i, b)| (i, b.addr())),
        |i| format!("backends[{i}].addr"),
        errors,
    );
}

fn check_list(name: &str, what: &str, max: usize, count: usize, errors: &mut Errors) {
    if count == 0 {
        errors.push(name, format!("must have at least one {what}"));
    } else if count > max {
        errors.push(
            name,
            format!("must have at most {max} {what}s (got {count})"),
        );
    }
}

fn check_duplicates<K: Eq + Hash + fmt::Display>(
    items: impl Iterator<Item = (usize, K)>,
    at: impl Fn(usize) -> String,
    errors: &mut Errors,
) {
    let mut first = HashMap::new();
    for (i, key) in items {
        if let Some(&j) = first.get(&key) {
            errors.push(&at(i), format!("`{key}` is already at {}", at(j)));
        } else {
            first.insert(key, i);
        }
    }
}
