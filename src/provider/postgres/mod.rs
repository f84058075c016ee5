//! Shared-server PostgreSQL backend.
