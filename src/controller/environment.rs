//! Environment controller: waits for its Organization, enforces the
//! isolation policy, expires access grants, and converges its namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{
    Context, is_ready, owner_of, related_stream, related_trigger, run_controller, trigger_stream,
};
use crate::api::environment::{
    AccessGrant, BoundNetwork, CONDITION_ISOLATED, CONDITION_ORGANIZATION_READY, IsolationMode,
    LABEL_ADOPTABLE_BY, Tier, describe_network,
};
use crate::api::{
    CONDITION_READY, CONDITION_SYNCED, ConditionStatus, DeletionPolicy, Environment,
    EnvironmentStatus, ManagementPolicy, Organization, ProviderType, find_condition,
    is_condition_true, set_condition,
};
use crate::provider::kubernetes::cache::OwnerScope;
use crate::provider::{DesiredEnvironment, OperatorGrant};
use crate::reasons;
use crate::reconcile::managed::{
    Policies, ReconcileError, converge, finalize, finish, publish, reconcile_managed,
    set_converged_conditions, wait_until,
};

const KIND: &str = "Environment";

/// How soon an Environment looks again at an Organization bulkhead has not
/// reconciled yet; the Organization's first status requeues it sooner.
const ORGANIZATION_PENDING_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The generation the Organization's Synced condition was set at: `None`
/// until bulkhead has reconciled it once.
fn synced_generation(org: &Organization) -> Option<i64> {
    org.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, CONDITION_SYNCED))
        .and_then(|c| c.observed_generation)
}

/// Whether the Organization is waiting for its first reconcile at its
/// current generation (a set created together: the Environment is often
/// looked at first). That is no failure of the Environment's: it waits
/// without a status write or an Event, and the Organization's status
/// requeues it. An Organization being deleted is reported as it is.
fn organization_pending(org: &Organization) -> bool {
    org.metadata.deletion_timestamp.is_none() && synced_generation(org) != org.metadata.generation
}

pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let client = ctx.watch_client.clone();
    let (reader, stream) = trigger_stream(Api::<Environment>::all(client.clone()));
    ctx.track_sync(reader.clone());
    let _ = ctx.environments.set(reader.clone());
    let by_org = reader.clone();
    let by_peer = reader.clone();
    let controller = Controller::for_stream(stream, reader)
        // Its namespaces, RoleBindings, NetworkPolicy, ConfigMap and quota
        // changing (drift, a namespace becoming Active) wake it, from the
        // child cache's watches.
        .reconcile_on(
            ctx.children
                .owner_changes::<Environment>(OwnerScope::Cluster),
        )
        // A cluster admin opting a namespace in (bulkhead.dev/adoptable-by)
        // requeues the Environment it names.
        .watches(
            Api::<Namespace>::all(client.clone()),
            kube::runtime::watcher::Config::default().labels(LABEL_ADOPTABLE_BY),
            |ns| {
                ns.labels()
                    .get(LABEL_ADOPTABLE_BY)
                    .map(|env| ObjectRef::<Environment>::new(env))
            },
        )
        // An Organization becoming ready (or changing members or plan)
        // requeues its Environments.
        .watches_stream(
            related_stream(
                Api::<Organization>::all(client.clone()),
                |o: &Organization| {
                    let ready = is_ready(o.status.as_ref().map(|s| &s.conditions));
                    related_trigger(o, (ready, synced_generation(o)))
                },
            ),
            move |org| {
                let name = org.name_any();
                by_org
                    .state()
                    .into_iter()
                    .filter(|e| e.spec.organization_ref.name == name)
                    .map(|e| ObjectRef::from_obj(e.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // Isolation depends on the other Environments of the same
        // organization or namespaces.
        .watches_stream(
            related_stream(Api::<Environment>::all(client), |e: &Environment| {
                related_trigger(e, ())
            }),
            move |changed| {
                let namespaces: BTreeSet<String> = changed.namespaces().into_iter().collect();
                by_peer
                    .state()
                    .into_iter()
                    .filter(|e| e.name_any() != changed.name_any())
                    .filter(|e| {
                        e.spec.organization_ref == changed.spec.organization_ref
                            || e.namespaces().iter().any(|n| namespaces.contains(n))
                            || e.spec
                                .promotion
                                .as_ref()
                                .is_some_and(|p| p.from.name == changed.name_any())
                    })
                    .map(|e| ObjectRef::from_obj(e.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    run_controller(controller, ctx, shutdown, reconcile)
}

pub async fn reconcile(env: Arc<Environment>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    let api: Api<Environment> = Api::all(ctx.client.clone());
    reconcile_managed(env, &api, |o| apply(o, &api, &ctx), |o| cleanup(o, &ctx)).await
}

/// An isolation problem found among the Environments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: &'static str,
    pub message: String,
}

/// Checks the isolation policy: a production Environment never shares its
/// Organization, a namespace, or a database server or its credentials with a
/// non-production one (checked from both sides, so both Environments report
/// it). `servers` holds, per Environment name, what identifies where its
/// databases live (credentials Secret and server address).
pub fn isolation_violations<E: std::borrow::Borrow<Environment>>(
    env: &Environment,
    all: &[E],
    servers: &BTreeMap<String, Vec<String>>,
) -> Vec<Violation> {
    let me = env.name_any();
    let my_ns: BTreeSet<String> = env.namespaces().into_iter().collect();
    let my_servers = servers.get(&me).cloned().unwrap_or_default();
    let mine_prod = env.spec.tier == Tier::Production;
    let mut out = Vec::new();
    for other in all
        .iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|o: &&Environment| o.name_any() != me)
    {
        let other_prod = other.spec.tier == Tier::Production;
        if mine_prod == other_prod {
            continue;
        }
        if other.spec.organization_ref.name == env.spec.organization_ref.name {
            out.push(Violation {
                reason: reasons::SHARED_ORGANIZATION,
                message: format!(
                    "Organization {} is shared by production and non-production Environments ({} is {}, {} is {})",
                    env.spec.organization_ref.name,
                    me,
                    env.spec.tier.as_str(),
                    other.name_any(),
                    other.spec.tier.as_str()
                ),
            });
        }
        let shared: Vec<String> = other
            .namespaces()
            .into_iter()
            .filter(|n| my_ns.contains(n))
            .collect();
        if !shared.is_empty() {
            out.push(Violation {
                reason: reasons::SHARED_NAMESPACE,
                message: format!(
                    "namespace {} is shared with {} Environment {}",
                    shared.join(", "),
                    other.spec.tier.as_str(),
                    other.name_any()
                ),
            });
        }
        let shared_servers: Vec<&String> = servers
            .get(&other.name_any())
            .map(|theirs| my_servers.iter().filter(|s| theirs.contains(s)).collect())
            .unwrap_or_default();
        if !shared_servers.is_empty() {
            out.push(Violation {
                reason: reasons::SHARED_DATABASE_SERVER,
                message: format!(
                    "databases share {} with {} Environment {}",
                    shared_servers
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" and "),
                    other.spec.tier.as_str(),
                    other.name_any()
                ),
            });
        }
    }
    out
}

/// Where an Environment's databases live, as comparable identities: the
/// credentials Secret and key, and the server address it names. Only set
/// for providers that reach a server with credentials; in-cluster
/// databases run per namespace and share nothing.
async fn database_servers(env: &Environment, ctx: &Context) -> Vec<String> {
    let Some(provider) = &env.spec.database_provider else {
        return Vec::new();
    };
    if !provider.type_.needs_credentials() {
        return Vec::new();
    }
    let mut out = vec![ctx.describe_credentials(provider)];
    // A malformed credential is reported on the DatabaseClusters; here it
    // just has no server to compare.
    if let Some(server) = ctx
        .database_clusters(provider)
        .await
        .ok()
        .and_then(|c| c.server_identity())
    {
        out.push(server);
    }
    out
}

fn join_messages(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The isolation violations of `env` among `all`, database servers included.
async fn isolation(env: &Environment, all: &[Arc<Environment>], ctx: &Context) -> Vec<Violation> {
    // An Environment being deleted shares nothing any more.
    let all: Vec<Arc<Environment>> = all
        .iter()
        .filter(|e| e.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    let all = all.as_slice();
    let mine_prod = env.spec.tier == Tier::Production;
    let mut servers = BTreeMap::new();
    servers.insert(env.name_any(), database_servers(env, ctx).await);
    if !servers.values().all(Vec::is_empty) {
        for other in all
            .iter()
            .filter(|o| (o.spec.tier == Tier::Production) != mine_prod)
        {
            servers.insert(other.name_any(), database_servers(other, ctx).await);
        }
    }
    isolation_violations(env, all, &servers)
}

/// Binds a Fly environment to the network its spec names on first sight,
/// and refuses a different one later: Fly fixes an app's network when the
/// app is created, and apps on different custom networks cannot reach each
/// other, so a change would split the environment rather than move it.
fn bind_network(
    bound: Option<&BoundNetwork>,
    wanted: Option<&str>,
) -> Result<BoundNetwork, ReconcileError> {
    match bound {
        None => Ok(BoundNetwork {
            name: wanted.map(str::to_string),
        }),
        Some(b) if b.name.as_deref() == wanted => Ok(b.clone()),
        Some(b) => Err(ReconcileError::invalid(
            reasons::NETWORK_FIXED,
            format!(
                "spec.network.name asks for {} but this Environment was bound to {} when it was first reconciled; Fly fixes an app's network when the app is created and apps on different networks cannot reach each other, so nothing is moved: set spec.network.name back, or create a new Environment for the other network",
                describe_network(wanted),
                describe_network(b.name.as_deref()),
            ),
        )),
    }
}

/// An Environment never claims `default`, `kube-*`, the operator's own
/// namespace, the credentials namespace or the deny-list. Checked before
/// anything is written.
fn check_namespaces(env: &Environment, ctx: &Context) -> Result<(), ReconcileError> {
    let forbidden: Vec<String> = env
        .namespaces()
        .iter()
        .filter_map(|ns| ctx.settings.forbidden_namespace(ns))
        .collect();
    if forbidden.is_empty() {
        Ok(())
    } else {
        Err(ReconcileError::invalid(
            reasons::NAMESPACE_FORBIDDEN,
            format!(
                "bulkhead never manages these namespaces, so nothing was written: {}",
                forbidden.join("; ")
            ),
        ))
    }
}

/// Access grants still in force, those that expired, and the next expiry.
fn active_access(
    access: &[AccessGrant],
    now: Timestamp,
) -> (Vec<AccessGrant>, Vec<AccessGrant>, Option<Timestamp>) {
    let (mut active, mut expired) = (Vec::new(), Vec::new());
    let mut next = None::<Timestamp>;
    for g in access {
        match &g.expires_at {
            Some(t) if t.0 <= now => expired.push(g.clone()),
            Some(t) => {
                next = Some(next.map_or(t.0, |n| n.min(t.0)));
                active.push(g.clone());
            }
            None => active.push(g.clone()),
        }
    }
    (active, expired, next)
}

fn describe_grant(g: &AccessGrant) -> String {
    let who: Vec<String> = g
        .subjects
        .iter()
        .map(|s| format!("{}:{}", s.kind.as_str(), s.name))
        .collect();
    format!("{} for {}", g.role.as_str(), who.join(","))
}

struct Resolved {
    desired: DesiredEnvironment,
    expired: Vec<AccessGrant>,
    next_expiry: Option<Timestamp>,
}

/// The operator's rights in each environment namespace, when configured and
/// its identity is known.
fn operator_grant(settings: &crate::controller::Settings) -> Option<OperatorGrant> {
    match (&settings.operator_subject, settings.namespace_role.as_str()) {
        (Some(subject), role) if !role.is_empty() => Some(OperatorGrant {
            cluster_role: role.to_string(),
            subject: subject.clone(),
        }),
        _ => None,
    }
}

fn resolve(
    env: &Environment,
    org: &Organization,
    now: Timestamp,
    settings: &crate::controller::Settings,
) -> Resolved {
    let (access, expired, next_expiry) = active_access(&env.spec.access, now);
    let members = org
        .spec
        .members
        .iter()
        .filter(|m| m.expires_at.as_ref().is_none_or(|t| t.0 > now))
        .cloned()
        .collect();
    Resolved {
        desired: DesiredEnvironment {
            owner: owner_of(env),
            tier: env.spec.tier,
            organization: org.name_any(),
            organization_slug: org.provider_slug(),
            namespaces: env.namespaces(),
            access,
            members,
            plan: org.spec.billing.as_ref().map(|b| b.plan),
            allowed_cidrs: env
                .spec
                .network
                .as_ref()
                .map(|n| n.allowed_cidrs.iter().map(|c| c.0.clone()).collect())
                .unwrap_or_default(),
            config: env.spec.config.clone().unwrap_or_default(),
            operator_grant: operator_grant(settings),
        },
        expired,
        next_expiry,
    }
}

/// Environments are always realised in the cluster, and deleting one removes
/// what bulkhead made for it.
fn policies() -> Policies {
    Policies {
        deletion: DeletionPolicy::Delete,
        management: ManagementPolicy::Full,
    }
}

async fn apply(
    env: Arc<Environment>,
    api: &Api<Environment>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    if let Some(org) = ctx.organization(&env.spec.organization_ref.name).await?
        && organization_pending(&org)
    {
        tracing::debug!(
            environment = %env.name_any(),
            organization = %org.name_any(),
            "waiting for the Organization's first reconcile"
        );
        return Ok(Action::requeue(ORGANIZATION_PENDING_RECHECK));
    }
    let now = Timestamp::now();
    let generation = env.metadata.generation;
    let mut status = env.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.suffix = Some(env.suffix());

    let result = provision(&env, api, ctx, &mut status, generation, now).await;

    let result = result.map(|next_expiry| {
        next_expiry.map_or(ctx.settings.resync, |t| wait_until(ctx.settings.resync, t))
    });
    finish(
        &ctx.recorder,
        &ctx.backoff,
        api,
        env.as_ref(),
        status,
        result,
    )
    .await
}

/// Dereference the Organization, validate (namespaces, isolation,
/// promotion), build the desired state and converge it, filling `status`
/// as it goes. Returns the next access expiry.
async fn provision(
    env: &Arc<Environment>,
    api: &Api<Environment>,
    ctx: &Context,
    status: &mut EnvironmentStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Result<Option<Timestamp>, ReconcileError> {
    // Dereference: the Organization.
    let org_name = &env.spec.organization_ref.name;
    let Some(org) = ctx.organization(org_name).await? else {
        set_condition(
            &mut status.conditions,
            CONDITION_ORGANIZATION_READY,
            ConditionStatus::False,
            reasons::ORGANIZATION_NOT_FOUND,
            format!("Organization {org_name} does not exist"),
            generation,
            now,
        );
        return Err(ReconcileError::waiting(
            reasons::ORGANIZATION_NOT_FOUND,
            format!("waiting for Organization {org_name}: it does not exist"),
        ));
    };
    let org_ready = org
        .status
        .as_ref()
        .is_some_and(|s| is_condition_true(&s.conditions, CONDITION_READY));
    if !org_ready {
        set_condition(
            &mut status.conditions,
            CONDITION_ORGANIZATION_READY,
            ConditionStatus::False,
            reasons::ORGANIZATION_NOT_READY,
            format!("Organization {org_name} is not Ready"),
            generation,
            now,
        );
        return Err(ReconcileError::waiting(
            reasons::ORGANIZATION_NOT_READY,
            format!("waiting for Organization {org_name} to become Ready"),
        ));
    }
    set_condition(
        &mut status.conditions,
        CONDITION_ORGANIZATION_READY,
        ConditionStatus::True,
        reasons::ORGANIZATION_READY,
        format!("Organization {org_name} is Ready"),
        generation,
        now,
    );
    status.organization_slug = Some(org.provider_slug());

    // Validate: the network it was bound to, namespaces it may claim,
    // isolation policy, promotion path.
    if org.spec.provider.type_ == ProviderType::Fly {
        let wanted = env.spec.network.as_ref().and_then(|n| n.name.as_deref());
        status.network = Some(bind_network(status.network.as_ref(), wanted)?);
    }
    check_namespaces(env, ctx)?;
    let all = ctx.all_environments().await?;
    let violations = isolation(env, &all, ctx).await;
    if let Some(first) = violations.first() {
        let message = join_messages(&violations);
        let was_isolated = !status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_ISOLATED && c.status == "False" && c.message == message);
        set_condition(
            &mut status.conditions,
            CONDITION_ISOLATED,
            ConditionStatus::False,
            first.reason,
            &message,
            generation,
            now,
        );
        if was_isolated {
            publish(
                &ctx.recorder,
                env.as_ref(),
                EventType::Warning,
                first.reason,
                "CheckIsolation",
                message.clone(),
            )
            .await;
        }
        // Only the Environment that causes a violation stops: the lower
        // tier. Production reports it and keeps converging.
        if env.spec.tier != Tier::Production && env.isolation_mode() == IsolationMode::Enforce {
            return Err(ReconcileError::invalid(
                reasons::ISOLATION_VIOLATED,
                format!("isolation policy (Enforce) stops provisioning: {message}"),
            ));
        }
    } else {
        set_condition(
            &mut status.conditions,
            CONDITION_ISOLATED,
            ConditionStatus::True,
            reasons::ISOLATED,
            "no production/non-production sharing of organization, namespaces or database servers",
            generation,
            now,
        );
    }
    if let Some(promotion) = &env.spec.promotion {
        let from = &promotion.from.name;
        match all
            .iter()
            .map(AsRef::as_ref)
            .find(|e: &&Environment| &e.name_any() == from)
        {
            None => {
                return Err(ReconcileError::waiting(
                    reasons::PROMOTION_SOURCE_NOT_FOUND,
                    format!("spec.promotion.from: Environment {from} does not exist"),
                ));
            }
            Some(up) if up.spec.tier.rank() >= env.spec.tier.rank() => {
                return Err(ReconcileError::invalid(
                    reasons::PROMOTION_DOWNWARD,
                    format!(
                        "spec.promotion.from: {from} is {} and this Environment is {}; promotions only flow upward (development → staging → production)",
                        up.spec.tier.as_str(),
                        env.spec.tier.as_str()
                    ),
                ));
            }
            Some(_) => {}
        }
    }

    // Build, with expired grants removed and reported.
    let resolved = resolve(env, &org, now, &ctx.settings);
    let expired: Vec<String> = resolved.expired.iter().map(describe_grant).collect();
    for e in &expired {
        if !status.expired_access.contains(e) {
            publish(
                &ctx.recorder,
                env.as_ref(),
                EventType::Normal,
                reasons::ACCESS_EXPIRED,
                "RemoveAccess",
                format!("removed access {e}: expired"),
            )
            .await;
        }
    }
    status.expired_access = expired;

    // Apply.
    let client = ctx.environments_client();
    let converged = converge(
        &ctx.managed(),
        api,
        env.as_ref(),
        &client,
        &resolved.desired,
        &env.name_any(),
        policies(),
    )
    .await?;
    status.namespaces = converged.observed.namespaces.clone();
    set_converged_conditions(
        &mut status.conditions,
        &converged.readiness,
        false,
        generation,
    );
    Ok(resolved.next_expiry)
}

async fn cleanup(env: Arc<Environment>, ctx: &Context) -> Result<Action, ReconcileError> {
    let client = ctx.environments_client();
    let desired = DesiredEnvironment {
        owner: owner_of(env.as_ref()),
        tier: env.spec.tier,
        organization: env.spec.organization_ref.name.clone(),
        organization_slug: env
            .status
            .as_ref()
            .and_then(|s| s.organization_slug.clone())
            .unwrap_or_default(),
        namespaces: env.namespaces(),
        access: Vec::new(),
        members: Vec::new(),
        plan: None,
        allowed_cidrs: Vec::new(),
        config: Default::default(),
        operator_grant: None,
    };
    let orphan = || async { Ok(()) };
    finalize(
        &ctx.managed(),
        env.as_ref(),
        &client,
        &desired,
        &env.name_any(),
        policies(),
        orphan,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EnvironmentSpec;
    use crate::api::LocalObjectReference;

    fn env(name: &str, org: &str, tier: Tier, namespaces: &[&str]) -> Environment {
        Environment::new(
            name,
            EnvironmentSpec {
                organization_ref: LocalObjectReference { name: org.into() },
                tier,
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                access: vec![],
                network: None,
                config: None,
                naming: None,
                promotion: None,
                isolation: None,
                database_provider: None,
            },
        )
    }

    #[test]
    fn production_sharing_an_org_with_staging_is_a_violation_on_both_sides() {
        let none = BTreeMap::new();
        let prod = env("prod", "acme", Tier::Production, &[]);
        let stage = env("stage", "acme", Tier::Staging, &[]);
        let all = vec![prod.clone(), stage.clone()];
        let v = isolation_violations(&prod, &all, &none);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].reason, "SharedOrganization");
        assert_eq!(
            isolation_violations(&stage, &all, &none)[0].reason,
            "SharedOrganization"
        );
    }

    #[test]
    fn a_fly_network_is_bound_once_and_a_different_one_refused() {
        let bound = bind_network(None, Some("stage-net")).expect("first sight binds");
        assert_eq!(bound.name.as_deref(), Some("stage-net"));
        assert_eq!(
            bind_network(Some(&bound), Some("stage-net")).ok(),
            Some(bound.clone()),
            "the same network again"
        );
        for other in [Some("other-net"), None] {
            let refused = bind_network(Some(&bound), other).expect_err("a change");
            assert_eq!(refused.reason(), reasons::NETWORK_FIXED);
            let message = refused.to_string();
            assert!(message.contains("network stage-net"), "{message}");
            assert!(
                message.contains(other.unwrap_or("the organization's default network")),
                "{message}"
            );
        }
        let default = bind_network(None, None).expect("the default network binds too");
        assert!(bind_network(Some(&default), Some("stage-net")).is_err());
    }

    #[test]
    fn shared_namespace_across_tiers_is_a_violation() {
        let none = BTreeMap::new();
        let prod = env("prod", "acme-prod", Tier::Production, &["shared", "prod"]);
        let dev = env("dev", "acme-dev", Tier::Development, &["shared"]);
        let v = isolation_violations(&prod, &[prod.clone(), dev], &none);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].reason, "SharedNamespace");
        assert!(v[0].message.contains("shared"));
    }

    #[test]
    fn separate_orgs_and_namespaces_are_isolated() {
        let none = BTreeMap::new();
        let prod = env("prod", "acme-prod", Tier::Production, &[]);
        let stage = env("stage", "acme-stage", Tier::Staging, &[]);
        let stage2 = env("stage2", "acme-stage", Tier::Staging, &[]);
        assert!(
            isolation_violations(&prod, &[prod.clone(), stage.clone(), stage2.clone()], &none)
                .is_empty()
        );
        assert!(
            isolation_violations(&stage, &[prod, stage.clone(), stage2], &none).is_empty(),
            "two staging envs may share"
        );
    }

    #[test]
    fn a_database_server_shared_across_tiers_is_a_violation() {
        let prod = env("prod", "acme-prod", Tier::Production, &[]);
        let stage = env("stage", "acme-stage", Tier::Staging, &[]);
        let dev = env("dev", "acme-dev", Tier::Development, &[]);
        let servers: BTreeMap<String, Vec<String>> = [
            ("prod", vec!["Secret ops/pg-prod key dsn", "server db:5432"]),
            (
                "stage",
                vec!["Secret ops/pg-stage key dsn", "server db:5432"],
            ),
            (
                "dev",
                vec!["Secret ops/pg-dev key dsn", "server devdb:5432"],
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let all = [prod.clone(), stage.clone(), dev.clone()];
        let v = isolation_violations(&prod, &all, &servers);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].reason, "SharedDatabaseServer");
        assert!(v[0].message.contains("server db:5432") && v[0].message.contains("stage"));
        assert_eq!(
            isolation_violations(&stage, &all, &servers)[0].reason,
            "SharedDatabaseServer"
        );
        assert!(isolation_violations(&dev, &all, &servers).is_empty());
    }
}
