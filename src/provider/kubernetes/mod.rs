//! In-cluster backend: needs no credentials, so it is the default. An
//! Organization is a tenancy boundary (RBAC), an Environment its labelled
//! namespaces with access, network policy, quota and config. Its
//! DatabaseClusters are CloudNativePG Clusters (`provider::cloudnativepg`).

pub mod cache;
pub mod children;
pub mod environment;
pub mod organization;

pub use children::{Child, Children, LABEL_OWNER_UID, is_owned_by, merge};
pub use environment::KubernetesEnvironments;
pub use organization::KubernetesOrganizations;
