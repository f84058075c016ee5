//! Copying one cluster's databases into another's, on the same server or
//! from another one (`CopyRequest::source_connection`), without external
//! binaries: the schema is read from the source's catalogs and recreated,
//! rows are streamed with COPY through a projection that masks sensitive
//! columns.
//!
//! What a copy holds: extensions, enum types, sequences, tables (columns with
//! types, collations, defaults, identity and generated columns, NOT NULL),
//! primary keys, unique/check/exclusion constraints, foreign keys between
//! copied tables, other indexes, views and materialized views (created WITH
//! NO DATA). Not copied: functions, triggers, policies, comments, grants
//! (the target's users get their own), statistics. Partitioned tables are
//! refused unless excluded; inheritance children become plain tables.
//!
//! Masks (Sanitized):
//! - `null`: NULL. The copy's column loses NOT NULL. Refused on primary-key
//!   and identity columns.
//! - `redact`: text-like columns (`text`, `varchar`, `char`, `citext`, …)
//!   become `'REDACTED'`, numeric ones `0`, every other type NULL (and loses
//!   NOT NULL as with `null`). Refused where every row would collide: on a
//!   column of a primary key or unique index when the placeholder is not NULL.
//! - `hash`: `encode(sha256(convert_to(key || value::text, 'UTF8')), 'hex')`
//!   with a random key per copy (sent as a session setting, never in SQL
//!   text), so equal values still join within one copy but cannot be
//!   recomputed. Text-like columns only (varchar(n) keeps its first n hex
//!   digits). The projection runs on the source's server, so the key lives
//!   in the source sessions, wherever they are.
//!
//! Before any row is copied, every column of every copied table is
//! classified by name and type ([`super::classify`]); a column that looks
//! sensitive and is neither masked, nor in an excluded table, nor declared
//! safe by the source (`safe_columns`) refuses the copy with
//! `SensitiveColumnsUnmasked`, unless the source allows unmasked copies.
//!
//! The target side of each database runs in one transaction: the target's
//! tables, views, sequences and types are dropped and recreated, so a
//! re-copy replaces and a failed copy leaves the previous contents. The
//! source is read in one REPEATABLE READ snapshot.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use futures::{SinkExt, TryStreamExt};
use rand::RngExt;
use tokio_postgres::Client;

use super::catalog::{Claim, Inventory, USER_SCHEMA_FILTER};
use super::classify::sensitive;
use super::conn::{ConnInfo, classify};
use super::names::{NAME_CONFLICT, Plan};
use super::sql::{ident, lit, qualified};
use crate::api::database_cluster::{CopyMode, MaskAction};
use crate::provider::{CopyReport, CopyRequest, ProviderError};
use crate::reconcile::reasons;

pub const UNKNOWN_TABLE: &str = "UnknownTable";
pub const UNKNOWN_COLUMN: &str = "UnknownColumn";
pub const UNSUPPORTED_MASK: &str = "UnsupportedMask";
pub const SENSITIVE_COLUMNS_UNMASKED: &str = "SensitiveColumnsUnmasked";
const UNSUPPORTED_SCHEMA: &str = "UnsupportedSchema";
const MASK_VIOLATES_CONSTRAINT: &str = "MaskViolatesConstraint";
const SOURCE_NOT_READY: &str = "SourceNotReady";
const TARGET_NOT_READY: &str = "TargetNotReady";

/// Session setting carrying the per-copy hash key on the source connection.
const KEY_SETTING: &str = "bulkhead.copy_key";
const REDACTED: &str = "REDACTED";

/// How many offending columns a refusal lists before "and N more".
const MAX_LISTED: usize = 50;

#[derive(Clone, Debug)]
struct Column {
    attnum: i16,
    name: String,
    ty: String,
    category: char,
    /// The element type's category for arrays, else `category`: what the
    /// values look like, for classifying the column.
    value_category: char,
    not_null: bool,
    default: Option<String>,
    /// 'a' (ALWAYS), 'd' (BY DEFAULT) or none.
    identity: Option<char>,
    generated: bool,
    collation: Option<String>,
}

#[derive(Clone, Debug)]
struct Constraint {
    name: String,
    kind: char,
    def: String,
    references: Option<u32>,
}

#[derive(Clone, Debug)]
struct Table {
    oid: u32,
    schema: String,
    name: String,
    partitioned: bool,
    columns: Vec<Column>,
    constraints: Vec<Constraint>,
    indexes: Vec<String>,
    /// Columns in a primary key.
    primary: BTreeSet<i16>,
    /// Columns in any unique index (primary keys included).
    unique: BTreeSet<i16>,
}

#[derive(Clone, Debug)]
struct Sequence {
    schema: String,
    name: String,
    ty: String,
    start: i64,
    increment: i64,
    min: i64,
    max: i64,
    cache: i64,
    cycle: bool,
    /// (table oid, column number, 'a' serial | 'i' identity).
    owner: Option<(u32, i32, char)>,
    last: (i64, bool),
}

#[derive(Clone, Debug)]
struct View {
    schema: String,
    name: String,
    def: String,
    materialized: bool,
}

#[derive(Clone, Debug, Default)]
struct SourceSchema {
    schemas: Vec<String>,
    extensions: Vec<(String, String)>,
    enums: Vec<(String, String, Vec<String>)>,
    sequences: Vec<Sequence>,
    tables: Vec<Table>,
    views: Vec<View>,
}

fn first_char(s: &str) -> Option<char> {
    s.chars().next()
}

async fn read_schema(client: &Client) -> Result<SourceSchema, tokio_postgres::Error> {
    let not_extension = |class: &str, col: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{class}'::regclass AND e.objid = {col} AND e.deptype = 'e')"
        )
    };
    let mut out = SourceSchema::default();
    for row in client
        .query(
            &format!(
                "SELECT n.nspname::text FROM pg_namespace n WHERE {USER_SCHEMA_FILTER} AND {} ORDER BY 1",
                not_extension("pg_namespace", "n.oid")
            ),
            &[],
        )
        .await?
    {
        out.schemas.push(row.get(0));
    }
    for row in client
        .query(
            "SELECT e.extname::text, n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
              WHERE e.extname <> 'plpgsql' ORDER BY e.oid",
            &[],
        )
        .await?
    {
        out.extensions.push((row.get(0), row.get(1)));
    }
    for row in client
        .query(
            &format!(
                "SELECT n.nspname::text, t.typname::text, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                   FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid
                  WHERE {USER_SCHEMA_FILTER} AND {}
                  GROUP BY 1, 2 ORDER BY 1, 2",
                not_extension("pg_type", "t.oid")
            ),
            &[],
        )
        .await?
    {
        out.enums.push((row.get(0), row.get(1), row.get(2)));
    }
    for row in client
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind = 'p'
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_SCHEMA_FILTER} AND {}
                  ORDER BY 2, 3",
                not_extension("pg_class", "c.oid")
            ),
            &[],
        )
        .await?
    {
        out.tables.push(Table {
            oid: row.get(0),
            schema: row.get(1),
            name: row.get(2),
            partitioned: row.get(3),
            columns: Vec::new(),
            constraints: Vec::new(),
            indexes: Vec::new(),
            primary: BTreeSet::new(),
            unique: BTreeSet::new(),
        });
    }
    let oids: Vec<u32> = out.tables.iter().map(|t| t.oid).collect();
    let mut by_oid: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, t) in out.tables.iter().enumerate() {
        by_oid.insert(t.oid, i);
    }
    for row in client
        .query(
            "SELECT a.attrelid, a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text,
                    a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), a.attidentity::text, a.attgenerated::text,
                    CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                         THEN (SELECT format('%I.%I', cn.nspname, co.collname)
                                 FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                                WHERE co.oid = a.attcollation) END,
                    (SELECT et.typcategory::text FROM pg_type et WHERE et.oid = t.typelem AND t.typcategory = 'A')
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
              WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await?
    {
        let oid: u32 = row.get(0);
        let Some(&i) = by_oid.get(&oid) else { continue };
        let category: String = row.get(4);
        let identity: String = row.get(7);
        let generated: String = row.get(8);
        let element_category: Option<String> = row.get(10);
        let category = first_char(&category).unwrap_or('X');
        out.tables[i].columns.push(Column {
            attnum: row.get(1),
            name: row.get(2),
            ty: row.get(3),
            category,
            value_category: element_category
                .as_deref()
                .and_then(first_char)
                .unwrap_or(category),
            not_null: row.get(5),
            default: row.get(6),
            identity: first_char(&identity),
            generated: !generated.is_empty(),
            collation: row.get(9),
        });
    }
    for row in client
        .query(
            "SELECT conrelid, conname::text, contype::text, pg_get_constraintdef(oid), confrelid
               FROM pg_constraint
              WHERE conrelid = ANY($1) AND contype IN ('p', 'u', 'c', 'x', 'f')
              ORDER BY conrelid, conname",
            &[&oids],
        )
        .await?
    {
        let oid: u32 = row.get(0);
        let Some(&i) = by_oid.get(&oid) else { continue };
        let kind: String = row.get(2);
        let references: u32 = row.get(4);
        out.tables[i].constraints.push(Constraint {
            name: row.get(1),
            kind: first_char(&kind).unwrap_or('c'),
            def: row.get(3),
            references: (references != 0).then_some(references),
        });
    }
    for row in client
        .query(
            "SELECT i.indrelid, pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary, i.indkey::int2[],
                    EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u', 'x'))
               FROM pg_index i
              WHERE i.indrelid = ANY($1)
              ORDER BY i.indexrelid",
            &[&oids],
        )
        .await?
    {
        let oid: u32 = row.get(0);
        let Some(&i) = by_oid.get(&oid) else { continue };
        let unique: bool = row.get(2);
        let primary: bool = row.get(3);
        let keys: Vec<i16> = row.get(4);
        let backs_constraint: bool = row.get(5);
        if unique || primary {
            out.tables[i].unique.extend(keys.iter().copied().filter(|k| *k > 0));
        }
        if primary {
            out.tables[i].primary.extend(keys.iter().copied().filter(|k| *k > 0));
        }
        if !backs_constraint {
            out.tables[i].indexes.push(row.get(1));
        }
    }
    for row in client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
                        s.seqmin, s.seqmax, s.seqcache, s.seqcycle, d.refobjid, d.refobjsubid, d.deptype::text
                   FROM pg_sequence s
                   JOIN pg_class c ON c.oid = s.seqrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
                        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                  WHERE {USER_SCHEMA_FILTER} AND {}
                  ORDER BY 1, 2",
                not_extension("pg_class", "c.oid")
            ),
            &[],
        )
        .await?
    {
        let table: Option<u32> = row.get(9);
        let column: Option<i32> = row.get(10);
        let deptype: Option<String> = row.get(11);
        let owner = match (table, column, deptype.as_deref().and_then(first_char)) {
            (Some(t), Some(c), Some(k)) => Some((t, c, k)),
            _ => None,
        };
        out.sequences.push(Sequence {
            schema: row.get(0),
            name: row.get(1),
            ty: row.get(2),
            start: row.get(3),
            increment: row.get(4),
            min: row.get(5),
            max: row.get(6),
            cache: row.get(7),
            cycle: row.get(8),
            owner,
            last: (0, false),
        });
    }
    for seq in &mut out.sequences {
        let row = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}",
                    qualified(&seq.schema, &seq.name)
                ),
                &[],
            )
            .await?;
        seq.last = (row.get(0), row.get(1));
    }
    for row in client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, pg_get_viewdef(c.oid, true), c.relkind = 'm'
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('v', 'm') AND {USER_SCHEMA_FILTER} AND {}
                  ORDER BY c.oid",
                not_extension("pg_class", "c.oid")
            ),
            &[],
        )
        .await?
    {
        let def: String = row.get(2);
        out.views.push(View {
            schema: row.get(0),
            name: row.get(1),
            def: def.trim().trim_end_matches(';').to_string(),
            materialized: row.get(3),
        });
    }
    Ok(out)
}

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

pub fn parse_table(key: &str) -> Result<TableRef, ProviderError> {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [t] if !t.is_empty() => Ok(TableRef {
            schema: None,
            table: t.to_string(),
        }),
        [s, t] if !s.is_empty() && !t.is_empty() => Ok(TableRef {
            schema: Some(s.to_string()),
            table: t.to_string(),
        }),
        _ => Err(ProviderError::terminal(
            reasons::INVALID_SPEC,
            format!("sanitize.excludeTables entry {key:?} must be table or schema.table"),
        )),
    }
}

/// A `table.column` or `schema.table.column` key of the list `field`.
pub fn parse_column(key: &str, field: &str) -> Result<(TableRef, String), ProviderError> {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [t, c] if !t.is_empty() && !c.is_empty() => Ok((
            TableRef {
                schema: None,
                table: t.to_string(),
            },
            c.to_string(),
        )),
        [s, t, c] if !s.is_empty() && !t.is_empty() && !c.is_empty() => Ok((
            TableRef {
                schema: Some(s.to_string()),
                table: t.to_string(),
            },
            c.to_string(),
        )),
        _ => Err(ProviderError::terminal(
            reasons::INVALID_SPEC,
            format!("{field} entry {key:?} must be table.column or schema.table.column"),
        )),
    }
}

/// What to do with one source database: its tables (excluded ones gone)
/// and the masks of their columns.
#[derive(Clone, Debug, Default)]
struct CopyPlan {
    /// Table oid → column number → mask.
    masks: BTreeMap<u32, BTreeMap<i16, MaskAction>>,
    excluded: BTreeSet<u32>,
}

/// Resolves the sanitize rules against every source database; a rule that
/// matches nothing anywhere is an error, and so is a mask the column's type
/// or constraints cannot take.
fn plan_masks(
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
                UNKNOWN_TABLE,
                format!("sanitize.excludeTables names {key:?}, which no source database has"),
            ));
        }
    }
    for (key, action) in &sanitize.columns {
        let (r, column) = parse_column(key, "sanitize.columns")?;
        let mut table_found = false;
        let mut column_found = false;
        for (schema, plan) in schemas.iter().zip(plans.iter_mut()) {
            for t in schema.tables.iter().filter(|t| r.matches(t)) {
                table_found = true;
                let Some(c) = t.columns.iter().find(|c| c.name == column) else {
                    continue;
                };
                column_found = true;
                if plan.excluded.contains(&t.oid) {
                    continue;
                }
                check_mask(t, c, *action)?;
                plan.masks
                    .entry(t.oid)
                    .or_default()
                    .insert(c.attnum, *action);
            }
        }
        if !table_found {
            return Err(ProviderError::terminal(
                UNKNOWN_TABLE,
                format!("sanitize.columns names {key:?}, but no source database has that table"),
            ));
        }
        if !column_found {
            return Err(ProviderError::terminal(
                UNKNOWN_COLUMN,
                format!("sanitize.columns names {key:?}, but the table has no column {column:?}"),
            ));
        }
    }
    Ok(plans)
}

/// Refuses a Sanitized copy while a column that looks sensitive would be
/// copied as it is: not masked, not in an excluded table, not declared safe
/// by the source. `databases` are the logical names of the source databases,
/// in the order of `schemas` and `plans`. Runs before anything is written.
fn refuse_unmasked(
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
        SENSITIVE_COLUMNS_UNMASKED,
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
    const FIELD: &str = "copyPolicy.safeColumns";
    let mut safe = vec![BTreeSet::new(); schemas.len()];
    for key in safe_columns {
        let (r, column) = parse_column(key, FIELD)?;
        let mut table_found = false;
        let mut column_found = false;
        for (schema, safe) in schemas.iter().zip(safe.iter_mut()) {
            for t in schema.tables.iter().filter(|t| r.matches(t)) {
                table_found = true;
                if let Some(c) = t.columns.iter().find(|c| c.name == column) {
                    column_found = true;
                    safe.insert((t.oid, c.attnum));
                }
            }
        }
        if !table_found {
            return Err(ProviderError::terminal(
                UNKNOWN_TABLE,
                format!("{FIELD} names {key:?}, but no source database has that table"),
            ));
        }
        if !column_found {
            return Err(ProviderError::terminal(
                UNKNOWN_COLUMN,
                format!("{FIELD} names {key:?}, but the table has no column {column:?}"),
            ));
        }
    }
    Ok(safe)
}

fn is_text(c: &Column) -> bool {
    c.category == 'S'
}

/// Whether the masked value can be NULL for a non-NULL input.
fn mask_yields_null(c: &Column, action: MaskAction) -> bool {
    match action {
        MaskAction::Null => true,
        MaskAction::Hash => false,
        MaskAction::Redact => !(is_text(c) || c.category == 'N'),
    }
}

fn check_mask(t: &Table, c: &Column, action: MaskAction) -> Result<(), ProviderError> {
    let at = format!("{}.{}.{}", t.schema, t.name, c.name);
    let refuse = |why: String| Err(ProviderError::terminal(UNSUPPORTED_MASK, why));
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

fn projection(c: &Column, mask: Option<MaskAction>) -> String {
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

fn column_sql(c: &Column, mask: Option<MaskAction>) -> String {
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

/// Maps errors of the target side to what a user can act on.
fn target_error(e: &tokio_postgres::Error, doing: &str) -> ProviderError {
    let base = classify(e, doing);
    let Some(code) = e.code() else { return base };
    let class = &code.code()[..2.min(code.code().len())];
    if class == "23" {
        return ProviderError::terminal(
            MASK_VIOLATES_CONSTRAINT,
            format!(
                "{base} (a masked column no longer satisfies a constraint of the copy: adjust the masks or exclude the table)"
            ),
        );
    }
    if matches!(code.code(), "42704" | "42883" | "0A000" | "42P17") {
        return ProviderError::terminal(
            UNSUPPORTED_SCHEMA,
            format!("{base} (the copy cannot recreate this part of the source schema)"),
        );
    }
    base
}

fn source_error(e: &tokio_postgres::Error, doing: &str) -> ProviderError {
    classify(e, doing)
}

/// The same error with `context` in front of its message.
fn in_context(e: ProviderError, context: &str) -> ProviderError {
    match e {
        ProviderError::Transient { reason, message } => ProviderError::Transient {
            reason,
            message: format!("{context}: {message}"),
        },
        ProviderError::Terminal { reason, message } => ProviderError::Terminal {
            reason,
            message: format!("{context}: {message}"),
        },
        ProviderError::Unavailable { message } => ProviderError::Unavailable {
            message: format!("{context}: {message}"),
        },
    }
}

/// The admin connection of the source's server: its own when the request
/// carries one, else the target's. Parse errors never quote the value
/// (see [`ConnInfo::parse`]), so they can be passed on.
fn source_conn<'a>(
    conn: &'a ConnInfo,
    request: &CopyRequest,
) -> Result<Cow<'a, ConnInfo>, ProviderError> {
    match &request.source_connection {
        None => Ok(Cow::Borrowed(conn)),
        Some(secret) => ConnInfo::parse(secret.expose())
            .map(Cow::Owned)
            .map_err(|e| in_context(e, "the source's admin connection")),
    }
}

/// Copies `source` into `target`. The target lives on the server behind
/// `conn`; the source there too, or on the server of
/// `request.source_connection`, which then serves everything on the source
/// side (inventory, snapshots, schema, rows).
pub async fn copy(
    conn: &ConnInfo,
    target: &Plan,
    source: &Plan,
    request: &CopyRequest,
) -> Result<CopyReport, ProviderError> {
    let source_conn = source_conn(conn, request)?;
    // Errors from the source's own server say so: otherwise "connecting to
    // database …" could be either server.
    let on_source = |e: ProviderError| match &request.source_connection {
        Some(_) => in_context(
            e,
            &format!(
                "the source's server {}:{}",
                source_conn.host, source_conn.port
            ),
        ),
        None => e,
    };
    let admin = conn.connect_admin(&conn.admin_db).await?;
    let target_inv = Inventory::load(&admin, target).await?;
    let source_inv = match &request.source_connection {
        None => Inventory::load(&admin, source).await?,
        Some(_) => {
            let source_admin = source_conn
                .connect_admin(&source_conn.admin_db)
                .await
                .map_err(on_source)?;
            Inventory::load(&source_admin, source)
                .await
                .map_err(on_source)?
        }
    };
    drop(admin);

    let mut pairs = Vec::new();
    for db in &target.databases {
        let Some(src) = source.databases.iter().find(|s| s.logical == db.logical) else {
            continue;
        };
        match target_inv.db_claim(target, &db.physical) {
            Claim::Absent => {
                return Err(ProviderError::transient(
                    TARGET_NOT_READY,
                    format!("database {} of the target does not exist yet", db.physical),
                ));
            }
            Claim::Foreign { .. } => {
                return Err(ProviderError::terminal(
                    NAME_CONFLICT,
                    format!(
                        "database {} is not managed by the target DatabaseCluster",
                        db.physical
                    ),
                ));
            }
            _ => {}
        }
        match source_inv.db_claim(source, &src.physical) {
            Claim::Absent => {
                return Err(ProviderError::transient(
                    SOURCE_NOT_READY,
                    format!(
                        "database {} of the source does not exist (yet) on {}:{}",
                        src.physical, source_conn.host, source_conn.port
                    ),
                ));
            }
            // The source must carry the source cluster's marker: a copy
            // never reads a database its source cluster does not own.
            Claim::Foreign { .. } => {
                return Err(ProviderError::terminal(
                    NAME_CONFLICT,
                    format!(
                        "database {} is not managed by the source DatabaseCluster",
                        src.physical
                    ),
                ));
            }
            _ => {}
        }
        pairs.push((db.clone(), src.clone()));
    }
    if pairs.is_empty() {
        return Err(ProviderError::terminal(
            reasons::INVALID_SPEC,
            "the source cluster has none of the target's databases (databases are copied by name)",
        ));
    }

    // Open every source snapshot and read every schema before writing
    // anything, so a bad sanitize rule or an unmasked sensitive column
    // fails with nothing changed. The hash key is set in each source
    // session: the masking projection runs on the source's server.
    let mut key_bytes = [0u8; 32];
    rand::rng().fill(&mut key_bytes);
    let key: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut sources = Vec::new();
    for (_, src) in &pairs {
        let client = source_conn
            .connect_admin(&src.physical)
            .await
            .map_err(on_source)?;
        let doing = format!("reading the schema of {}", src.physical);
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = pg_catalog")
            .await
            .map_err(|e| source_error(&e, &doing))?;
        client
            .execute("SELECT set_config($1, $2, true)", &[&KEY_SETTING, &key])
            .await
            .map_err(|e| source_error(&e, &doing))?;
        let schema = read_schema(&client)
            .await
            .map_err(|e| source_error(&e, &doing))?;
        sources.push((client, schema));
    }
    let schema_refs: Vec<&SourceSchema> = sources.iter().map(|(_, s)| s).collect();
    let plans = plan_masks(&schema_refs, request)?;
    for ((_, schema), plan) in sources.iter().zip(&plans) {
        if let Some(t) = schema
            .tables
            .iter()
            .find(|t| t.partitioned && !plan.excluded.contains(&t.oid))
        {
            return Err(ProviderError::terminal(
                UNSUPPORTED_SCHEMA,
                format!(
                    "{}.{} is a partitioned table, which copies do not support: exclude it",
                    t.schema, t.name
                ),
            ));
        }
    }
    let databases: Vec<&str> = pairs.iter().map(|(_, src)| src.logical.as_str()).collect();
    refuse_unmasked(&databases, &schema_refs, &plans, request)?;

    let mut report = CopyReport::default();
    for (((db, _), (source_client, schema)), plan) in pairs.iter().zip(&sources).zip(&plans) {
        let target_client = conn.connect_admin(&db.physical).await?;
        let (tables, rows) = copy_database(
            &target_client,
            source_client,
            &db.owner,
            schema,
            plan,
            request.mode,
        )
        .await?;
        report.tables += tables;
        report.rows += rows;
        source_client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| source_error(&e, "finishing the source snapshot"))?;
    }
    Ok(report)
}

async fn drop_target_contents(target: &Client) -> Result<(), ProviderError> {
    let err = |e: tokio_postgres::Error| target_error(&e, "clearing the target database");
    let not_extension = |class: &str, col: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{class}'::regclass AND e.objid = {col} AND e.deptype = 'e')"
        )
    };
    let schemas = target
        .query(
            &format!(
                "SELECT n.nspname::text FROM pg_namespace n WHERE {USER_SCHEMA_FILTER} AND n.nspname <> 'public' AND {}",
                not_extension("pg_namespace", "n.oid")
            ),
            &[],
        )
        .await
        .map_err(err)?;
    for row in schemas {
        let name: String = row.get(0);
        target
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&name)))
            .await
            .map_err(err)?;
    }
    // In public: relations (not those owned by a column: they go with their
    // table) and standalone types.
    let relations = target
        .query(
            &format!(
                "SELECT c.relname::text, c.relkind::text
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                    AND NOT (c.relkind = 'r' AND c.relispartition)
                    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
                    AND {}",
                not_extension("pg_class", "c.oid")
            ),
            &[],
        )
        .await
        .map_err(err)?;
    for row in relations {
        let name: String = row.get(0);
        let kind: String = row.get(1);
        let keyword = match kind.as_str() {
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            "f" => "FOREIGN TABLE",
            "S" => "SEQUENCE",
            _ => "TABLE",
        };
        target
            .batch_execute(&format!(
                "DROP {keyword} IF EXISTS {} CASCADE",
                qualified("public", &name)
            ))
            .await
            .map_err(err)?;
    }
    let types = target
        .query(
            &format!(
                "SELECT t.typname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                  WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r')
                    AND {}",
                not_extension("pg_type", "t.oid")
            ),
            &[],
        )
        .await
        .map_err(err)?;
    for row in types {
        let name: String = row.get(0);
        target
            .batch_execute(&format!(
                "DROP TYPE IF EXISTS {} CASCADE",
                qualified("public", &name)
            ))
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// Copies one database inside one target transaction. Returns (tables, rows).
async fn copy_database(
    target: &Client,
    source: &Client,
    owner: &str,
    schema: &SourceSchema,
    plan: &CopyPlan,
    mode: CopyMode,
) -> Result<(i64, i64), ProviderError> {
    let run = |sql: String, doing: String| async move {
        target
            .batch_execute(&sql)
            .await
            .map_err(|e| target_error(&e, &doing))
    };
    run(
        "BEGIN; SET LOCAL search_path = pg_catalog".to_string(),
        "starting the copy".to_string(),
    )
    .await?;
    let result = copy_database_in_transaction(target, source, owner, schema, plan, mode).await;
    match result {
        Ok(counts) => {
            run("COMMIT".to_string(), "committing the copy".to_string()).await?;
            Ok(counts)
        }
        Err(e) => {
            // Best effort: the connection is dropped right after anyway,
            // which rolls back too.
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn copy_database_in_transaction(
    target: &Client,
    source: &Client,
    owner: &str,
    schema: &SourceSchema,
    plan: &CopyPlan,
    mode: CopyMode,
) -> Result<(i64, i64), ProviderError> {
    let run = |sql: String, doing: String| async move {
        target
            .batch_execute(&sql)
            .await
            .map_err(|e| target_error(&e, &doing))
    };
    drop_target_contents(target).await?;

    // Schemas, as the database's owner role.
    run(
        format!("SET LOCAL ROLE {}", ident(owner)),
        format!("acting as {owner}"),
    )
    .await?;
    for s in &schema.schemas {
        run(
            format!("CREATE SCHEMA IF NOT EXISTS {}", ident(s)),
            format!("creating schema {s}"),
        )
        .await?;
    }
    // Extensions need the admin.
    run("RESET ROLE".to_string(), "resetting the role".to_string()).await?;
    for (name, in_schema) in &schema.extensions {
        run(
            format!(
                "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
                ident(name),
                ident(in_schema)
            ),
            format!("creating extension {name}"),
        )
        .await?;
    }
    run(
        format!("SET LOCAL ROLE {}", ident(owner)),
        format!("acting as {owner}"),
    )
    .await?;

    for (s, name, labels) in &schema.enums {
        let labels: Vec<String> = labels.iter().map(|l| lit(l)).collect();
        run(
            format!(
                "CREATE TYPE {} AS ENUM ({})",
                qualified(s, name),
                labels.join(", ")
            ),
            format!("creating type {s}.{name}"),
        )
        .await?;
    }

    let tables: Vec<&Table> = schema
        .tables
        .iter()
        .filter(|t| !plan.excluded.contains(&t.oid))
        .collect();
    let copied: BTreeSet<u32> = tables.iter().map(|t| t.oid).collect();
    let table_by_oid: BTreeMap<u32, &Table> = tables.iter().map(|t| (t.oid, *t)).collect();

    // Free-standing and serial sequences (identity ones come with their column).
    let sequences: Vec<&Sequence> = schema
        .sequences
        .iter()
        .filter(|s| match s.owner {
            Some((_, _, 'i')) => false,
            Some((table, _, _)) => copied.contains(&table),
            None => true,
        })
        .collect();
    for seq in &sequences {
        run(
            format!(
                "CREATE SEQUENCE {} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
                qualified(&seq.schema, &seq.name),
                seq.ty,
                seq.increment,
                seq.min,
                seq.max,
                seq.start,
                seq.cache,
                if seq.cycle { "CYCLE" } else { "NO CYCLE" }
            ),
            format!("creating sequence {}.{}", seq.schema, seq.name),
        )
        .await?;
    }

    for t in &tables {
        let masks = plan.masks.get(&t.oid);
        let columns: Vec<String> = t
            .columns
            .iter()
            .map(|c| column_sql(c, masks.and_then(|m| m.get(&c.attnum)).copied()))
            .collect();
        run(
            format!(
                "CREATE TABLE {} ({})",
                qualified(&t.schema, &t.name),
                columns.join(", ")
            ),
            format!("creating table {}.{}", t.schema, t.name),
        )
        .await?;
    }
    for seq in &sequences {
        if let Some((table, attnum, _)) = seq.owner
            && let Some(t) = table_by_oid.get(&table)
            && let Some(c) = t.columns.iter().find(|c| i32::from(c.attnum) == attnum)
        {
            run(
                format!(
                    "ALTER SEQUENCE {} OWNED BY {}.{}",
                    qualified(&seq.schema, &seq.name),
                    qualified(&t.schema, &t.name),
                    ident(&c.name)
                ),
                format!("linking sequence {}.{}", seq.schema, seq.name),
            )
            .await?;
        }
    }

    let mut rows: i64 = 0;
    if mode == CopyMode::Sanitized {
        for t in &tables {
            let masks = plan.masks.get(&t.oid);
            let columns: Vec<&Column> = t.columns.iter().filter(|c| !c.generated).collect();
            if columns.is_empty() {
                continue;
            }
            let select: Vec<String> = columns
                .iter()
                .map(|c| projection(c, masks.and_then(|m| m.get(&c.attnum)).copied()))
                .collect();
            let names: Vec<String> = columns.iter().map(|c| ident(&c.name)).collect();
            let table = qualified(&t.schema, &t.name);
            let doing = format!("copying rows of {}.{}", t.schema, t.name);
            let out = source
                .copy_out(&format!(
                    "COPY (SELECT {} FROM ONLY {table}) TO STDOUT",
                    select.join(", ")
                ))
                .await
                .map_err(|e| source_error(&e, &doing))?;
            let sink = target
                .copy_in(&format!("COPY {table} ({}) FROM STDIN", names.join(", ")))
                .await
                .map_err(|e| target_error(&e, &doing))?;
            futures::pin_mut!(out);
            futures::pin_mut!(sink);
            while let Some(chunk) = out.try_next().await.map_err(|e| source_error(&e, &doing))? {
                sink.as_mut()
                    .send(chunk)
                    .await
                    .map_err(|e| target_error(&e, &doing))?;
            }
            let copied_rows = sink
                .as_mut()
                .finish()
                .await
                .map_err(|e| target_error(&e, &doing))?;
            rows += i64::try_from(copied_rows).unwrap_or(i64::MAX);
        }
        // Sequence positions follow the data.
        for seq in &schema.sequences {
            let (last, called) = seq.last;
            match seq.owner {
                Some((table, attnum, 'i')) => {
                    let Some(t) = table_by_oid.get(&table) else {
                        continue;
                    };
                    let Some(c) = t.columns.iter().find(|c| i32::from(c.attnum) == attnum) else {
                        continue;
                    };
                    target
                        .execute(
                            "SELECT setval(pg_get_serial_sequence($1::text, $2::text)::regclass, $3, $4)",
                            &[&qualified(&t.schema, &t.name), &c.name, &last, &called],
                        )
                        .await
                        .map_err(|e| target_error(&e, "positioning an identity sequence"))?;
                }
                Some((table, _, _)) if !copied.contains(&table) => {}
                _ => {
                    target
                        .execute(
                            "SELECT setval($1::text::regclass, $2, $3)",
                            &[&qualified(&seq.schema, &seq.name), &last, &called],
                        )
                        .await
                        .map_err(|e| target_error(&e, "positioning a sequence"))?;
                }
            }
        }
    }

    // Constraints after the data (faster, and masks are checked against them).
    for kinds in [&['p', 'u', 'x', 'c'][..], &['f'][..]] {
        for t in &tables {
            for c in t.constraints.iter().filter(|c| kinds.contains(&c.kind)) {
                if c.references.is_some_and(|r| !copied.contains(&r)) {
                    continue;
                }
                run(
                    format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} {}",
                        qualified(&t.schema, &t.name),
                        ident(&c.name),
                        c.def
                    ),
                    format!("adding constraint {} on {}.{}", c.name, t.schema, t.name),
                )
                .await?;
            }
        }
    }
    for t in &tables {
        for index in &t.indexes {
            run(
                index.clone(),
                format!("creating an index on {}.{}", t.schema, t.name),
            )
            .await?;
        }
    }

    // Views may depend on each other and on excluded tables: create in
    // passes, each attempt under a savepoint; those that never succeed
    // (they read an excluded table) are left out.
    let mut pending: Vec<&View> = schema.views.iter().collect();
    loop {
        let mut progress = false;
        let mut still = Vec::new();
        for v in pending {
            let create = if v.materialized {
                format!(
                    "CREATE MATERIALIZED VIEW {} AS {} WITH NO DATA",
                    qualified(&v.schema, &v.name),
                    v.def
                )
            } else {
                format!("CREATE VIEW {} AS {}", qualified(&v.schema, &v.name), v.def)
            };
            run(
                "SAVEPOINT bulkhead_view".to_string(),
                "creating a view".to_string(),
            )
            .await?;
            match target.batch_execute(&create).await {
                Ok(()) => {
                    run(
                        "RELEASE SAVEPOINT bulkhead_view".to_string(),
                        "creating a view".to_string(),
                    )
                    .await?;
                    progress = true;
                }
                Err(e) if e.as_db_error().is_some() => {
                    run(
                        "ROLLBACK TO SAVEPOINT bulkhead_view".to_string(),
                        "creating a view".to_string(),
                    )
                    .await?;
                    still.push(v);
                }
                Err(e) => return Err(target_error(&e, "creating a view")),
            }
        }
        pending = still;
        if pending.is_empty() || !progress {
            break;
        }
    }
    for v in &pending {
        tracing::info!(view = %format!("{}.{}", v.schema, v.name), "view left out of the copy (it depends on an excluded table or something copies do not recreate)");
    }
    let count = i64::try_from(tables.len()).unwrap_or(i64::MAX);
    Ok((count, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database_cluster::{ResolvedSize, Sanitize};
    use crate::provider::{DesiredDatabaseCluster, Owner, Secret};

    fn request(mode: CopyMode) -> CopyRequest {
        CopyRequest {
            source: DesiredDatabaseCluster {
                owner: Owner {
                    api_version: "bulkhead.dev/v1alpha1".into(),
                    kind: "DatabaseCluster".into(),
                    name: "prod".into(),
                    uid: "u-1".into(),
                    namespace: Some("team".into()),
                },
                namespace: "team".into(),
                external_name: "prod".into(),
                environment: "prod".into(),
                tier: crate::api::environment::Tier::Production,
                organization: "org".into(),
                version: "16".into(),
                regions: vec![],
                size: ResolvedSize {
                    cpus: 1,
                    memory_mib: 256,
                    storage_gib: 1,
                    replicas: 1,
                },
                databases: vec![],
                users: vec![],
                passwords: Default::default(),
                deletion_policy: crate::api::DeletionPolicy::Delete,
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
        SourceSchema {
            tables: vec![
                table(
                    10,
                    "users",
                    vec![
                        column(1, "id", "integer", 'N'),
                        column(2, "email", "text", 'S'),
                        column(3, "ssn", "character varying(11)", 'S'),
                        column(4, "username", "text", 'S'),
                        column(5, "created_at", "timestamp with time zone", 'D'),
                    ],
                ),
                table(
                    11,
                    "sessions",
                    vec![
                        column(1, "id", "integer", 'N'),
                        column(2, "token", "text", 'S'),
                    ],
                ),
            ],
            ..SourceSchema::default()
        }
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
        assert_eq!(err.reason(), SENSITIVE_COLUMNS_UNMASKED);
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
            UNKNOWN_COLUMN
        );
        r.safe_columns = vec!["customers.email".into()];
        assert_eq!(
            check(&r).expect_err("no such table").reason(),
            UNKNOWN_TABLE
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

    #[test]
    fn a_bad_source_connection_quotes_nothing_of_it() {
        let mut r = request(CopyMode::Sanitized);
        r.source_connection = Some(Secret::new("fm1r_c2VjcmV0dG9rZW4"));
        let conn = ConnInfo::parse("host=db user=admin").expect("parses");
        let err = source_conn(&conn, &r).expect_err("not a connection string");
        assert_eq!(err.reason(), reasons::CREDENTIALS_UNAVAILABLE);
        let message = err.to_string();
        assert!(
            message.starts_with("the source's admin connection: "),
            "{message}"
        );
        assert!(!message.contains("c2Vj"), "{message}");
        assert!(!message.contains("fm1r"), "{message}");
    }
}
