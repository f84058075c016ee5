//! The managed reconciler: the policy every kind and every provider shares.
//!
//! After Crossplane's managed reconciler: the provider's external client
//! knows how to look and act; this module decides when. The steps are
//! paused? → deleting? (deletion policy: delete or orphan) → create-pending
//! left over from a crash? → observe → create | update | nothing. The
//! finalizer goes on in the same write as the first bookkeeping
//! annotations (before a create, or when an existing object is first
//! observed), not in a write of its own. Controllers call [`converge`] from
//! `apply` and [`finalize`] from `cleanup` (kube-runtime's `finalizer`
//! helper runs cleanup and removes the finalizer), then write status with
//! [`patch_status`].
//!
//! The decisions themselves are pure and live in [`super::decision`]
//! (table-tested without an apiserver); [`converge`] and [`finalize`] only
//! execute them. Errors and backoff, status helpers and Events live in
//! sibling files and are re-exported here, so `reconcile::managed::X` stays
//! the one path callers use.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::decision::{
    DecisionInput, DeletionStep, MissingStep, Presence, Then, decide_deletion, when_exists,
    when_missing,
};
use crate::api::{ANNOTATION_CREATE_PENDING, ANNOTATION_EXTERNAL_NAME, set_condition};
use crate::api::{CONDITION_SYNCED, ConditionStatus};
use crate::provider::{ExternalClient, Observation, ProviderError, Readiness};
use crate::reasons;

pub use super::decision::Policies;
pub use super::errors::{Backoff, ErrorCategory, ReconcileError, error_action};
pub use super::events::{publish, publish_about, publish_failure};
pub use super::status::{
    ManagedResource, annotate, has_finalizer, patch_status, record, set_converged_conditions,
    set_error_conditions, wait_until, write_status,
};

/// Field manager for everything bulkhead writes with server-side apply.
pub const FIELD_MANAGER: &str = "bulkhead";

/// Deliberate crash points, for tests that prove a crash never creates twice.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// Exit right after the write that precedes the create (the finalizer
    /// and create-pending, or the external name when names are
    /// deterministic), before the provider is called.
    ExitAfterCreatePending,
    /// Exit right after the provider's create returned, before anything
    /// that follows it is written.
    ExitAfterCreate,
}

/// What the managed reconciler needs from the controller's context.
pub struct Managed<'a> {
    pub recorder: &'a Recorder,
    pub fail_point: Option<FailPoint>,
}

/// Result of converging: what the provider now reports.
#[derive(Debug)]
pub struct Converged<O> {
    pub observed: O,
    pub readiness: Readiness,
    pub created: bool,
    pub updated: bool,
}

/// The name the external object is found under: `proposed` (the name
/// bulkhead gives it) where bulkhead picks names; where the provider picks
/// them, the one recorded in `bulkhead.dev/external-name` after the create,
/// and `proposed` until then (the provider makes its name from it).
pub fn external_name_of<K: Resource>(obj: &K, proposed: &str, deterministic: bool) -> String {
    if deterministic {
        return proposed.to_string();
    }
    obj.annotations()
        .get(ANNOTATION_EXTERNAL_NAME)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| proposed.to_string())
}

/// Observes the external object and creates or updates it as policy allows,
/// under [`external_name_of`] the name bulkhead proposes.
pub async fn converge<K, C>(
    managed: &Managed<'_>,
    api: &Api<K>,
    obj: &K,
    client: &C,
    desired: &C::Desired,
    proposed_name: &str,
    policies: Policies,
) -> Result<Converged<C::Observed>, ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    C: ExternalClient + ?Sized,
{
    let external_name = &external_name_of(obj, proposed_name, client.deterministic_names());
    let name = obj.name_any();
    let observation = client.observe(desired).await?;
    let input = DecisionInput::from_annotations(
        Presence::of(&observation),
        obj.annotations(),
        external_name,
        policies.management,
        client.deterministic_names(),
    );
    // Matching on the observation (not on `decide`'s step) keeps the
    // provider's payload and the step in the same case by construction;
    // `when_missing`/`when_exists` are exactly what `decide` dispatches to.
    match observation {
        Observation::Missing => match when_missing(&input) {
            MissingStep::RefuseObserveOnly => Err(observe_only_missing(external_name)),
            MissingStep::RefuseCreatePendingUnresolved => {
                Err(create_pending_unresolved(external_name))
            }
            MissingStep::Create => {
                create(managed, api, obj, &name, client, desired, external_name).await
            }
        },
        Observation::Exists {
            up_to_date,
            drift,
            readiness,
            observed,
        } => {
            let step = when_exists(&input, up_to_date);
            if step.record_external_name {
                // A crash after the create: the object is there, so finish
                // the bookkeeping instead of creating again. Also records
                // the external name of an adopted object.
                record(api, obj, &created(external_name)).await?;
            } else if !has_finalizer(obj) {
                // Something exists at the provider, so deleting the object
                // must go through cleanup.
                record(api, obj, &[]).await?;
            }
            match step.then {
                Then::UpToDate | Then::ObserveOnly => Ok(Converged {
                    observed,
                    readiness,
                    created: false,
                    updated: false,
                }),
                Then::Update => {
                    let summary = drift.join("; ");
                    client.update(desired, &observed).await?;
                    info!(object = %name, external_name, drift = %summary, "updated external object");
                    publish(
                        managed.recorder,
                        obj,
                        EventType::Normal,
                        reasons::UPDATED,
                        "Update",
                        update_note(external_name, &summary),
                    )
                    .await;
                    let (observed, readiness) =
                        observe_existing(client, desired, external_name).await?;
                    Ok(Converged {
                        observed,
                        readiness,
                        created: false,
                        updated: true,
                    })
                }
            }
        }
    }
}

/// The bookkeeping of a finished create: the external name recorded and
/// no create pending.
fn created(external_name: &str) -> [(&'static str, Option<&str>); 2] {
    [
        (ANNOTATION_EXTERNAL_NAME, Some(external_name)),
        (ANNOTATION_CREATE_PENDING, None),
    ]
}

/// [`MissingStep::Create`]: create-pending, create, bookkeeping, Event.
async fn create<K, C>(
    managed: &Managed<'_>,
    api: &Api<K>,
    obj: &K,
    name: &str,
    client: &C,
    desired: &C::Desired,
    external_name: &str,
) -> Result<Converged<C::Observed>, ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    C: ExternalClient + ?Sized,
{
    // One write before the call: the finalizer (from here on something may
    // exist at the provider, so deletion must go through cleanup) and the
    // crash guard. With deterministic names the guard is the external name
    // itself: after a crash, `observe` looks under it and finds whether the
    // create happened, so it is recorded now and nothing is left to write
    // after the create. When the provider picks the name, `create-pending`
    // marks the create as started, and the name is recorded once known.
    let deterministic = client.deterministic_names();
    let before_name = external_name;
    let now = Timestamp::now().to_string();
    let before: &[(&str, Option<&str>)] = if deterministic {
        &created(external_name)
    } else {
        &[(ANNOTATION_CREATE_PENDING, Some(&now))]
    };
    let before: Vec<_> = before
        .iter()
        .copied()
        .filter(|(key, value)| obj.annotations().get(*key).map(String::as_str) != *value)
        .collect();
    record(api, obj, &before).await?;
    if managed.fail_point == Some(FailPoint::ExitAfterCreatePending) {
        warn!(object = %name, "fail point exit-after-create-pending: exiting");
        std::process::exit(17);
    }
    // A failure here is reported once as a Warning Event by the
    // controller (`publish_failure`), with its reason.
    let chosen = client.create_named(desired).await?;
    if managed.fail_point == Some(FailPoint::ExitAfterCreate) {
        warn!(object = %name, "fail point exit-after-create: exiting");
        std::process::exit(18);
    }
    let external_name = recorded_name(external_name, chosen.as_deref());
    if !deterministic || external_name != before_name {
        // The finalizer is on the object now: only the annotations change.
        annotate(api, name, &created(external_name)).await?;
    }
    info!(object = %name, external_name, "created external object");
    publish(
        managed.recorder,
        obj,
        EventType::Normal,
        reasons::CREATED,
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

/// The external name recorded after a create: the one the provider chose,
/// when it chose one, else the one asked for.
fn recorded_name<'a>(asked: &'a str, chosen: Option<&'a str>) -> &'a str {
    chosen.filter(|c| !c.is_empty()).unwrap_or(asked)
}

/// [`MissingStep::RefuseObserveOnly`]'s error.
fn observe_only_missing(external_name: &str) -> ReconcileError {
    ProviderError::terminal(
        reasons::EXTERNAL_MISSING,
        format!(
            "managementPolicy is ObserveOnly and the provider has no object named {external_name:?} to observe"
        ),
    )
    .into()
}

/// [`MissingStep::RefuseCreatePendingUnresolved`]'s error: says how a human
/// resolves it.
fn create_pending_unresolved(external_name: &str) -> ReconcileError {
    ProviderError::terminal(
        reasons::CREATE_PENDING_UNRESOLVED,
        format!(
            "a create was started but its result is unknown; check the provider for {external_name:?}, \
             set the {ANNOTATION_EXTERNAL_NAME} annotation if it exists, then remove {ANNOTATION_CREATE_PENDING}"
        ),
    )
    .into()
}

/// The note of the Updated Event: the drift, when the provider said what.
fn update_note(external_name: &str, summary: &str) -> String {
    if summary.is_empty() {
        format!("updated {external_name}")
    } else {
        format!("updated {external_name}: {summary}")
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
    proposed_name: &str,
    policies: Policies,
    orphan: F,
) -> Result<Action, ReconcileError>
where
    K: Resource<DynamicType = ()>,
    C: ExternalClient + ?Sized,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), ReconcileError>>,
{
    let external_name = &external_name_of(obj, proposed_name, client.deterministic_names());
    let step = decide_deletion(policies);
    execute_deletion(step, client, desired, orphan).await?;
    let (reason, note) = deletion_event(step, external_name);
    publish(
        managed.recorder,
        obj,
        EventType::Normal,
        reason,
        "Delete",
        note,
    )
    .await;
    Ok(Action::await_change())
}

/// The provider side of a [`DeletionStep`], apart from the Event so it can
/// be tested with a fake client.
async fn execute_deletion<C, F, Fut>(
    step: DeletionStep,
    client: &C,
    desired: &C::Desired,
    orphan: F,
) -> Result<(), ReconcileError>
where
    C: ExternalClient + ?Sized,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), ReconcileError>>,
{
    match step {
        DeletionStep::Delete => client.delete(desired).await?,
        DeletionStep::Orphan { .. } => {
            client.orphan(desired).await?;
            orphan().await?
        }
    }
    Ok(())
}

/// Reason and note of the Event recorded once a [`DeletionStep`] is done.
fn deletion_event(step: DeletionStep, external_name: &str) -> (&'static str, String) {
    match step {
        DeletionStep::Delete => (reasons::DELETED, format!("deleted {external_name}")),
        DeletionStep::Orphan { why } => (
            reasons::ORPHANED,
            format!("left {external_name} in place at the provider: {why}"),
        ),
    }
}

/// Every reconcile, in its own tracing span (kind, name, namespace, a
/// trace id, and the reason it ended with), so each log line it writes can
/// be traced to the object: see [`crate::telemetry::reconcile_span`].
///
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
    use tracing::Instrument;
    let span = crate::telemetry::reconcile_span(
        &K::kind(&()),
        &obj.name_any(),
        obj.namespace().as_deref(),
    );
    let steps = async {
        if crate::api::annotation_is_true(obj.meta(), crate::api::ANNOTATION_PAUSED) {
            return report_paused(obj.as_ref(), api).await;
        }
        // Without the finalizer, nothing of the object's exists at the
        // provider yet (it is added with the first bookkeeping write, before
        // the create or when an existing object is first observed), so there
        // is nothing to clean up: apply runs at once. kube-runtime's helper
        // would first add the finalizer in a write (and a reconcile) of its
        // own.
        if obj.meta().deletion_timestamp.is_none() && !has_finalizer(obj.as_ref()) {
            return apply(obj).await;
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
    };
    let result = steps.instrument(span.clone()).await;
    match &result {
        Ok(_) => crate::telemetry::reconcile_finished(&span, reasons::RECONCILE_SUCCESS, false),
        Err(e) => crate::telemetry::reconcile_finished(&span, e.reason(), true),
    }
    result
}

/// A paused object: only Synced=False/ReconcilePaused, until the
/// annotation changes.
async fn report_paused<K: ManagedResource>(
    obj: &K,
    api: &Api<K>,
) -> Result<Action, ReconcileError> {
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
    write_status(api, obj, status).await?;
    Ok(Action::await_change())
}

fn flatten_finalizer_error(e: kube::runtime::finalizer::Error<ReconcileError>) -> ReconcileError {
    use kube::runtime::finalizer::Error;
    match e {
        Error::ApplyFailed(e) | Error::CleanupFailed(e) => e,
        Error::AddFinalizer(e) | Error::RemoveFinalizer(e) => ReconcileError::Kube(e),
        other => ReconcileError::Finalizer(other.to_string()),
    }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::api::{DeletionPolicy, ManagementPolicy};

    #[test]
    fn the_recorded_name_is_used_only_where_the_provider_picks_names() {
        let mut org: crate::api::Organization = serde_json::from_value(serde_json::json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Organization",
            "metadata": {"name": "acme"}, "spec": {"slug": "acme"},
        }))
        .expect("organization");
        assert_eq!(
            external_name_of(&org, "acme", false),
            "acme",
            "until the create"
        );
        org.annotations_mut()
            .insert(ANNOTATION_EXTERNAL_NAME.into(), "acme-42".into());
        assert_eq!(
            external_name_of(&org, "acme", false),
            "acme-42",
            "Fly's slug"
        );
        assert_eq!(
            external_name_of(&org, "acme", true),
            "acme",
            "bulkhead's name"
        );
    }

    /// Calls the fake client saw, by kind.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    struct Calls {
        observe: u32,
        create: u32,
        update: u32,
        delete: u32,
    }

    /// An external client driven by a script of observations, recording
    /// every call (after crossplane-runtime's fake ExternalClient).
    #[derive(Default)]
    struct FakeClient {
        observations: Mutex<VecDeque<Observation<String>>>,
        delete_error: Option<&'static str>,
        calls: Mutex<Calls>,
    }

    impl FakeClient {
        fn observing(observations: Vec<Observation<String>>) -> Self {
            FakeClient {
                observations: Mutex::new(observations.into()),
                ..FakeClient::default()
            }
        }
        fn calls(&self) -> Calls {
            *self.calls.lock().unwrap_or_else(|p| p.into_inner())
        }
        fn count(&self, f: impl FnOnce(&mut Calls)) {
            f(&mut self.calls.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    #[async_trait]
    impl ExternalClient for FakeClient {
        type Desired = ();
        type Observed = String;

        async fn observe(&self, _: &()) -> Result<Observation<String>, ProviderError> {
            self.count(|c| c.observe += 1);
            self.observations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
                .ok_or_else(|| ProviderError::unavailable("fake: no observation scripted"))
        }
        async fn create(&self, _: &()) -> Result<(), ProviderError> {
            self.count(|c| c.create += 1);
            Ok(())
        }
        async fn update(&self, _: &(), _: &String) -> Result<(), ProviderError> {
            self.count(|c| c.update += 1);
            Ok(())
        }
        async fn delete(&self, _: &()) -> Result<(), ProviderError> {
            self.count(|c| c.delete += 1);
            match self.delete_error {
                Some(message) => Err(ProviderError::unavailable(message)),
                None => Ok(()),
            }
        }
    }

    fn exists(observed: &str) -> Observation<String> {
        Observation::Exists {
            up_to_date: true,
            drift: Vec::new(),
            readiness: Readiness::ready("up"),
            observed: observed.to_string(),
        }
    }

    #[tokio::test]
    async fn observe_existing_returns_what_the_provider_shows() {
        let client = FakeClient::observing(vec![exists("v2")]);
        let (observed, readiness) = observe_existing(&client, &(), "acme")
            .await
            .expect("exists");
        assert_eq!(observed, "v2");
        assert_eq!(readiness, Readiness::ready("up"));
        let want = Calls {
            observe: 1,
            ..Calls::default()
        };
        assert_eq!(client.calls(), want, "looks once, never writes");
    }

    #[tokio::test]
    async fn observe_existing_after_a_write_that_does_not_show_is_transient() {
        let client = FakeClient::observing(vec![Observation::Missing]);
        let e = observe_existing(&client, &(), "acme")
            .await
            .expect_err("missing after a write");
        assert_eq!(e.category(), ErrorCategory::Transient);
        assert_eq!(e.reason(), reasons::RECONCILE_ERROR);
        assert_eq!(
            e.to_string(),
            "acme was written but the provider does not show it yet"
        );
    }

    #[tokio::test]
    async fn deletion_steps_call_the_provider_or_orphan_never_both() {
        #[rustfmt::skip]
        let cases = [
            ("Delete + Full", DeletionPolicy::Delete, ManagementPolicy::Full, 1, false),
            ("Orphan + Full", DeletionPolicy::Orphan, ManagementPolicy::Full, 0, true),
            ("Delete + ObserveOnly", DeletionPolicy::Delete, ManagementPolicy::ObserveOnly, 0, true),
        ];
        for (name, deletion, management, deletes, orphaned) in cases {
            let client = FakeClient::default();
            let orphan_called = Mutex::new(false);
            let step = decide_deletion(Policies {
                deletion,
                management,
            });
            execute_deletion(step, &client, &(), || async {
                *orphan_called.lock().unwrap_or_else(|p| p.into_inner()) = true;
                Ok(())
            })
            .await
            .expect("no failure scripted");
            let want = Calls {
                delete: deletes,
                ..Calls::default()
            };
            assert_eq!(client.calls(), want, "case: {name}");
            assert_eq!(
                *orphan_called.lock().unwrap_or_else(|p| p.into_inner()),
                orphaned,
                "case: {name}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_delete_is_returned_with_its_category() {
        let client = FakeClient {
            delete_error: Some("connection refused"),
            ..FakeClient::default()
        };
        let e = execute_deletion(DeletionStep::Delete, &client, &(), || async {
            Err(ReconcileError::Finalizer("orphan must not run".into()))
        })
        .await
        .expect_err("delete fails");
        assert_eq!(e.category(), ErrorCategory::Unavailable);
        assert_eq!(client.calls().delete, 1);
    }

    #[test]
    fn deletion_events_name_what_happened_and_why() {
        assert_eq!(
            deletion_event(DeletionStep::Delete, "acme"),
            ("Deleted", "deleted acme".to_string())
        );
        let step = decide_deletion(Policies {
            deletion: DeletionPolicy::Delete,
            management: ManagementPolicy::ObserveOnly,
        });
        assert_eq!(
            deletion_event(step, "acme"),
            (
                "Orphaned",
                "left acme in place at the provider: managementPolicy is ObserveOnly".to_string()
            )
        );
    }

    #[test]
    fn refusals_are_terminal_with_their_reasons() {
        let e = observe_only_missing("acme");
        assert_eq!(e.category(), ErrorCategory::Terminal);
        assert_eq!(e.reason(), reasons::EXTERNAL_MISSING);
        assert_eq!(
            e.to_string(),
            "managementPolicy is ObserveOnly and the provider has no object named \"acme\" to observe"
        );
        let e = create_pending_unresolved("acme");
        assert_eq!(e.category(), ErrorCategory::Terminal);
        assert_eq!(e.reason(), reasons::CREATE_PENDING_UNRESOLVED);
        assert_eq!(
            e.to_string(),
            "a create was started but its result is unknown; check the provider for \"acme\", \
             set the bulkhead.dev/external-name annotation if it exists, then remove bulkhead.dev/create-pending"
        );
    }

    #[test]
    fn a_provider_chosen_name_is_recorded_instead_of_the_one_asked_for() {
        assert_eq!(recorded_name("acme", None), "acme");
        assert_eq!(recorded_name("acme", Some("acme-1")), "acme-1");
        assert_eq!(
            recorded_name("acme", Some("")),
            "acme",
            "an empty answer is no name"
        );
    }

    #[tokio::test]
    async fn create_named_defaults_to_no_chosen_name() {
        let client = FakeClient::default();
        assert_eq!(client.create_named(&()).await.expect("create"), None);
        assert_eq!(client.calls().create, 1, "the default calls create once");
    }

    #[test]
    fn update_note_carries_the_drift_when_known() {
        assert_eq!(update_note("acme", ""), "updated acme");
        assert_eq!(
            update_note("acme", "members; billing"),
            "updated acme: members; billing"
        );
    }
}
