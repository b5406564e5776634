//! The vocabulary several modules speak: roles (credentials, settings, route guards) and chat
//! messages (requests, templates, sessions). It imports none of its siblings, so no two modules
//! need each other for it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a caller may do; ordered, each role also has the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Readonly,
    User,
    Admin,
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub role: String,
    pub content: String,
}
