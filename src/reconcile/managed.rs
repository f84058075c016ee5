//! Managed reconciler.
