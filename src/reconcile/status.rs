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
use crate::api::{CONDITION_READY, CONDITION_SYNCED, ConditionStatus, set_condition};
use crate::provider::Readiness;
use crate::reasons;

/// A bulkhead kind, as the shared reconcile steps need it: its status and
/// the conditions inside.
pub trait ManagedResource:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    type Status: Default + Clone + Serialize + PartialEq + Send + Sync;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
}

/// The three kinds: each status is optional on the object and holds its
/// conditions in `conditions`.
macro_rules! managed_resource {
    ($($kind:ident => $status:ident),* $(,)?) => {$(
        impl ManagedResource for crate::api::$kind {
            type Status = crate::api::$status;
            fn status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }
            fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition> {
                &mut status.conditions
            }
        }
    )*};
}

managed_resource! {
    Organization => OrganizationStatus,
    Environment => EnvironmentStatus,
    DatabaseCluster => DatabaseClusterStatus,
}

/// Writes status unless it is unchanged (an unchanged write would still
/// cost an API call on every resync), or unless this process has just
/// written exactly this status over exactly the status `obj` holds: then
/// `obj` is the watch cache's copy from before that write (a reconcile
/// queued by our own bookkeeping patch runs with it), and the write would
/// only repeat itself.
pub async fn write_status<K: ManagedResource>(
    api: &Api<K>,
    obj: &K,
    status: K::Status,
) -> Result<(), ReconcileError> {
    if obj.status() == Some(&status) {
        return Ok(());
    }
    let uid = obj.uid().unwrap_or_default();
    let before = status_digest(obj.status());
    let after = status_digest(Some(&status));
    if RECENT_STATUS_WRITES.repeats(&uid, before, after) {
        return Ok(());
    }
    patch_status(api, &obj.name_any(), &status).await?;
    RECENT_STATUS_WRITES.wrote(uid, before, after);
    Ok(())
}

/// A digest of a status as it would be sent.
fn status_digest<S: Serialize>(status: Option<&S>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&status)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// How long a status write of ours explains a stale copy: long enough for
/// the watch to deliver the write, short enough that a status someone else
/// reset to an old value is repaired by the next reconcile after it.
const STALE_COPY_WINDOW: Duration = Duration::from_secs(30);

/// The last status write this process made per object (by uid): the
/// digests of the status it replaced and of the status it wrote.
#[derive(Default)]
struct RecentStatusWrites {
    by_uid: std::sync::Mutex<std::collections::HashMap<String, StatusWrite>>,
}

struct StatusWrite {
    before: u64,
    after: u64,
    at: std::time::Instant,
}

impl RecentStatusWrites {
    /// Whether writing `after` over `before` repeats a write made within
    /// the window. Each write explains one stale copy only.
    fn repeats(&self, uid: &str, before: u64, after: u64) -> bool {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let repeat = by_uid.get(uid).is_some_and(|w| {
            w.before == before && w.after == after && w.at.elapsed() < STALE_COPY_WINDOW
        });
        if repeat {
            by_uid.remove(uid);
        }
        repeat
    }

    fn wrote(&self, uid: String, before: u64, after: u64) {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        // Old entries explain nothing any more; dropping them keeps the map
        // to the objects written within the window.
        if by_uid.len() >= 1024 {
            by_uid.retain(|_, w| w.at.elapsed() < STALE_COPY_WINDOW);
        }
        by_uid.insert(
            uid,
            StatusWrite {
                before,
                after,
                at: std::time::Instant::now(),
            },
        );
    }
}

static RECENT_STATUS_WRITES: std::sync::LazyLock<RecentStatusWrites> =
    std::sync::LazyLock::new(RecentStatusWrites::default);

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
    fn a_status_write_explains_one_stale_copy_of_the_status_it_replaced() {
        let writes = RecentStatusWrites::default();
        let (old, new, other) = (1, 2, 3);
        assert!(!writes.repeats("u", old, new), "nothing written yet");
        writes.wrote("u".into(), old, new);
        assert!(!writes.repeats("v", old, new), "another object");
        assert!(
            !writes.repeats("u", other, new),
            "the status was changed by someone else since: write"
        );
        assert!(
            !writes.repeats("u", old, other),
            "a different status: write"
        );
        assert!(writes.repeats("u", old, new), "the stale copy: skip");
        assert!(
            !writes.repeats("u", old, new),
            "only once: a second stale-looking copy is written"
        );
    }

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
