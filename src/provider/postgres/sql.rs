//! Quoting. Every identifier and literal bulkhead puts into SQL text goes
//! through these; nothing is interpolated raw.

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// A quoted identifier.
pub fn ident(name: &str) -> String {
    escape_identifier(name)
}

/// A quoted string literal.
pub fn lit(value: &str) -> String {
    escape_literal(value)
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// A comma-separated list of quoted identifiers.
pub fn idents<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names
        .into_iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hostile_names() {
        assert_eq!(
            ident(r#"x"; DROP DATABASE postgres; --"#),
            r#""x""; DROP DATABASE postgres; --""#
        );
        assert_eq!(lit("a' OR '1'='1"), "'a'' OR ''1''=''1'");
        assert_eq!(lit(r"a\b"), r" E'a\\b'");
        assert_eq!(qualified("s", "t\"x"), r#""s"."t""x""#);
    }
}
