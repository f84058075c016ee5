use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::api::database_cluster::{DatabaseSpec, ResolvedSize, SizePreset, UserSpec};
use crate::provider::kubernetes::LABEL_OWNER_UID;
use crate::provider::{Owner, Secret};
use crate::reasons;

fn desired(size: ResolvedSize, users: Vec<UserSpec>) -> DesiredDatabaseCluster {
    let mut passwords = BTreeMap::new();
    for u in &users {
        passwords.insert(u.name.clone(), Secret::new(format!("pw-{}", u.name)));
    }
    passwords.insert(SUPERUSER.to_string(), Secret::new("pw-super"));
    let base = crate::provider::test_desired("my-app-db-stage");
    DesiredDatabaseCluster {
        owner: Owner {
            name: "my-app-db".into(),
            uid: "uid-1".into(),
            namespace: Some("staging".into()),
            ..base.owner.clone()
        },
        namespace: "staging".into(),
        environment: "staging".into(),
        organization: "acme".into(),
        size,
        databases: vec![
            DatabaseSpec {
                name: "app".into(),
                owner: Some("app".into()),
            },
            DatabaseSpec {
                name: "audit_log".into(),
                owner: Some("auditor".into()),
            },
        ],
        users,
        passwords,
        ..base
    }
}

fn user(name: &str, privileges: Privileges, databases: &[&str]) -> UserSpec {
    UserSpec {
        name: name.into(),
        databases: databases.iter().map(|d| d.to_string()).collect(),
        privileges,
        connection_limit: None,
    }
}

/// The children of a development-sized cluster with `users`, owned.
fn development_children(users: Vec<UserSpec>) -> Vec<Child> {
    let d = desired(SizePreset::Development.resolve(), users);
    desired_children("ghcr.io/cloudnative-pg/postgresql", &d, true)
}

fn find<'a>(children: &'a [Child], kind: ChildKind, name: &str) -> &'a Value {
    &children
        .iter()
        .find(|c| c.kind == kind && c.name == name)
        .unwrap_or_else(|| panic!("no {} {name} in {children:#?}", kind.kind))
        .body
}

#[test]
fn development_cluster_has_one_instance_roles_with_basic_auth_secrets_and_databases() {
    let children = development_children(vec![
        user("app", Privileges::Owner, &["app"]),
        user("reader", Privileges::ReadOnly, &["app"]),
    ]);
    let cluster = find(&children, CLUSTER, "my-app-db-stage");
    assert_eq!(cluster["apiVersion"], "postgresql.cnpg.io/v1");
    assert_eq!(cluster["spec"]["instances"], 1);
    assert_eq!(
        cluster["spec"]["imageName"],
        "ghcr.io/cloudnative-pg/postgresql:16"
    );
    assert_eq!(cluster["spec"]["storage"]["size"], "1Gi");
    assert_eq!(
        cluster["spec"]["resources"]["limits"]["memory"], "256Mi",
        "{cluster:#}"
    );
    assert!(
        cluster["spec"]["postgresql"].get("synchronous").is_none(),
        "no synchronous replication with one instance"
    );
    assert_eq!(cluster["spec"]["enableSuperuserAccess"], false);
    assert_eq!(
        cluster["metadata"]["ownerReferences"][0]["uid"], "uid-1",
        "owned by the DatabaseCluster"
    );

    let roles = cluster["spec"]["managed"]["roles"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = roles.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        ["app", "reader", "auditor"],
        "users, then owners without login"
    );
    assert_eq!(
        roles[0]["passwordSecret"]["name"],
        "my-app-db-stage-role-app"
    );
    assert_eq!(
        roles[0]["inRoles"],
        json!([]),
        "the owner owns its database"
    );
    assert_eq!(roles[1]["inRoles"], json!(["pg_read_all_data"]));
    assert_eq!(roles[2]["login"], false);

    let secret = find(&children, SECRET, "my-app-db-stage-role-reader");
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    assert_eq!(secret["metadata"]["labels"]["cnpg.io/reload"], "true");
    assert_eq!(
        secret["data"]["username"],
        serde_json::to_value(k8s_openapi::ByteString(b"reader".to_vec())).unwrap_or_default()
    );
    assert_eq!(
        secret["data"]["password"],
        serde_json::to_value(k8s_openapi::ByteString(b"pw-reader".to_vec())).unwrap_or_default()
    );
    assert!(
        !children.iter().any(|c| c.name.ends_with("-superuser")),
        "no superuser Secret when users are declared"
    );

    let db = find(&children, DATABASE, "my-app-db-stage-db-app");
    assert_eq!(
        db["spec"],
        json!({ "name": "app", "owner": "app", "cluster": { "name": "my-app-db-stage" },
                "ensure": "present", "databaseReclaimPolicy": "retain" })
    );
    let audit = children
        .iter()
        .find(|c| c.kind == DATABASE && c.body["spec"]["name"] == "audit_log")
        .map(|c| c.name.clone())
        .unwrap_or_default();
    assert!(
        audit.starts_with("my-app-db-stage-db-audit-log-"),
        "'_' is not allowed in object names: {audit}"
    );
}

#[test]
fn production_cluster_is_three_instances_with_quorum_synchronous_replication() {
    let d = desired(
        SizePreset::Production.resolve(),
        vec![user("app", Privileges::ReadWrite, &["app"])],
    );
    let children = desired_children("ghcr.io/cloudnative-pg/postgresql", &d, true);
    let cluster = find(&children, CLUSTER, "my-app-db-stage");
    assert_eq!(cluster["spec"]["instances"], 3);
    assert_eq!(
        cluster["spec"]["postgresql"]["synchronous"],
        json!({ "method": "any", "number": 1, "dataDurability": "required" })
    );
    assert_eq!(cluster["spec"]["resources"]["requests"]["memory"], "4Gi");
    assert_eq!(cluster["spec"]["storage"]["size"], "40Gi");
    assert_eq!(
        cluster["spec"]["managed"]["roles"][0]["inRoles"],
        json!(["pg_read_all_data", "pg_write_all_data"])
    );
}

#[test]
fn the_superuser_is_enabled_only_when_no_user_is_declared() {
    let d = desired(SizePreset::Development.resolve(), vec![]);
    let children = desired_children("img", &d, true);
    let cluster = find(&children, CLUSTER, "my-app-db-stage");
    assert_eq!(cluster["spec"]["enableSuperuserAccess"], true);
    assert_eq!(
        cluster["spec"]["superuserSecret"]["name"],
        "my-app-db-stage-superuser"
    );
    let secret = find(&children, SECRET, "my-app-db-stage-superuser");
    assert_eq!(
        secret["data"]["username"],
        serde_json::to_value(k8s_openapi::ByteString(b"postgres".to_vec())).unwrap_or_default()
    );
}

#[test]
fn orphaned_children_carry_no_owner_reference() {
    let d = desired(
        SizePreset::Development.resolve(),
        vec![user("app", Privileges::Owner, &["app"])],
    );
    for child in desired_children("img", &d, false) {
        assert!(
            child.body["metadata"].get("ownerReferences").is_none(),
            "{}",
            child.describe()
        );
        assert_eq!(child.body["metadata"]["labels"][LABEL_OWNER_UID], "uid-1");
    }
}

#[test]
fn object_names_are_dns_subdomains_and_distinct() {
    let names = ["app", "a_b", "_x", "x_", "a__b", "a_b_"];
    let parts: Vec<String> = names.iter().map(|n| object_name_part(n)).collect();
    for p in &parts {
        assert!(
            !p.is_empty()
                && !p.starts_with('-')
                && !p.ends_with('-')
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{p}"
        );
    }
    let mut unique = parts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), parts.len(), "{parts:?}");
    assert_eq!(object_name_part("app"), "app", "plain names stay readable");
}

/// A Cluster status as CloudNativePG 1.28 writes it under kwok: the pod is
/// Running and Ready, but the operator cannot reach its instance manager.
fn kwok_status() -> Value {
    json!({ "status": {
        "instances": 1,
        "readyInstances": 1,
        "phase": "Instance Status Extraction Error: HTTP communication issue",
        "phaseReason": "Communication issue detected",
        "writeService": "my-app-db-stage-rw",
        "conditions": [{ "type": "Ready", "status": "False", "reason": "ClusterIsNotReady", "message": "Cluster Is Not Ready" }],
    }})
}

#[test]
fn readiness_follows_cloudnativepg_ready_condition_and_phase() {
    let waiting = readiness(&json!({}), &[], 1);
    assert!(!waiting.ready);
    assert_eq!(waiting.reason, reasons::CREATING);

    let under_kwok = readiness(&kwok_status(), &[], 1);
    assert!(!under_kwok.ready);
    assert_eq!(under_kwok.reason, reasons::CLUSTER_NOT_READY);
    assert!(
        under_kwok.message.contains("HTTP communication issue"),
        "CloudNativePG's phase is shown: {}",
        under_kwok.message
    );

    let starting = readiness(&kwok_status(), &[], 3);
    assert_eq!(starting.reason, reasons::REPLICAS_NOT_READY);
    assert!(starting.message.starts_with("1/3 instances ready"));

    let mut healthy = kwok_status();
    healthy["status"]["phase"] = json!(PHASE_HEALTHY);
    healthy["status"]["conditions"][0]["status"] = json!("True");
    let pending_db = [("app".to_string(), Some(json!({ "status": {} })))];
    let r = readiness(&healthy, &pending_db, 1);
    assert!(!r.ready, "a database not applied yet is not ready");
    assert!(r.message.contains("database app"), "{}", r.message);
    let applied = [(
        "app".to_string(),
        Some(json!({ "status": { "applied": true } })),
    )];
    let r = readiness(&healthy, &applied, 1);
    assert!(r.ready, "{r:?}");
    assert_eq!(r.reason, reasons::AVAILABLE);

    healthy["status"]["managedRolesStatus"] =
        json!({ "cannotReconcile": { "app": ["role error"] } });
    let r = readiness(&healthy, &applied, 1);
    assert!(!r.ready);
    assert!(r.message.contains("app"), "{}", r.message);
}

#[test]
fn each_user_may_connect_to_its_own_databases_only() {
    let children = development_children(vec![
        user("reader", Privileges::ReadOnly, &["app"]),
        user("writer", Privileges::ReadWrite, &["app", "audit_log"]),
        user("nobody", Privileges::ReadOnly, &[]),
    ]);
    let cluster = find(&children, CLUSTER, "my-app-db-stage");
    assert_eq!(
        cluster["spec"]["postgresql"]["pg_hba"],
        json!([
            "host \"app\" \"reader\" all scram-sha-256",
            "host all \"reader\" all reject",
            "host \"app\",\"audit_log\" \"writer\" all scram-sha-256",
            "host all \"writer\" all reject",
            "host all \"nobody\" all reject",
        ])
    );
    // pg_read_all_data reaches every database the user can connect to,
    // and that is only its own.
    assert_eq!(
        cluster["spec"]["managed"]["roles"][0]["inRoles"],
        json!(["pg_read_all_data"])
    );
}

#[test]
fn hba_names_are_quoted_so_no_name_reads_as_a_keyword() {
    assert_eq!(hba_name("all"), "\"all\"");
    assert_eq!(hba_name("we\"ird"), "\"we\"\"ird\"");
}
