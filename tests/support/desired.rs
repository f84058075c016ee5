//! `DesiredDatabaseCluster`s for code that drives a provider or the name
//! builders directly, without the apiserver and the reconciler that would
//! resolve one from a DatabaseCluster (provider tests, property tests, the
//! postgres resync bench).
//!
//! [`desired_cluster`] starts from a cluster with no databases and no
//! users; a caller adds what it needs, or sets the struct's fields on the
//! result.

use bulkhead::api::database_cluster::{DatabaseSpec, Privileges, UserSpec};
use bulkhead::api::environment::Tier;
use bulkhead::provider::{DesiredDatabaseCluster, generate_password};

/// A desired cluster under construction.
#[derive(Clone, Debug)]
pub struct Desired(DesiredDatabaseCluster);

/// A cluster named `external` at the provider, owned by the
/// DatabaseCluster of that name (uid `uid-<external>`) in namespace
/// `tests`, of the testing tier, smallest size, deleted with its object.
pub fn desired_cluster(external: &str) -> Desired {
    let mut d = bulkhead::provider::test_desired(external);
    d.owner.name = external.into();
    d.owner.uid = format!("uid-{external}");
    d.owner.namespace = Some("tests".into());
    d.namespace = "tests".into();
    d.environment = "test".into();
    d.tier = Tier::Testing;
    d.version = "15".into();
    Desired(d)
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
