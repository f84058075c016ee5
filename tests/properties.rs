//! Properties of every parser and name builder that takes user input, on
//! generated input (proptest): none panics on anything, the names they make
//! are always valid PostgreSQL/Kubernetes names and distinct for distinct
//! inputs, the CRD's validation and the parsers agree, and a connection
//! string's password never shows in an error or a debug print.
//!
//! Case counts are kept modest (`CASES`) so this file runs in seconds; a
//! failure prints the shrunk input, which belongs in a unit test next to the
//! code once fixed.

mod support;

use std::collections::BTreeSet;

use bulkhead::api::database_cluster::Privileges;
use bulkhead::api::environment::Tier;
use bulkhead::provider::DesiredDatabaseCluster;
use bulkhead::provider::postgres::conn::ConnInfo;
use bulkhead::provider::postgres::names::Plan;
use bulkhead::provider::postgres::{MAX_IDENTIFIER_BYTES, parse_column, parse_table};
use bulkhead::reasons::NAME_TOO_LONG;
use proptest::prelude::*;
use support::desired::desired_cluster;

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// What the CRD lets through for a DatabaseCluster's metadata.name.
const CLUSTER_NAME: &str = "[a-z]([-a-z0-9]{0,38}[a-z0-9])?";
/// What the CRD lets through for database and user names.
const SQL_NAME: &str = "[a-z_][a-z0-9_]{0,62}";

fn tiers() -> impl Strategy<Value = Tier> {
    prop_oneof![
        Just(Tier::Production),
        Just(Tier::Staging),
        Just(Tier::Testing),
        Just(Tier::Development),
        Just(Tier::Preview),
    ]
}

/// A staging cluster whose users may each use every database, with no
/// passwords: the name builders never read them.
fn desired(external_name: &str, databases: &[String], users: &[String]) -> DesiredDatabaseCluster {
    let mut d = desired_cluster(external_name)
        .owned_by("team", "app", "u-1")
        .environment("env", Tier::Staging)
        .version("16");
    for name in databases {
        d = d.database(name, None);
    }
    for name in users {
        d = d.user(name, databases, Privileges::ReadWrite);
    }
    d.without_passwords().build()
}

/// A PostgreSQL identifier bulkhead may create: within the byte limit, no
/// NUL (the SQL layer quotes everything else).
fn valid_identifier(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_IDENTIFIER_BYTES && !name.contains('\0')
}

/// A Kubernetes DNS label (what external names become for the in-cluster
/// provider: StatefulSets, Services, Secrets).
fn dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

proptest! {
    #![proptest_config(config())]

    /// Anything at all, even what the CRD would refuse (its validation can
    /// be bypassed): an answer, never a panic; what is made is valid.
    #[test]
    fn physical_names_never_panic_and_are_always_valid(
        external in "\\PC{0,80}",
        databases in prop::collection::vec("\\PC{0,70}", 0..4),
        users in prop::collection::vec("\\PC{0,70}", 0..4),
    ) {
        if let Ok(plan) = Plan::new(&desired(&external, &databases, &users)) {
            prop_assert!(valid_identifier(&plan.owner_role), "{plan:?}");
            let prefix = format!("{}_", plan.prefix);
            for db in &plan.databases {
                prop_assert!(valid_identifier(&db.physical), "{:?}", db);
                prop_assert!(db.physical.starts_with(&prefix), "{:?}", db);
            }
            for user in &plan.users {
                prop_assert!(valid_identifier(&user.physical), "{:?}", user);
                prop_assert!(user.physical.starts_with(&prefix), "{:?}", user);
            }
        }
    }

    /// Distinct logical names in one cluster get distinct physical names,
    /// and no user's role is the cluster's owner group role.
    #[test]
    fn physical_names_are_unique_within_a_cluster(
        external in CLUSTER_NAME,
        databases in prop::collection::btree_set(SQL_NAME, 1..5),
        users in prop::collection::btree_set(SQL_NAME, 0..5),
    ) {
        let databases: Vec<String> = databases.into_iter().collect();
        let users: Vec<String> = users.into_iter().collect();
        let Ok(plan) = Plan::new(&desired(&external, &databases, &users)) else {
            return Ok(());
        };
        let dbs: BTreeSet<&str> = plan.databases.iter().map(|d| d.physical.as_str()).collect();
        prop_assert_eq!(dbs.len(), databases.len());
        let mut roles: BTreeSet<&str> = plan.users.iter().map(|u| u.physical.as_str()).collect();
        prop_assert_eq!(roles.len(), users.len());
        prop_assert!(roles.insert(plan.owner_role.as_str()), "a user is the owner role: {plan:?}");
    }

    /// Names are never truncated (two long names could become one):
    /// refused with NameTooLong exactly when `<prefix>_<name>` is over
    /// PostgreSQL's 63 bytes.
    #[test]
    fn long_names_are_refused_not_truncated(
        external in CLUSTER_NAME,
        database in "[a-z_][a-z0-9_]{0,80}",
    ) {
        let physical_len = external.len() + 1 + database.len();
        let owner_len = external.len() + 1 + "owner".len();
        let result = Plan::new(&desired(&external, std::slice::from_ref(&database), &[]));
        match result {
            Ok(plan) => {
                prop_assert!(physical_len <= MAX_IDENTIFIER_BYTES);
                prop_assert_eq!(&plan.databases[0].physical, &format!("{}_{database}", external.replace('-', "_")));
            }
            Err(e) => {
                prop_assert!(physical_len > MAX_IDENTIFIER_BYTES || owner_len > MAX_IDENTIFIER_BYTES, "{e}");
                prop_assert_eq!(e.reason(), NAME_TOO_LONG);
            }
        }
    }

    /// External names (metadata.name + the tier's suffix) of CRD-valid
    /// names are DNS labels, and distinct names in one tier stay distinct.
    #[test]
    fn tier_suffixes_make_valid_distinct_external_names(
        a in CLUSTER_NAME,
        b in CLUSTER_NAME,
        tier in tiers(),
    ) {
        let suffix = tier.default_suffix();
        let (ea, eb) = (format!("{a}{suffix}"), format!("{b}{suffix}"));
        prop_assert!(dns_label(&ea), "{ea}");
        prop_assert!(suffix.is_empty() == (tier == Tier::Production), "only production has no suffix");
        prop_assert_eq!(a == b, ea == eb);
        // And the SQL prefix made from it is a valid identifier start.
        let prefix = ea.replace('-', "_");
        prop_assert!(prefix.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
    }

    /// Any custom suffix the CRD allows (`^(-[a-z0-9]+)*$`, at most 12)
    /// keeps external names DNS labels.
    #[test]
    fn custom_suffixes_make_valid_external_names(
        name in CLUSTER_NAME,
        suffix in "(-[a-z0-9]{1,5}){0,2}",
    ) {
        prop_assume!(suffix.len() <= 12);
        let external = format!("{name}{suffix}");
        prop_assert!(dns_label(&external), "{}", external);
    }

    /// The CRD's duration rule (`DURATION_RULE`) and the parser the operator
    /// reads durations with agree: what the apiserver admits, the operator
    /// can use, with the value it says.
    #[test]
    fn crd_valid_durations_parse_to_their_value(
        parts in prop::collection::vec((0u64..100_000, prop_oneof![Just("h"), Just("m"), Just("s"), Just("ms")]), 1..4),
    ) {
        let text: String = parts.iter().map(|(n, unit)| format!("{n}{unit}")).collect();
        let millis: u64 = parts
            .iter()
            .map(|(n, unit)| n * match *unit { "h" => 3_600_000, "m" => 60_000, "s" => 1_000, _ => 1 })
            .sum();
        let parsed: kube::core::Duration = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert!(parsed == std::time::Duration::from_millis(millis), "{text} parsed as {parsed:?}");
    }

    #[test]
    fn durations_never_panic(text in "\\PC{0,24}") {
        let _ = text.parse::<kube::core::Duration>();
    }

    /// Connection strings: any input is an answer, never a panic.
    #[test]
    fn connection_strings_never_panic(text in "\\PC{0,120}") {
        let _ = ConnInfo::parse(&text);
    }

    /// keyword=value strings, valid or not: the password is in no error
    /// message and no debug print.
    #[test]
    fn connection_string_errors_never_show_the_password(
        password in "[A-Za-z0-9]{12,24}",
        port in prop_oneof![Just("5432".to_string()), "[0-9a-z]{1,6}"],
        sslmode in prop_oneof![Just("require"), Just("disable"), Just("verify-full"), Just("bogus")],
        extra in prop_oneof![Just(""), Just(" sslrootcert=/nonexistent"), Just(" host="), Just(" ='")],
    ) {
        let dsn = format!("host=db.example port={port} user=admin password={password} dbname=postgres sslmode={sslmode}{extra}");
        match ConnInfo::parse(&dsn) {
            Ok(info) => {
                let shown = format!("{info:?}");
                prop_assert!(!shown.contains(&password), "{}", shown);
            }
            Err(e) => {
                prop_assert!(!e.to_string().contains(&password), "{e}");
                prop_assert!(!format!("{e:?}").contains(&password), "{e:?}");
            }
        }
    }

    /// URIs with a percent-encoded password: host, port and database come
    /// back as written; a broken one never echoes the password.
    #[test]
    fn connection_uris_parse_host_port_and_database(
        password in "[A-Za-z0-9@:/?#%]{12,24}",
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9]{0,10}){0,2}",
        port in 1u16..,
        db in "[a-z_][a-z0-9_]{0,20}",
        broken in any::<bool>(),
    ) {
        let encoded: String = password
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        // A stray '%' is a malformed escape.
        let encoded = if broken { format!("{encoded}%zz") } else { encoded };
        let uri = format!("postgres://admin:{encoded}@{host}:{port}/{db}?sslmode=require");
        match ConnInfo::parse(&uri) {
            Ok(info) => {
                prop_assert!(!broken, "accepted a malformed escape: {uri}");
                prop_assert_eq!(&info.host, &host);
                prop_assert_eq!(info.port, port);
                prop_assert_eq!(&info.admin_db, &db);
                let shown = format!("{info:?}");
                prop_assert!(!shown.contains(&password), "{}", shown);
            }
            Err(e) => {
                prop_assert!(broken, "{uri}: {e}");
                prop_assert!(!e.to_string().contains(&password) && !e.to_string().contains(&encoded), "{e}");
            }
        }
    }

    /// Sanitize keys: anything is an answer; what parses has two or three
    /// non-empty parts that join back to the key, and every key the CRD
    /// admits parses.
    #[test]
    fn sanitize_column_keys(key in "\\PC{0,40}") {
        if let Ok((table, column)) = parse_column(&key, "sanitize.columns") {
            prop_assert!(!table.table.is_empty() && !column.is_empty());
            prop_assert!(table.schema.as_ref().is_none_or(|s| !s.is_empty()));
            let joined = match &table.schema {
                Some(s) => format!("{s}.{}.{column}", table.table),
                None => format!("{}.{column}", table.table),
            };
            prop_assert_eq!(&joined, &key);
        }
        if let Ok(table) = parse_table(&key) {
            prop_assert!(!table.table.is_empty());
        }
    }

    #[test]
    fn crd_valid_sanitize_keys_parse(
        key in "([a-z_][a-z0-9_]{0,10}\\.){1,2}[a-z_][a-z0-9_]{0,10}",
        table in "([a-z_][a-z0-9_]{0,10}\\.)?[a-z_][a-z0-9_]{0,10}",
    ) {
        prop_assert!(parse_column(&key, "sanitize.columns").is_ok(), "{key}");
        prop_assert!(parse_table(&table).is_ok(), "{table}");
    }
}
