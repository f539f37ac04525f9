//! TOML values as JSON, for settings that hold arbitrary data (aggregate fallbacks,
//! chaos toxics described in TOML with the API's JSON shape).

use serde_json::Value as Json;
use toml_edit::{Item, TableLike, Value};

/// Any TOML item as JSON (tables become objects, datetimes strings).
pub fn item_json(item: &Item) -> Json {
    match item {
        Item::None => Json::Null,
        Item::Value(v) => value_json(v),
        Item::Table(t) => table_json(t),
        Item::ArrayOfTables(a) => Json::Array(a.iter().map(|t| table_json(t)).collect()),
    }
}

/// A TOML table as a JSON object.
pub fn table_json(t: &dyn TableLike) -> Json {
    Json::Object(
        t.iter()
            .map(|(k, v)| (k.to_string(), item_json(v)))
            .collect(),
    )
}

/// A TOML value as JSON.
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.value().clone()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => Json::from(*f.value()),
        Value::Boolean(b) => Json::Bool(*b.value()),
        Value::Datetime(d) => Json::String(d.value().to_string()),
        Value::Array(a) => Json::Array(a.iter().map(value_json).collect()),
        Value::InlineTable(t) => table_json(t),
    }
}
