//! What a copy does to each column: the sanitize rules resolved against
//! the source's schema, the refusal of sensitive columns left unmasked, and
//! the SQL that projects (masks) and recreates each column. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::schema::{Column, SourceSchema, Table};
use super::{KEY_SETTING, MAX_LISTED, REDACTED};
use crate::api::database_cluster::{CopyMode, MaskAction};
use crate::provider::postgres::classify::sensitive;
use crate::provider::postgres::sql::{ident, lit};
use crate::provider::{CopyRequest, ProviderError};
use crate::reasons;

/// `table` or `schema.table`.
#[derive(Clone, Debug)]
pub struct TableRef {
    pub schema: Option<String>,
    pub table: String,
}

impl TableRef {
    fn matches(&self, t: &Table) -> bool {
        self.table == t.name && self.schema.as_ref().is_none_or(|s| s == &t.schema)
    }
}

/// The dot-separated parts of a key, when it has `min` to `min + 1` of
/// them and none is empty (`[schema.]table[.column]`).
fn key_parts(key: &str, min: usize) -> Option<Vec<&str>> {
    let parts: Vec<&str> = key.split('.').collect();
    let fits = (min..=min + 1).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty());
    fits.then_some(parts)
}

fn table_ref(parts: &[&str]) -> TableRef {
    match parts {
        [s, t] => TableRef {
            schema: Some(s.to_string()),
            table: t.to_string(),
        },
        _ => TableRef {
            schema: None,
            table: parts.join("."),
        },
    }
}

pub fn parse_table(key: &str) -> Result<TableRef, ProviderError> {
    key_parts(key, 1)
        .map(|parts| table_ref(&parts))
        .ok_or_else(|| {
            ProviderError::terminal(
                reasons::INVALID_SPEC,
                format!("sanitize.excludeTables entry {key:?} must be table or schema.table"),
            )
        })
}

/// A `table.column` or `schema.table.column` key of the list `field`.
pub fn parse_column(key: &str, field: &str) -> Result<(TableRef, String), ProviderError> {
    match key_parts(key, 2) {
        Some(parts) => {
            let (table, column) = parts.split_at(parts.len() - 1);
            Ok((table_ref(table), column[0].to_string()))
        }
        None => Err(ProviderError::terminal(
            reasons::INVALID_SPEC,
            format!("{field} entry {key:?} must be table.column or schema.table.column"),
        )),
    }
}

/// Every (source database index, table, column) a column key of the list
/// `field` names. A key that names nothing anywhere is an error: a typo must
/// not pass silently for a rule or a declaration.
fn resolve_column<'s>(
    schemas: &[&'s SourceSchema],
    key: &str,
    field: &str,
) -> Result<Vec<(usize, &'s Table, &'s Column)>, ProviderError> {
    let (r, column) = parse_column(key, field)?;
    let mut table_found = false;
    let mut found = Vec::new();
    for (i, schema) in schemas.iter().enumerate() {
        for t in schema.tables.iter().filter(|t| r.matches(t)) {
            table_found = true;
            if let Some(c) = t.columns.iter().find(|c| c.name == column) {
                found.push((i, t, c));
            }
        }
    }
    if !table_found {
        return Err(ProviderError::terminal(
            reasons::UNKNOWN_TABLE,
            format!("{field} names {key:?}, but no source database has that table"),
        ));
    }
    if found.is_empty() {
        return Err(ProviderError::terminal(
            reasons::UNKNOWN_COLUMN,
            format!("{field} names {key:?}, but the table has no column {column:?}"),
        ));
    }
    Ok(found)
}

/// What to do with one source database: its tables (excluded ones gone)
/// and the masks of their columns.
#[derive(Clone, Debug, Default)]
pub(super) struct CopyPlan {
    /// Table oid → column number → mask.
    pub(super) masks: BTreeMap<u32, BTreeMap<i16, MaskAction>>,
    pub(super) excluded: BTreeSet<u32>,
}

/// Resolves the sanitize rules against every source database; a rule that
/// matches nothing anywhere is an error, and so is a mask the column's type
/// or constraints cannot take.
pub(super) fn plan_masks(
    schemas: &[&SourceSchema],
    request: &CopyRequest,
) -> Result<Vec<CopyPlan>, ProviderError> {
    let mut plans = vec![CopyPlan::default(); schemas.len()];
    let sanitize = match request.mode {
        CopyMode::SchemaOnly => return Ok(plans),
        CopyMode::Sanitized => &request.sanitize,
    };
    for key in &sanitize.exclude_tables {
        let r = parse_table(key)?;
        let mut found = false;
        for (schema, plan) in schemas.iter().zip(plans.iter_mut()) {
            for t in schema.tables.iter().filter(|t| r.matches(t)) {
                plan.excluded.insert(t.oid);
                found = true;
            }
        }
        if !found {
            return Err(ProviderError::terminal(
                reasons::UNKNOWN_TABLE,
                format!("sanitize.excludeTables names {key:?}, which no source database has"),
            ));
        }
    }
    for (key, action) in &sanitize.columns {
        for (i, t, c) in resolve_column(schemas, key, "sanitize.columns")? {
            if plans[i].excluded.contains(&t.oid) {
                continue;
            }
            check_mask(t, c, *action)?;
            plans[i]
                .masks
                .entry(t.oid)
                .or_default()
                .insert(c.attnum, *action);
        }
    }
    Ok(plans)
}

/// Refuses a Sanitized copy while a column that looks sensitive would be
/// copied as it is: not masked, not in an excluded table, not declared safe
/// by the source. `databases` are the logical names of the source databases,
/// in the order of `schemas` and `plans`. Runs before anything is written.
pub(super) fn refuse_unmasked(
    databases: &[&str],
    schemas: &[&SourceSchema],
    plans: &[CopyPlan],
    request: &CopyRequest,
) -> Result<(), ProviderError> {
    // SchemaOnly copies no rows; allowUnmasked is the source's explicit
    // choice to hand its data out in clear.
    if request.mode == CopyMode::SchemaOnly || request.allow_unmasked {
        return Ok(());
    }
    let safe = resolve_safe_columns(schemas, &request.safe_columns)?;
    let mut offending = Vec::new();
    for (((db, schema), plan), safe) in databases.iter().zip(schemas).zip(plans).zip(&safe) {
        for t in schema
            .tables
            .iter()
            .filter(|t| !plan.excluded.contains(&t.oid))
        {
            let masks = plan.masks.get(&t.oid);
            for c in &t.columns {
                // Generated columns are recomputed in the copy from the
                // (classified) columns they read.
                if c.generated
                    || masks.is_some_and(|m| m.contains_key(&c.attnum))
                    || safe.contains(&(t.oid, c.attnum))
                {
                    continue;
                }
                if let Some(category) = sensitive(&t.name, &c.name, &c.ty, c.value_category) {
                    offending.push(format!(
                        "{db}.{}.{}.{} ({})",
                        t.schema,
                        t.name,
                        c.name,
                        category.as_str()
                    ));
                }
            }
        }
    }
    if offending.is_empty() {
        return Ok(());
    }
    offending.sort();
    offending.dedup();
    let total = offending.len();
    let mut listed = offending
        .into_iter()
        .take(MAX_LISTED)
        .collect::<Vec<_>>()
        .join(", ");
    if total > MAX_LISTED {
        listed.push_str(&format!(", and {} more", total - MAX_LISTED));
    }
    Err(ProviderError::terminal(
        reasons::SENSITIVE_COLUMNS_UNMASKED,
        format!(
            "{total} column(s) look sensitive and would be copied unmasked: {listed}. \
             For each, mask it in sanitize.columns, exclude its table in sanitize.excludeTables, \
             or have the source DatabaseCluster declare it in spec.copyPolicy.safeColumns \
             (or allow unmasked copies with spec.copyPolicy.allowUnmasked)"
        ),
    ))
}

/// Per source database, the (table oid, column number) of every column
/// `safe_columns` names. An entry that names nothing is an error, as in
/// `sanitize.columns`: a typo must not pass for a declaration.
fn resolve_safe_columns(
    schemas: &[&SourceSchema],
    safe_columns: &[String],
) -> Result<Vec<BTreeSet<(u32, i16)>>, ProviderError> {
    let mut safe = vec![BTreeSet::new(); schemas.len()];
    for key in safe_columns {
        for (i, t, c) in resolve_column(schemas, key, "copyPolicy.safeColumns")? {
            safe[i].insert((t.oid, c.attnum));
        }
    }
    Ok(safe)
}

pub(super) fn is_text(c: &Column) -> bool {
    c.category == 'S'
}

/// Whether the masked value can be NULL for a non-NULL input.
pub(super) fn mask_yields_null(c: &Column, action: MaskAction) -> bool {
    match action {
        MaskAction::Null => true,
        MaskAction::Hash => false,
        MaskAction::Redact => !(is_text(c) || c.category == 'N'),
    }
}

fn check_mask(t: &Table, c: &Column, action: MaskAction) -> Result<(), ProviderError> {
    let at = format!("{}.{}.{}", t.schema, t.name, c.name);
    let refuse = |why: String| Err(ProviderError::terminal(reasons::UNSUPPORTED_MASK, why));
    if c.generated {
        return refuse(format!(
            "{at} is a generated column (recomputed in the copy): mask the columns it is computed from"
        ));
    }
    if action == MaskAction::Hash && !is_text(c) {
        return refuse(format!(
            "hash needs a text-like column, {at} is {}: use null or redact",
            c.ty
        ));
    }
    if mask_yields_null(c, action) && (t.primary.contains(&c.attnum) || c.identity.is_some()) {
        return refuse(format!(
            "{at} is part of the primary key or an identity column and cannot become NULL: use hash (text) or exclude the table"
        ));
    }
    if action == MaskAction::Redact && !mask_yields_null(c, action) && t.unique.contains(&c.attnum)
    {
        return refuse(format!(
            "redact gives every row the same value, but {at} is unique: use hash"
        ));
    }
    Ok(())
}

pub(super) fn projection(c: &Column, mask: Option<MaskAction>) -> String {
    let col = ident(&c.name);
    match mask {
        None => col,
        Some(MaskAction::Null) => format!("NULL::{}", c.ty),
        Some(MaskAction::Redact) if is_text(c) => format!("{}::{}", lit(REDACTED), c.ty),
        Some(MaskAction::Redact) if c.category == 'N' => format!("0::{}", c.ty),
        Some(MaskAction::Redact) => format!("NULL::{}", c.ty),
        Some(MaskAction::Hash) => format!(
            "(encode(sha256(convert_to(current_setting({}) || {col}::text, 'UTF8')), 'hex'))::{}",
            lit(KEY_SETTING),
            c.ty
        ),
    }
}

pub(super) fn column_sql(c: &Column, mask: Option<MaskAction>) -> String {
    let mut s = format!("{} {}", ident(&c.name), c.ty);
    if let Some(collation) = &c.collation {
        // format('%I.%I') on the server: already quoted.
        s.push_str(&format!(" COLLATE {collation}"));
    }
    if c.generated {
        if let Some(expr) = &c.default {
            s.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
        }
    } else if let Some(kind) = c.identity {
        s.push_str(if kind == 'a' {
            " GENERATED ALWAYS AS IDENTITY"
        } else {
            " GENERATED BY DEFAULT AS IDENTITY"
        });
    } else if let Some(expr) = &c.default {
        s.push_str(&format!(" DEFAULT {expr}"));
    }
    let relaxed = mask.is_some_and(|m| mask_yields_null(c, m));
    if c.not_null && !relaxed {
        s.push_str(" NOT NULL");
    }
    s
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::api::database_cluster::Sanitize;
    use crate::provider::{DesiredDatabaseCluster, Owner};

    pub(crate) fn request(mode: CopyMode) -> CopyRequest {
        let base = crate::provider::test_desired("prod");
        CopyRequest {
            source: DesiredDatabaseCluster {
                owner: Owner {
                    name: "prod".into(),
                    ..base.owner.clone()
                },
                environment: "prod".into(),
                tier: crate::api::environment::Tier::Production,
                ..base
            },
            source_connection: None,
            mode,
            sanitize: Sanitize::default(),
            safe_columns: Vec::new(),
            allow_unmasked: false,
        }
    }

    fn column(attnum: i16, name: &str, ty: &str, category: char) -> Column {
        Column {
            attnum,
            name: name.into(),
            ty: ty.into(),
            category,
            value_category: category,
            not_null: false,
            default: None,
            identity: None,
            generated: false,
            collation: None,
        }
    }

    fn table(oid: u32, name: &str, columns: Vec<Column>) -> Table {
        Table {
            oid,
            schema: "public".into(),
            name: name.into(),
            partitioned: false,
            columns,
            constraints: Vec::new(),
            indexes: Vec::new(),
            primary: BTreeSet::new(),
            unique: BTreeSet::new(),
        }
    }

    /// A source database with `users (id, email, ssn, username, created_at)`
    /// and `sessions (id, token)`.
    fn schema() -> SourceSchema {
        let users = [
            ("id", "integer", 'N'),
            ("email", "text", 'S'),
            ("ssn", "character varying(11)", 'S'),
            ("username", "text", 'S'),
            ("created_at", "timestamp with time zone", 'D'),
        ];
        let sessions = [("id", "integer", 'N'), ("token", "text", 'S')];
        SourceSchema {
            tables: vec![
                table(10, "users", numbered(&users)),
                table(11, "sessions", numbered(&sessions)),
            ],
            ..SourceSchema::default()
        }
    }

    /// Columns (name, type, type category) with attnums 1, 2, … in order.
    fn numbered(columns: &[(&str, &str, char)]) -> Vec<Column> {
        (1..)
            .zip(columns)
            .map(|(attnum, &(name, ty, category))| column(attnum, name, ty, category))
            .collect()
    }

    /// The refusal for `request` against one database `app` of [`schema`].
    fn check(request: &CopyRequest) -> Result<(), ProviderError> {
        let schema = schema();
        let plans = plan_masks(&[&schema], request)?;
        refuse_unmasked(&["app"], &[&schema], &plans, request)
    }

    #[test]
    fn unmasked_sensitive_columns_are_listed_sorted() {
        let err = check(&request(CopyMode::Sanitized)).expect_err("refused");
        assert_eq!(err.reason(), reasons::SENSITIVE_COLUMNS_UNMASKED);
        assert!(err.is_terminal());
        let message = err.to_string();
        assert!(
            message.contains(
                "app.public.sessions.token (token or secret), app.public.users.email (email), app.public.users.ssn (national id)."
            ),
            "{message}"
        );
        for field in [
            "sanitize.columns",
            "sanitize.excludeTables",
            "spec.copyPolicy.safeColumns",
            "spec.copyPolicy.allowUnmasked",
        ] {
            assert!(message.contains(field), "names {field}: {message}");
        }
        for innocent in ["username", "created_at", ".id ("] {
            assert!(!message.contains(innocent), "{innocent}: {message}");
        }
    }

    #[test]
    fn masked_excluded_or_declared_columns_pass() {
        let mut r = request(CopyMode::Sanitized);
        r.sanitize
            .columns
            .insert("users.email".into(), MaskAction::Hash);
        r.sanitize.exclude_tables.push("sessions".into());
        r.safe_columns.push("public.users.ssn".into());
        check(&r).expect("nothing unmasked");

        // Dropping any one of the three brings its columns back.
        let mut no_safe = r.clone();
        no_safe.safe_columns.clear();
        let message = check(&no_safe).expect_err("ssn unmasked").to_string();
        assert!(message.starts_with("1 column(s)"), "{message}");
        assert!(
            message.contains("app.public.users.ssn (national id)"),
            "{message}"
        );
    }

    #[test]
    fn schema_only_and_allow_unmasked_skip_the_check() {
        check(&request(CopyMode::SchemaOnly)).expect("no rows copied");
        let mut r = request(CopyMode::Sanitized);
        r.allow_unmasked = true;
        check(&r).expect("the source allows unmasked copies");
    }

    #[test]
    fn safe_columns_must_name_a_column() {
        let mut r = request(CopyMode::Sanitized);
        r.safe_columns = vec!["users.phone".into()];
        assert_eq!(
            check(&r).expect_err("no such column").reason(),
            reasons::UNKNOWN_COLUMN
        );
        r.safe_columns = vec!["customers.email".into()];
        assert_eq!(
            check(&r).expect_err("no such table").reason(),
            reasons::UNKNOWN_TABLE
        );
        r.safe_columns = vec!["email".into()];
        assert_eq!(
            check(&r).expect_err("not table.column").reason(),
            reasons::INVALID_SPEC
        );
    }

    #[test]
    fn a_long_list_is_capped() {
        let columns = (1..=60)
            .map(|i| column(i, &format!("email_{i:02}"), "text", 'S'))
            .collect();
        let schema = SourceSchema {
            tables: vec![table(20, "contacts", columns)],
            ..SourceSchema::default()
        };
        let r = request(CopyMode::Sanitized);
        let plans = plan_masks(&[&schema], &r).expect("no rules");
        let message = refuse_unmasked(&["app"], &[&schema], &plans, &r)
            .expect_err("refused")
            .to_string();
        assert!(message.starts_with("60 column(s)"), "{message}");
        assert!(
            message.contains("email_50 (email), and 10 more."),
            "{message}"
        );
        assert!(!message.contains("email_51"), "{message}");
    }

    /// [`schema`] with `users.id` the primary key and `users.email` unique
    /// and NOT NULL.
    fn constrained() -> SourceSchema {
        let mut s = schema();
        let users = &mut s.tables[0];
        users.primary.insert(1);
        users.unique.extend([1, 2]);
        users.columns[1].not_null = true;
        s
    }

    fn plan_with(
        schemas: &[&SourceSchema],
        columns: &[(&str, MaskAction)],
        excluded: &[&str],
    ) -> Result<Vec<CopyPlan>, ProviderError> {
        let mut r = request(CopyMode::Sanitized);
        for (key, action) in columns {
            r.sanitize.columns.insert(key.to_string(), *action);
        }
        r.sanitize.exclude_tables = excluded.iter().map(|t| t.to_string()).collect();
        plan_masks(schemas, &r)
    }

    #[test]
    fn masks_apply_in_every_database_that_has_the_column() {
        let (a, mut b) = (schema(), schema());
        b.tables[0].oid = 30;
        let plans = plan_with(
            &[&a, &b],
            &[
                ("users.email", MaskAction::Hash),
                ("public.users.ssn", MaskAction::Null),
            ],
            &["sessions"],
        )
        .expect("valid rules");
        assert_eq!(
            plans[0].masks[&10],
            BTreeMap::from([(2, MaskAction::Hash), (3, MaskAction::Null)])
        );
        assert_eq!(plans[1].masks[&30], plans[0].masks[&10]);
        assert_eq!(plans[0].excluded, BTreeSet::from([11]));
        // A mask on an excluded table is resolved (it must exist) but unused.
        let plans = plan_with(
            &[&a],
            &[("sessions.token", MaskAction::Hash)],
            &["sessions"],
        )
        .expect("valid rules");
        assert!(plans[0].masks.is_empty());
    }

    #[test]
    fn rules_that_name_nothing_say_what_is_missing() {
        let s = schema();
        let reason = |columns: &[(&str, MaskAction)], excluded: &[&str]| {
            plan_with(&[&s], columns, excluded)
                .expect_err("refused")
                .reason()
        };
        assert_eq!(reason(&[], &["orders"]), reasons::UNKNOWN_TABLE);
        assert_eq!(
            reason(&[("orders.email", MaskAction::Null)], &[]),
            reasons::UNKNOWN_TABLE
        );
        assert_eq!(
            reason(&[("other.users.email", MaskAction::Null)], &[]),
            reasons::UNKNOWN_TABLE
        );
        assert_eq!(
            reason(&[("users.phone", MaskAction::Null)], &[]),
            reasons::UNKNOWN_COLUMN
        );
        for bad in ["email", "a.b.c.d", "users.", ".email", ""] {
            assert_eq!(
                reason(&[(bad, MaskAction::Null)], &[]),
                reasons::INVALID_SPEC,
                "{bad:?}"
            );
        }
        for bad in ["a.b.c", "", "public."] {
            assert_eq!(reason(&[], &[bad]), reasons::INVALID_SPEC, "{bad:?}");
        }
    }

    #[test]
    fn masks_a_column_cannot_take_are_refused() {
        let s = constrained();
        let refused = |key: &str, action: MaskAction| {
            let err = plan_with(&[&s], &[(key, action)], &[]).expect_err("refused");
            assert_eq!(err.reason(), reasons::UNSUPPORTED_MASK, "{key} {action:?}");
            err.to_string()
        };
        assert!(refused("users.created_at", MaskAction::Hash).contains("text-like"));
        assert!(refused("users.id", MaskAction::Null).contains("primary key"));
        assert!(refused("users.email", MaskAction::Redact).contains("unique"));
        let mut generated = constrained();
        generated.tables[0].columns[3].generated = true;
        let err = plan_with(&[&generated], &[("users.username", MaskAction::Null)], &[])
            .expect_err("refused");
        assert!(err.to_string().contains("generated column"), "{err}");
        // What the column can take passes: hash on a unique text column,
        // redact on a number (0 keeps NOT NULL), null on a nullable one.
        plan_with(
            &[&s],
            &[
                ("users.email", MaskAction::Hash),
                ("users.created_at", MaskAction::Null),
                ("users.ssn", MaskAction::Redact),
            ],
            &[],
        )
        .expect("accepted");
    }

    #[test]
    fn projections_mask_by_type_and_keep_the_column_type() {
        let text = column(2, "e-mail", "text", 'S');
        let number = column(1, "age", "integer", 'N');
        let date = column(5, "born", "date", 'D');
        assert_eq!(projection(&text, None), "\"e-mail\"");
        assert_eq!(projection(&text, Some(MaskAction::Null)), "NULL::text");
        assert_eq!(
            projection(&text, Some(MaskAction::Redact)),
            "'REDACTED'::text"
        );
        assert_eq!(projection(&number, Some(MaskAction::Redact)), "0::integer");
        assert_eq!(projection(&date, Some(MaskAction::Redact)), "NULL::date");
        let hashed = projection(&text, Some(MaskAction::Hash));
        assert!(
            hashed.contains("current_setting('bulkhead.copy_key')"),
            "{hashed}"
        );
        assert!(hashed.contains("\"e-mail\"::text"), "{hashed}");
    }

    #[test]
    fn column_definitions_drop_not_null_only_where_the_mask_can_yield_null() {
        let mut c = column(2, "email", "text", 'S');
        c.not_null = true;
        c.collation = Some("pg_catalog.\"C\"".into());
        assert_eq!(
            column_sql(&c, None),
            "\"email\" text COLLATE pg_catalog.\"C\" NOT NULL"
        );
        assert!(column_sql(&c, Some(MaskAction::Hash)).ends_with("NOT NULL"));
        assert!(column_sql(&c, Some(MaskAction::Redact)).ends_with("NOT NULL"));
        assert!(!column_sql(&c, Some(MaskAction::Null)).contains("NOT NULL"));
        let mut d = column(5, "born", "date", 'D');
        d.not_null = true;
        assert!(!column_sql(&d, Some(MaskAction::Redact)).contains("NOT NULL"));
        let mut id = column(1, "id", "integer", 'N');
        id.identity = Some('a');
        assert_eq!(
            column_sql(&id, None),
            "\"id\" integer GENERATED ALWAYS AS IDENTITY"
        );
        id.identity = None;
        id.default = Some("nextval('s'::regclass)".into());
        assert_eq!(
            column_sql(&id, None),
            "\"id\" integer DEFAULT nextval('s'::regclass)"
        );
        id.generated = true;
        id.default = Some("(age * 2)".into());
        assert_eq!(
            column_sql(&id, None),
            "\"id\" integer GENERATED ALWAYS AS ((age * 2)) STORED"
        );
    }
}
