//! Step 7 of a DatabaseCluster's reconcile: filling it from
//! `spec.source`, only with the source's consent (its `copyPolicy`), under
//! the source's rules plus the consumer's.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::{Placement, desired_for, find_environment, provider_spec};
use crate::api::database_cluster::{CopyMode, CopyStatus, Sanitize};
use crate::api::{DatabaseCluster, DatabaseClusterStatus};
use crate::controller::Context;
use crate::provider::{CopyRequest, DesiredDatabaseCluster};
use crate::reasons;
use crate::reconcile::managed::{ReconcileError, publish};

/// The rules a copy applies: every rule the source requires, plus what the
/// consumer adds. For a column both name, the source's action wins: a
/// consumer can add rules, never weaken or remove one.
pub fn effective_sanitize(required: Option<&Sanitize>, requested: Option<&Sanitize>) -> Sanitize {
    let mut out = requested.cloned().unwrap_or_default();
    if let Some(required) = required {
        for table in &required.exclude_tables {
            if !out.exclude_tables.contains(table) {
                out.exclude_tables.push(table.clone());
            }
        }
        for (column, action) in &required.columns {
            out.columns.insert(column.clone(), *action);
        }
    }
    out
}

/// Copies from spec.source when its refreshGeneration has not been copied
/// yet, and only with the source's consent: its `copyPolicy` must name
/// this cluster's Environment, and its rules are read now, at copy time.
pub(super) async fn copy_if_asked(
    dbc: &DatabaseCluster,
    placement: &Placement,
    target: &DesiredDatabaseCluster,
    ctx: &Context,
    status: &mut DatabaseClusterStatus,
) -> Result<(), ReconcileError> {
    let Some(source) = &dbc.spec.source else {
        return Ok(());
    };
    if status
        .copy
        .as_ref()
        .is_some_and(|c| c.refresh_generation == source.refresh_generation)
    {
        return Ok(());
    }
    let src_ns = source
        .cluster_ref
        .namespace
        .clone()
        .unwrap_or_else(|| dbc.namespace().unwrap_or_default());
    let env_name = placement.env.name_any();
    // A missing source and a source that does not consent read the same,
    // so nobody learns what exists in namespaces they cannot read.
    let not_allowed = || {
        ReconcileError::invalid(
            reasons::COPY_NOT_ALLOWED,
            format!(
                "DatabaseCluster {src_ns}/{} does not exist or does not allow copies into Environment {env_name}: its owners list the Environment in spec.copyPolicy.allowedEnvironments",
                source.cluster_ref.name
            ),
        )
    };
    let src = Api::<DatabaseCluster>::namespaced(ctx.client.clone(), &src_ns)
        .get_opt(&source.cluster_ref.name)
        .await?
        .ok_or_else(not_allowed)?;
    let policy = src.spec.copy_policy.clone().unwrap_or_default();
    if !policy.allowed_environments.contains(&env_name) {
        return Err(not_allowed());
    }
    let src_env = find_environment(&src, ctx).await?;
    if src_env.spec.tier.rank() < placement.env.spec.tier.rank() {
        return Err(ReconcileError::invalid(
            reasons::COPY_UPWARD,
            format!(
                "copies flow from a higher tier to a lower one: the source is {} and this cluster is {}",
                src_env.spec.tier.as_str(),
                placement.env.spec.tier.as_str()
            ),
        ));
    }
    let sanitize = effective_sanitize(policy.sanitize.as_ref(), source.sanitize.as_ref());
    if source.mode == CopyMode::Sanitized
        && sanitize.exclude_tables.is_empty()
        && sanitize.columns.is_empty()
        && !policy.allow_unmasked
    {
        return Err(ReconcileError::invalid(
            reasons::SANITIZE_RULES_MISSING,
            format!(
                "a Sanitized copy needs at least one rule (spec.source.sanitize, or the source's spec.copyPolicy.sanitize); {src_ns}/{} does not allow unmasked copies (spec.copyPolicy.allowUnmasked)",
                src.name_any()
            ),
        ));
    }
    let src_provider = provider_spec(&src_env, ctx).await?;
    if src_provider.type_ != placement.provider.type_ {
        return Err(ReconcileError::invalid(
            reasons::UNSUPPORTED,
            format!(
                "copies need the same provider on both sides: the source is on {} and this cluster on {}",
                src_provider.type_, placement.provider.type_
            ),
        ));
    }
    // Another server: the copy reads the source over its own admin
    // connection, which the platform team named on the source's Environment.
    let source_connection = if src_provider == placement.provider {
        None
    } else if src_provider.type_.needs_credentials() {
        Some(ctx.read_credentials(&src_provider).await?)
    } else {
        None
    };
    let request = CopyRequest {
        // The source's passwords are not needed (the copy runs as the
        // admin) and are not read: nothing of the source's namespace but
        // the DatabaseCluster object itself is looked at.
        source: desired_for(
            &src,
            &src_env,
            &src_env.spec.organization_ref.name,
            BTreeMap::new(),
        ),
        source_connection,
        mode: source.mode,
        sanitize,
        safe_columns: policy.safe_columns.clone(),
        allow_unmasked: policy.allow_unmasked,
    };
    let report = placement.client.copy_from(target, &request).await?;
    publish(
        &ctx.recorder,
        dbc,
        kube::runtime::events::EventType::Normal,
        reasons::COPIED,
        "Copy",
        format!(
            "copied {} tables, {} rows from {src_ns}/{} ({:?})",
            report.tables,
            report.rows,
            src.name_any(),
            source.mode
        ),
    )
    .await;
    status.copy = Some(CopyStatus {
        source: format!("{src_ns}/{}", src.name_any()),
        mode: source.mode,
        refresh_generation: source.refresh_generation,
        tables: report.tables,
        rows: report.rows,
        completed_at: Some(Time(Timestamp::now())),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_adds_rules_but_never_weakens_the_sources() {
        use crate::api::database_cluster::MaskAction;
        let required = Sanitize {
            exclude_tables: vec!["audit_log".into()],
            columns: [("customers.email".to_string(), MaskAction::Hash)].into(),
        };
        let requested = Sanitize {
            exclude_tables: vec!["sessions".into()],
            columns: [
                ("customers.email".to_string(), MaskAction::Redact),
                ("customers.ssn".to_string(), MaskAction::Null),
            ]
            .into(),
        };
        let merged = effective_sanitize(Some(&required), Some(&requested));
        assert_eq!(merged.exclude_tables, ["sessions", "audit_log"]);
        assert_eq!(
            merged.columns.get("customers.email"),
            Some(&MaskAction::Hash),
            "the source's action wins"
        );
        assert_eq!(merged.columns.get("customers.ssn"), Some(&MaskAction::Null));
        // Asking for nothing still applies every required rule.
        assert_eq!(effective_sanitize(Some(&required), None), required);
        assert_eq!(effective_sanitize(None, None), Sanitize::default());
    }
}
