//! The managed reconciler: the policy every kind and every provider shares.
//!
//! After Crossplane's managed reconciler: the provider's external client
//! knows how to look and act; this module decides when. The steps are
//! paused? → deleting? (deletion policy: delete or orphan) → finalizer →
//! create-pending left over from a crash? → observe → create | update |
//! nothing. Controllers call [`converge`] inside the `Apply` branch of
//! kube-runtime's `finalizer` helper and [`finalize`] inside `Cleanup`, then
//! write status with [`patch_status`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use super::reasons;
use crate::api::{
    ANNOTATION_CREATE_PENDING, ANNOTATION_EXTERNAL_NAME, CONDITION_READY, CONDITION_SYNCED,
    ConditionStatus, DeletionPolicy, ManagementPolicy, set_condition,
};
use crate::provider::{ExternalClient, Observation, ProviderError, Readiness};

/// Field manager for everything bulkhead writes with server-side apply.
pub const FIELD_MANAGER: &str = "bulkhead";

/// How a reconcile failed, and so what happens next.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Kubernetes API failed (conflict, timeout, …): retry with backoff.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A provider call failed; its category decides.
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// A dependency is not there or not ready: wait and look again.
    #[error("{message}")]
    Waiting {
        reason: &'static str,
        message: String,
    },
    /// The spec is wrong in a way the schema cannot say: wait for a change.
    #[error("{message}")]
    Invalid {
        reason: &'static str,
        message: String,
    },
    /// The finalizer helper failed around our code.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// What kind of failure, for backoff, conditions and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCategory {
    Transient,
    Terminal,
    Unavailable,
    Waiting,
}

impl ErrorCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::Transient => "transient",
            ErrorCategory::Terminal => "terminal",
            ErrorCategory::Unavailable => "unavailable",
            ErrorCategory::Waiting => "waiting",
        }
    }
}

impl ReconcileError {
    pub fn waiting(reason: &'static str, message: impl Into<String>) -> Self {
        ReconcileError::Waiting {
            reason,
            message: message.into(),
        }
    }
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        ReconcileError::Invalid {
            reason,
            message: message.into(),
        }
    }

    pub fn category(&self) -> ErrorCategory {
        match self {
            ReconcileError::Kube(_) | ReconcileError::Finalizer(_) => ErrorCategory::Transient,
            ReconcileError::Provider(ProviderError::Transient { .. }) => ErrorCategory::Transient,
            ReconcileError::Provider(ProviderError::Terminal { .. }) => ErrorCategory::Terminal,
            ReconcileError::Provider(ProviderError::Unavailable { .. }) => {
                ErrorCategory::Unavailable
            }
            ReconcileError::Waiting { .. } => ErrorCategory::Waiting,
            ReconcileError::Invalid { .. } => ErrorCategory::Terminal,
        }
    }

    /// CamelCase reason for the Synced condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) | ReconcileError::Finalizer(_) => reasons::RECONCILE_ERROR,
            ReconcileError::Provider(e) => e.reason(),
            ReconcileError::Waiting { reason, .. } | ReconcileError::Invalid { reason, .. } => {
                reason
            }
        }
    }
}

/// Per-object exponential backoff for failed reconciles: 1 s doubling to a
/// cap, reset by the next success. Keyed by object UID.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_secs(1);
    pub const CAP: Duration = Duration::from_secs(300);

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = Self::BASE
            .saturating_mul(2u32.saturating_pow(*n))
            .min(Self::CAP);
        *n = n.saturating_add(1);
        delay
    }

    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Failures in a row for this key.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// Deliberate crash points, for tests that prove a crash never creates twice.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// Exit right after the create-pending annotation is written.
    ExitAfterCreatePending,
    /// Exit right after the provider's create returned, before the
    /// annotation is cleared.
    ExitAfterCreate,
}

/// What the managed reconciler needs from the controller's context.
pub struct Managed<'a> {
    pub recorder: &'a Recorder,
    pub fail_point: Option<FailPoint>,
}

/// Policies of the object being reconciled.
#[derive(Clone, Copy, Debug)]
pub struct Policies {
    pub deletion: DeletionPolicy,
    pub management: ManagementPolicy,
}

/// Result of converging: what the provider now reports.
#[derive(Debug)]
pub struct Converged<O> {
    pub observed: O,
    pub readiness: Readiness,
    pub created: bool,
    pub updated: bool,
}

/// Observes the external object and creates or updates it as policy allows.
pub async fn converge<K, C>(
    managed: &Managed<'_>,
    api: &Api<K>,
    obj: &K,
    client: &C,
    desired: &C::Desired,
    external_name: &str,
    policies: Policies,
) -> Result<Converged<C::Observed>, ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    C: ExternalClient + ?Sized,
{
    let name = obj.name_any();
    let pending = obj.annotations().contains_key(ANNOTATION_CREATE_PENDING);
    match client.observe(desired).await? {
        Observation::Missing => {
            if policies.management == ManagementPolicy::ObserveOnly {
                return Err(ProviderError::terminal(
                    reasons::EXTERNAL_MISSING,
                    format!(
                        "managementPolicy is ObserveOnly and the provider has no object named {external_name:?} to observe"
                    ),
                )
                .into());
            }
            if pending && !client.deterministic_names() {
                return Err(ProviderError::terminal(
                    reasons::CREATE_PENDING_UNRESOLVED,
                    format!(
                        "a create was started but its result is unknown; check the provider for {external_name:?}, \
                         set the {ANNOTATION_EXTERNAL_NAME} annotation if it exists, then remove {ANNOTATION_CREATE_PENDING}"
                    ),
                )
                .into());
            }
            // Written before the call so that a crash in between is seen by
            // the next reconcile (which observes first and never creates
            // blindly).
            annotate(
                api,
                &name,
                &[(
                    ANNOTATION_CREATE_PENDING,
                    Some(&Timestamp::now().to_string()),
                )],
            )
            .await?;
            if managed.fail_point == Some(FailPoint::ExitAfterCreatePending) {
                warn!(object = %name, "fail point exit-after-create-pending: exiting");
                std::process::exit(17);
            }
            // A failure here is reported once as a Warning Event by the
            // controller (`publish_failure`), with its reason.
            client.create(desired).await?;
            if managed.fail_point == Some(FailPoint::ExitAfterCreate) {
                warn!(object = %name, "fail point exit-after-create: exiting");
                std::process::exit(18);
            }
            annotate(
                api,
                &name,
                &[
                    (ANNOTATION_CREATE_PENDING, None),
                    (ANNOTATION_EXTERNAL_NAME, Some(external_name)),
                ],
            )
            .await?;
            info!(object = %name, external_name, "created external object");
            publish(
                managed.recorder,
                obj,
                EventType::Normal,
                "Created",
                "Create",
                format!("created {external_name}"),
            )
            .await;
            let (observed, readiness) = observe_existing(client, desired, external_name).await?;
            Ok(Converged {
                observed,
                readiness,
                created: true,
                updated: false,
            })
        }
        Observation::Exists {
            up_to_date,
            drift,
            readiness,
            observed,
        } => {
            if pending
                || obj
                    .annotations()
                    .get(ANNOTATION_EXTERNAL_NAME)
                    .map(String::as_str)
                    != Some(external_name)
            {
                // A crash after the create: the object is there, so finish
                // the bookkeeping instead of creating again. Also records
                // the external name of an adopted object.
                if policies.management == ManagementPolicy::Full || !pending {
                    annotate(
                        api,
                        &name,
                        &[
                            (ANNOTATION_CREATE_PENDING, None),
                            (ANNOTATION_EXTERNAL_NAME, Some(external_name)),
                        ],
                    )
                    .await?;
                }
            }
            if up_to_date || policies.management == ManagementPolicy::ObserveOnly {
                return Ok(Converged {
                    observed,
                    readiness,
                    created: false,
                    updated: false,
                });
            }
            let summary = drift.join("; ");
            client.update(desired, &observed).await?;
            info!(object = %name, external_name, drift = %summary, "updated external object");
            publish(
                managed.recorder,
                obj,
                EventType::Normal,
                "Updated",
                "Update",
                if summary.is_empty() {
                    format!("updated {external_name}")
                } else {
                    format!("updated {external_name}: {summary}")
                },
            )
            .await;
            let (observed, readiness) = observe_existing(client, desired, external_name).await?;
            Ok(Converged {
                observed,
                readiness,
                created: false,
                updated: true,
            })
        }
    }
}

async fn observe_existing<C: ExternalClient + ?Sized>(
    client: &C,
    desired: &C::Desired,
    external_name: &str,
) -> Result<(C::Observed, Readiness), ReconcileError> {
    match client.observe(desired).await? {
        Observation::Exists {
            observed,
            readiness,
            ..
        } => Ok((observed, readiness)),
        Observation::Missing => Err(ProviderError::transient(
            reasons::RECONCILE_ERROR,
            format!("{external_name} was written but the provider does not show it yet"),
        )
        .into()),
    }
}

/// Deletes or orphans the external object, as the deletion policy says.
/// `orphan` detaches in-cluster children (owner references) so garbage
/// collection leaves them.
pub async fn finalize<K, C, F, Fut>(
    managed: &Managed<'_>,
    obj: &K,
    client: &C,
    desired: &C::Desired,
    external_name: &str,
    policies: Policies,
    orphan: F,
) -> Result<Action, ReconcileError>
where
    K: Resource<DynamicType = ()>,
    C: ExternalClient + ?Sized,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), ReconcileError>>,
{
    if policies.deletion == DeletionPolicy::Delete && policies.management == ManagementPolicy::Full
    {
        client.delete(desired).await?;
        publish(
            managed.recorder,
            obj,
            EventType::Normal,
            "Deleted",
            "Delete",
            format!("deleted {external_name}"),
        )
        .await;
    } else {
        orphan().await?;
        let why = if policies.management == ManagementPolicy::ObserveOnly {
            "managementPolicy is ObserveOnly"
        } else {
            "deletionPolicy is Orphan"
        };
        publish(
            managed.recorder,
            obj,
            EventType::Normal,
            "Orphaned",
            "Delete",
            format!("left {external_name} in place at the provider: {why}"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// A bulkhead kind, as the shared reconcile steps need it: its status and
/// the conditions inside.
pub trait ManagedResource:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    type Status: Default + Clone + Serialize + PartialEq + Send + Sync;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
}

/// The first steps of every reconcile: a paused object only reports
/// Synced=False/ReconcilePaused; otherwise kube-runtime's finalizer helper
/// adds the finalizer and runs `apply`, or `cleanup` once deleting.
pub async fn reconcile_managed<K, FA, FC, FutA, FutC>(
    obj: std::sync::Arc<K>,
    api: &Api<K>,
    apply: FA,
    cleanup: FC,
) -> Result<Action, ReconcileError>
where
    K: ManagedResource,
    FA: FnOnce(std::sync::Arc<K>) -> FutA,
    FC: FnOnce(std::sync::Arc<K>) -> FutC,
    FutA: std::future::Future<Output = Result<Action, ReconcileError>>,
    FutC: std::future::Future<Output = Result<Action, ReconcileError>>,
{
    if crate::api::annotation_is_true(obj.meta(), crate::api::ANNOTATION_PAUSED) {
        let mut status = obj.status().cloned().unwrap_or_default();
        set_condition(
            K::conditions_mut(&mut status),
            CONDITION_SYNCED,
            ConditionStatus::False,
            reasons::RECONCILE_PAUSED,
            format!("{} is \"true\"", crate::api::ANNOTATION_PAUSED),
            obj.meta().generation,
            Timestamp::now(),
        );
        write_status(api, obj.as_ref(), status).await?;
        return Ok(Action::await_change());
    }
    kube::runtime::finalizer::finalizer(api, crate::api::FINALIZER, obj, |event| async {
        match event {
            kube::runtime::finalizer::Event::Apply(o) => apply(o).await,
            kube::runtime::finalizer::Event::Cleanup(o) => {
                let (kind, name) = (K::kind(&()).into_owned(), o.name_any());
                // Status is not written while deleting, so the log is
                // where a stuck deletion shows (retried with backoff).
                cleanup(o).await.inspect_err(|e| {
                    warn!(kind, name, reason = e.reason(), error = %e, "cleanup failed");
                })
            }
        }
    })
    .await
    .map_err(flatten_finalizer_error)
}

fn flatten_finalizer_error(e: kube::runtime::finalizer::Error<ReconcileError>) -> ReconcileError {
    use kube::runtime::finalizer::Error;
    match e {
        Error::ApplyFailed(e) | Error::CleanupFailed(e) => e,
        Error::AddFinalizer(e) | Error::RemoveFinalizer(e) => ReconcileError::Kube(e),
        other => ReconcileError::Finalizer(other.to_string()),
    }
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

/// Ends a reconcile. On success: writes status, resets the object's backoff
/// and looks again after `Ok(wait)`. On failure: records a Warning Event if
/// the failure is new, sets Synced (and Ready) False with its reason, writes
/// status, and returns the error so `error_policy` backs off.
pub async fn finish<K: ManagedResource>(
    recorder: &Recorder,
    backoff: &Backoff,
    api: &Api<K>,
    obj: &K,
    mut status: K::Status,
    result: Result<Duration, ReconcileError>,
) -> Result<Action, ReconcileError> {
    match result {
        Ok(wait) => {
            write_status(api, obj, status).await?;
            backoff.reset(&obj.uid().unwrap_or_default());
            Ok(Action::requeue(wait))
        }
        Err(e) => {
            let mut before = obj.status().cloned().unwrap_or_default();
            publish_failure(recorder, obj, K::conditions_mut(&mut before), &e).await;
            set_error_conditions(K::conditions_mut(&mut status), &e, obj.meta().generation);
            write_status(api, obj, status).await?;
            Err(e)
        }
    }
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
    let mut annotations = serde_json::Map::new();
    for (key, value) in changes {
        annotations.insert(
            key.to_string(),
            value.map_or(serde_json::Value::Null, |v| json!(v)),
        );
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
    )
    .await?;
    Ok(())
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

/// Records a Kubernetes Event about `obj`. Event failures are logged, never
/// fatal: an Event is a courtesy, the condition is the contract.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate(note, 1000)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, reason, "could not record event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
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

/// Records a Warning event when a reconcile fails in a new way (the Synced
/// reason or message differs from what status already says), so retries of
/// the same failure do not flood the Events.
pub async fn publish_failure<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    before: &[Condition],
    error: &ReconcileError,
) {
    let message = error.to_string();
    let known = crate::api::find_condition(before, CONDITION_SYNCED)
        .is_some_and(|c| c.status == "False" && c.reason == error.reason() && c.message == message);
    if !known {
        // Logged once when a failure starts or changes, like the Event;
        // messages are built never to carry secret material.
        warn!(
            kind = %K::kind(&()),
            name = %obj.name_any(),
            namespace = obj.namespace().as_deref().unwrap_or(""),
            reason = error.reason(),
            category = error.category().as_str(),
            error = %message,
            "reconcile failed"
        );
        publish(
            recorder,
            obj,
            EventType::Warning,
            error.reason(),
            "Reconcile",
            message,
        )
        .await;
    }
}

/// The requeue after a failed reconcile: backoff for transient and
/// unavailable errors, a slow look for terminal ones (a spec change
/// triggers a reconcile anyway), a short wait for dependencies.
pub fn error_action(backoff: &Backoff, key: &str, error: &ReconcileError) -> Action {
    match error.category() {
        ErrorCategory::Transient | ErrorCategory::Unavailable => {
            Action::requeue(backoff.next_delay(key))
        }
        ErrorCategory::Waiting => Action::requeue(
            Duration::from_secs(15).min(backoff.next_delay(key).max(Duration::from_secs(2))),
        ),
        ErrorCategory::Terminal => Action::requeue(Duration::from_secs(600)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| b.next_delay("uid").as_secs()).collect();
        assert_eq!(&delays[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*delays.last().unwrap_or(&0), 300, "capped");
        assert_eq!(b.next_delay("other").as_secs(), 1, "per object");
        b.reset("uid");
        assert_eq!(b.next_delay("uid").as_secs(), 1, "reset on success");
    }

    #[test]
    fn error_categories_map_to_reasons() {
        let e: ReconcileError = ProviderError::unavailable("connection refused").into();
        assert_eq!(e.category(), ErrorCategory::Unavailable);
        assert_eq!(e.reason(), reasons::PROVIDER_UNAVAILABLE);
        let e = ReconcileError::invalid(reasons::INVALID_SPEC, "bad");
        assert_eq!(e.category(), ErrorCategory::Terminal);
        assert_eq!(e.reason(), "InvalidSpec");
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
