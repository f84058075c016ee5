//! Kubernetes Events about reconciled objects.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::errors::ReconcileError;
use crate::api::CONDITION_SYNCED;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

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
    publish_about(recorder, obj, None, type_, reason, action, note).await;
}

/// [`publish`] with the object the Event is also about (`related`), such as
/// the Secret a token went into. The recorder folds Events with the same
/// reason, action and objects into one series that keeps the first note,
/// so naming the related object keeps one Event per object.
pub async fn publish_about<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    related: Option<ObjectReference>,
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
        secondary: related,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_on_a_char_boundary() {
        assert_eq!(truncate("short".to_string(), 10), "short");
        assert_eq!(truncate("abcdef".to_string(), 4), "abcd");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(truncate("aé".to_string(), 2), "a");
    }
}
