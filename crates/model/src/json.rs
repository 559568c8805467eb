//! Reading untrusted JSON field by field, collecting every error with its field path.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::FieldError;

/// The errors found so far.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

/// `at.name`, or `name` at the top.
pub(crate) fn field(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Errors {
    pub(crate) fn push(&mut self, field: &str, message: impl fmt::Display) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message: message.to_string(),
        });
    }

    fn wrong_type(&mut self, at: &str, expected: &str, v: &Value) {
        self.push(at, format!("must be {expected}, not {}", kind(v)));
    }

    pub(crate) fn object<'v>(&mut self, v: &'v Value, at: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(map) => Some(map),
            _ => {
                self.wrong_type(at, "an object", v);
                None
            }
        }
    }

    pub(crate) fn array<'v>(&mut self, v: &'v Value, at: &str) -> Option<&'v [Value]> {
        match v {
            Value::Array(items) => Some(items),
            _ => {
                self.wrong_type(at, "an array", v);
                None
            }
        }
    }

    pub(crate) fn string<'v>(&mut self, v: &'v Value, at: &str) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            _ => {
                self.wrong_type(at, "a string", v);
                None
            }
        }
    }

    /// An integer of any sign; a fraction or another type is an error.
    pub(crate) fn integer(&mut self, v: &Value, at: &str) -> Option<i128> {
        let n = match v {
            Value::Number(n) => n,
            _ => {
                self.wrong_type(at, "an integer", v);
                return None;
            }
        };
        match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Some(u.into()),
            (_, Some(i)) => Some(i.into()),
            _ => {
                self.push(at, format!("must be an integer (got {n})"));
                None
            }
        }
    }

    /// An error for each field of `map` not in `known`.
    pub(crate) fn unknown_fields(&mut self, map: &Map<String, Value>, at: &str, known: &[&str]) {
        for name in map.keys().filter(|k| !known.contains(&k.as_str())) {
            self.push(
                &field(at, name),
                format!("unknown field (expected {})", known.join(", ")),
            );
        }
    }

    /// The errors as one line, for a serde error.
    fn joined(&self) -> String {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        all.join("; ")
    }
}

/// Parses untrusted JSON into a [`Value`], rejecting what `serde_json` would
/// silently accept: an object with the same key twice (which of the two wins
/// differs between parsers).
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

/// Deserialises through a [`Value`] read by `read`, so that `serde` and
/// [`App::from_json`](crate::App::from_json) share one set of rules. Every error
/// is reported, joined by `; `.
pub(crate) fn deserialize_with<'de, D, T>(
    d: D,
    read: impl FnOnce(&Value, &str, &mut Errors) -> Option<T>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let Strict(v) = Strict::deserialize(d)?;
    let mut errors = Errors::default();
    match read(&v, "", &mut errors) {
        Some(t) if errors.0.is_empty() => Ok(t),
        _ => Err(de::Error::custom(errors.joined())),
    }
}

/// A [`Value`] that fails to deserialise from an object with a repeated key.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}
