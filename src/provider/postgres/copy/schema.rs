//! The part of a source database a copy recreates, read from its catalogs
//! inside the copy's snapshot.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::provider::postgres::catalog::USER_SCHEMA_FILTER;
use crate::provider::postgres::sql::qualified;

#[derive(Clone, Debug)]
pub(super) struct Column {
    pub(super) attnum: i16,
    pub(super) name: String,
    pub(super) ty: String,
    pub(super) category: char,
    /// The element type's category for arrays, else `category`: what the
    /// values look like, for classifying the column.
    pub(super) value_category: char,
    pub(super) not_null: bool,
    pub(super) default: Option<String>,
    /// 'a' (ALWAYS), 'd' (BY DEFAULT) or none.
    pub(super) identity: Option<char>,
    pub(super) generated: bool,
    pub(super) collation: Option<String>,
}

#[derive(Clone, Debug)]
pub(super) struct Constraint {
    pub(super) name: String,
    pub(super) kind: char,
    pub(super) def: String,
    pub(super) references: Option<u32>,
}

#[derive(Clone, Debug)]
pub(super) struct Table {
    pub(super) oid: u32,
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) partitioned: bool,
    pub(super) columns: Vec<Column>,
    pub(super) constraints: Vec<Constraint>,
    pub(super) indexes: Vec<String>,
    /// Columns in a primary key.
    pub(super) primary: BTreeSet<i16>,
    /// Columns in any unique index (primary keys included).
    pub(super) unique: BTreeSet<i16>,
}

#[derive(Clone, Debug)]
pub(super) struct Sequence {
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) ty: String,
    pub(super) start: i64,
    pub(super) increment: i64,
    pub(super) min: i64,
    pub(super) max: i64,
    pub(super) cache: i64,
    pub(super) cycle: bool,
    /// (table oid, column number, 'a' serial | 'i' identity).
    pub(super) owner: Option<(u32, i32, char)>,
    pub(super) last: (i64, bool),
}

#[derive(Clone, Debug)]
pub(super) struct View {
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) def: String,
    pub(super) materialized: bool,
}

#[derive(Clone, Debug, Default)]
pub(super) struct SourceSchema {
    pub(super) schemas: Vec<String>,
    pub(super) extensions: Vec<(String, String)>,
    pub(super) enums: Vec<(String, String, Vec<String>)>,
    pub(super) sequences: Vec<Sequence>,
    pub(super) tables: Vec<Table>,
    pub(super) views: Vec<View>,
}

fn first_char(s: &str) -> Option<char> {
    s.chars().next()
}

pub(super) async fn read_schema(client: &Client) -> Result<SourceSchema, tokio_postgres::Error> {
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
