//! In-cluster backend: needs no credentials, so it is the default. An
//! Organization is a tenancy boundary (RBAC), an Environment its labelled
//! namespaces with access, network policy, quota and config, and a
//! DatabaseCluster a StatefulSet running PostgreSQL.

pub mod children;
pub mod database_cluster;
pub mod environment;
pub mod organization;

pub use children::{Child, Children, LABEL_OWNER_UID};
pub use database_cluster::KubernetesDatabaseClusters;
pub use environment::KubernetesEnvironments;
pub use organization::KubernetesOrganizations;
