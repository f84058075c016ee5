//! Local PostgreSQL server.
