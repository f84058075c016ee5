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

mod plan;
mod schema;
mod transfer;

use std::borrow::Cow;

use rand::RngExt;

pub use self::plan::{TableRef, parse_column, parse_table};
use self::plan::{plan_masks, refuse_unmasked};
use self::schema::{SourceSchema, read_schema};
use self::transfer::{copy_database, in_transaction};
use super::catalog::{Claim, Inventory};
use super::conn::{ConnInfo, classify};
use super::names::Plan;
use crate::provider::{CopyReport, CopyRequest, ProviderError};
use crate::reasons;

/// Session setting carrying the per-copy hash key on the source connection.
const KEY_SETTING: &str = "bulkhead.copy_key";
const REDACTED: &str = "REDACTED";

/// How many offending columns a refusal lists before "and N more".
const MAX_LISTED: usize = 50;

/// Maps errors of the target side to what a user can act on.
fn target_error(e: &tokio_postgres::Error, doing: &str) -> ProviderError {
    let base = classify(e, doing);
    let Some(code) = e.code() else { return base };
    let class = &code.code()[..2.min(code.code().len())];
    if class == "23" {
        return ProviderError::terminal(
            reasons::MASK_VIOLATES_CONSTRAINT,
            format!(
                "{base} (a masked column no longer satisfies a constraint of the copy: adjust the masks or exclude the table)"
            ),
        );
    }
    if matches!(code.code(), "42704" | "42883" | "0A000" | "42P17") {
        return ProviderError::terminal(
            reasons::UNSUPPORTED_SCHEMA,
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

/// Refuses a copy where database `physical` of the `side` ("target" or
/// "source") cluster `plan` does not exist (the error `absent` makes) or is
/// managed by another DatabaseCluster.
fn require_managed(
    inv: &Inventory,
    plan: &Plan,
    physical: &str,
    side: &str,
    absent: impl FnOnce() -> ProviderError,
) -> Result<(), ProviderError> {
    match inv.db_claim(plan, physical) {
        Claim::Absent => Err(absent()),
        Claim::Foreign { .. } => Err(ProviderError::terminal(
            reasons::NAME_CONFLICT,
            format!("database {physical} is not managed by the {side} DatabaseCluster"),
        )),
        _ => Ok(()),
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
    let admin = conn.session(&conn.admin_db).await?;
    let target_inv = Inventory::load(&admin, target).await?;
    let source_inv = match &request.source_connection {
        None => Inventory::load(&admin, source).await?,
        Some(_) => {
            let source_admin = source_conn
                .session(&source_conn.admin_db)
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
        require_managed(&target_inv, target, &db.physical, "target", || {
            ProviderError::transient(
                reasons::TARGET_NOT_READY,
                format!("database {} of the target does not exist yet", db.physical),
            )
        })?;
        // The source must carry the source cluster's marker: a copy
        // never reads a database its source cluster does not own.
        require_managed(&source_inv, source, &src.physical, "source", || {
            ProviderError::transient(
                reasons::SOURCE_NOT_READY,
                format!(
                    "database {} of the source does not exist (yet) on {}:{}",
                    src.physical, source_conn.host, source_conn.port
                ),
            )
        })?;
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
                reasons::UNSUPPORTED_SCHEMA,
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
        let (tables, rows) = in_transaction(
            &target_client,
            copy_database(
                &target_client,
                source_client,
                &db.owner,
                schema,
                plan,
                request.mode,
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database_cluster::CopyMode;
    use crate::provider::Secret;
    use crate::provider::postgres::copy::plan::tests::request;

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
