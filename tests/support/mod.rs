//! Real components for integration tests, started once per test binary and
//! torn down when it exits (also on panic): the local Kubernetes control
//! plane and a PostgreSQL server.
//!
//! Each test binary uses a subset of these helpers, so unused ones are allowed.
#![allow(dead_code)]

pub mod cnpg;
pub mod controlplane;
pub mod desired;
pub mod fly;
pub mod helm;
pub mod objects;
pub mod postgres;
pub mod procfs;

use std::path::PathBuf;

/// Every YAML file under `examples/`, sorted by path.
pub fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![controlplane::repo().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read examples dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
