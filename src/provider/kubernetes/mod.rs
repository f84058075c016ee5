//! In-cluster backend: needs no credentials.
