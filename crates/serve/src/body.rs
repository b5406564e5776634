//! JSON request bodies, as objects only, with their numbers within the bounds the OpenAPI document
//! states. serde's derive also reads a struct from an array (its fields in order), so `[]` would
//! pass as an empty request and `["hi"]` as a prompt: every route that takes a JSON body extracts
//! it through [`Object`], and the WebSocket's messages go through [`from_object`].

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use crate::bounds::Bounds;
use crate::error::ApiError;

/// A JSON body that must be an object, deserialized into `T`.
pub struct Object<T>(pub T);

/// A request type whose documented numeric bounds are checked on the JSON as sent.
pub trait Request: DeserializeOwned {
    /// The bounds of its fields (none by default).
    fn bounds() -> &'static Bounds {
        static NONE: Bounds = Bounds::none();
        &NONE
    }
}

/// Why a body was refused.
#[derive(Debug)]
pub enum BodyRejection {
    /// Not JSON, the wrong content type, or too large: axum's own rejection.
    Json(JsonRejection),
    /// JSON, but not an object, or not the fields `T` needs.
    Invalid(String),
}

impl<T: Request, S: Send + Sync> FromRequest<S> for Object<T> {
    type Rejection = BodyRejection;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<Value>::from_request(request, state).await.map_err(BodyRejection::Json)?;
        from_object(value).map(Object).map_err(BodyRejection::Invalid)
    }
}

/// `T` from a JSON object within `T`'s bounds; any other JSON value is refused, naming what it was.
pub fn from_object<T: Request>(value: Value) -> Result<T, String> {
    let kind = match &value {
        Value::Object(fields) => {
            T::bounds().check(fields)?;
            // With the path, as axum's own extractor reports it: "prompt: invalid type ...".
            return serde_path_to_error::deserialize(value).map_err(|e| e.to_string());
        }
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(format!("the body must be a JSON object, not {kind}"))
}

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<BodyRejection> for ApiError {
    fn from(rejection: BodyRejection) -> Self {
        match rejection {
            BodyRejection::Json(rejection) => rejection.into(),
            BodyRejection::Invalid(message) => ApiError::invalid(message),
        }
    }
}

/// The optional non-negative integer `field` as JSON Schema (and so the OpenAPI document) counts
/// one: `433` or `433.0`, a number without a fraction. serde alone refuses `433.0` for an integer
/// field. The errors name the field, since paths are lost through `#[serde(flatten)]`.
pub fn integer<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D, field: &str) -> Result<Option<T>, D::Error> {
    let Some(number) = Option::<Number>::deserialize(d)? else { return Ok(None) };
    // 2^64 as f64: the first whole number past u64::MAX.
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(f))
            .map(|f| f as u64)
    });
    let whole =
        whole.ok_or_else(|| D::Error::custom(format!("{field}: {number} is not a non-negative integer")))?;
    T::try_from(whole).map(Some).map_err(|_| D::Error::custom(format!("{field}: {number} is out of range")))
}
