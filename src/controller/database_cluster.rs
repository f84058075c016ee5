//! DatabaseCluster controller: finds its Environment, names the cluster
//! with the Environment's suffix, keeps generated passwords in a Secret it
//! owns (rotating them on schedule), converges the provider, copies from a
//! source cluster when asked, and publishes the connection Secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret as KubeSecret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{
    Context, error_policy, is_ready, managed_children, owner_of, related_stream, related_trigger,
    trigger_stream,
};
use crate::api::database_cluster::{
    CONDITION_PROVISIONED, CopyMode, CopyStatus, Endpoint, ReplicaStatus, Sanitize,
    reasons as dbc_reasons,
};
use crate::api::{
    ANNOTATION_EXTERNAL_NAME, CONDITION_READY, ConditionStatus, DatabaseCluster,
    DatabaseClusterStatus, Environment, LABEL_DATABASE_CLUSTER, LABEL_ENVIRONMENT,
    LABEL_MANAGED_BY, MANAGER, ManagementPolicy, Organization, ProviderSpec, is_condition_true,
    set_condition,
};
use crate::provider::cloudnativepg;
use crate::provider::{
    CopyRequest, DatabaseClusterClient, DesiredDatabaseCluster, SUPERUSER, Secret,
    generate_password,
};
use crate::reconcile::managed::{
    FIELD_MANAGER, ManagedResource, Policies, ReconcileError, converge, finalize, finish, publish,
    reconcile_managed, set_converged_conditions, wait_until,
};
use crate::reconcile::reasons;

const KIND: &str = "DatabaseCluster";
/// Key of the superuser password in the credentials Secret (user names
/// cannot start with '.').
const SUPERUSER_KEY: &str = ".superuser";
/// Annotation on the credentials Secret: when its passwords were generated.
const ANNOTATION_ROTATED_AT: &str = "bulkhead.dev/rotated-at";

/// Name of the Secret holding a cluster's generated passwords.
pub fn credentials_secret(name: &str) -> String {
    format!("{name}-credentials")
}

pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let client = ctx.watch_client.clone();
    let (reader, stream) = trigger_stream(Api::<DatabaseCluster>::all(client.clone()));
    ctx.track_sync(reader.clone());
    let by_env = reader.clone();
    let mut controller = Controller::for_stream(stream, reader);
    // CloudNativePG's Clusters and Databases: a status change (Ready) or a
    // change by someone else (drift) wakes the owning DatabaseCluster. The
    // watch backs off while CloudNativePG is not installed and starts
    // working once its CRDs are. No cluster-wide Secret watch: the
    // operator holds no right to read Secrets outside its environments'
    // namespaces (see the chart's RBAC); drift of the Secrets it writes is
    // repaired at resync.
    for kind in [cloudnativepg::CLUSTER, cloudnativepg::DATABASE] {
        let ar = kind.api_resource();
        let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &ar);
        let children = watcher(api, managed_children())
            .default_backoff()
            .touched_objects();
        controller = controller.owns_stream_with(children, ar);
    }
    controller
        // An Environment becoming ready (or changing suffix) requeues the
        // DatabaseClusters in its namespaces.
        .watches_stream(
            related_stream(Api::<Environment>::all(client), |e: &Environment| {
                related_trigger(e, is_ready(e.status.as_ref().map(|s| &s.conditions)))
            }),
            move |env| {
                let namespaces = env.namespaces();
                by_env
                    .state()
                    .into_iter()
                    .filter(|d| d.namespace().is_some_and(|ns| namespaces.contains(&ns)))
                    .map(|d| ObjectRef::from_obj(d.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(
            kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy::<DatabaseCluster>, ctx)
        .map(|_| ())
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

impl ManagedResource for DatabaseCluster {
    type Status = DatabaseClusterStatus;
    fn status(&self) -> Option<&DatabaseClusterStatus> {
        self.status.as_ref()
    }
    fn conditions_mut(
        status: &mut DatabaseClusterStatus,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut status.conditions
    }
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
            dbc_reasons::NO_ENVIRONMENT,
            format!(
                "no Environment owns namespace {ns}; add it to an Environment's spec.namespaces"
            ),
        )
    };
    let namespace = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&ns)
        .await?
        .ok_or_else(no_environment)?;
    let owner = namespace
        .labels()
        .get(LABEL_ENVIRONMENT)
        .cloned()
        .ok_or_else(no_environment)?;
    let env = Api::<Environment>::all(ctx.client.clone())
        .get_opt(&owner)
        .await?
        .filter(|e| e.namespaces().contains(&ns))
        .ok_or_else(no_environment)?;
    if let Some(r) = &dbc.spec.environment_ref
        && r.name != owner
    {
        return Err(ReconcileError::invalid(
            dbc_reasons::ENVIRONMENT_MISMATCH,
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
                dbc_reasons::ENVIRONMENT_NOT_READY,
                format!(
                    "Organization {} of Environment {} does not exist",
                    env.spec.organization_ref.name,
                    env.name_any()
                ),
            )
        })?;
    Ok(org.spec.provider.clone())
}

/// Whether a Secret in the cluster's namespace is one bulkhead made for
/// this DatabaseCluster (labels it always writes; a Secret somebody else
/// made is never written, adopted or deleted).
fn is_own_secret(secret: &KubeSecret, dbc: &DatabaseCluster) -> bool {
    let labels = secret.labels();
    labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER)
        && labels.get(LABEL_DATABASE_CLUSTER) == Some(&dbc.name_any())
}

fn secret_conflict(dbc: &DatabaseCluster, name: &str, role: &str) -> ReconcileError {
    ReconcileError::invalid(
        dbc_reasons::SECRET_CONFLICT,
        format!(
            "Secret {}/{name} already exists and was not made by bulkhead for DatabaseCluster {}; bulkhead never writes, adopts or deletes it: choose another name for the {role}, or remove that Secret",
            dbc.namespace().unwrap_or_default(),
            dbc.name_any()
        ),
    )
}

/// Reads the credentials Secret, generating missing passwords and rotating
/// all of them when the schedule says so. Returns the passwords and when
/// they were generated.
async fn ensure_passwords(
    dbc: &DatabaseCluster,
    ctx: &Context,
    now: Timestamp,
) -> Result<(BTreeMap<String, Secret>, Timestamp), ReconcileError> {
    let ns = dbc.namespace().unwrap_or_default();
    let name = credentials_secret(&dbc.name_any());
    let api: Api<KubeSecret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api.get_opt(&name).await?;
    if existing.as_ref().is_some_and(|s| !is_own_secret(s, dbc)) {
        return Err(secret_conflict(dbc, &name, "generated passwords"));
    }
    let mut current: BTreeMap<String, Secret> = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .map(|d| {
            d.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Secret::new(String::from_utf8_lossy(&v.0).into_owned()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let rotated_at = existing
        .as_ref()
        .and_then(|s| s.annotations().get(ANNOTATION_ROTATED_AT).cloned())
        .and_then(|t| t.parse::<Timestamp>().ok());
    let rotate = match (&dbc.spec.password_rotation, rotated_at) {
        (Some(r), Some(at)) => {
            let interval = SignedDuration::try_from(std::time::Duration::from(r.interval))
                .unwrap_or(SignedDuration::MAX);
            at.checked_add(interval).is_ok_and(|due| due <= now)
        }
        _ => false,
    };
    let mut wanted: Vec<String> = dbc.spec.users.iter().map(|u| u.name.clone()).collect();
    wanted.push(SUPERUSER_KEY.to_string());
    let mut changed = rotate || existing.is_none();
    for user in &wanted {
        if rotate || !current.contains_key(user) {
            current.insert(user.clone(), generate_password());
            changed = true;
        }
    }
    let before = current.len();
    current.retain(|k, _| wanted.contains(k));
    changed |= before != current.len();
    let generated_at = if rotate || rotated_at.is_none() {
        now
    } else {
        rotated_at.unwrap_or(now)
    };
    if changed {
        let owner = owner_of(dbc);
        let data: BTreeMap<&str, &str> = current
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": { LABEL_MANAGED_BY: MANAGER, LABEL_DATABASE_CLUSTER: dbc.name_any() },
                "annotations": { ANNOTATION_ROTATED_AT: generated_at.to_string() },
                "ownerReferences": [{ "apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name,
                                       "uid": owner.uid, "controller": true, "blockOwnerDeletion": true }],
            },
            "type": "Opaque",
            "stringData": data,
        });
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    }
    let mut passwords: BTreeMap<String, Secret> = current;
    if let Some(su) = passwords.remove(SUPERUSER_KEY) {
        passwords.insert(SUPERUSER.to_string(), su);
    }
    Ok((passwords, generated_at))
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
        version: dbc.spec.version.clone(),
        regions: dbc.spec.regions.clone(),
        size: dbc.resolved_size(tier == crate::api::Tier::Production),
        databases: dbc.spec.databases.clone(),
        users: dbc.spec.users.clone(),
        passwords,
        deletion_policy: dbc.spec.deletion_policy,
    }
}

struct Built {
    env: Environment,
    provider: ProviderSpec,
    client: Arc<dyn DatabaseClusterClient>,
    desired: DesiredDatabaseCluster,
    rotated_at: Timestamp,
}

async fn build(
    dbc: &DatabaseCluster,
    ctx: &Context,
    now: Timestamp,
    require_ready: bool,
) -> Result<Built, ReconcileError> {
    let env = find_environment(dbc, ctx).await?;
    if require_ready
        && !env
            .status
            .as_ref()
            .is_some_and(|s| is_condition_true(&s.conditions, CONDITION_READY))
    {
        return Err(ReconcileError::waiting(
            dbc_reasons::ENVIRONMENT_NOT_READY,
            format!("waiting for Environment {} to become Ready", env.name_any()),
        ));
    }
    let provider = provider_spec(&env, ctx).await?;
    let client = ctx.database_clusters(&provider).await?;
    let (passwords, rotated_at) = ensure_passwords(dbc, ctx, now).await?;
    let desired = desired_for(dbc, &env, &env.spec.organization_ref.name, passwords);
    Ok(Built {
        env,
        provider,
        client,
        desired,
        rotated_at,
    })
}

/// The rules a copy applies: every rule the source requires, plus what the
/// consumer adds. For a column both name, the source's action wins: a
/// consumer can add rules, never weaken or remove one.
pub fn effective_sanitize(required: Option<&Sanitize>, requested: Option<&Sanitize>) -> Sanitize {
    let mut out = requested.cloned().unwrap_or_default();
    if let Some(required) = required {
        for table in &required.exclude_tables {
            if !out.exclude_tables.contains(table) {
                out.exclude_tables.push(table.clone());
            }
        }
        for (column, action) in &required.columns {
            out.columns.insert(column.clone(), *action);
        }
    }
    out
}

/// Copies from spec.source when its refreshGeneration has not been copied
/// yet, and only with the source's consent: its `copyPolicy` must name
/// this cluster's Environment, and its rules are read now, at copy time.
async fn copy_if_asked(
    dbc: &DatabaseCluster,
    built: &Built,
    ctx: &Context,
    status: &mut DatabaseClusterStatus,
) -> Result<(), ReconcileError> {
    let Some(source) = &dbc.spec.source else {
        return Ok(());
    };
    if status
        .copy
        .as_ref()
        .is_some_and(|c| c.refresh_generation == source.refresh_generation)
    {
        return Ok(());
    }
    let src_ns = source
        .cluster_ref
        .namespace
        .clone()
        .unwrap_or_else(|| dbc.namespace().unwrap_or_default());
    let env_name = built.env.name_any();
    // A missing source and a source that does not consent read the same,
    // so nobody learns what exists in namespaces they cannot read.
    let not_allowed = || {
        ReconcileError::invalid(
            dbc_reasons::COPY_NOT_ALLOWED,
            format!(
                "DatabaseCluster {src_ns}/{} does not exist or does not allow copies into Environment {env_name}: its owners list the Environment in spec.copyPolicy.allowedEnvironments",
                source.cluster_ref.name
            ),
        )
    };
    let src = Api::<DatabaseCluster>::namespaced(ctx.client.clone(), &src_ns)
        .get_opt(&source.cluster_ref.name)
        .await?
        .ok_or_else(not_allowed)?;
    let policy = src.spec.copy_policy.clone().unwrap_or_default();
    if !policy.allowed_environments.contains(&env_name) {
        return Err(not_allowed());
    }
    let src_env = find_environment(&src, ctx).await?;
    if src_env.spec.tier.rank() < built.env.spec.tier.rank() {
        return Err(ReconcileError::invalid(
            dbc_reasons::COPY_UPWARD,
            format!(
                "copies flow from a higher tier to a lower one: the source is {} and this cluster is {}",
                src_env.spec.tier.as_str(),
                built.env.spec.tier.as_str()
            ),
        ));
    }
    let sanitize = effective_sanitize(policy.sanitize.as_ref(), source.sanitize.as_ref());
    if source.mode == CopyMode::Sanitized
        && sanitize.exclude_tables.is_empty()
        && sanitize.columns.is_empty()
        && !policy.allow_unmasked
    {
        return Err(ReconcileError::invalid(
            dbc_reasons::SANITIZE_RULES_MISSING,
            format!(
                "a Sanitized copy needs at least one rule (spec.source.sanitize, or the source's spec.copyPolicy.sanitize); {src_ns}/{} does not allow unmasked copies (spec.copyPolicy.allowUnmasked)",
                src.name_any()
            ),
        ));
    }
    let src_provider = provider_spec(&src_env, ctx).await?;
    if src_provider.type_ != built.provider.type_ {
        return Err(ReconcileError::invalid(
            reasons::UNSUPPORTED,
            format!(
                "copies need the same provider on both sides: the source is on {} and this cluster on {}",
                src_provider.type_, built.provider.type_
            ),
        ));
    }
    // Another server: the copy reads the source over its own admin
    // connection, which the platform team named on the source's Environment.
    let source_connection = if src_provider == built.provider {
        None
    } else if src_provider.type_.needs_credentials() {
        Some(ctx.read_credentials(&src_provider).await?)
    } else {
        None
    };
    let request = CopyRequest {
        // The source's passwords are not needed (the copy runs as the
        // admin) and are not read: nothing of the source's namespace but
        // the DatabaseCluster object itself is looked at.
        source: desired_for(
            &src,
            &src_env,
            &src_env.spec.organization_ref.name,
            BTreeMap::new(),
        ),
        source_connection,
        mode: source.mode,
        sanitize,
        safe_columns: policy.safe_columns.clone(),
        allow_unmasked: policy.allow_unmasked,
    };
    let report = built.client.copy_from(&built.desired, &request).await?;
    publish(
        &ctx.recorder,
        dbc,
        kube::runtime::events::EventType::Normal,
        "Copied",
        "Copy",
        format!(
            "copied {} tables, {} rows from {src_ns}/{} ({:?})",
            report.tables,
            report.rows,
            src.name_any(),
            source.mode
        ),
    )
    .await;
    status.copy = Some(CopyStatus {
        source: format!("{src_ns}/{}", src.name_any()),
        mode: source.mode,
        refresh_generation: source.refresh_generation,
        tables: report.tables,
        rows: report.rows,
        completed_at: Some(Time(Timestamp::now())),
    });
    Ok(())
}

/// Writes the connection Secret: the first declared user and its first
/// database, or the superuser where the backend runs its own server and no
/// user is declared.
async fn write_connection_secret(
    dbc: &DatabaseCluster,
    built: &Built,
    endpoint: &Endpoint,
    ctx: &Context,
) -> Result<Option<String>, ReconcileError> {
    let Some(target) = &dbc.spec.write_connection_secret_to_ref else {
        return Ok(None);
    };
    let d = &built.desired;
    let (user, password, database) = match d.users.first() {
        Some(u) => {
            let db = u
                .databases
                .first()
                .or_else(|| d.databases.first().map(|x| &x.name))
                .cloned()
                .unwrap_or_else(|| "postgres".into());
            (u.name.clone(), d.passwords.get(&u.name).cloned(), db)
        }
        None if built.client.has_own_superuser() => (
            "postgres".to_string(),
            d.passwords.get(SUPERUSER).cloned(),
            d.databases
                .first()
                .map(|x| x.name.clone())
                .unwrap_or_else(|| "postgres".into()),
        ),
        None => {
            return Err(ReconcileError::invalid(
                reasons::INVALID_SPEC,
                "writeConnectionSecretToRef needs at least one entry in spec.users",
            ));
        }
    };
    let (username, database) = built.client.connection_names(d, &user, &database);
    let password = password.map(|p| p.expose().to_string()).unwrap_or_default();
    let uri = format!(
        "postgresql://{}:{}@{}:{}/{}",
        pct(&username),
        pct(&password),
        endpoint.host,
        endpoint.port,
        pct(&database)
    );
    let secrets = Api::<KubeSecret>::namespaced(ctx.client.clone(), &d.namespace);
    if secrets
        .get_opt(&target.name)
        .await?
        .is_some_and(|s| !is_own_secret(&s, dbc))
    {
        return Err(secret_conflict(
            dbc,
            &target.name,
            "connection Secret (spec.writeConnectionSecretToRef)",
        ));
    }
    let owner = owner_of(dbc);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": target.name,
            "namespace": d.namespace,
            "labels": { LABEL_MANAGED_BY: MANAGER, LABEL_DATABASE_CLUSTER: dbc.name_any() },
            "ownerReferences": [{ "apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name,
                                   "uid": owner.uid, "controller": true, "blockOwnerDeletion": true }],
        },
        "type": "Opaque",
        "stringData": {
            "host": endpoint.host,
            "port": endpoint.port.to_string(),
            "username": username,
            "password": password,
            "database": database,
            "uri": uri,
        },
    });
    secrets
        .patch(
            &target.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(Some(target.name.clone()))
}

/// Percent-encodes a URI component.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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
        let built = build(&dbc, ctx, now, true).await?;
        status.external_name = Some(built.desired.external_name.clone());
        status.provider = Some(built.provider.type_.to_string());
        status.tier = Some(built.env.spec.tier.as_str().to_string());
        status.environment = Some(built.env.name_any());
        let converged = converge(
            &ctx.managed(),
            api,
            dbc.as_ref(),
            built.client.as_ref(),
            &built.desired,
            &built.desired.external_name,
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
        status.password_rotated_at = Some(Time(built.rotated_at));
        set_condition(
            &mut status.conditions,
            CONDITION_PROVISIONED,
            ConditionStatus::True,
            if converged.created {
                "Created"
            } else {
                "Exists"
            },
            format!(
                "{} exists at the {} provider",
                built.desired.external_name, built.provider.type_
            ),
            generation,
            now,
        );
        if let Some(endpoint) = &observed.endpoint {
            status.connection_secret = write_connection_secret(&dbc, &built, endpoint, ctx).await?;
        }
        if converged.readiness.ready && dbc.spec.management_policy == ManagementPolicy::Full {
            copy_if_asked(&dbc, &built, ctx, &mut status).await?;
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
    let built = match build(&dbc, ctx, Timestamp::now(), false).await {
        Ok(b) => b,
        // Nothing was ever created: nothing to delete or orphan.
        Err(_) if never_created => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    let desired = built.desired.clone();
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
                .is_some_and(|s| is_own_secret(&s, &dbc))
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
        built.client.as_ref(),
        &built.desired,
        &built.desired.external_name,
        policies,
        orphan,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_adds_rules_but_never_weakens_the_sources() {
        use crate::api::database_cluster::MaskAction;
        let required = Sanitize {
            exclude_tables: vec!["audit_log".into()],
            columns: [("customers.email".to_string(), MaskAction::Hash)].into(),
        };
        let requested = Sanitize {
            exclude_tables: vec!["sessions".into()],
            columns: [
                ("customers.email".to_string(), MaskAction::Redact),
                ("customers.ssn".to_string(), MaskAction::Null),
            ]
            .into(),
        };
        let merged = effective_sanitize(Some(&required), Some(&requested));
        assert_eq!(merged.exclude_tables, ["sessions", "audit_log"]);
        assert_eq!(
            merged.columns.get("customers.email"),
            Some(&MaskAction::Hash),
            "the source's action wins"
        );
        assert_eq!(merged.columns.get("customers.ssn"), Some(&MaskAction::Null));
        // Asking for nothing still applies every required rule.
        assert_eq!(effective_sanitize(Some(&required), None), required);
        assert_eq!(effective_sanitize(None, None), Sanitize::default());
    }

    #[test]
    fn uri_components_are_percent_encoded() {
        assert_eq!(pct("a b@c:d/e"), "a%20b%40c%3Ad%2Fe");
        assert_eq!(pct("my_app-db.x~"), "my_app-db.x~");
    }
}
