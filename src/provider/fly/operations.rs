//! Every GraphQL document the Fly provider sends. Each is checked against
//! Fly's published schema (`fly-api/schema.graphql`) by the test below, so
//! a field Fly does not have fails `cargo test`, not a reconcile.

/// One GraphQL operation.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    /// The operation's name in the document (also its name in messages).
    pub name: &'static str,
    pub document: &'static str,
    /// Safe to send again after a 5xx or a lost answer: queries, and
    /// mutations whose repetition changes nothing.
    pub idempotent: bool,
}

/// An organization with its members, pending invitations and live tokens.
/// Looked up by slug (the external name), or by node ID.
pub const ORGANIZATION: Operation = Operation {
    name: "BulkheadOrganization",
    document: r#"query BulkheadOrganization($slug: String, $id: ID) {
  viewer { email }
  organization(slug: $slug, id: $id) {
    id
    slug
    name
    type
    viewerRole
    members {
      edges {
        role
        node { id email }
      }
    }
    invitations {
      nodes { id email }
    }
    limitedAccessTokens {
      nodes { id name profile profileParams createdAt expiresAt revokedAt }
    }
  }
}"#,
    idempotent: true,
};

/// Creates an organization; Fly picks the slug from the name. Not
/// idempotent: the provider guards it with a lookup by name.
pub const CREATE_ORGANIZATION: Operation = Operation {
    name: "BulkheadCreateOrganization",
    document: r#"mutation BulkheadCreateOrganization($name: String!) {
  createOrganization(input: { name: $name }) {
    organization { id slug name }
  }
}"#,
    idempotent: false,
};

pub const DELETE_ORGANIZATION: Operation = Operation {
    name: "BulkheadDeleteOrganization",
    document: r#"mutation BulkheadDeleteOrganization($id: ID!) {
  deleteOrganization(input: { organizationId: $id }) {
    deletedOrganizationId
  }
}"#,
    idempotent: true,
};

/// Not idempotent (a second one is refused as "already invited"); the
/// provider invites only after observing that no invitation is pending.
pub const CREATE_INVITATION: Operation = Operation {
    name: "BulkheadCreateInvitation",
    document: r#"mutation BulkheadCreateInvitation($org: ID!, $email: String!) {
  createOrganizationInvitation(input: { organizationId: $org, email: $email }) {
    invitation { id email }
  }
}"#,
    idempotent: false,
};

pub const DELETE_INVITATION: Operation = Operation {
    name: "BulkheadDeleteInvitation",
    document: r#"mutation BulkheadDeleteInvitation($id: ID!) {
  deleteOrganizationInvitation(input: { invitationId: $id }) {
    organization { id }
  }
}"#,
    idempotent: true,
};

pub const UPDATE_MEMBERSHIP: Operation = Operation {
    name: "BulkheadUpdateMembership",
    document: r#"mutation BulkheadUpdateMembership($org: ID!, $user: ID!, $role: OrganizationMemberRole!) {
  updateOrganizationMembership(input: { organizationId: $org, userId: $user, role: $role }) {
    user { id }
  }
}"#,
    idempotent: true,
};

pub const DELETE_MEMBERSHIP: Operation = Operation {
    name: "BulkheadDeleteMembership",
    document: r#"mutation BulkheadDeleteMembership($org: ID!, $user: ID!) {
  deleteOrganizationMembership(input: { organizationId: $org, userId: $user }) {
    user { id }
  }
}"#,
    idempotent: true,
};

/// Mints a token. Not idempotent: a lost answer leaves a token bulkhead
/// does not know the secret of, which the next pass revokes.
pub const CREATE_TOKEN: Operation = Operation {
    name: "BulkheadCreateToken",
    document: r#"mutation BulkheadCreateToken($org: ID!, $name: String!, $profile: String!, $params: JSON, $expiry: String) {
  createLimitedAccessToken(input: { organizationId: $org, name: $name, profile: $profile, profileParams: $params, expiry: $expiry }) {
    limitedAccessToken { id name token createdAt expiresAt }
  }
}"#,
    idempotent: false,
};

pub const DELETE_TOKEN: Operation = Operation {
    name: "BulkheadDeleteToken",
    document: r#"mutation BulkheadDeleteToken($id: ID!) {
  deleteLimitedAccessToken(input: { id: $id, revokedBy: "bulkhead" }) {
    token
  }
}"#,
    idempotent: true,
};

/// The newest tag of an image repository (flex clusters run
/// `flyio/postgres-flex:<tag>`).
pub const LATEST_IMAGE_TAG: Operation = Operation {
    name: "BulkheadLatestImageTag",
    document: r#"query BulkheadLatestImageTag($repository: String!) {
  latestImageTag(repository: $repository)
}"#,
    idempotent: true,
};

/// Gives a flex cluster's app its Consul (the `FLY_CONSUL_URL` secret).
/// Idempotent in effect: the provider calls it only while the app lacks
/// that secret, and a second URL replaces the first before any node boots.
pub const ENABLE_POSTGRES_CONSUL: Operation = Operation {
    name: "BulkheadEnablePostgresConsul",
    document: r#"mutation BulkheadEnablePostgresConsul($appId: ID!, $region: String) {
  enablePostgresConsul(input: { appId: $appId, region: $region }) {
    consulUrl
  }
}"#,
    idempotent: true,
};

/// An organization's node ID by slug (what `issueCertificate` takes).
pub const ORGANIZATION_ID: Operation = Operation {
    name: "BulkheadOrganizationId",
    document: r#"query BulkheadOrganizationId($slug: String!) {
  organization(slug: $slug) {
    id
  }
}"#,
    idempotent: true,
};

/// An SSH user certificate for a flex cluster's own key (the `SSH_CERT`
/// secret beside `SSH_KEY`), with flyctl's principals and the app named.
/// Not retried: a repeat would leave a second, unused certificate.
pub const ISSUE_CERTIFICATE: Operation = Operation {
    name: "BulkheadIssueCertificate",
    document: r#"mutation BulkheadIssueCertificate($organizationId: ID!, $appNames: [String!], $publicKey: String) {
  issueCertificate(input: { organizationId: $organizationId, principals: ["root", "fly", "postgres"], appNames: $appNames, publicKey: $publicKey }) {
    certificate
  }
}"#,
    idempotent: false,
};

pub const ALL: [Operation; 13] = [
    ORGANIZATION,
    CREATE_ORGANIZATION,
    DELETE_ORGANIZATION,
    CREATE_INVITATION,
    DELETE_INVITATION,
    UPDATE_MEMBERSHIP,
    DELETE_MEMBERSHIP,
    CREATE_TOKEN,
    DELETE_TOKEN,
    LATEST_IMAGE_TAG,
    ENABLE_POSTGRES_CONSUL,
    ORGANIZATION_ID,
    ISSUE_CERTIFICATE,
];

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fly-emulator/api/schema.graphql"
    );

    #[test]
    fn every_operation_is_valid_against_flys_published_schema() {
        let sdl = std::fs::read_to_string(SCHEMA_PATH).expect("Fly's schema in the workspace");
        let schema = apollo_compiler::Schema::parse_and_validate(sdl, "schema.graphql")
            .expect("Fly's schema is valid SDL");
        for op in ALL {
            let doc = apollo_compiler::ExecutableDocument::parse_and_validate(
                &schema,
                op.document,
                format!("{}.graphql", op.name),
            );
            assert!(
                doc.is_ok(),
                "{}: {:?}",
                op.name,
                doc.err().map(|e| e.errors.to_string())
            );
            let kind = if [
                ORGANIZATION.name,
                LATEST_IMAGE_TAG.name,
                ORGANIZATION_ID.name,
            ]
            .contains(&op.name)
            {
                "query"
            } else {
                "mutation"
            };
            assert!(
                op.document.starts_with(&format!("{kind} {}", op.name)),
                "{} must begin with `{kind} {}`",
                op.name,
                op.name
            );
        }
    }
}
