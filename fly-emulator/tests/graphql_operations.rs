//! Every GraphQL operation the emulator's tests send must be valid against
//! Fly's published schema: otherwise the tests would exercise a shape
//! Fly itself would refuse.

mod support;

use fly_emulator::graphql::GraphqlSchema;

#[test]
fn every_test_operation_validates_against_flys_schema() {
    let schema = GraphqlSchema::load().expect("Fly's schema loads");
    for (name, operation) in support::ops::ALL {
        if let Err(messages) = schema.validate(operation) {
            panic!("{name} does not validate: {messages:?}");
        }
    }
}

#[test]
fn an_invalid_document_does_not_validate() {
    let schema = GraphqlSchema::load().expect("Fly's schema loads");
    let messages = schema
        .validate("{ organization(slug: \"x\") { noSuchField } }")
        .expect_err("unknown field is invalid");
    assert!(
        messages.iter().any(|m| m.contains("noSuchField")),
        "{messages:?}"
    );
}

/// The bundled definitions are Fly's published bytes (the sums README.md
/// records): an edited copy would no longer be Fly's contract.
#[test]
fn bundled_definitions_are_the_published_bytes() {
    use sha2::Digest;
    let hex = |bytes: &[u8]| -> String {
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(
        hex(fly_emulator::graphql::SCHEMA_SDL.as_bytes()),
        "2f1a1d0f2f8940277e5e14002c78cb4f6404b3ea1ce9d0999d4d3b65c52f9480"
    );
    assert_eq!(
        hex(fly_emulator::openapi::OPENAPI_JSON.as_bytes()),
        "1ef46a4a8a164d190f1905e706501f341640a547e24e4ae53da33204aad15c3a"
    );
}
