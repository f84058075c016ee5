//! How a reconcile fails, and so what happens next: error categories, the
//! per-object backoff and the requeue after a failure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;

use crate::provider::ProviderError;
use crate::reasons;

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
}
