//! The emulator over real HTTP on 127.0.0.1: GraphQL validation and
//! execution, organizations and memberships, scoped tokens, the Machines
//! API's contract (name_taken, body validation), Managed Postgres, rate
//! limits, fault injection and the request log.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, bearer, config, error_code, ops, start};

#[tokio::test]
async fn an_invalid_graphql_document_gets_the_validation_error() {
    let emu = start(config()).await;
    let (status, body) = emu
        .gql(
            Some(&bearer()),
            "{ organization(slug: \"personal\") { id noSuchField } }",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("noSuchField")
    );

    // A missing required argument is a validation error too.
    let (_, body) = emu
        .gql(
            Some(&bearer()),
            "mutation { createOrganization { token } }",
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    emu.server.shutdown().await;
}

#[tokio::test]
async fn projection_follows_aliases_fragments_and_directives() {
    let emu = start(config()).await;
    let data = emu
        .gql_ok(ops::ORG_SHAPES, json!({"withMembers": true}))
        .await;
    let org = &data["org"];
    assert_eq!(org["__typename"], "Organization");
    assert_eq!(org["slug"], "personal");
    assert_eq!(org["kind"], "PERSONAL");
    assert_eq!(org["people"]["count"], 1);
    assert!(org["orgId"].as_str().is_some_and(|id| !id.is_empty()));
    // Fields come back in the order they were selected.
    let (_, raw) = emu
        .gql(
            Some(&bearer()),
            ops::ORG_SHAPES,
            json!({"withMembers": false}),
        )
        .await;
    let keys: Vec<&String> = raw["data"]["org"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert!(raw["data"]["org"].get("people").is_none(), "{raw}");
    assert_eq!(keys.len(), 4, "{raw}");
    emu.server.shutdown().await;
}

#[tokio::test]
async fn organization_invite_accept_role_and_removal() {
    let emu = start(config()).await;
    let (org_id, slug) = emu.create_org("Acme Corp").await;
    assert_eq!(slug, "acme-corp");
    // The server picks a unique slug for a name already in use.
    let (_, second_slug) = emu.create_org("Acme Corp").await;
    assert_eq!(second_slug, "acme-corp-1");

    let data = emu
        .gql_ok(
            ops::INVITE,
            json!({"org": org_id, "email": "dev@example.com"}),
        )
        .await;
    let invitation = &data["createOrganizationInvitation"]["invitation"];
    assert_eq!(invitation["redeemed"], false);
    assert_eq!(invitation["organization"]["slug"], "acme-corp");
    let invitation_id = invitation["id"]
        .as_str()
        .expect("invitation id")
        .to_string();

    let data = emu.gql_ok(ops::ORG_BY_SLUG, json!({"slug": slug})).await;
    assert_eq!(
        data["organization"]["invitations"]["nodes"][0]["email"],
        "dev@example.com"
    );
    assert_eq!(data["organization"]["members"]["totalCount"], 1);

    // The invitee is no member until the invitation is accepted.
    let (status, accepted) = emu
        .control(
            Method::POST,
            &format!("/invitations/{invitation_id}/accept"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    let user_id = accepted["user"]["id"]
        .as_str()
        .expect("user id")
        .to_string();

    let data = emu
        .gql_ok(
            ops::SET_ROLE,
            json!({"org": org_id, "user": user_id, "role": "ADMIN"}),
        )
        .await;
    let edges = data["updateOrganizationMembership"]["organization"]["members"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dev = edges
        .iter()
        .find(|e| e["node"]["email"] == "dev@example.com")
        .expect("dev is a member");
    assert_eq!(dev["role"], "ADMIN");

    let data = emu
        .gql_ok(ops::REMOVE_MEMBER, json!({"org": org_id, "user": user_id}))
        .await;
    assert_eq!(
        data["deleteOrganizationMembership"]["organization"]["members"]["totalCount"],
        1
    );

    // A removed member has no membership whose role could be set.
    let (_, body) = emu
        .gql(
            Some(&bearer()),
            ops::SET_ROLE,
            json!({"org": org_id, "user": user_id, "role": "MEMBER"}),
        )
        .await;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");
    assert_eq!(
        body["errors"][0]["path"],
        json!(["updateOrganizationMembership"])
    );

    // deleteOrganization takes the node ID; the slug is not one.
    let (_, body) = emu
        .gql(Some(&bearer()), ops::DELETE_ORG, json!({"id": slug}))
        .await;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");
    let data = emu.gql_ok(ops::DELETE_ORG, json!({"id": org_id})).await;
    assert_eq!(data["deleteOrganization"]["deletedOrganizationId"], org_id);
    let (_, body) = emu
        .gql(Some(&bearer()), ops::ORG_BY_ID, json!({"id": org_id}))
        .await;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");
    emu.server.shutdown().await;
}

#[tokio::test]
async fn personal_organizations_refuse_invitations() {
    let emu = start(config()).await;
    let data = emu
        .gql_ok(ops::ORG_BY_SLUG, json!({"slug": "personal"}))
        .await;
    assert_eq!(data["organization"]["type"], "PERSONAL");
    let org_id = data["organization"]["id"].as_str().expect("id").to_string();
    let (_, body) = emu
        .gql(
            Some(&bearer()),
            ops::INVITE,
            json!({"org": org_id, "email": "x@example.com"}),
        )
        .await;
    assert_eq!(error_code(&body), Some("VALIDATION"), "{body}");
    assert_eq!(body["data"]["createOrganizationInvitation"], Value::Null);
    emu.server.shutdown().await;
}

async fn mint(
    emu: &support::Emu,
    org_id: &str,
    profile: &str,
    params: Value,
    expiry: Option<&str>,
) -> (String, String) {
    let data = emu
        .gql_ok(
            ops::CREATE_TOKEN,
            json!({"org": org_id, "name": "ci", "profile": profile, "params": params, "expiry": expiry}),
        )
        .await;
    let token = &data["createLimitedAccessToken"]["limitedAccessToken"];
    let header = token["tokenHeader"]
        .as_str()
        .expect("tokenHeader")
        .to_string();
    assert!(header.starts_with("FlyV1 fm2_"), "{header}");
    assert_eq!(
        header,
        format!("FlyV1 {}", token["token"].as_str().unwrap_or_default())
    );
    (token["id"].as_str().expect("token id").to_string(), header)
}

#[tokio::test]
async fn minted_tokens_are_scoped_and_die_when_revoked_or_expired() {
    let emu = start(config()).await;
    let (org_id, slug) = emu.create_org("Tokens Inc").await;
    let (other_org_id, other_slug) = emu.create_org("Elsewhere").await;
    emu.create_app("tok-app", &slug).await;
    emu.create_app("tok-app-two", &slug).await;
    emu.create_app("other-app", &other_slug).await;

    // Organization token: its organization only.
    let (org_token_id, org_header) = mint(
        &emu,
        &org_id,
        "deploy_organization",
        Value::Null,
        Some("720h"),
    )
    .await;
    let (status, _, body) = emu
        .rest(
            Some(&org_header),
            Method::GET,
            &format!("/v1/apps?org_slug={slug}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total_apps"], 2);
    let (status, _, _) = emu
        .rest(
            Some(&org_header),
            Method::GET,
            &format!("/v1/apps?org_slug={other_slug}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = emu
        .rest(Some(&org_header), Method::GET, "/v1/apps/other-app", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body) = emu
        .gql(
            Some(&org_header),
            ops::ORG_BY_ID,
            json!({"id": other_org_id}),
        )
        .await;
    assert_eq!(error_code(&body), Some("UNAUTHORIZED"), "{body}");

    // Deploy token: that app only.
    let (_, app_header) = mint(&emu, &org_id, "deploy", json!({"app_id": "tok-app"}), None).await;
    let (status, _, _) = emu
        .rest(Some(&app_header), Method::GET, "/v1/apps/tok-app", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = emu
        .rest(Some(&app_header), Method::GET, "/v1/apps/tok-app-two", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = emu
        .rest(
            Some(&app_header),
            Method::GET,
            &format!("/v1/apps?org_slug={slug}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Revoked → 401 in both APIs' error shapes.
    emu.gql_ok(ops::DELETE_TOKEN, json!({"id": org_token_id}))
        .await;
    let (status, _, body) = emu
        .rest(Some(&org_header), Method::GET, "/v1/apps/tok-app", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked")),
        "{body}"
    );
    let (status, body) = emu
        .gql(Some(&org_header), ops::ORG_BY_ID, json!({"id": org_id}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), Some("UNAUTHORIZED"), "{body}");
    assert_eq!(body["data"], Value::Null);

    // Revoked through drift → 401.
    let (drift_id, drift_header) =
        mint(&emu, &org_id, "deploy_organization", Value::Null, None).await;
    let (status, _) = emu
        .control(
            Method::POST,
            "/drift/revoke-token",
            Some(json!({"token_id": drift_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = emu
        .rest(Some(&drift_header), Method::GET, "/v1/apps/tok-app", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Expired → 401.
    let (_, short_header) = mint(
        &emu,
        &org_id,
        "deploy_organization",
        Value::Null,
        Some("1s"),
    )
    .await;
    let (status, _, _) = emu
        .rest(Some(&short_header), Method::GET, "/v1/apps/tok-app", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _, body) = emu
        .rest(Some(&short_header), Method::GET, "/v1/apps/tok-app", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("expired")),
        "{body}"
    );

    // Unknown tokens and a bad expiry.
    let (status, _, _) = emu
        .rest(
            Some("FlyV1 fm2_nonsense"),
            Method::GET,
            "/v1/apps/tok-app",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = emu
        .rest(Some("Bearer wrong"), Method::GET, "/v1/apps/tok-app", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = emu.rest(None, Method::GET, "/v1/apps/tok-app", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, body) = emu
        .gql(Some(&bearer()), ops::CREATE_TOKEN, json!({"org": org_id, "name": "x", "profile": "deploy_organization", "expiry": "3 days"}))
        .await;
    assert_eq!(error_code(&body), Some("VALIDATION"), "{body}");
    emu.server.shutdown().await;
}

#[tokio::test]
async fn app_names_are_global_across_organizations() {
    let emu = start(config()).await;
    let (_, first) = emu.create_org("First").await;
    let (_, second) = emu.create_org("Second").await;
    emu.create_app("shared-name", &first).await;
    let (status, body) = emu
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "shared-name", "org_slug": second})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["status"], "name_taken", "{body}");
    assert!(body["error"].is_string());

    // The network is fixed at creation and shows on the app.
    let (status, app) = emu.admin(Method::GET, "/v1/apps/shared-name", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app["network"], "shared-name-net");
    assert_eq!(app["organization"]["slug"], first);

    // A retry with the same idempotency key is answered with the first app.
    let create = json!({"name": "idem-app", "org_slug": first, "idempotency_key": "k1"});
    let (status, one) = emu
        .admin(Method::POST, "/v1/apps", Some(create.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, two) = emu.admin(Method::POST, "/v1/apps", Some(create)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(one["id"], two["id"]);

    let (status, _) = emu.admin(Method::DELETE, "/v1/apps/idem-app", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = emu.admin(Method::GET, "/v1/apps/idem-app", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    emu.server.shutdown().await;
}

#[tokio::test]
async fn rest_bodies_are_validated_against_the_openapi_schemas() {
    let emu = start(config()).await;
    let (_, slug) = emu.create_org("Strict").await;
    // Wrong type.
    let (status, body) = emu
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "typed", "org_slug": slug, "network": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("network")),
        "{body}"
    );
    // Missing required field (plan) in Managed Postgres create.
    let (status, body) = emu
        .admin(
            Method::POST,
            "/v1/postgres",
            Some(json!({"org_slug": slug, "region": "iad"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("plan")),
        "{body}"
    );
    // An enum value outside the spec.
    let (status, _) = emu
        .admin(
            Method::POST,
            "/v1/postgres",
            Some(json!({"org_slug": slug, "region": "iad", "plan": "gigantic"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Not JSON at all.
    let (status, _, body) = emu
        .rest(
            Some(&bearer()),
            Method::POST,
            "/v1/apps",
            Some(Value::String("{".into())),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Paths and methods come from the spec.
    let (status, _) = emu.admin(Method::GET, "/v1/no-such-thing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = emu.admin(Method::PUT, "/v1/apps", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    emu.create_app("unimpl", &slug).await;
    let (status, body) = emu
        .admin(Method::GET, "/v1/apps/unimpl/certificates", None)
        .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not implemented")),
        "{body}"
    );
    emu.server.shutdown().await;
}

#[tokio::test]
async fn postgres_flex_steps_and_machines() {
    let emu = start(config()).await;
    let (_, slug) = emu.create_org("Flex").await;
    let (status, body) = emu
        .admin(
            Method::POST,
            "/v1/apps",
            Some(
                json!({"app_name": "pg-flex", "org_slug": slug, "app_role_id": "postgres_cluster"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let data = emu
        .gql_ok(ops::LATEST_IMAGE, json!({"repo": "flyio/postgres-flex"}))
        .await;
    let tag = data["latestImageTag"].as_str().expect("tag").to_string();
    let (status, ip) = emu
        .admin(
            Method::POST,
            "/v1/apps/pg-flex/ip_assignments",
            Some(json!({"type": "private_v6"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ip}");
    assert!(
        ip["ip"].as_str().is_some_and(|a| a.starts_with("fdaa:")),
        "{ip}"
    );
    assert_eq!(ip["network"]["org_slug"], slug);
    let data = emu
        .gql_ok(ops::ENABLE_CONSUL, json!({"app": "pg-flex"}))
        .await;
    assert!(
        data["enablePostgresConsul"]["consulUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://"))
    );
    let (status, secrets) = emu
        .admin(
            Method::POST,
            "/v1/apps/pg-flex/secrets",
            Some(json!({"values": {"SU_PASSWORD": "a", "REPL_PASSWORD": "b", "OPERATOR_PASSWORD": "c"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{secrets}");
    assert_eq!(secrets["secrets"].as_array().map(Vec::len), Some(3));
    assert!(
        secrets["secrets"][0].get("value").is_none(),
        "values are not echoed"
    );

    let (status, volume) = emu
        .admin(
            Method::POST,
            "/v1/apps/pg-flex/volumes",
            Some(json!({"name": "pg_data", "region": "iad", "size_gb": 1, "encrypted": true, "require_unique_zone": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{volume}");
    let volume_id = volume["id"].as_str().expect("volume id").to_string();
    let config = json!({
        "image": format!("flyio/postgres-flex:{tag}"),
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "mounts": [{"volume": volume_id, "path": "/data"}],
        "restart": {"policy": "always"},
        "checks": {"pg": {"port": 5500, "type": "http", "path": "/flycheck/pg"}},
        "metrics": {"port": 9187, "path": "/metrics"},
    });
    let (status, machine) = emu
        .admin(
            Method::POST,
            "/v1/apps/pg-flex/machines",
            Some(json!({"region": "iad", "config": config})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{machine}");
    assert_eq!(machine["state"], "started");
    let machine_id = machine["id"].as_str().expect("machine id").to_string();
    let (_, volume) = emu
        .admin(
            Method::GET,
            &format!("/v1/apps/pg-flex/volumes/{volume_id}"),
            None,
        )
        .await;
    assert_eq!(volume["attached_machine_id"], machine_id);
    // A second machine cannot mount the attached volume.
    let (status, _) = emu
        .admin(
            Method::POST,
            "/v1/apps/pg-flex/machines",
            Some(json!({"region": "iad", "config": config})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A machine config of the wrong shape is refused by the schema.
    let (status, _) = emu
        .admin(
            Method::POST,
            "/v1/apps/pg-flex/machines",
            Some(json!({"config": {"image": "x", "guest": {"cpus": "one"}}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Updates are guarded by current_version (409 when stale).
    let version = machine["version"].as_str().expect("version").to_string();
    let update_path = format!("/v1/apps/pg-flex/machines/{machine_id}");
    let (status, _) = emu
        .admin(
            Method::POST,
            &update_path,
            Some(json!({"config": config, "current_version": "stale"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, updated) = emu
        .admin(
            Method::POST,
            &update_path,
            Some(json!({"config": config, "current_version": version})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_ne!(updated["version"], json!(version));
    // A started machine is not destroyed without force.
    let path = format!("/v1/apps/pg-flex/machines/{machine_id}");
    let (status, _) = emu.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _) = emu
        .admin(Method::POST, &format!("{path}/stop"), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, waited) = emu
        .admin(Method::GET, &format!("{path}/wait?state=stopped"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{waited}");

    // Drift: the machine disappears behind the client's back.
    let (status, _) = emu
        .control(
            Method::POST,
            "/drift/destroy-machine",
            Some(json!({"app": "pg-flex", "machine_id": machine_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = emu.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, machines) = emu
        .admin(Method::GET, "/v1/apps/pg-flex/machines", None)
        .await;
    assert_eq!(machines, json!([]));

    let (status, state) = emu.control(Method::GET, "/state", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["apps"]["pg-flex"]["app_role_id"], "postgres_cluster");
    emu.server.shutdown().await;
}

#[tokio::test]
async fn managed_postgres_create_polls_to_ready() {
    let emu = start(config()).await;
    let (_, slug) = emu.create_org("Managed").await;
    let (status, created) = emu
        .admin(
            Method::POST,
            "/v1/postgres",
            Some(json!({"org_slug": slug, "plan": "basic", "region": "iad", "name": "main-db"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["data"]["status"], "creating");
    assert!(created["data"].get("endpoints").is_none());
    let id = created["data"]["id"]
        .as_str()
        .expect("cluster id")
        .to_string();

    // Sub-resources answer 503 with Retry-After until the cluster is ready.
    let (status, headers, _) = emu
        .rest(
            Some(&bearer()),
            Method::POST,
            &format!("/v1/postgres/{id}/databases"),
            Some(json!({"name": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get("retry-after").is_some());

    let mut polls = 0;
    let ready = loop {
        let (status, shown) = emu
            .admin(Method::GET, &format!("/v1/postgres/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        if shown["data"]["status"] == "ready" {
            break shown;
        }
        polls += 1;
        assert!(polls < 50, "cluster never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(polls > 0, "create is asynchronous");
    assert_eq!(
        ready["data"]["endpoints"]["primary"]["direct"]["port"],
        5432
    );

    let (status, _) = emu
        .admin(
            Method::POST,
            &format!("/v1/postgres/{id}/databases"),
            Some(json!({"name": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, user) = emu
        .admin(
            Method::POST,
            &format!("/v1/postgres/{id}/users"),
            Some(json!({"username": "app_user", "role": "writer"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["data"]["role"], "writer");
    let (status, _) = emu
        .admin(
            Method::POST,
            &format!("/v1/postgres/{id}/users"),
            Some(json!({"username": "boss", "role": "owner"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "roles are schema_admin|writer|reader"
    );
    let (status, _) = emu
        .admin(
            Method::PATCH,
            &format!("/v1/postgres/{id}/users/app_user"),
            Some(json!({"role": "reader"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, users) = emu
        .admin(Method::GET, &format!("/v1/postgres/{id}/users"), None)
        .await;
    assert_eq!(
        users["data"],
        json!([{"username": "app_user", "role": "reader"}])
    );
    let (status, creds) = emu
        .admin(
            Method::GET,
            &format!("/v1/postgres/{id}/users/app_user/credentials"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        creds["data"]["password"]
            .as_str()
            .is_some_and(|p| p.len() >= 16)
    );
    let (_, dbs) = emu
        .admin(Method::GET, &format!("/v1/postgres/{id}/databases"), None)
        .await;
    assert!(
        dbs["data"]
            .as_array()
            .is_some_and(|d| d.contains(&json!({"name": "app"})))
    );
    let (_, list) = emu
        .admin(Method::GET, &format!("/v1/postgres?org_slug={slug}"), None)
        .await;
    assert_eq!(list["data"][0]["id"], id);
    let (status, _) = emu
        .admin(Method::DELETE, &format!("/v1/postgres/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    emu.server.shutdown().await;
}

#[tokio::test]
async fn machines_api_rate_limits_answer_429_with_retry_after() {
    let mut cfg = config();
    cfg.rate_limits.enabled = true;
    let emu = start(cfg).await;
    let (_, slug) = emu.create_org("Limited").await;
    emu.create_app("busy-app", &slug).await;
    // 1 request/s per action per app with a burst of 3.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let (status, headers, _) = emu
            .rest(
                Some(&bearer()),
                Method::GET,
                "/v1/apps/busy-app/machines",
                None,
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3], "{statuses:?}");
    assert!(
        statuses[3..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another action on the same app has its own bucket.
    let (status, _) = emu
        .admin(Method::GET, "/v1/apps/busy-app/volumes", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, counters) = emu.control(Method::GET, "/counters", None).await;
    assert!(
        counters["rate_limited_total"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{counters}"
    );
    // The control API turns them off.
    let (status, _) = emu
        .control(Method::PUT, "/rate-limits", Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = emu
        .admin(Method::GET, "/v1/apps/busy-app/machines", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    emu.server.shutdown().await;
}

/// Statuses of `count` app lookups with a 5xx fraction set.
async fn faulty_run(seed: u64, count: usize) -> Vec<u16> {
    let mut cfg = config();
    cfg.seed = seed;
    let emu = start(cfg).await;
    let (_, slug) = emu.create_org("Faulty").await;
    emu.create_app("flaky", &slug).await;
    let (status, _) = emu
        .control(
            Method::PUT,
            "/faults",
            Some(json!({"rules": [{"path_prefix": "/v1/apps/flaky", "error_fraction": 0.3, "error_status": 502}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut statuses = Vec::new();
    for _ in 0..count {
        let (status, _, body) = emu
            .rest(Some(&bearer()), Method::GET, "/v1/apps/flaky", None)
            .await;
        if status.is_server_error() {
            assert!(
                body["error"].is_string(),
                "fault in Fly's error shape: {body}"
            );
        }
        statuses.push(status.as_u16());
    }
    emu.server.shutdown().await;
    statuses
}

#[tokio::test]
async fn injected_5xx_fraction_is_honoured_and_reproducible() {
    let first = faulty_run(7, 300).await;
    let failures = first.iter().filter(|s| **s == 502).count();
    assert!(
        (60..=120).contains(&failures),
        "{failures} of 300 failed for a 0.3 fraction"
    );
    assert!(first.iter().all(|s| *s == 200 || *s == 502));
    let again = faulty_run(7, 300).await;
    assert_eq!(first, again, "the same seed gives the same faults");
}

#[tokio::test]
async fn faults_drop_connections_delay_and_rate_limit() {
    let emu = start(config()).await;
    let (status, _) = emu
        .control(
            Method::PUT,
            "/faults",
            Some(json!({"rules": [{"path_prefix": "/graphql", "drop_fraction": 1.0}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let dropped = emu
        .http
        .post(format!("{}/graphql", emu.base))
        .json(&json!({"query": ops::VIEWER}))
        .send()
        .await;
    assert!(
        dropped.is_err(),
        "connection should be dropped: {dropped:?}"
    );

    let (status, _) = emu
        .control(
            Method::PUT,
            "/faults",
            Some(json!({"rules": [{"rate_limit_fraction": 1.0, "retry_after_secs": 4, "latency_ms": 150}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let started = std::time::Instant::now();
    let (status, headers, _) = emu
        .rest(
            Some(&bearer()),
            Method::GET,
            "/v1/apps?org_slug=personal",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("4")
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    let (status, _) = emu.control(Method::DELETE, "/faults", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = emu
        .admin(Method::GET, "/v1/apps?org_slug=personal", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, counters) = emu.control(Method::GET, "/counters", None).await;
    assert_eq!(counters["faults_injected"]["drop"], 1, "{counters}");
    emu.server.shutdown().await;
}

#[tokio::test]
async fn the_request_log_carries_no_token() {
    let log_path = std::env::temp_dir().join(format!(
        "fly-emulator-log-{}-{}.jsonl",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    let mut cfg = config();
    cfg.request_log = Some(log_path.clone());
    let emu = start(cfg).await;
    let (org_id, slug) = emu.create_org("Logged").await;
    emu.create_app("logged-app", &slug).await;
    let data = emu
        .gql_ok(ops::CREATE_TOKEN, json!({"org": org_id, "name": "t", "profile": "deploy_organization", "params": null, "expiry": null}))
        .await;
    let secret = data["createLimitedAccessToken"]["limitedAccessToken"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let header = format!("FlyV1 {secret}");
    let (status, _, _) = emu
        .rest(Some(&header), Method::GET, "/v1/apps/logged-app", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // The secret inside a body (revoking by token) is redacted too.
    emu.gql_ok(ops::DELETE_TOKEN, json!({"token": secret}))
        .await;
    let (status, _, deploy) = emu
        .rest(
            Some(&bearer()),
            Method::POST,
            "/v1/apps/logged-app/deploy_token",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let deploy_header = deploy["token"].as_str().expect("deploy token").to_string();
    emu.rest(
        Some(&deploy_header),
        Method::GET,
        "/v1/apps/logged-app",
        None,
    )
    .await;
    emu.server.shutdown().await;

    let log = std::fs::read_to_string(&log_path).expect("request log written");
    let _ = std::fs::remove_file(&log_path);
    assert!(!log.contains(ADMIN_TOKEN), "admin token leaked");
    assert!(!log.contains(&secret), "minted token leaked");
    assert!(
        !log.contains(deploy_header.trim_start_matches("FlyV1 ")),
        "deploy token leaked"
    );
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(lines.len() >= 7, "{} lines", lines.len());
    for line in &lines {
        for key in ["method", "path", "query", "body", "status", "authorization"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
    let schemes: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["authorization"].as_str())
        .collect();
    assert!(
        schemes.contains(&"Bearer") && schemes.contains(&"FlyV1"),
        "{schemes:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/v1/apps/logged-app" && l["status"] == 200)
    );
}

#[tokio::test]
async fn drift_removes_members_and_postgres_can_be_made_ready() {
    let emu = start(config()).await;
    let (org_id, slug) = emu.create_org("Drifting").await;
    let data = emu
        .gql_ok(
            ops::INVITE,
            json!({"org": org_id, "email": "gone@example.com"}),
        )
        .await;
    let invitation_id = data["createOrganizationInvitation"]["invitation"]["id"]
        .as_str()
        .expect("invitation id")
        .to_string();
    let (_, accepted) = emu
        .control(
            Method::POST,
            &format!("/invitations/{invitation_id}/accept"),
            None,
        )
        .await;
    let user_id = accepted["user"]["id"]
        .as_str()
        .expect("user id")
        .to_string();
    // Accepting twice is refused.
    let (status, _) = emu
        .control(
            Method::POST,
            &format!("/invitations/{invitation_id}/accept"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, _) = emu
        .control(
            Method::POST,
            "/drift/remove-member",
            Some(json!({"organization": slug, "email": "gone@example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let data = emu.gql_ok(ops::ORG_BY_SLUG, json!({"slug": slug})).await;
    assert_eq!(data["organization"]["members"]["totalCount"], 1);
    let (_, body) = emu
        .gql(
            Some(&bearer()),
            ops::SET_ROLE,
            json!({"org": org_id, "user": user_id, "role": "ADMIN"}),
        )
        .await;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");

    // Removing the bootstrap user locks it out of the organization.
    let (_, state) = emu.control(Method::GET, "/state", None).await;
    let admin_id = state["admin_user_id"]
        .as_str()
        .expect("admin id")
        .to_string();
    let (status, _) = emu
        .control(
            Method::POST,
            "/drift/remove-member",
            Some(json!({"organization": org_id, "user_id": admin_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = emu
        .gql(Some(&bearer()), ops::ORG_BY_ID, json!({"id": org_id}))
        .await;
    assert_eq!(error_code(&body), Some("UNAUTHORIZED"), "{body}");

    let mut cfg = config();
    cfg.postgres_ready_after = Duration::from_secs(3600);
    let slow = start(cfg).await;
    let (_, created) = slow
        .admin(
            Method::POST,
            "/v1/postgres",
            Some(json!({"org_slug": "personal", "plan": "starter", "region": "ams"})),
        )
        .await;
    let id = created["data"]["id"]
        .as_str()
        .expect("cluster id")
        .to_string();
    let (status, _) = slow
        .control(Method::PUT, &format!("/postgres/{id}/ready"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = slow
        .admin(Method::GET, &format!("/v1/postgres/{id}"), None)
        .await;
    assert_eq!(shown["data"]["status"], "ready");
    slow.server.shutdown().await;
    emu.server.shutdown().await;
}
