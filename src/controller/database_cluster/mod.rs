//! DatabaseCluster controller: finds its Environment, names the cluster
//! with the Environment's suffix, keeps generated passwords in a Secret it
//! owns (rotating them on schedule), converges the provider, copies from a
//! source cluster when asked, and publishes the connection Secret.

mod copy;
mod credentials;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;

use self::copy::copy_if_asked;
pub use self::copy::effective_sanitize;
pub use self::credentials::credentials_secret;
use self::credentials::{
    Passwords, apply_secret, connection_secret_child, credentials_secret_child, plan_passwords,
    read_own_secret,
};
use super::{
    Context, is_ready, owner_of, related_stream, related_trigger, run_controller, trigger_stream,
};
use crate::api::database_cluster::{CONDITION_PROVISIONED, ReplicaStatus};
use crate::api::{
    ANNOTATION_EXTERNAL_NAME, CONDITION_READY, ConditionStatus, DatabaseCluster, Environment,
    LABEL_ENVIRONMENT, ManagementPolicy, Organization, ProviderSpec, is_condition_true,
    set_condition,
};
use crate::provider::kubernetes::cache::OwnerScope;
use crate::provider::kubernetes::children;
use crate::provider::{DatabaseClusterClient, DesiredDatabaseCluster, Secret};
use crate::reasons;
use crate::reconcile::managed::{
    Policies, ReconcileError, converge, finalize, finish, reconcile_managed,
    set_converged_conditions, wait_until,
};

const KIND: &str = "DatabaseCluster";
pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let client = ctx.watch_client.clone();
    let (reader, stream) = trigger_stream(Api::<DatabaseCluster>::all(client.clone()));
    ctx.track_sync(reader.clone());
    let by_env = reader.clone();
    let env_ctx = ctx.clone();
    // CloudNativePG's Clusters and Databases: a status change (Ready) or a
    // change by someone else (drift) wakes the owning DatabaseCluster,
    // through the child cache (whose watch backs off while CloudNativePG is
    // not installed and starts working once its CRDs are). No cluster-wide
    // Secret watch: the operator holds no right to read Secrets outside its
    // environments' namespaces (see the chart's RBAC); drift of the Secrets
    // it writes is repaired at resync.
    let controller = Controller::for_stream(stream, reader).reconcile_on(
        ctx.children
            .owner_changes::<DatabaseCluster>(OwnerScope::Namespaced),
    );
    let controller = controller
        // An Environment becoming ready (or changing suffix) requeues the
        // DatabaseClusters in its namespaces.
        .watches_stream(
            related_stream(Api::<Environment>::all(client), |e: &Environment| {
                related_trigger(e, is_ready(e.status.as_ref().map(|s| &s.conditions)))
            }),
            move |env| {
                env_ctx.saw_environment(&env);
                let namespaces = env.namespaces();
                by_env
                    .state()
                    .into_iter()
                    .filter(|d| d.namespace().is_some_and(|ns| namespaces.contains(&ns)))
                    .map(|d| ObjectRef::from_obj(d.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    run_controller(controller, ctx, shutdown, reconcile)
}

pub async fn reconcile(
    dbc: Arc<DatabaseCluster>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    let api: Api<DatabaseCluster> =
        Api::namespaced(ctx.client.clone(), &dbc.namespace().unwrap_or_default());
    reconcile_managed(dbc, &api, |o| apply(o, &api, &ctx), |o| cleanup(o, &ctx)).await
}

/// The Environment a DatabaseCluster belongs to: the one that owns its
/// namespace, as the namespace's `bulkhead.dev/environment` label says.
/// Only the operator writes that label (namespaces are cluster-scoped, out
/// of a tenant's reach), so nothing in the namespaced object can move it to
/// another Environment; `spec.environmentRef`, when set, must agree.
pub async fn find_environment(
    dbc: &DatabaseCluster,
    ctx: &Context,
) -> Result<Environment, ReconcileError> {
    let ns = dbc.namespace().unwrap_or_default();
    let no_environment = || {
        ReconcileError::waiting(
            reasons::NO_ENVIRONMENT,
            format!(
                "no Environment owns namespace {ns}; add it to an Environment's spec.namespaces"
            ),
        )
    };
    // Both from caches: the namespace from the child cache (which watches
    // every namespace), the Environment from its controller's.
    let namespace = ctx
        .children
        .get(children::NAMESPACE, None, &ns)
        .await?
        .ok_or_else(no_environment)?;
    let owner = namespace
        .pointer("/metadata/labels")
        .and_then(|l| l.get(LABEL_ENVIRONMENT))
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(no_environment)?;
    let env = ctx
        .environment(&owner)
        .await?
        .filter(|e| e.namespaces().contains(&ns))
        .ok_or_else(no_environment)?;
    let env = Environment::clone(&env);
    if let Some(r) = &dbc.spec.environment_ref
        && r.name != owner
    {
        return Err(ReconcileError::invalid(
            reasons::ENVIRONMENT_MISMATCH,
            format!(
                "spec.environmentRef names Environment {}, but namespace {ns} belongs to Environment {owner}; a DatabaseCluster belongs to the Environment of its namespace",
                r.name
            ),
        ));
    }
    Ok(env)
}

/// Where an Environment's databases live: its `databaseProvider`, else its
/// Organization's provider. Only cluster-scoped objects decide this.
async fn provider_spec(env: &Environment, ctx: &Context) -> Result<ProviderSpec, ReconcileError> {
    if let Some(p) = &env.spec.database_provider {
        return Ok(p.clone());
    }
    let org = Api::<Organization>::all(ctx.client.clone())
        .get_opt(&env.spec.organization_ref.name)
        .await?
        .ok_or_else(|| {
            ReconcileError::waiting(
                reasons::ENVIRONMENT_NOT_READY,
                format!(
                    "Organization {} of Environment {} does not exist",
                    env.spec.organization_ref.name,
                    env.name_any()
                ),
            )
        })?;
    Ok(org.spec.provider.clone())
}

fn desired_for(
    dbc: &DatabaseCluster,
    env: &Environment,
    org: &str,
    passwords: BTreeMap<String, Secret>,
) -> DesiredDatabaseCluster {
    let tier = env.spec.tier;
    DesiredDatabaseCluster {
        owner: owner_of(dbc),
        namespace: dbc.namespace().unwrap_or_default(),
        external_name: format!("{}{}", dbc.name_any(), env.suffix()),
        environment: env.name_any(),
        tier,
        organization: org.to_string(),
        organization_slug: env
            .status
            .as_ref()
            .and_then(|s| s.organization_slug.clone()),
        network: env.network_name(),
        rotates_passwords: dbc.spec.password_rotation.is_some(),
        version: dbc.spec.version.clone(),
        regions: dbc.spec.regions.clone(),
        size: dbc.resolved_size(tier == crate::api::Tier::Production),
        databases: dbc.spec.databases.clone(),
        users: dbc.spec.users.clone(),
        passwords,
        deletion_policy: dbc.spec.deletion_policy,
    }
}

/// Where a cluster lives: its Environment, that Environment's database
/// provider and the provider's client.
pub(super) struct Placement {
    env: Environment,
    provider: ProviderSpec,
    client: Arc<dyn DatabaseClusterClient>,
}

/// Step 1, dereference: the Environment of the cluster's namespace (Ready
/// unless `require_ready` is false, as for cleanup), its provider, a client.
async fn dereference(
    dbc: &DatabaseCluster,
    ctx: &Context,
    require_ready: bool,
) -> Result<Placement, ReconcileError> {
    let env = find_environment(dbc, ctx).await?;
    if require_ready
        && !env
            .status
            .as_ref()
            .is_some_and(|s| is_condition_true(&s.conditions, CONDITION_READY))
    {
        return Err(ReconcileError::waiting(
            reasons::ENVIRONMENT_NOT_READY,
            format!("waiting for Environment {} to become Ready", env.name_any()),
        ));
    }
    let provider = provider_spec(&env, ctx).await?;
    let client = ctx.database_clusters(&provider).await?;
    Ok(Placement {
        env,
        provider,
        client,
    })
}

/// Step 2, read: the passwords the credentials Secret holds (refusing a
/// Secret of that name bulkhead did not make), planned for this reconcile.
async fn read_passwords(
    dbc: &DatabaseCluster,
    ctx: &Context,
    now: Timestamp,
) -> Result<Passwords, ReconcileError> {
    let existing = read_own_secret(
        dbc,
        ctx,
        &credentials_secret(&dbc.name_any()),
        PASSWORDS_ROLE,
    )
    .await?;
    Ok(plan_passwords(dbc, existing.as_ref(), now))
}

/// Step 3, build: the provider's desired state. Computes, never writes.
fn build(
    dbc: &DatabaseCluster,
    placement: &Placement,
    passwords: &Passwords,
) -> DesiredDatabaseCluster {
    desired_for(
        dbc,
        &placement.env,
        &placement.env.spec.organization_ref.name,
        passwords.passwords.clone(),
    )
}

/// The passwords the backend issued to the declared users (rotating them
/// first when `rotate`); empty for a backend that takes bulkhead's.
async fn issued_passwords(
    client: &dyn DatabaseClusterClient,
    desired: &DesiredDatabaseCluster,
    rotate: bool,
) -> Result<BTreeMap<String, Secret>, ReconcileError> {
    let mut issued = BTreeMap::new();
    for user in &desired.users {
        match client.issued_password(desired, &user.name, rotate).await? {
            Some(password) => issued.insert(user.name.clone(), password),
            None => return Ok(BTreeMap::new()),
        };
    }
    Ok(issued)
}

/// What the generated-passwords Secret is, in conflict messages.
const PASSWORDS_ROLE: &str = "generated passwords";
/// What the connection Secret is, in conflict messages.
const CONNECTION_ROLE: &str = "connection Secret (spec.writeConnectionSecretToRef)";

async fn apply(
    dbc: Arc<DatabaseCluster>,
    api: &Api<DatabaseCluster>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let now = Timestamp::now();
    let generation = dbc.metadata.generation;
    let mut status = dbc.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let policies = Policies {
        deletion: dbc.spec.deletion_policy,
        management: dbc.spec.management_policy,
    };

    let result: Result<(), ReconcileError> = async {
        let placement = dereference(&dbc, ctx, true).await?;
        let passwords = read_passwords(&dbc, ctx, now).await?;
        let desired = build(&dbc, &placement, &passwords);
        status.external_name = Some(desired.external_name.clone());
        status.provider = Some(placement.provider.type_.to_string());
        status.tier = Some(placement.env.spec.tier.as_str().to_string());
        status.environment = Some(placement.env.name_any());
        // Step 4, store the passwords before the provider is given them: a
        // crash in between must not leave users with passwords nobody has.
        if passwords.changed {
            let child = credentials_secret_child(&dbc, &passwords);
            apply_secret(&dbc, ctx, &child, PASSWORDS_ROLE).await?;
        }
        // Step 5, converge the provider (the shared managed-resource policy).
        let converged = converge(
            &ctx.managed(),
            api,
            dbc.as_ref(),
            placement.client.as_ref(),
            &desired,
            &desired.external_name,
            policies,
        )
        .await?;
        let observed = &converged.observed;
        status.replicas = Some(ReplicaStatus {
            desired: observed.replicas_desired,
            ready: observed.replicas_ready,
        });
        status.version = observed.version.clone();
        status.endpoint = observed.endpoint.clone();
        status.password_rotated_at = Some(Time(passwords.generated_at));
        set_condition(
            &mut status.conditions,
            CONDITION_PROVISIONED,
            ConditionStatus::True,
            if converged.created {
                reasons::CREATED
            } else {
                reasons::EXISTS
            },
            format!(
                "{} exists at the {} provider",
                desired.external_name, placement.provider.type_
            ),
            generation,
            now,
        );
        // Step 6, publish the connection Secret once there is an endpoint.
        // A backend whose server issues the passwords (Fly Managed
        // Postgres) hands back the ones that work, read on every reconcile
        // so a Secret write lost after a rotation is repaired on the next
        // one; they replace the generated ones in both Secrets. Rotated at
        // the backend only when the rotation schedule came due (the
        // generated ones were rotated in step 4), never because a user was
        // added.
        let mut published = desired.clone();
        if converged.readiness.ready {
            let issued =
                issued_passwords(placement.client.as_ref(), &desired, passwords.rotated).await?;
            let stale = issued
                .iter()
                .any(|(user, password)| passwords.passwords.get(user) != Some(password));
            published.passwords.extend(issued);
            if stale {
                let stored = Passwords {
                    passwords: published.passwords.clone(),
                    generated_at: passwords.generated_at,
                    changed: true,
                    rotated: passwords.rotated,
                };
                let child = credentials_secret_child(&dbc, &stored);
                apply_secret(&dbc, ctx, &child, PASSWORDS_ROLE).await?;
            }
        }
        if let Some(endpoint) = &observed.endpoint
            && let Some(child) =
                connection_secret_child(&dbc, &published, placement.client.as_ref(), endpoint)?
        {
            apply_secret(&dbc, ctx, &child, CONNECTION_ROLE).await?;
            status.connection_secret = Some(child.name);
        }
        // Step 7, copy from spec.source when asked and allowed.
        if converged.readiness.ready && dbc.spec.management_policy == ManagementPolicy::Full {
            copy_if_asked(&dbc, &placement, &desired, ctx, &mut status).await?;
        }
        set_converged_conditions(
            &mut status.conditions,
            &converged.readiness,
            dbc.spec.management_policy == ManagementPolicy::ObserveOnly,
            generation,
        );
        Ok(())
    }
    .await;

    let result = match result {
        Ok(()) => {
            let mut wait = ctx.settings.resync;
            if !is_condition_true(&status.conditions, CONDITION_READY) {
                // Instances are starting: look again soon (the Cluster
                // watch also wakes us).
                wait = wait.min(std::time::Duration::from_secs(10));
            }
            if let (Some(r), Some(at)) = (&dbc.spec.password_rotation, &status.password_rotated_at)
            {
                let interval: std::time::Duration = r.interval.into();
                let due = SignedDuration::try_from(interval)
                    .ok()
                    .and_then(|i| at.0.checked_add(i).ok());
                if let Some(due) = due {
                    wait = wait_until(wait, due);
                }
            }
            Ok(wait)
        }
        Err(e) => {
            if !status
                .conditions
                .iter()
                .any(|c| c.type_ == CONDITION_PROVISIONED)
            {
                set_condition(
                    &mut status.conditions,
                    CONDITION_PROVISIONED,
                    ConditionStatus::False,
                    e.reason(),
                    e.to_string(),
                    generation,
                    now,
                );
            }
            Err(e)
        }
    };
    finish(
        &ctx.recorder,
        &ctx.backoff,
        api,
        dbc.as_ref(),
        status,
        result,
    )
    .await
}

async fn cleanup(dbc: Arc<DatabaseCluster>, ctx: &Context) -> Result<Action, ReconcileError> {
    let policies = Policies {
        deletion: dbc.spec.deletion_policy,
        management: dbc.spec.management_policy,
    };
    let never_created = dbc.annotations().get(ANNOTATION_EXTERNAL_NAME).is_none()
        && dbc
            .status
            .as_ref()
            .and_then(|s| s.external_name.as_ref())
            .is_none();
    let placement = match dereference(&dbc, ctx, false).await {
        Ok(p) => p,
        // Nothing was ever created: nothing to delete or orphan.
        Err(_) if never_created => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    // Cleanup never writes the passwords: what the Secret holds is what an
    // orphaned cluster keeps.
    let passwords = read_passwords(&dbc, ctx, Timestamp::now()).await?;
    let desired = build(&dbc, &placement, &passwords);
    // The backend detaches what it made (finalize calls its `orphan`);
    // the Secrets bulkhead wrote for the cluster are the controller's.
    let orphan = || async {
        // The generated passwords and the connection Secret stay with an
        // orphaned cluster: without them nobody could log in to it.
        let secrets: Api<KubeSecret> = Api::namespaced(ctx.client.clone(), &desired.namespace);
        let mut names = vec![credentials_secret(&dbc.name_any())];
        if let Some(r) = &dbc.spec.write_connection_secret_to_ref {
            names.push(r.name.clone());
        }
        for name in names {
            // Only Secrets bulkhead made for this cluster: another one under
            // the same name is never touched.
            if secrets
                .get_opt(&name)
                .await?
                .is_some_and(|s| credentials::is_own_secret(&s, &dbc))
            {
                let patch = json!({ "metadata": { "ownerReferences": null } });
                secrets
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        Ok(())
    };
    finalize(
        &ctx.managed(),
        dbc.as_ref(),
        placement.client.as_ref(),
        &desired,
        &desired.external_name,
        policies,
        orphan,
    )
    .await
}
