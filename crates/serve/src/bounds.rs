//! The numeric bounds of request fields, read from the OpenAPI schema that documents them
//! (`#[schema(minimum = .., maximum = ..)]`), so the document and the check are one place and
//! cannot drift. Numbers are checked as the client wrote them, before they become `f32`: 3.4e38
//! would round to infinity and -5e-324 to -0, which a check after conversion would let pass.

use std::cmp::Ordering;

use serde_json::{Map, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;

/// Each bounded field of one schema, with its bounds.
#[derive(Debug, Default)]
pub struct Bounds(Vec<(String, Range)>);

#[derive(Debug, Default)]
struct Range {
    minimum: Option<f64>,
    exclusive_minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_maximum: Option<f64>,
}

impl Bounds {
    /// No bounds at all.
    pub const fn none() -> Bounds {
        Bounds(Vec::new())
    }

    /// The bounds `T`'s schema states for its top-level fields.
    pub fn of<T: utoipa::ToSchema>() -> Bounds {
        let RefOr::T(Schema::Object(object)) = T::schema() else {
            return Bounds::default();
        };
        let fields = object.properties.iter().filter_map(|(name, field)| {
            let RefOr::T(Schema::Object(field)) = field else { return None };
            let range = Range {
                minimum: field.minimum.as_ref().map(float),
                exclusive_minimum: field.exclusive_minimum.as_ref().map(float),
                maximum: field.maximum.as_ref().map(float),
                exclusive_maximum: field.exclusive_maximum.as_ref().map(float),
            };
            let bounded =
                range.minimum.or(range.exclusive_minimum).or(range.maximum).or(range.exclusive_maximum);
            bounded.map(|_| (name.clone(), range))
        });
        Bounds(fields.collect())
    }

    /// The first number in `body` outside its field's bounds, named with the bound it breaks.
    pub fn check(&self, body: &Map<String, Value>) -> Result<(), String> {
        for (name, range) in &self.0 {
            let Some(Value::Number(number)) = body.get(name) else { continue };
            // Every JSON number has an f64 reading; integers past 2^53 round, far from any bound.
            let x = number.as_f64().unwrap_or(f64::NAN);
            // A bound is broken when `x` compares to it the wrong way, or not at all (NaN).
            let breaks = |bound: Option<f64>, wrong: fn(Ordering) -> bool| {
                bound.filter(|b| x.partial_cmp(b).is_none_or(wrong))
            };
            let broken = [
                (breaks(range.minimum, Ordering::is_lt), "below the minimum"),
                (breaks(range.exclusive_minimum, Ordering::is_le), "not above the exclusive minimum"),
                (breaks(range.maximum, Ordering::is_gt), "above the maximum"),
                (breaks(range.exclusive_maximum, Ordering::is_ge), "not below the exclusive maximum"),
            ];
            if let Some((Some(bound), what)) = broken.into_iter().find(|(bound, _)| bound.is_some()) {
                return Err(format!("{name}: {number} is {what} {bound}"));
            }
        }
        Ok(())
    }
}

fn float(n: &utoipa::Number) -> f64 {
    match *n {
        utoipa::Number::Int(i) => i as f64,
        utoipa::Number::UInt(u) => u as f64,
        utoipa::Number::Float(f) => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Params;

    fn check(body: Value) -> Result<(), String> {
        Bounds::of::<Params>().check(body.as_object().unwrap())
    }

    #[test]
    fn the_documented_sampling_bounds_are_enforced() {
        assert!(check(serde_json::json!({"temperature": 2, "top_p": 1, "max_tokens": 1, "n": 1})).is_ok());
        for (body, message) in [
            (serde_json::json!({"temperature": 2.5}), "temperature: 2.5 is above the maximum 2"),
            (serde_json::json!({"temperature": 3.4e38}), "temperature: 3.4e+38 is above the maximum 2"),
            (serde_json::json!({"temperature": -5e-324}), "temperature: -5e-324 is below the minimum 0"),
            (serde_json::json!({"top_p": 0}), "top_p: 0 is not above the exclusive minimum 0"),
            (serde_json::json!({"n": 2}), "n: 2 is above the maximum 1"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens: 0 is below the minimum 1"),
        ] {
            assert_eq!(check(body.clone()).unwrap_err(), message, "{body}");
        }
    }
}
