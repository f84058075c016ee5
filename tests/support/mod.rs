//! Real components for integration tests, started once per test binary and
//! torn down when it exits (also on panic): the local Kubernetes control
//! plane and a PostgreSQL server.
//!
//! Each test binary uses a subset of these helpers, so unused ones are allowed.
#![allow(dead_code)]

pub mod controlplane;
pub mod postgres;
