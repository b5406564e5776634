//! Names of models, aliases, tags and signers, and references to versions.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The alias that always means the highest version; it cannot be set.
pub const LATEST: &str = "latest";

/// Names are 1 to 128 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`, so they
/// are safe as file names, in URLs and in `NAME@ALIAS` references.
pub fn check_name(kind: &'static str, name: &str) -> Result<()> {
    let bad =
        |reason: &str| Err(Error::InvalidName { kind, name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() || name.len() > 128 {
        return bad("must be 1 to 128 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("may hold only letters, digits, '.', '_' and '-'");
    }
    if name.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    Ok(())
}

/// An alias must also not be a number (that would read as a version) or `latest`.
pub fn check_alias(alias: &str) -> Result<()> {
    check_name("alias", alias)?;
    let bad = |reason: &str| {
        Err(Error::InvalidName { kind: "alias", name: alias.to_string(), reason: reason.to_string() })
    };
    if alias.chars().all(|c| c.is_ascii_digit()) {
        return bad("must not be a number");
    }
    if alias == LATEST {
        return bad("is reserved: it always means the highest version");
    }
    Ok(())
}

/// Which version of a model: by number, or through an alias (`latest` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Version(u64),
    Alias(String),
}

/// `NAME/VERSION`, `NAME@ALIAS`, or `NAME` (the latest version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    pub model: String,
    pub selector: Selector,
}

/// The prefix that marks a `--model` argument as a registry reference.
pub const REF_PREFIX: &str = "registry:";

impl VersionRef {
    /// Parses `registry:NAME@ALIAS` or `registry:NAME/VERSION` (a `--model` argument); `None`
    /// when `text` does not start with `registry:`.
    pub fn parse_model_arg(text: &str) -> Option<Result<Self>> {
        let rest = text.strip_prefix(REF_PREFIX)?;
        Some(
            rest.parse()
                .map_err(|e: Error| Error::BadReference { text: text.to_string(), reason: e.to_string() }),
        )
    }
}

impl FromStr for VersionRef {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadReference { text: text.to_string(), reason: reason.to_string() };
        let (model, selector) = if let Some((model, alias)) = text.split_once('@') {
            check_name("alias", alias)?;
            (model, Selector::Alias(alias.to_string()))
        } else if let Some((model, version)) = text.split_once('/') {
            let n: u64 = version.parse().map_err(|_| bad("the version after '/' is not a number"))?;
            if n == 0 {
                return Err(bad("versions start at 1"));
            }
            (model, Selector::Version(n))
        } else {
            (text, Selector::Alias(LATEST.to_string()))
        };
        check_name("model", model)?;
        Ok(Self { model: model.to_string(), selector })
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::Version(n) => write!(f, "{}/{n}", self.model),
            Selector::Alias(a) => write!(f, "{}@{a}", self.model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_are_refused() {
        let r = VersionRef::parse_model_arg("registry:tiny@prod").unwrap().unwrap();
        assert_eq!(r, VersionRef { model: "tiny".into(), selector: Selector::Alias("prod".into()) });
        let r = VersionRef::parse_model_arg("registry:tiny/3").unwrap().unwrap();
        assert_eq!(r.selector, Selector::Version(3));
        assert!(VersionRef::parse_model_arg("runs/tiny").is_none());
        for bad in [
            "registry:",
            "registry:tiny/0",
            "registry:tiny/x",
            "registry:@a",
            "registry:a@",
            "registry:../x/1",
            "registry:a b@c",
        ] {
            assert!(VersionRef::parse_model_arg(bad).unwrap().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn aliases_that_would_be_ambiguous_are_refused() {
        assert!(check_alias("prod").is_ok());
        assert!(check_alias("12").is_err());
        assert!(check_alias(LATEST).is_err());
    }
}
