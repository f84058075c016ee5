//! The emulator over real HTTP on 127.0.0.1: GraphQL validation and
//! execution, organizations and memberships, scoped tokens, the Machines
//! API's contract (name_taken, body validation), Managed Postgres, rate
//! limits, fault injection and the request log.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, assert_error_mentions, bearer, config, ops, start, string};

#[tokio::test]
async fn an_invalid_graphql_document_gets_the_validation_error() {
    let emu = start(config()).await;
    let invalid = "{ organization(slug: \"personal\") { id noSuchField } }";
    let (status, body) = emu
        .gql_error(&bearer(), invalid, json!({}), "GRAPHQL_VALIDATION_FAILED")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"], Value::Null, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("noSuchField")
    );

    // A missing required argument is a validation error too.
    let missing_argument = "mutation { createOrganization { token } }";
    emu.admin_gql_error(missing_argument, json!({}), "GRAPHQL_VALIDATION_FAILED")
        .await;
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
    let raw = emu
        .gql_ok(ops::ORG_SHAPES, json!({"withMembers": false}))
        .await;
    let keys: Vec<&String> = raw["org"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert!(raw["org"].get("people").is_none(), "{raw}");
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

    let invitation = emu.invite(&org_id, "dev@example.com").await;
    assert_eq!(invitation["redeemed"], false);
    assert_eq!(invitation["organization"]["slug"], "acme-corp");
    let invitation_id = string(&invitation["id"], "invitation id");

    let data = emu.gql_ok(ops::ORG_BY_SLUG, json!({"slug": slug})).await;
    assert_eq!(
        data["organization"]["invitations"]["nodes"][0]["email"],
        "dev@example.com"
    );
    assert_eq!(data["organization"]["members"]["totalCount"], 1);

    // The invitee is no member until the invitation is accepted.
    let user_id = emu.accept_invitation(&invitation_id).await;

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
    let set_member = json!({"org": org_id, "user": user_id, "role": "MEMBER"});
    let body = emu
        .admin_gql_error(ops::SET_ROLE, set_member, "NOT_FOUND")
        .await;
    assert_eq!(
        body["errors"][0]["path"],
        json!(["updateOrganizationMembership"])
    );

    // deleteOrganization takes the node ID; the slug is not one.
    emu.admin_gql_error(ops::DELETE_ORG, json!({"id": slug}), "NOT_FOUND")
        .await;
    let data = emu.gql_ok(ops::DELETE_ORG, json!({"id": org_id})).await;
    assert_eq!(data["deleteOrganization"]["deletedOrganizationId"], org_id);
    emu.admin_gql_error(ops::ORG_BY_ID, json!({"id": org_id}), "NOT_FOUND")
        .await;
    emu.server.shutdown().await;
}

#[tokio::test]
async fn personal_organizations_refuse_invitations() {
    let emu = start(config()).await;
    let personal = json!({"slug": "personal"});
    let data = emu.gql_ok(ops::ORG_BY_SLUG, personal).await;
    assert_eq!(data["organization"]["type"], "PERSONAL");
    let org_id = string(&data["organization"]["id"], "id");
    let invite = json!({"org": org_id, "email": "x@example.com"});
    let body = emu.admin_gql_error(ops::INVITE, invite, "VALIDATION").await;
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
    let header = string(&token["tokenHeader"], "tokenHeader");
    assert!(header.starts_with("FlyV1 fm2_"), "{header}");
    assert_eq!(
        header,
        format!("FlyV1 {}", token["token"].as_str().unwrap_or_default())
    );
    (string(&token["id"], "token id"), header)
}

#[tokio::test]
async fn minted_tokens_are_scoped_and_die_when_revoked_or_expired() {
    let emu = start(config()).await;
    let (org_id, slug) = emu.create_org("Tokens Inc").await;
    let (other_org_id, other_slug) = emu.create_org("Elsewhere").await;
    for (app, org) in [
        ("tok-app", &slug),
        ("tok-app-two", &slug),
        ("other-app", &other_slug),
    ] {
        emu.create_app(app, org).await;
    }
    let apps_of_org = format!("/v1/apps?org_slug={slug}");
    let apps_of_other_org = format!("/v1/apps?org_slug={other_slug}");
    let tok_app = "/v1/apps/tok-app";

    // Organization token: its organization only.
    let (org_token_id, org_header) = mint(
        &emu,
        &org_id,
        "deploy_organization",
        Value::Null,
        Some("720h"),
    )
    .await;
    let body = emu.get_as(&org_header, &apps_of_org, StatusCode::OK).await;
    assert_eq!(body["total_apps"], 2);
    emu.get_as(&org_header, &apps_of_other_org, StatusCode::FORBIDDEN)
        .await;
    emu.get_as(&org_header, "/v1/apps/other-app", StatusCode::FORBIDDEN)
        .await;
    let other_org = json!({"id": other_org_id});
    emu.gql_error(&org_header, ops::ORG_BY_ID, other_org, "UNAUTHORIZED")
        .await;

    // Deploy token: that app only.
    let (_, app_header) = mint(&emu, &org_id, "deploy", json!({"app_id": "tok-app"}), None).await;
    emu.get_as(&app_header, tok_app, StatusCode::OK).await;
    emu.get_as(&app_header, "/v1/apps/tok-app-two", StatusCode::FORBIDDEN)
        .await;
    emu.get_as(&app_header, &apps_of_org, StatusCode::FORBIDDEN)
        .await;

    // Revoked → 401 in both APIs' error shapes.
    emu.gql_ok(ops::DELETE_TOKEN, json!({"id": org_token_id}))
        .await;
    let body = emu
        .get_as(&org_header, tok_app, StatusCode::UNAUTHORIZED)
        .await;
    assert_error_mentions(&body, "revoked");
    let (status, body) = emu
        .gql_error(
            &org_header,
            ops::ORG_BY_ID,
            json!({"id": org_id}),
            "UNAUTHORIZED",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["data"], Value::Null);

    // Revoked through drift → 401.
    let (drift_id, drift_header) =
        mint(&emu, &org_id, "deploy_organization", Value::Null, None).await;
    let revoke = json!({"token_id": drift_id});
    emu.control_expect(
        Method::POST,
        "/drift/revoke-token",
        Some(revoke),
        StatusCode::OK,
    )
    .await;
    emu.get_as(&drift_header, tok_app, StatusCode::UNAUTHORIZED)
        .await;

    // Expired → 401.
    let (_, short_header) = mint(
        &emu,
        &org_id,
        "deploy_organization",
        Value::Null,
        Some("1s"),
    )
    .await;
    emu.get_as(&short_header, tok_app, StatusCode::OK).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let body = emu
        .get_as(&short_header, tok_app, StatusCode::UNAUTHORIZED)
        .await;
    assert_error_mentions(&body, "expired");

    // Aged past its expiry through the control API → 401; its times moved.
    let (aged_id, aged_header) = mint(
        &emu,
        &org_id,
        "deploy_organization",
        Value::Null,
        Some("1h"),
    )
    .await;
    emu.get_as(&aged_header, tok_app, StatusCode::OK).await;
    let aged = emu
        .control_expect(
            Method::POST,
            "/drift/age-token",
            Some(json!({"token_id": aged_id, "seconds": 3601})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(aged["aged"], aged_id.as_str());
    let body = emu
        .get_as(&aged_header, tok_app, StatusCode::UNAUTHORIZED)
        .await;
    assert_error_mentions(&body, "expired");

    // Unknown tokens and a bad expiry.
    emu.get_as("FlyV1 fm2_nonsense", tok_app, StatusCode::UNAUTHORIZED)
        .await;
    emu.get_as("Bearer wrong", tok_app, StatusCode::UNAUTHORIZED)
        .await;
    let (status, _, _) = emu.rest(None, Method::GET, tok_app, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let bad_expiry =
        json!({"org": org_id, "name": "x", "profile": "deploy_organization", "expiry": "3 days"});
    emu.admin_gql_error(ops::CREATE_TOKEN, bad_expiry, "VALIDATION")
        .await;
    emu.server.shutdown().await;
}

#[tokio::test]
async fn app_names_are_global_across_organizations() {
    let emu = start(config()).await;
    let (_, first) = emu.create_org("First").await;
    let (_, second) = emu.create_org("Second").await;
    emu.create_app("shared-name", &first).await;
    let taken = json!({"name": "shared-name", "org_slug": second});
    let body = emu
        .post("/v1/apps", taken, StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert_eq!(body["status"], "name_taken", "{body}");
    assert!(body["error"].is_string());

    // The network is fixed at creation and shows on the app.
    let app = emu.get("/v1/apps/shared-name", StatusCode::OK).await;
    assert_eq!(app["network"], "shared-name-net");
    assert_eq!(app["organization"]["slug"], first);

    // A retry with the same idempotency key is answered with the first app.
    let create = json!({"name": "idem-app", "org_slug": first, "idempotency_key": "k1"});
    let one = emu
        .post("/v1/apps", create.clone(), StatusCode::CREATED)
        .await;
    let two = emu.post("/v1/apps", create, StatusCode::CREATED).await;
    assert_eq!(one["id"], two["id"]);

    emu.delete("/v1/apps/idem-app", StatusCode::ACCEPTED).await;
    emu.get("/v1/apps/idem-app", StatusCode::NOT_FOUND).await;
    emu.server.shutdown().await;
}

#[tokio::test]
async fn rest_bodies_are_validated_against_the_openapi_schemas() {
    let emu = start(config()).await;
    let (_, slug) = emu.create_org("Strict").await;
    // Wrong type.
    let wrong_type = json!({"name": "typed", "org_slug": slug, "network": 7});
    let body = emu
        .post("/v1/apps", wrong_type, StatusCode::BAD_REQUEST)
        .await;
    assert_error_mentions(&body, "network");
    // Missing required field (plan) in Managed Postgres create.
    let no_plan = json!({"org_slug": slug, "region": "iad"});
    let body = emu
        .post("/v1/postgres", no_plan, StatusCode::BAD_REQUEST)
        .await;
    assert_error_mentions(&body, "plan");
    // An enum value outside the spec.
    let bad_plan = json!({"org_slug": slug, "region": "iad", "plan": "gigantic"});
    emu.post("/v1/postgres", bad_plan, StatusCode::BAD_REQUEST)
        .await;
    // Not JSON at all.
    let not_json = Value::String("{".into());
    emu.post("/v1/apps", not_json, StatusCode::BAD_REQUEST)
        .await;
    // Paths and methods come from the spec.
    emu.get("/v1/no-such-thing", StatusCode::NOT_FOUND).await;
    let (status, _) = emu.admin(Method::PUT, "/v1/apps", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    emu.create_app("unimpl", &slug).await;
    let body = emu
        .get("/v1/apps/unimpl/certificates", StatusCode::NOT_IMPLEMENTED)
        .await;
    assert_error_mentions(&body, "not implemented");
    emu.server.shutdown().await;
}

#[tokio::test]
async fn postgres_flex_steps_and_machines() {
    let emu = start(config()).await;
    let (org_id, slug) = emu.create_org("Flex").await;
    let app = json!({"app_name": "pg-flex", "org_slug": slug, "app_role_id": "postgres_cluster"});
    emu.post("/v1/apps", app, StatusCode::CREATED).await;
    let data = emu
        .gql_ok(ops::LATEST_IMAGE, json!({"repo": "flyio/postgres-flex"}))
        .await;
    let tag = string(&data["latestImageTag"], "tag");
    let private_v6 = json!({"type": "private_v6"});
    let ip = emu
        .post(
            "/v1/apps/pg-flex/ip_assignments",
            private_v6,
            StatusCode::OK,
        )
        .await;
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

    // An SSH certificate for a key of our own: a real OpenSSH user
    // certificate for that key and those principals, signed by the
    // organization's one authority.
    let key =
        ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .expect("a key");
    let public = key.public_key().to_openssh().expect("openssh public key");
    let issue = |key: Option<String>| json!({"org": org_id, "principals": ["root", "fly", "postgres"], "apps": ["pg-flex"], "key": key});
    let data = emu
        .gql_ok(ops::ISSUE_CERT, issue(Some(public.clone())))
        .await;
    let cert_text = string(&data["issueCertificate"]["certificate"], "certificate");
    assert!(
        data["issueCertificate"]["key"].is_null(),
        "no key for a given public key"
    );
    let cert = ssh_key::Certificate::from_openssh(&cert_text).expect("an OpenSSH certificate");
    assert_eq!(cert.public_key(), key.public_key().key_data());
    assert_eq!(cert.valid_principals(), ["root", "fly", "postgres"]);
    assert_eq!(cert.cert_type(), ssh_key::certificate::CertType::User);
    let authority = cert.signature_key().fingerprint(ssh_key::HashAlg::Sha256);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    cert.validate_at(now, [&authority])
        .expect("signed by the authority, valid now");
    // Without a key, one is made and answered; the same authority signs.
    let data = emu.gql_ok(ops::ISSUE_CERT, issue(None)).await;
    let made = ssh_key::PrivateKey::from_openssh(string(&data["issueCertificate"]["key"], "key"))
        .expect("an OpenSSH private key");
    let second = ssh_key::Certificate::from_openssh(&string(
        &data["issueCertificate"]["certificate"],
        "certificate",
    ))
    .expect("a certificate");
    assert_eq!(second.public_key(), made.public_key().key_data());
    assert_eq!(
        second.signature_key().fingerprint(ssh_key::HashAlg::Sha256),
        authority
    );
    // A key that is not OpenSSH Ed25519 is refused.
    emu.admin_gql_error(
        ops::ISSUE_CERT,
        issue(Some("ssh-rsa AAAA nope".into())),
        "VALIDATION",
    )
    .await;

    let values = json!({"values": {
        "SU_PASSWORD": "a", "REPL_PASSWORD": "b", "OPERATOR_PASSWORD": "c", "SSH_CERT": cert_text,
    }});
    let secrets = emu
        .post("/v1/apps/pg-flex/secrets", values, StatusCode::OK)
        .await;
    assert_eq!(secrets["secrets"].as_array().map(Vec::len), Some(4));
    // The state records the certificate by fingerprint and digest, the
    // digest the app's SSH_CERT secret shows.
    let (_, state) = emu.control(Method::GET, "/state", None).await;
    let issued = &state["ssh_certificates"][0];
    assert_eq!(
        issued["key_fingerprint"],
        key.public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
    );
    assert_eq!(issued["app_names"], json!(["pg-flex"]));
    assert_eq!(
        issued["digest"],
        state["apps"]["pg-flex"]["secrets"]["SSH_CERT"]["digest"]
    );
    assert!(
        secrets["secrets"][0].get("value").is_none(),
        "values are not echoed"
    );

    let pg_data = json!({"name": "pg_data", "region": "iad", "size_gb": 1, "encrypted": true, "require_unique_zone": true});
    let volume = emu
        .post("/v1/apps/pg-flex/volumes", pg_data, StatusCode::OK)
        .await;
    let volume_id = string(&volume["id"], "volume id");
    let config = json!({
        "image": format!("flyio/postgres-flex:{tag}"),
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "mounts": [{"volume": volume_id, "path": "/data"}],
        "restart": {"policy": "always"},
        "checks": {"pg": {"port": 5500, "type": "http", "path": "/flycheck/pg"}},
        "metrics": {"port": 9187, "path": "/metrics"},
    });
    let machines = "/v1/apps/pg-flex/machines";
    let create = json!({"region": "iad", "config": config});
    let machine = emu.post(machines, create.clone(), StatusCode::OK).await;
    assert_eq!(machine["state"], "started");
    let machine_id = string(&machine["id"], "machine id");
    let volume_path = format!("/v1/apps/pg-flex/volumes/{volume_id}");
    let volume = emu.get(&volume_path, StatusCode::OK).await;
    assert_eq!(volume["attached_machine_id"], machine_id);
    // A second machine cannot mount the attached volume.
    emu.post(machines, create, StatusCode::BAD_REQUEST).await;
    // A machine config of the wrong shape is refused by the schema.
    let wrong_shape = json!({"config": {"image": "x", "guest": {"cpus": "one"}}});
    emu.post(machines, wrong_shape, StatusCode::BAD_REQUEST)
        .await;

    // Updates are guarded by current_version (409 when stale).
    let version = string(&machine["version"], "version");
    let path = format!("/v1/apps/pg-flex/machines/{machine_id}");
    let stale = json!({"config": config, "current_version": "stale"});
    emu.post(&path, stale, StatusCode::CONFLICT).await;
    let current = json!({"config": config, "current_version": version});
    let updated = emu.post(&path, current, StatusCode::OK).await;
    assert_ne!(updated["version"], json!(version));
    // A started machine is not destroyed without force.
    emu.delete(&path, StatusCode::PRECONDITION_FAILED).await;
    emu.post(&format!("{path}/stop"), json!({}), StatusCode::OK)
        .await;
    emu.get(&format!("{path}/wait?state=stopped"), StatusCode::OK)
        .await;

    // Drift: the machine disappears behind the client's back.
    let destroy = json!({"app": "pg-flex", "machine_id": machine_id});
    emu.control_expect(
        Method::POST,
        "/drift/destroy-machine",
        Some(destroy),
        StatusCode::OK,
    )
    .await;
    emu.get(&path, StatusCode::NOT_FOUND).await;
    let listed = emu.get(machines, StatusCode::OK).await;
    assert_eq!(listed, json!([]));

    let state = emu
        .control_expect(Method::GET, "/state", None, StatusCode::OK)
        .await;
    assert_eq!(state["apps"]["pg-flex"]["app_role_id"], "postgres_cluster");
    emu.server.shutdown().await;
}

#[tokio::test]
async fn managed_postgres_create_polls_to_ready() {
    let emu = start(config()).await;
    let (_, slug) = emu.create_org("Managed").await;
    let create = json!({"org_slug": slug, "plan": "basic", "region": "iad", "name": "main-db"});
    let created = emu.post("/v1/postgres", create, StatusCode::CREATED).await;
    assert_eq!(created["data"]["status"], "creating");
    assert!(created["data"].get("endpoints").is_none());
    let id = string(&created["data"]["id"], "cluster id");
    let cluster = format!("/v1/postgres/{id}");
    let databases = format!("{cluster}/databases");
    let users = format!("{cluster}/users");

    // Sub-resources answer 503 with Retry-After until the cluster is ready.
    let (headers, _) = emu
        .rest_expect(
            Some(&bearer()),
            Method::POST,
            &databases,
            Some(json!({"name": "app"})),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    assert!(headers.get("retry-after").is_some());

    let mut polls = 0;
    let ready = loop {
        let shown = emu.get(&cluster, StatusCode::OK).await;
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

    emu.post(&databases, json!({"name": "app"}), StatusCode::CREATED)
        .await;
    let writer = json!({"username": "app_user", "role": "writer"});
    let user = emu.post(&users, writer, StatusCode::CREATED).await;
    assert_eq!(user["data"]["role"], "writer");
    // Roles are schema_admin|writer|reader.
    let owner = json!({"username": "boss", "role": "owner"});
    emu.post(&users, owner, StatusCode::BAD_REQUEST).await;
    let reader = Some(json!({"role": "reader"}));
    let (status, _) = emu
        .admin(Method::PATCH, &format!("{users}/app_user"), reader)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let listed = emu.get(&users, StatusCode::OK).await;
    assert_eq!(
        listed["data"],
        json!([{"username": "app_user", "role": "reader"}])
    );
    let creds = emu
        .get(&format!("{users}/app_user/credentials"), StatusCode::OK)
        .await;
    assert!(
        creds["data"]["password"]
            .as_str()
            .is_some_and(|p| p.len() >= 16)
    );
    let dbs = emu.get(&databases, StatusCode::OK).await;
    assert!(
        dbs["data"]
            .as_array()
            .is_some_and(|d| d.contains(&json!({"name": "app"})))
    );
    let list = emu
        .get(&format!("/v1/postgres?org_slug={slug}"), StatusCode::OK)
        .await;
    assert_eq!(list["data"][0]["id"], id);
    emu.delete(&cluster, StatusCode::ACCEPTED).await;
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
    emu.get("/v1/apps/busy-app/volumes", StatusCode::OK).await;
    let (_, counters) = emu.control(Method::GET, "/counters", None).await;
    assert!(
        counters["rate_limited_total"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{counters}"
    );
    // The control API turns them off.
    let off = json!({"enabled": false});
    emu.control_expect(Method::PUT, "/rate-limits", Some(off), StatusCode::OK)
        .await;
    emu.get("/v1/apps/busy-app/machines", StatusCode::OK).await;
    emu.server.shutdown().await;
}

/// Sets the fault rules through the control API.
async fn set_faults(emu: &support::Emu, rules: Value) {
    let faults = json!({ "rules": rules });
    emu.control_expect(Method::PUT, "/faults", Some(faults), StatusCode::OK)
        .await;
}

/// Statuses of `count` app lookups with a 5xx fraction set.
async fn faulty_run(seed: u64, count: usize) -> Vec<u16> {
    let mut cfg = config();
    cfg.seed = seed;
    let emu = start(cfg).await;
    let (_, slug) = emu.create_org("Faulty").await;
    emu.create_app("flaky", &slug).await;
    let flaky =
        json!([{"path_prefix": "/v1/apps/flaky", "error_fraction": 0.3, "error_status": 502}]);
    set_faults(&emu, flaky).await;
    let mut statuses = Vec::new();
    for _ in 0..count {
        let (status, body) = emu.admin(Method::GET, "/v1/apps/flaky", None).await;
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
    set_faults(
        &emu,
        json!([{"path_prefix": "/graphql", "drop_fraction": 1.0}]),
    )
    .await;
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

    let slow_limit =
        json!([{"rate_limit_fraction": 1.0, "retry_after_secs": 4, "latency_ms": 150}]);
    set_faults(&emu, slow_limit).await;
    let started = std::time::Instant::now();
    let (headers, _) = emu
        .rest_expect(
            Some(&bearer()),
            Method::GET,
            "/v1/apps?org_slug=personal",
            None,
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("4")
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    emu.control_expect(Method::DELETE, "/faults", None, StatusCode::NO_CONTENT)
        .await;
    emu.get("/v1/apps?org_slug=personal", StatusCode::OK).await;
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
    let secret = string(
        &data["createLimitedAccessToken"]["limitedAccessToken"]["token"],
        "token",
    );
    let header = format!("FlyV1 {secret}");
    emu.get_as(&header, "/v1/apps/logged-app", StatusCode::OK)
        .await;
    // The secret inside a body (revoking by token) is redacted too.
    emu.gql_ok(ops::DELETE_TOKEN, json!({"token": secret}))
        .await;
    let deploy = emu
        .post(
            "/v1/apps/logged-app/deploy_token",
            json!({}),
            StatusCode::OK,
        )
        .await;
    let deploy_header = string(&deploy["token"], "deploy token");
    emu.rest(
        Some(&deploy_header),
        Method::GET,
        "/v1/apps/logged-app",
        None,
    )
    .await;
    // App secret values (passwords, SSH keys) are logged by name only.
    let password = "a-logged-password-value";
    emu.post(
        "/v1/apps/logged-app/secrets",
        json!({"values": {"SU_PASSWORD": password}}),
        StatusCode::OK,
    )
    .await;
    emu.server.shutdown().await;

    let log = std::fs::read_to_string(&log_path).expect("request log written");
    let _ = std::fs::remove_file(&log_path);
    assert!(!log.contains(ADMIN_TOKEN), "admin token leaked");
    assert!(!log.contains(&secret), "minted token leaked");
    assert!(!log.contains(password), "app secret value leaked");
    assert!(log.contains("SU_PASSWORD"), "the secret's name is kept");
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
    let invitation = emu.invite(&org_id, "gone@example.com").await;
    let invitation_id = string(&invitation["id"], "invitation id");
    let user_id = emu.accept_invitation(&invitation_id).await;
    // Accepting twice is refused.
    let accept = format!("/invitations/{invitation_id}/accept");
    emu.control_expect(Method::POST, &accept, None, StatusCode::CONFLICT)
        .await;

    let gone = json!({"organization": slug, "email": "gone@example.com"});
    emu.control_expect(
        Method::POST,
        "/drift/remove-member",
        Some(gone),
        StatusCode::OK,
    )
    .await;
    let data = emu.gql_ok(ops::ORG_BY_SLUG, json!({"slug": slug})).await;
    assert_eq!(data["organization"]["members"]["totalCount"], 1);
    let set_admin = json!({"org": org_id, "user": user_id, "role": "ADMIN"});
    emu.admin_gql_error(ops::SET_ROLE, set_admin, "NOT_FOUND")
        .await;

    // Removing the bootstrap user locks it out of the organization.
    let (_, state) = emu.control(Method::GET, "/state", None).await;
    let admin_id = string(&state["admin_user_id"], "admin id");
    let admin = json!({"organization": org_id, "user_id": admin_id});
    emu.control_expect(
        Method::POST,
        "/drift/remove-member",
        Some(admin),
        StatusCode::OK,
    )
    .await;
    emu.admin_gql_error(ops::ORG_BY_ID, json!({"id": org_id}), "UNAUTHORIZED")
        .await;

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
    let id = string(&created["data"]["id"], "cluster id");
    let ready = format!("/postgres/{id}/ready");
    slow.control_expect(Method::PUT, &ready, None, StatusCode::OK)
        .await;
    let (_, shown) = slow
        .admin(Method::GET, &format!("/v1/postgres/{id}"), None)
        .await;
    assert_eq!(shown["data"]["status"], "ready");
    slow.server.shutdown().await;
    emu.server.shutdown().await;
}
