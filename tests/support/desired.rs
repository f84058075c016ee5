//! `DesiredDatabaseCluster`s for code that drives a provider or the name
//! builders directly, without the apiserver and the reconciler that would
//! resolve one from a DatabaseCluster (provider tests, property tests, the
//! postgres resync bench).
//!
//! [`desired_cluster`] starts from a cluster with no databases and no
//! users; a caller adds what it needs, or sets the struct's fields on the
//! result.

use bulkhead::api::DeletionPolicy;
use bulkhead::api::database_cluster::{DatabaseSpec, Privileges, ResolvedSize, UserSpec};
use bulkhead::api::environment::Tier;
use bulkhead::provider::{DesiredDatabaseCluster, Owner, generate_password};

/// A desired cluster under construction.
#[derive(Clone, Debug)]
pub struct Desired(DesiredDatabaseCluster);

/// A cluster named `external` at the provider, owned by the
/// DatabaseCluster of that name (uid `uid-<external>`) in namespace
/// `tests`, of the testing tier, smallest size, deleted with its object.
pub fn desired_cluster(external: &str) -> Desired {
    Desired(DesiredDatabaseCluster {
        owner: Owner {
            api_version: "bulkhead.dev/v1alpha1".into(),
            kind: "DatabaseCluster".into(),
            name: external.into(),
            uid: format!("uid-{external}"),
            namespace: Some("tests".into()),
        },
        namespace: "tests".into(),
        external_name: external.into(),
        environment: "test".into(),
        tier: Tier::Testing,
        organization: "org".into(),
        organization_slug: Some("org".into()),
        network: None,
        rotates_passwords: false,
        version: "15".into(),
        regions: vec![],
        size: ResolvedSize {
            cpus: 1,
            memory_mib: 256,
            storage_gib: 1,
            replicas: 1,
        },
        databases: vec![],
        users: vec![],
        passwords: Default::default(),
        deletion_policy: DeletionPolicy::Delete,
    })
}

impl Desired {
    /// The owning DatabaseCluster `namespace/name` with `uid`; the cluster's
    /// namespace follows.
    pub fn owned_by(mut self, namespace: &str, name: &str, uid: &str) -> Self {
        self.0.owner.namespace = Some(namespace.into());
        self.0.owner.name = name.into();
        self.0.owner.uid = uid.into();
        self.0.namespace = namespace.into();
        self
    }

    /// Environment `name` of `tier`.
    pub fn environment(mut self, name: &str, tier: Tier) -> Self {
        self.0.environment = name.into();
        self.0.tier = tier;
        self
    }

    /// The PostgreSQL major version.
    pub fn version(mut self, version: &str) -> Self {
        self.0.version = version.into();
        self
    }

    /// Adds database `name`, owned by user `owner` (the cluster's owner
    /// role when `None`).
    pub fn database(mut self, name: &str, owner: Option<&str>) -> Self {
        self.0.databases.push(DatabaseSpec {
            name: name.into(),
            owner: owner.map(str::to_string),
        });
        self
    }

    /// Adds user `name` with `privileges` on `databases`, and a generated
    /// password for it, as the reconciler keeps one for every user.
    pub fn user<S: AsRef<str>>(
        mut self,
        name: &str,
        databases: &[S],
        privileges: Privileges,
    ) -> Self {
        self.0.users.push(UserSpec {
            name: name.into(),
            databases: databases.iter().map(|d| d.as_ref().to_string()).collect(),
            privileges,
            connection_limit: None,
        });
        self.0.passwords.insert(name.into(), generate_password());
        self
    }

    /// Drops every password, for code that only plans names.
    pub fn without_passwords(mut self) -> Self {
        self.0.passwords.clear();
        self
    }

    /// The desired cluster.
    pub fn build(self) -> DesiredDatabaseCluster {
        self.0
    }
}
