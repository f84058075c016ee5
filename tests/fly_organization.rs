//! Organizations with `provider: fly`, against the Fly emulator (started in
//! this process on 127.0.0.1, checked against Fly's published schema) and
//! the real local control plane, with `bulkhead run` pointed at the
//! emulator. What is asserted is what a user sees: conditions and Secrets
//! in the apiserver, and the state, counters and calls the emulator
//! recorded.

mod support;

use bulkhead::api::Organization;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::controlplane::{delete_and_wait, unique, wait_for};
use support::fly::{
    CREDENTIALS, CREDENTIALS_NS, FAULTS, assert_no_secret_leaked, control, converged_under_faults,
    counters, create_org_at_fly, emulator, fly_org, http, inject_faults, poll, put_credentials,
    state, wait_until,
};
use support::objects::{WAIT, all_events, is_ready, is_true, message_of, wait_reason};

const TOKENS_NS: &str = "fly-tokens";

/// The emulator's organizations named `name`.
async fn orgs_named(name: &str) -> Vec<Value> {
    let state = state().await;
    state["organizations"]
        .as_object()
        .map(|m| m.values().filter(|o| o["name"] == name).cloned().collect())
        .unwrap_or_default()
}

async fn org_at_fly(slug: &str) -> Option<Value> {
    let state = state().await;
    state["organizations"]
        .as_object()
        .and_then(|m| m.values().find(|o| o["slug"] == slug).cloned())
}

fn user_id(state: &Value, email: &str) -> Option<String> {
    state["users"]
        .as_object()?
        .values()
        .find(|u| u["email"] == email)
        .and_then(|u| u["id"].as_str())
        .map(str::to_string)
}

/// The Fly role of `email` in `org` (None: not a member).
async fn role_at_fly(slug: &str, email: &str) -> Option<String> {
    let state = state().await;
    let uid = user_id(&state, email)?;
    let org = state["organizations"]
        .as_object()?
        .values()
        .find(|o| o["slug"] == slug)?
        .clone();
    org["members"]
        .as_array()?
        .iter()
        .find(|m| m["user_id"] == uid)
        .and_then(|m| m["role"].as_str())
        .map(str::to_string)
}

fn pending_invitations(org: &Value) -> Vec<(String, String)> {
    org["invitations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["redeemed_at"].is_null())
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_string(),
                        i["email"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The organization at Fly once `count` invitations of it are pending.
async fn invited_at_fly(name: &str, count: usize) -> Value {
    wait_until("the invitations sent at Fly", || async {
        org_at_fly(name)
            .await
            .is_some_and(|o| pending_invitations(&o).len() == count)
    })
    .await;
    org_at_fly(name).await.expect("the organization at Fly")
}

/// Every pending invitation of `org` (as the emulator dumped it) accepted,
/// as the invitee would.
async fn accept_invitations(org: &Value) {
    for (invitation, _) in pending_invitations(org) {
        control(
            reqwest::Method::POST,
            &format!("/_emulator/invitations/{invitation}/accept"),
            None,
        )
        .await;
    }
}

fn token_spec(name: &str, secret: &str) -> Value {
    json!({
        "name": name, "scope": "org", "expiry": "2h",
        "secretRef": { "namespace": TOKENS_NS, "name": secret, "key": "token" },
    })
}

/// The token a Secret holds and the Fly token ID annotated on it.
async fn token_in(client: &Client, secret: &str) -> Option<(String, String)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), TOKENS_NS);
    let s = api.get_opt(secret).await.ok()??;
    let token = String::from_utf8(s.data?.get("token")?.0.clone()).ok()?;
    let id = s
        .metadata
        .annotations?
        .get("bulkhead.dev/fly-token-id")?
        .clone();
    Some((token, id))
}

/// Whether `token` authenticates at the emulator for organization `slug`.
async fn authenticates(token: &str, slug: &str) -> bool {
    let resp = http()
        .post(format!("{}/graphql", emulator()))
        .header("Authorization", format!("FlyV1 {}", token.trim_start_matches("FlyV1 ")))
        .json(&json!({ "query": "query($s: String) { organization(slug: $s) { id } }", "variables": { "s": slug } }))
        .send()
        .await
        .expect("graphql");
    let ok = resp.status().is_success();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    ok && body.get("errors").is_none() && !body["data"]["organization"]["id"].is_null()
}

fn token_state(state: &Value, id: &str) -> Option<Value> {
    state["tokens"]
        .as_array()?
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
}

/// Waits for Secret `secret` to hold another token than `old_id`, and
/// checks the new one authenticates for `slug` while the old one, revoked
/// at Fly, no longer does. Returns the new token and its Fly ID.
async fn replaced_token(
    client: &Client,
    secret: &str,
    slug: &str,
    (old, old_id): (&str, &str),
) -> (String, String) {
    let (new_token, new_id) = poll("a new token in the Secret", || async {
        token_in(client, secret)
            .await
            .filter(|(_, id)| id != old_id)
    })
    .await;
    assert!(
        authenticates(&new_token, slug).await,
        "the new token authenticates"
    );
    wait_until("the old token revoked at Fly", || async {
        token_state(&state().await, old_id).is_some_and(|t| !t["revoked_at"].is_null())
    })
    .await;
    assert!(
        !authenticates(old, slug).await,
        "the old token no longer authenticates"
    );
    (new_token, new_id)
}

/// What each test starts from: the shared control plane, operator and
/// emulator; the client and the Organizations API; a hold on the fault
/// switch (shared, or for a test that injects faults, exclusive), which a
/// test binds as `_faults` so that it is held to the test's end.
struct Start {
    client: Client,
    orgs: Api<Organization>,
    _faults: FaultHold,
}

enum FaultHold {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>),
}

async fn start(injects_faults: bool) -> Start {
    let (_cp, client) = support::fly::setup(&[TOKENS_NS]).await;
    let _faults = if injects_faults {
        FaultHold::Exclusive(FAULTS.write().await)
    } else {
        FaultHold::Shared(FAULTS.read().await)
    };
    Start {
        orgs: Api::all(client.clone()),
        client,
        _faults,
    }
}

#[tokio::test]
async fn organization_members_and_tokens_converge_and_drift_is_repaired() {
    let Start {
        client,
        orgs,
        _faults,
    } = start(false).await;
    let name = format!("acme-{}", unique());
    let (alice, bob) = (
        format!("alice@{name}.example"),
        format!("bob@{name}.example"),
    );
    let secret = format!("{name}-ci");
    fly_org(&name, CREDENTIALS)
        .member(&alice, "admin")
        .member(&bob, "member")
        .spec("tokens", json!([token_spec("ci", &secret)]))
        .spec("deletionPolicy", json!("Delete"))
        .create(&orgs)
        .await;

    // Created under the right name; Fly's slug recorded as the external
    // name and in status; both members invited.
    let org = wait_for(
        &orgs,
        &name,
        WAIT,
        "Ready with both members invited",
        |o: &Organization| is_ready(o) && o.status.as_ref().is_some_and(|s| s.members.len() == 2),
    )
    .await;
    let status = org.status.clone().unwrap_or_default();
    let at_fly = invited_at_fly(&name, 2).await;
    assert_eq!(
        orgs_named(&name).await.len(),
        1,
        "exactly one organization at Fly"
    );
    assert_eq!(status.slug.as_deref(), Some(name.as_str()));
    assert_eq!(
        org.annotations().get("bulkhead.dev/external-name"),
        Some(&name)
    );
    assert_eq!(status.external_id.as_deref(), at_fly["id"].as_str());
    assert!(
        org.annotations()
            .get("bulkhead.dev/create-pending")
            .is_none()
    );
    let invited: Vec<String> = pending_invitations(&at_fly)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert!(
        invited.contains(&alice) && invited.contains(&bob),
        "{invited:?}"
    );
    assert!(
        status
            .members
            .iter()
            .all(|m| format!("{:?}", m.state) == "Invited")
    );

    // The token Secret is written, authenticates at Fly, and status shows
    // its name and times, never the token.
    let (token, token_id) = token_in(&client, &secret).await.expect("token Secret");
    assert!(
        authenticates(&token, &name).await,
        "the Secret's token authenticates"
    );
    let t = status.tokens.first().expect("token status");
    assert_eq!(
        (t.name.as_str(), t.secret.clone()),
        ("ci", format!("{TOKENS_NS}/{secret}"))
    );
    assert!(t.expires_at.is_some() && t.issued_at.is_some());
    assert!(
        !serde_json::to_string(&status)
            .unwrap_or_default()
            .contains(&token)
    );

    // Alice and Bob accept: their roles are set (invitations carry none).
    accept_invitations(&at_fly).await;
    wait_until("alice is ADMIN at Fly", || async {
        role_at_fly(&name, &alice).await.as_deref() == Some("ADMIN")
    })
    .await;
    wait_for(&orgs, &name, WAIT, "alice active", |o: &Organization| {
        o.status.as_ref().is_some_and(|s| {
            s.members
                .iter()
                .any(|m| m.email == alice && format!("{:?}", m.state) == "Active")
        })
    })
    .await;

    assert_eq!(role_at_fly(&name, &bob).await.as_deref(), Some("MEMBER"));

    // Bob leaves the spec: his membership is removed at Fly.
    orgs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "members": [{ "email": alice, "role": "admin" }] } })),
    )
    .await
    .expect("remove bob");
    wait_until("bob removed at Fly", || async {
        role_at_fly(&name, &bob).await.is_none()
    })
    .await;

    // Drift at Fly: alice removed behind bulkhead's back → invited again on
    // the next resync.
    control(
        reqwest::Method::POST,
        "/_emulator/drift/remove-member",
        Some(json!({ "organization": name, "email": alice })),
    )
    .await;
    wait_until("alice invited again", || async {
        org_at_fly(&name)
            .await
            .is_some_and(|o| pending_invitations(&o).iter().any(|(_, e)| *e == alice))
    })
    .await;

    // Alice leaves the spec before accepting again: her invitation is
    // withdrawn.
    orgs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "members": null } })),
    )
    .await
    .expect("remove alice");
    wait_until("alice's invitation withdrawn", || async {
        org_at_fly(&name)
            .await
            .is_some_and(|o| pending_invitations(&o).is_empty())
    })
    .await;

    // Drift at Fly: the token revoked → a new one minted into the Secret.
    control(
        reqwest::Method::POST,
        "/_emulator/drift/revoke-token",
        Some(json!({ "token_id": token_id })),
    )
    .await;
    let (new_token, new_id) = replaced_token(&client, &secret, &name, (&token, &token_id)).await;

    // The token leaves the spec: revoked at Fly.
    orgs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "tokens": null } })),
    )
    .await
    .expect("remove the token");
    wait_until("the token revoked at Fly", || async {
        token_state(&state().await, &new_id).is_some_and(|t| !t["revoked_at"].is_null())
    })
    .await;
    wait_for(
        &orgs,
        &name,
        WAIT,
        "no token in status",
        |o: &Organization| o.status.as_ref().is_some_and(|s| s.tokens.is_empty()),
    )
    .await;

    assert_no_secret_leaked(&client, &[token, new_token]).await;

    // deletionPolicy Delete: the organization goes at Fly.
    delete_and_wait(&orgs, &name, WAIT).await;
    assert!(org_at_fly(&name).await.is_none(), "deleted at Fly");
}

/// The Events about Organization `name` with `reason`, as their notes.
async fn event_notes(client: &Client, name: &str, reason: &str) -> Vec<String> {
    all_events(client)
        .await
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.note)
        .collect()
}

/// A member whose `expiresAt` passes is removed at Fly (after accepting,
/// with the role they were given), drops out of status, and an Event says
/// why; the other member stays.
#[tokio::test]
async fn an_expired_member_is_removed_at_fly_and_the_others_stay() {
    let Start {
        client,
        orgs,
        _faults,
    } = start(false).await;
    let name = format!("expiry-{}", unique());
    let (owner, contractor) = (
        format!("owner@{name}.example"),
        format!("contractor@{name}.example"),
    );
    let ends =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(20);
    fly_org(&name, CREDENTIALS)
        .spec(
            "members",
            json!([
                { "email": owner, "role": "admin" },
                { "email": contractor, "role": "member", "expiresAt": ends.to_string() },
            ]),
        )
        .create(&orgs)
        .await;
    let at_fly = invited_at_fly(&name, 2).await;
    accept_invitations(&at_fly).await;
    wait_until("the contractor is a MEMBER at Fly", || async {
        role_at_fly(&name, &contractor).await.as_deref() == Some("MEMBER")
    })
    .await;

    // Their access ends: removed at Fly, gone from status, an Event says so.
    wait_until("the contractor removed at Fly", || async {
        role_at_fly(&name, &contractor).await.is_none()
    })
    .await;
    assert!(
        k8s_openapi::jiff::Timestamp::now() >= ends,
        "removed only once access ended"
    );
    assert_eq!(role_at_fly(&name, &owner).await.as_deref(), Some("ADMIN"));
    let org = wait_for(
        &orgs,
        &name,
        WAIT,
        "only the owner in status",
        |o: &Organization| {
            o.status
                .as_ref()
                .is_some_and(|s| s.members.iter().map(|m| &m.email).eq([&owner]))
        },
    )
    .await;
    assert!(is_ready(&org), "still Ready");
    let notes = event_notes(&client, &name, "MemberExpired").await;
    assert!(notes.iter().any(|n| n.contains(&contractor)), "{notes:?}");
    delete_and_wait(&orgs, &name, WAIT).await;
}

/// A token two thirds through its life is replaced before it expires: the
/// new one is in its Secret before the old one is revoked at Fly, status
/// shows the new times, and Events say what happened.
#[tokio::test]
async fn a_token_due_for_rotation_is_replaced_before_it_expires_and_the_old_one_revoked() {
    let Start {
        client,
        orgs,
        _faults,
    } = start(false).await;
    let name = format!("rotate-{}", unique());
    let secret = format!("{name}-ci");
    fly_org(&name, CREDENTIALS)
        .spec("tokens", json!([token_spec("ci", &secret)]))
        .spec("deletionPolicy", json!("Delete"))
        .create(&orgs)
        .await;
    let org = wait_for(
        &orgs,
        &name,
        WAIT,
        "Ready with its token",
        |o: &Organization| is_ready(o) && o.status.as_ref().is_some_and(|s| s.tokens.len() == 1),
    )
    .await;
    let first = org.status.unwrap_or_default().tokens.remove(0);
    let (token, token_id) = token_in(&client, &secret).await.expect("token Secret");
    assert_eq!(
        event_notes(&client, &name, "TokenMinted").await.len(),
        1,
        "one TokenMinted Event for the first token"
    );

    // The 2 h token aged by 90 min: 30 min left, under a third of its
    // lifetime, and still valid.
    let aged = control(
        reqwest::Method::POST,
        "/_emulator/drift/age-token",
        Some(json!({ "token_id": token_id, "seconds": 5400 })),
    )
    .await;
    assert_eq!(aged["aged"], token_id.as_str(), "{aged}");
    assert!(
        authenticates(&token, &name).await,
        "the aged token is still valid: rotation comes before expiry"
    );

    let (new_token, new_id) = replaced_token(&client, &secret, &name, (&token, &token_id)).await;
    let org = wait_for(
        &orgs,
        &name,
        WAIT,
        "status shows the new token",
        |o: &Organization| {
            o.status
                .as_ref()
                .and_then(|s| s.tokens.first())
                .is_some_and(|t| t.issued_at != first.issued_at)
        },
    )
    .await;
    let now = org.status.unwrap_or_default().tokens.remove(0);
    let (issued, expires) = (
        now.issued_at.expect("issuedAt").0,
        now.expires_at.expect("expiresAt").0,
    );
    assert_eq!(
        expires.as_second() - issued.as_second(),
        7200,
        "the new token has the spec's full 2 h"
    );

    // Events name the token and its Secret, never its value.
    let minted = event_notes(&client, &name, "TokenMinted").await;
    assert!(
        minted.iter().any(|n| n.starts_with(&format!(
            "minted a new token ci into Secret {TOKENS_NS}/{secret}"
        ))),
        "{minted:?}"
    );
    let revoked = event_notes(&client, &name, "TokenRevoked").await;
    assert!(
        revoked.iter().any(|n| n.contains("token ci it replaces")),
        "{revoked:?}"
    );

    // Rotated once, not again: one live token of this name at Fly.
    let fly_name = format!("bulkhead:{name}:ci");
    let live = |state: &Value| -> Vec<String> {
        state["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["revoked_at"].is_null() && t["name"] == fly_name.as_str())
            .filter_map(|t| t["id"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(live(&state().await), vec![new_id.clone()], "one live token");

    assert_no_secret_leaked(&client, &[token, new_token]).await;
    delete_and_wait(&orgs, &name, WAIT).await;
}

#[tokio::test]
async fn wrong_credentials_are_reported_by_secret_name_and_nothing_is_created() {
    let Start {
        client,
        orgs,
        _faults,
    } = start(false).await;
    let name = format!("wrong-{}", unique());
    let bad = format!("bad-{name}");
    let bad_token = format!("not-a-valid-token-{name}");
    put_credentials(&client, &bad, &bad_token).await;
    fly_org(&name, &bad).create(&orgs).await;
    let org = wait_reason(&orgs, &name, "Synced", "False", "CredentialsRejected").await;
    let message = message_of(&org, "Synced");
    assert!(
        message.contains(&format!("Secret {CREDENTIALS_NS}/{bad}")),
        "{message}"
    );
    assert!(
        !message.contains(&bad_token),
        "the message carries the token"
    );
    assert!(orgs_named(&name).await.is_empty(), "nothing created at Fly");
    assert!(
        org.annotations()
            .get("bulkhead.dev/external-name")
            .is_none()
    );
    assert_no_secret_leaked(&client, &[bad_token]).await;
    delete_and_wait(&orgs, &name, WAIT).await;
}

#[tokio::test]
async fn deletion_policy_orphan_leaves_the_organization_at_fly() {
    let Start { orgs, _faults, .. } = start(false).await;
    let name = format!("orphan-{}", unique());
    fly_org(&name, CREDENTIALS).create(&orgs).await;
    wait_for(&orgs, &name, WAIT, "Ready", is_ready).await;
    delete_and_wait(&orgs, &name, WAIT).await;
    assert!(org_at_fly(&name).await.is_some(), "Orphan leaves it at Fly");
}

#[tokio::test]
async fn observe_only_adopts_by_external_name_and_never_writes() {
    let Start { orgs, _faults, .. } = start(false).await;
    let name = format!("adopt-{}", unique());
    // Made at Fly by someone else, with a member bulkhead's spec lacks.
    let at_fly = create_org_at_fly(&format!("Legacy {name}")).await;
    let slug = at_fly["slug"].as_str().expect("slug").to_string();
    let id = at_fly["id"].as_str().map(str::to_string);
    fly_org(&name, CREDENTIALS)
        .annotation("bulkhead.dev/external-name", &slug)
        .member(&format!("someone@{name}.example"), "member")
        .spec("managementPolicy", json!("ObserveOnly"))
        .create(&orgs)
        .await;
    let org = wait_for(&orgs, &name, WAIT, "Ready", is_ready).await;
    let status = org.status.clone().unwrap_or_default();
    assert_eq!(status.external_id, id);
    assert_eq!(status.slug.as_deref(), Some(slug.as_str()));
    assert!(
        is_true(&org, "Synced"),
        "Synced: {}",
        message_of(&org, "Synced")
    );
    let at_fly = org_at_fly(&slug).await.expect("still at Fly");
    assert!(
        pending_invitations(&at_fly).is_empty(),
        "ObserveOnly invited nobody"
    );
    delete_and_wait(&orgs, &name, WAIT).await;
    assert!(
        org_at_fly(&slug).await.is_some(),
        "ObserveOnly never deletes"
    );
}

/// Under 20% 503s and 10% 429s (Retry-After 1 s) on every GraphQL call, an
/// Organization with a member and a token converges with exactly one
/// organization at Fly. Asserted beyond that: every 429 the emulator sent
/// was an injected one (`responses_by_status[429]` equals
/// `faults_injected.rate_limit`, `rate_limited_total` is 0), so bulkhead's
/// own rate limiter never made the emulator refuse it.
#[tokio::test]
async fn converges_under_injected_5xx_and_429_with_exactly_one_organization() {
    let Start {
        client,
        orgs,
        _faults,
    } = start(true).await;
    let name = format!("faulty-{}", unique());
    let secret = format!("{name}-deploy");
    let before = counters().await;
    inject_faults("/graphql", 0.2, 0.1).await;
    fly_org(&name, CREDENTIALS)
        .member(&format!("carol@{name}.example"), "member")
        .spec("tokens", json!([token_spec("deploy", &secret)]))
        .create(&orgs)
        .await;
    let counters = converged_under_faults(
        &before,
        "Ready with the member invited and the token written",
        || async {
            let org = orgs.get_opt(&name).await.ok()??;
            let s = org.status.as_ref()?;
            let done = is_ready(&org) && s.members.len() == 1 && s.tokens.len() == 1;
            (done && token_in(&client, &secret).await.is_some()).then_some(())
        },
    )
    .await;
    assert_eq!(
        orgs_named(&name).await.len(),
        1,
        "exactly one organization at Fly"
    );
    let injected = &counters["faults_injected"];
    assert_eq!(
        counters["responses_by_status"]["429"].as_u64().unwrap_or(0),
        injected["rate_limit"].as_u64().unwrap_or(0),
        "every 429 was an injected one: {counters}"
    );
    assert_eq!(counters["rate_limited_total"], 0, "{counters}");
    let (token, _) = token_in(&client, &secret).await.expect("token Secret");
    assert!(
        authenticates(&token, &name).await,
        "the token authenticates"
    );
    assert_no_secret_leaked(&client, &[token]).await;
    delete_and_wait(&orgs, &name, WAIT).await;
}

/// The create-pending guard, for a provider that picks names: a create
/// started and never recorded (a crash) with nothing at Fly under the name
/// is refused (`CreatePendingUnresolved`, nothing created); with the
/// organization there (the create happened), its slug is recorded and the
/// guard cleared, with no second organization.
#[tokio::test]
async fn a_create_left_pending_is_resolved_by_lookup_or_refused() {
    let Start { orgs, _faults, .. } = start(false).await;

    let lost = format!("lost-{}", unique());
    fly_org(&lost, CREDENTIALS)
        .annotation("bulkhead.dev/create-pending", "2026-01-01T00:00:00Z")
        .create(&orgs)
        .await;
    wait_reason(&orgs, &lost, "Synced", "False", "CreatePendingUnresolved").await;
    assert!(orgs_named(&lost).await.is_empty(), "nothing created");

    let made = format!("made-{}", unique());
    assert_eq!(create_org_at_fly(&made).await["slug"], made.as_str());
    fly_org(&made, CREDENTIALS)
        .annotation("bulkhead.dev/create-pending", "2026-01-01T00:00:00Z")
        .create(&orgs)
        .await;
    let org = wait_for(
        &orgs,
        &made,
        WAIT,
        "Ready with the guard cleared",
        |o: &Organization| {
            is_ready(o) && !o.annotations().contains_key("bulkhead.dev/create-pending")
        },
    )
    .await;
    assert_eq!(
        org.annotations().get("bulkhead.dev/external-name"),
        Some(&made)
    );
    assert_eq!(orgs_named(&made).await.len(), 1, "no second organization");

    for name in [lost, made] {
        delete_and_wait(&orgs, &name, WAIT).await;
    }
}
