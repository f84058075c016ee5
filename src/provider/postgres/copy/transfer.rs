//! Writing a copy: the target database cleared and its schema recreated
//! inside one transaction, rows streamed with COPY through the masking
//! projection.

use std::collections::{BTreeMap, BTreeSet};

use futures::{SinkExt, TryStreamExt};
use tokio_postgres::{Client, Row};

use super::plan::{CopyPlan, column_sql, projection};
use super::schema::{Column, Sequence, SourceSchema, Table, View};
use super::{source_error, target_error};
use crate::api::database_cluster::CopyMode;
use crate::provider::ProviderError;
use crate::provider::postgres::catalog::USER_SCHEMA_FILTER;
use crate::provider::postgres::sql::{ident, lit, qualified};

async fn drop_target_contents(target: &Client) -> Result<(), ProviderError> {
    let not_extension = |class: &str, col: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{class}'::regclass AND e.objid = {col} AND e.deptype = 'e')"
        )
    };
    drop_each(
        target,
        &format!(
            "SELECT n.nspname::text FROM pg_namespace n WHERE {USER_SCHEMA_FILTER} AND n.nspname <> 'public' AND {}",
            not_extension("pg_namespace", "n.oid")
        ),
        |row| {
            let name: String = row.get(0);
            format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&name))
        },
    )
    .await?;
    // In public: relations (not those owned by a column: they go with their
    // table) and standalone types.
    drop_each(
        target,
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
        |row| {
            let name: String = row.get(0);
            let kind: String = row.get(1);
            let keyword = match kind.as_str() {
                "v" => "VIEW",
                "m" => "MATERIALIZED VIEW",
                "f" => "FOREIGN TABLE",
                "S" => "SEQUENCE",
                _ => "TABLE",
            };
            format!(
                "DROP {keyword} IF EXISTS {} CASCADE",
                qualified("public", &name)
            )
        },
    )
    .await?;
    drop_each(
        target,
        &format!(
            "SELECT t.typname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r')
                AND {}",
            not_extension("pg_type", "t.oid")
        ),
        |row| {
            let name: String = row.get(0);
            format!("DROP TYPE IF EXISTS {} CASCADE", qualified("public", &name))
        },
    )
    .await
}

/// Runs `select` on the target and executes, one by one, the DROP statement
/// `drop` makes of each row it returns.
async fn drop_each(
    target: &Client,
    select: &str,
    drop: impl Fn(&Row) -> String,
) -> Result<(), ProviderError> {
    let err = |e: tokio_postgres::Error| target_error(&e, "clearing the target database");
    for row in target.query(select, &[]).await.map_err(err)? {
        target.batch_execute(&drop(&row)).await.map_err(err)?;
    }
    Ok(())
}

async fn run(target: &Client, sql: String, doing: String) -> Result<(), ProviderError> {
    target
        .batch_execute(&sql)
        .await
        .map_err(|e| target_error(&e, &doing))
}

/// Runs `work` (writes to `target`) inside one target transaction:
/// committed when it succeeds, rolled back when it fails.
pub(super) async fn in_transaction<T>(
    target: &Client,
    work: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    run(
        target,
        "BEGIN; SET LOCAL search_path = pg_catalog".to_string(),
        "starting the copy".to_string(),
    )
    .await?;
    match work.await {
        Ok(done) => {
            run(
                target,
                "COMMIT".to_string(),
                "committing the copy".to_string(),
            )
            .await?;
            Ok(done)
        }
        Err(e) => {
            // Best effort: the connection is dropped right after anyway,
            // which rolls back too.
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Copies one database; runs inside [`in_transaction`], so a failed copy
/// leaves the previous contents. Returns (tables, rows).
pub(super) async fn copy_database(
    target: &Client,
    source: &Client,
    owner: &str,
    schema: &SourceSchema,
    plan: &CopyPlan,
    mode: CopyMode,
) -> Result<(i64, i64), ProviderError> {
    drop_target_contents(target).await?;

    // Schemas, as the database's owner role.
    run(
        target,
        format!("SET LOCAL ROLE {}", ident(owner)),
        format!("acting as {owner}"),
    )
    .await?;
    for s in &schema.schemas {
        run(
            target,
            format!("CREATE SCHEMA IF NOT EXISTS {}", ident(s)),
            format!("creating schema {s}"),
        )
        .await?;
    }
    // Extensions need the admin.
    run(
        target,
        "RESET ROLE".to_string(),
        "resetting the role".to_string(),
    )
    .await?;
    for (name, in_schema) in &schema.extensions {
        run(
            target,
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
        target,
        format!("SET LOCAL ROLE {}", ident(owner)),
        format!("acting as {owner}"),
    )
    .await?;

    for (s, name, labels) in &schema.enums {
        let labels: Vec<String> = labels.iter().map(|l| lit(l)).collect();
        run(
            target,
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
        run(target,
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
            target,
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
                target,
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
                    target,
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
                target,
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
                target,
                "SAVEPOINT bulkhead_view".to_string(),
                "creating a view".to_string(),
            )
            .await?;
            match target.batch_execute(&create).await {
                Ok(()) => {
                    run(
                        target,
                        "RELEASE SAVEPOINT bulkhead_view".to_string(),
                        "creating a view".to_string(),
                    )
                    .await?;
                    progress = true;
                }
                Err(e) if e.as_db_error().is_some() => {
                    run(
                        target,
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
