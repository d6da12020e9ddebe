//! Entente's Cedar schema (`entente.cedarschema`), parsed once.

use std::sync::LazyLock;

use cedar_policy::Schema;

/// The schema's text, in Cedar's schema syntax. docs/POLICY.md describes it.
pub const SCHEMA: &str = include_str!("entente.cedarschema");

static PARSED: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| format!("the built-in schema does not parse: {e}"))
});

/// The parsed schema. An error here is a bug in this crate (a test parses it).
pub(crate) fn schema() -> Result<&'static Schema, String> {
    PARSED.as_ref().map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_schema_parses_without_warnings() {
        let (_, warnings) = Schema::from_cedarschema_str(SCHEMA).unwrap();
        assert_eq!(warnings.count(), 0);
        schema().unwrap();
    }
}
