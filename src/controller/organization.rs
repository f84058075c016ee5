//! Organization controller: members (with expiry), billing and the tenancy
//! at the provider.

use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, owner_of, related_stream, related_trigger, run_controller, trigger_stream};
use crate::api::organization::{Member, TokenStatus};
use crate::api::{ANNOTATION_CREATE_PENDING, ANNOTATION_EXTERNAL_NAME};
use crate::api::{Environment, ManagementPolicy, Organization};
use crate::provider::kubernetes::cache::OwnerScope;
use crate::provider::{DesiredOrganization, ObservedOrganization};
use crate::reasons;
use crate::reconcile::managed::{
    Policies, ReconcileError, converge, finalize, finish, publish, publish_about,
    reconcile_managed, set_converged_conditions, wait_until,
};

const KIND: &str = "Organization";
const TOKENS_UNSUPPORTED: &str =
    "spec.tokens needs a provider that mints tokens (fly); this Organization's provider has none";

pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = ()> {
    let client = ctx.watch_client.clone();
    let (reader, stream) = trigger_stream(Api::<Organization>::all(client.clone()));
    ctx.track_sync(reader.clone());
    let _ = ctx.organizations.set(reader.clone());
    let by_slug = reader.clone();
    let controller = Controller::for_stream(stream, reader)
        // Its ClusterRoles and ClusterRoleBindings changing wakes it.
        .reconcile_on(
            ctx.children
                .owner_changes::<Organization>(OwnerScope::Cluster),
        )
        // An Environment binding to or leaving an organization changes what
        // its members may read.
        .watches_stream(
            related_stream(
                Api::<Environment>::all(client.clone()),
                |e: &Environment| related_trigger(e, ()),
            ),
            |env| {
                Some(ObjectRef::<Organization>::new(
                    &env.spec.organization_ref.name,
                ))
            },
        )
        // A slug claimed twice: when one claimer changes or goes, the
        // others look again (the next in line takes the slug).
        .watches_stream(
            related_stream(Api::<Organization>::all(client), |o: &Organization| {
                related_trigger(o, o.spec.slug.clone())
            }),
            move |changed| {
                let slug = changed.slug();
                by_slug
                    .state()
                    .into_iter()
                    .filter(|o| o.name_any() != changed.name_any() && o.slug() == slug)
                    .map(|o| ObjectRef::from_obj(o.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    run_controller(controller, ctx, shutdown, reconcile)
}

pub async fn reconcile(
    org: Arc<Organization>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    let api: Api<Organization> = Api::all(ctx.client.clone());
    reconcile_managed(org, &api, |o| apply(o, &api, &ctx), |o| cleanup(o, &ctx)).await
}

/// Members whose access has not expired, and the time of the next expiry.
fn active_members(
    members: &[Member],
    now: Timestamp,
) -> (Vec<Member>, Vec<Member>, Option<Timestamp>) {
    let (mut active, mut expired) = (Vec::new(), Vec::new());
    let mut next = None::<Timestamp>;
    for m in members {
        match &m.expires_at {
            Some(t) if t.0 <= now => expired.push(m.clone()),
            Some(t) => {
                next = Some(next.map_or(t.0, |n| n.min(t.0)));
                active.push(m.clone());
            }
            None => active.push(m.clone()),
        }
    }
    (active, expired, next)
}

async fn desired(
    org: &Organization,
    ctx: &Context,
    now: Timestamp,
) -> Result<(DesiredOrganization, Vec<Member>, Option<Timestamp>), ReconcileError> {
    let (members, expired, next_expiry) = active_members(&org.spec.members, now);
    let name = org.name_any();
    let mut environments: Vec<String> = ctx
        .all_environments()
        .await?
        .into_iter()
        .filter(|e| e.spec.organization_ref.name == name && e.metadata.deletion_timestamp.is_none())
        .map(|e| e.name_any())
        .collect();
    environments.sort();
    Ok((
        DesiredOrganization {
            owner: owner_of(org),
            slug: org.slug(),
            display_name: org.spec.display_name.clone(),
            members,
            billing: org.spec.billing.clone(),
            environments,
            external_name: org
                .annotations()
                .get(ANNOTATION_EXTERNAL_NAME)
                .filter(|n| !n.is_empty())
                .cloned(),
            tokens: org.spec.tokens.clone(),
        },
        expired,
        next_expiry,
    ))
}

/// The Organization that holds a slug when several claim it: the oldest
/// (then the first by name). The others get `SlugConflict` and change
/// nothing, so two objects never fight over one external organization.
fn slug_holder<'a>(org: &Organization, all: &'a [Arc<Organization>]) -> Option<&'a Organization> {
    let slug = org.slug();
    all.iter()
        .map(AsRef::as_ref)
        .filter(|o| o.slug() == slug && o.spec.provider.type_ == org.spec.provider.type_)
        .filter(|o| o.metadata.deletion_timestamp.is_none() || o.uid() == org.uid())
        .min_by_key(|o| {
            (
                o.metadata.creation_timestamp.clone().map(|t| t.0),
                o.name_any(),
            )
        })
}

fn check_slug(org: &Organization, all: &[Arc<Organization>]) -> Result<(), ReconcileError> {
    match slug_holder(org, all) {
        Some(holder) if holder.uid() != org.uid() => Err(ReconcileError::invalid(
            reasons::SLUG_CONFLICT,
            format!(
                "slug {} is already claimed by Organization {}; nothing was changed: choose another spec.slug",
                org.slug(),
                holder.name_any()
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether a create was ever started for the object: only then may
/// deletion need the provider.
fn created_anything(org: &Organization) -> bool {
    let annotations = org.annotations();
    annotations.contains_key(ANNOTATION_EXTERNAL_NAME)
        || annotations.contains_key(ANNOTATION_CREATE_PENDING)
}

/// Token Secrets go nowhere the operator keeps for itself (its namespace,
/// the credentials namespace, system namespaces): a token must never
/// overwrite the credentials it was minted with.
fn check_token_secrets(org: &Organization, ctx: &Context) -> Result<(), ReconcileError> {
    for t in &org.spec.tokens {
        if let Some(why) = ctx.settings.forbidden_namespace(&t.secret_ref.namespace) {
            return Err(ReconcileError::invalid(
                reasons::INVALID_SPEC,
                format!(
                    "spec.tokens[{}].secretRef: namespace {} cannot hold token Secrets: {why}",
                    t.name, t.secret_ref.namespace
                ),
            ));
        }
    }
    Ok(())
}

/// An Event about a token: its reason, its action, the Secret it is about
/// and its note.
#[derive(Debug)]
struct TokenEvent {
    reason: &'static str,
    action: &'static str,
    secret: String,
    note: String,
}

impl TokenEvent {
    /// The token's Secret (`namespace/name` in status) as the Event's
    /// related object, so each Secret keeps its own Event series.
    fn related(&self) -> Option<ObjectReference> {
        let (namespace, name) = self.secret.split_once('/')?;
        Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        })
    }
}

/// What changed between the tokens status showed and the tokens now held,
/// as Events: a token minted (new, or replacing one that was due for
/// rotation, revoked or changed, which is then revoked) and a token
/// revoked because it left the spec. Built from status alone (names,
/// Secrets and times), so no note can carry a token.
fn token_events(before: &[TokenStatus], after: &[TokenStatus]) -> Vec<TokenEvent> {
    let time = |t: &Option<Time>| t.as_ref().map_or("unknown".into(), |t| t.0.to_string());
    let event = |reason, action, t: &TokenStatus, note| TokenEvent {
        reason,
        action,
        secret: t.secret.clone(),
        note,
    };
    let mut events = Vec::new();
    for now in after {
        match before.iter().find(|b| b.name == now.name) {
            None => events.push(event(
                reasons::TOKEN_MINTED,
                "MintToken",
                now,
                format!(
                    "minted token {} into Secret {}; it expires at {}",
                    now.name,
                    now.secret,
                    time(&now.expires_at)
                ),
            )),
            Some(was) if was.issued_at != now.issued_at => {
                events.push(event(
                    reasons::TOKEN_MINTED,
                    "RotateToken",
                    now,
                    format!(
                        "minted a new token {} into Secret {}; it expires at {}",
                        now.name,
                        now.secret,
                        time(&now.expires_at)
                    ),
                ));
                events.push(event(
                    reasons::TOKEN_REVOKED,
                    "RotateToken",
                    was,
                    format!(
                        "revoked the token {} it replaces, issued at {} (due to expire at {})",
                        was.name,
                        time(&was.issued_at),
                        time(&was.expires_at)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    for was in before
        .iter()
        .filter(|b| !after.iter().any(|a| a.name == b.name))
    {
        events.push(event(
            reasons::TOKEN_REVOKED,
            "RevokeToken",
            was,
            format!(
                "revoked token {} at the provider: it left spec.tokens",
                was.name
            ),
        ));
    }
    events
}

fn policies(org: &Organization) -> Policies {
    Policies {
        deletion: org.spec.deletion_policy,
        management: org.spec.management_policy,
    }
}

async fn apply(
    org: Arc<Organization>,
    api: &Api<Organization>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let now = Timestamp::now();
    let mut status = org.status.clone().unwrap_or_default();
    let generation = org.metadata.generation;
    status.observed_generation = generation;
    let result = async {
        let client = ctx.organizations(&org.spec.provider).await?;
        check_slug(&org, &ctx.all_organizations().await?)?;
        check_token_secrets(&org, ctx)?;
        if !org.spec.tokens.is_empty() && !client.mints_tokens() {
            return Err(ReconcileError::invalid(
                reasons::UNSUPPORTED,
                TOKENS_UNSUPPORTED,
            ));
        }
        let (desired, expired, next_expiry) = desired(&org, ctx, now).await?;
        for m in &expired {
            if status.members.iter().any(|s| s.email == m.email) {
                publish(
                    &ctx.recorder,
                    org.as_ref(),
                    EventType::Normal,
                    reasons::MEMBER_EXPIRED,
                    "RemoveMember",
                    format!("removed {}: access expired", m.email),
                )
                .await;
            }
        }
        // Fly makes the slug from the name bulkhead gives it: the spec's.
        let converged = converge(
            &ctx.managed(),
            api,
            org.as_ref(),
            client.as_ref(),
            &desired,
            &desired.slug,
            policies(&org),
        )
        .await?;
        Ok((desired, converged, next_expiry))
    }
    .await;
    if let Ok((_, converged, _)) = &result {
        for e in token_events(&status.tokens, &converged.observed.tokens) {
            publish_about(
                &ctx.recorder,
                org.as_ref(),
                e.related(),
                EventType::Normal,
                e.reason,
                e.action,
                e.note,
            )
            .await;
        }
    }
    let result = result.map(|(desired, converged, next_expiry)| {
        let ObservedOrganization {
            external_id,
            members,
            slug,
            tokens,
        } = converged.observed;
        status.external_id = external_id;
        status.members = members;
        status.slug = Some(slug.unwrap_or_else(|| desired.slug.clone()));
        status.tokens = tokens;
        status.environments = desired.environments.clone();
        set_converged_conditions(
            &mut status.conditions,
            &converged.readiness,
            org.spec.management_policy == ManagementPolicy::ObserveOnly,
            generation,
        );
        next_expiry.map_or(ctx.settings.resync, |t| wait_until(ctx.settings.resync, t))
    });
    finish(
        &ctx.recorder,
        &ctx.backoff,
        api,
        org.as_ref(),
        status,
        result,
    )
    .await
}

async fn cleanup(org: Arc<Organization>, ctx: &Context) -> Result<Action, ReconcileError> {
    if check_slug(&org, &ctx.all_organizations().await?).is_err() {
        // It never held its slug: what exists under it is another's.
        return Ok(Action::await_change());
    }
    let client = match ctx.organizations(&org.spec.provider).await {
        Ok(client) => client,
        // Nothing was ever created at a provider this build cannot reach,
        // or while the credentials were unusable.
        Err(_) if !created_anything(&org) => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    let (desired, _, _) = desired(&org, ctx, Timestamp::now()).await?;
    finalize(
        &ctx.managed(),
        org.as_ref(),
        client.as_ref(),
        &desired,
        &desired.slug,
        policies(&org),
        || async { Ok(()) },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::organization::MemberRole;

    fn org(name: &str, slug: &str, created: i64) -> Arc<Organization> {
        let mut o: Organization = serde_json::from_value(serde_json::json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Organization",
            "metadata": {"name": name}, "spec": {"slug": slug},
        }))
        .expect("organization");
        o.metadata.uid = Some(format!("uid-{name}"));
        o.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("ts")));
        Arc::new(o)
    }

    fn token(name: &str, issued: i64) -> TokenStatus {
        let at = |s: i64| Timestamp::from_second(s).ok().map(Time);
        TokenStatus {
            name: name.into(),
            secret: format!("ci/{name}"),
            issued_at: at(issued),
            expires_at: at(issued + 7_200),
        }
    }

    #[test]
    fn token_events_name_what_was_minted_replaced_and_revoked() {
        let before = [
            token("kept", 1_000),
            token("rotated", 1_000),
            token("gone", 1_000),
        ];
        let after = [
            token("kept", 1_000),
            token("rotated", 6_000),
            token("new", 6_000),
        ];
        let events = token_events(&before, &after);
        let of = |reason: &str| -> Vec<String> {
            events
                .iter()
                .filter(|e| e.reason == reason)
                .map(|e| format!("{} {} {}", e.action, e.secret, e.note))
                .collect()
        };
        let minted = of("TokenMinted");
        assert_eq!(minted.len(), 2, "{events:?}");
        assert!(minted.iter().any(|n| n.starts_with(
            "RotateToken ci/rotated minted a new token rotated into Secret ci/rotated"
        )));
        assert!(
            minted
                .iter()
                .any(|n| n.starts_with("MintToken ci/new minted token new into Secret ci/new"))
        );
        let revoked = of("TokenRevoked");
        assert_eq!(revoked.len(), 2, "{events:?}");
        assert!(revoked.iter().any(|n| {
            n.starts_with("RotateToken ci/rotated revoked the token rotated it replaces")
        }));
        assert!(
            revoked
                .iter()
                .any(|n| n.starts_with("RevokeToken ci/gone revoked token gone at the provider"))
        );
        let related = events[0].related().expect("a Secret reference");
        assert_eq!(
            (
                related.kind.as_deref(),
                related.namespace.as_deref(),
                related.name.as_deref()
            ),
            (Some("Secret"), Some("ci"), Some("rotated"))
        );
        assert!(token_events(&after, &after).is_empty());
    }

    #[test]
    fn the_oldest_claimer_holds_a_slug_and_the_others_conflict() {
        let all = vec![
            org("second", "acme", 2_000),
            org("first", "acme", 1_000),
            org("other", "globex", 500),
        ];
        assert!(check_slug(&all[1], &all).is_ok());
        assert!(check_slug(&all[2], &all).is_ok());
        let err = check_slug(&all[0], &all).expect_err("second claimer");
        assert_eq!(err.reason(), "SlugConflict");
        assert!(err.to_string().contains("first"), "{err}");
    }

    #[test]
    fn expired_members_are_split_out_and_next_expiry_found() {
        let now = Timestamp::from_second(2_000_000_000).expect("ts");
        let m = |email: &str, exp: Option<i64>| Member {
            email: email.into(),
            role: MemberRole::Member,
            expires_at: exp.map(|s| Time(Timestamp::from_second(s).expect("ts"))),
        };
        let (active, expired, next) = active_members(
            &[
                m("a@x.io", None),
                m("b@x.io", Some(1_999_999_999)),
                m("c@x.io", Some(2_000_000_100)),
                m("d@x.io", Some(2_000_000_050)),
            ],
            now,
        );
        assert_eq!(
            active.iter().map(|m| m.email.as_str()).collect::<Vec<_>>(),
            ["a@x.io", "c@x.io", "d@x.io"]
        );
        assert_eq!(expired.len(), 1);
        assert_eq!(next.map(|t| t.as_second()), Some(2_000_000_050));
    }
}
