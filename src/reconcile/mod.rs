//! The one reconcile shape every kind uses (`managed`, executing the pure
//! policy in `decision`), and the reasons a user can see on conditions of
//! every kind.

pub mod decision;
mod errors;
mod events;
pub mod managed;
mod status;

pub use managed::{ErrorCategory, ReconcileError};
