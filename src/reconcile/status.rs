//! Status, conditions and annotations: how the shared reconcile steps write
//! what they found back to the Kubernetes object.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::errors::{ErrorCategory, ReconcileError};
use super::managed::FIELD_MANAGER;
use super::reasons;
use crate::api::{CONDITION_READY, CONDITION_SYNCED, ConditionStatus, set_condition};
use crate::provider::Readiness;

/// A bulkhead kind, as the shared reconcile steps need it: its status and
/// the conditions inside.
pub trait ManagedResource:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    type Status: Default + Clone + Serialize + PartialEq + Send + Sync;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
}

/// Writes status unless it is unchanged (an unchanged write would still
/// cost an API call on every resync).
pub async fn write_status<K: ManagedResource>(
    api: &Api<K>,
    obj: &K,
    status: K::Status,
) -> Result<(), ReconcileError> {
    if obj.status() == Some(&status) {
        return Ok(());
    }
    patch_status(api, &obj.name_any(), &status).await?;
    Ok(())
}

/// `wait`, shortened so the object is looked at again just after `at`
/// (an expiry, a rotation due).
pub fn wait_until(wait: Duration, at: Timestamp) -> Duration {
    wait.min(at.duration_since(Timestamp::now()).unsigned_abs() + Duration::from_secs(1))
}

/// Sets or removes annotations with a JSON merge patch (not server-side
/// apply: the user owns the other annotations).
pub async fn annotate<K>(
    api: &Api<K>,
    name: &str,
    changes: &[(&str, Option<&str>)],
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": annotation_changes(changes) } })),
    )
    .await?;
    Ok(())
}

/// The `metadata.annotations` of a merge patch: a value sets a key, `None`
/// (JSON null) removes it.
fn annotation_changes(changes: &[(&str, Option<&str>)]) -> serde_json::Value {
    changes
        .iter()
        .map(|(key, value)| {
            (
                key.to_string(),
                value.map_or(serde_json::Value::Null, |v| json!(v)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Writes bookkeeping annotations and, when `obj` lacks it, bulkhead's
/// finalizer, in one JSON merge patch. Adding the finalizer replaces the
/// whole `metadata.finalizers` list, so that patch carries `obj`'s
/// resourceVersion: if anyone changed the object since it was read, the
/// apiserver answers Conflict and the reconcile is retried, instead of
/// dropping a finalizer someone else added meanwhile.
pub async fn record<K>(
    api: &Api<K>,
    obj: &K,
    changes: &[(&str, Option<&str>)],
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let mut metadata = serde_json::Map::new();
    if !changes.is_empty() {
        metadata.insert("annotations".into(), annotation_changes(changes));
    }
    if !has_finalizer(obj) {
        let mut finalizers = obj.finalizers().to_vec();
        finalizers.push(crate::api::FINALIZER.to_string());
        metadata.insert("finalizers".into(), json!(finalizers));
        metadata.insert("resourceVersion".into(), json!(obj.resource_version()));
    }
    if metadata.is_empty() {
        return Ok(());
    }
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": metadata })),
    )
    .await?;
    Ok(())
}

/// Whether bulkhead's finalizer is on the object.
pub fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == crate::api::FINALIZER)
}

/// Writes the status subresource with server-side apply, owned by bulkhead.
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Sets Ready and Synced from a converge result.
pub fn set_converged_conditions(
    conditions: &mut Vec<Condition>,
    readiness: &Readiness,
    observe_only: bool,
    generation: Option<i64>,
) {
    let now = Timestamp::now();
    let (ready_reason, ready_message) = if observe_only && readiness.ready {
        (
            reasons::OBSERVED,
            format!(
                "{} (ObserveOnly: observed, never written)",
                readiness.message
            ),
        )
    } else {
        (readiness.reason, readiness.message.clone())
    };
    set_condition(
        conditions,
        CONDITION_READY,
        readiness.ready.into(),
        ready_reason,
        ready_message,
        generation,
        now,
    );
    set_condition(
        conditions,
        CONDITION_SYNCED,
        ConditionStatus::True,
        reasons::RECONCILE_SUCCESS,
        "",
        generation,
        now,
    );
}

/// Sets Synced=False (and Ready=False unless it was True and the error is
/// only about reaching the provider) from a failed reconcile.
pub fn set_error_conditions(
    conditions: &mut Vec<Condition>,
    error: &ReconcileError,
    generation: Option<i64>,
) {
    let now = Timestamp::now();
    let message = error.to_string();
    set_condition(
        conditions,
        CONDITION_SYNCED,
        ConditionStatus::False,
        error.reason(),
        &message,
        generation,
        now,
    );
    let keep_ready = matches!(
        error.category(),
        ErrorCategory::Unavailable | ErrorCategory::Transient
    ) && crate::api::is_condition_true(conditions, CONDITION_READY);
    if !keep_ready {
        set_condition(
            conditions,
            CONDITION_READY,
            ConditionStatus::False,
            error.reason(),
            message,
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderError;

    #[test]
    fn unavailable_provider_keeps_ready_true_but_marks_synced_false() {
        let mut conds = Vec::new();
        set_converged_conditions(&mut conds, &Readiness::ready("up"), false, Some(1));
        let e: ReconcileError = ProviderError::unavailable("down").into();
        set_error_conditions(&mut conds, &e, Some(1));
        assert!(crate::api::is_condition_true(&conds, CONDITION_READY));
        assert!(!crate::api::is_condition_true(&conds, CONDITION_SYNCED));
        let e = ReconcileError::invalid(reasons::INVALID_SPEC, "bad");
        set_error_conditions(&mut conds, &e, Some(2));
        assert!(!crate::api::is_condition_true(&conds, CONDITION_READY));
    }
}
