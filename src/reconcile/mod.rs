//! The one reconcile shape every kind uses (`managed`, executing the pure
//! policy in `decision`), and the reasons a user can see on conditions of
//! every kind.

pub mod decision;
mod errors;
mod events;
pub mod managed;
mod status;

pub use managed::{ErrorCategory, ReconcileError};

/// Condition reasons shared by every kind. Kind-specific reasons live next to
/// the kind in `api::*::reasons`.
pub mod reasons {
    /// Ready=True: the external object is serving.
    pub const AVAILABLE: &str = "Available";
    /// Ready=False while a create is under way.
    pub const CREATING: &str = "Creating";
    /// Ready=False while the object is being deleted.
    pub const DELETING: &str = "Deleting";
    /// Synced=True: the last reconcile succeeded.
    pub const RECONCILE_SUCCESS: &str = "ReconcileSuccess";
    /// Synced=False: the last reconcile failed (message says why).
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    /// Synced=False: bulkhead.dev/paused is "true".
    pub const RECONCILE_PAUSED: &str = "ReconcilePaused";
    /// Synced=False: the provider cannot be reached or refuses service.
    pub const PROVIDER_UNAVAILABLE: &str = "ProviderUnavailable";
    /// Synced=False: the provider's credentials Secret is missing or unusable.
    pub const CREDENTIALS_UNAVAILABLE: &str = "CredentialsUnavailable";
    /// Synced=False: ObserveOnly and nothing exists to observe.
    pub const EXTERNAL_MISSING: &str = "ExternalObjectMissing";
    /// Synced=False: a create may have happened but cannot be confirmed.
    pub const CREATE_PENDING_UNRESOLVED: &str = "CreatePendingUnresolved";
    /// Synced=False: the spec asks for something the provider cannot do.
    pub const UNSUPPORTED: &str = "Unsupported";
    /// Synced=False: the spec is invalid in a way the schema cannot say.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Ready=False: a dependency is not ready yet.
    pub const WAITING: &str = "Waiting";
    /// Ready=True with ObserveOnly: observed, never written.
    pub const OBSERVED: &str = "Observed";
    /// Synced=False/Ready=False: the isolation policy stops provisioning.
    pub const ISOLATION_VIOLATED: &str = "IsolationViolated";
}
