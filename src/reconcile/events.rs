//! Kubernetes Events about reconciled objects.

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
