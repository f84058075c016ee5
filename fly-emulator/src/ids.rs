//! Identifiers and secrets, all drawn from the seeded generator so a run
//! with the same `--seed` and the same requests hands out the same values.

use rand::RngExt;
use rand::rngs::StdRng;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn draw(rng: &mut StdRng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// GraphQL node IDs (organizations, users, invitations, tokens): opaque
/// mixed-case strings, so they can never be mistaken for a slug.
pub fn node_id(rng: &mut StdRng) -> String {
    format!("X{}", draw(rng, ALNUM, 11))
}

/// Machine IDs are 14 hex digits on Fly.
pub fn machine_id(rng: &mut StdRng) -> String {
    draw(rng, HEX, 14)
}

pub fn volume_id(rng: &mut StdRng) -> String {
    format!("vol_{}", draw(rng, LOWER_ALNUM, 16))
}

pub fn lower_id(rng: &mut StdRng, len: usize) -> String {
    draw(rng, LOWER_ALNUM, len)
}

/// A macaroon-shaped secret; only the prefix matches Fly's format.
pub fn token_secret(rng: &mut StdRng) -> String {
    format!("fm2_{}", draw(rng, URL_SAFE, 64))
}

pub fn password(rng: &mut StdRng) -> String {
    draw(rng, ALNUM, 24)
}

/// A 6PN-looking address for private IPs and machines.
pub fn private_v6(rng: &mut StdRng, org_numeric_id: i64) -> String {
    let a: u16 = rng.random();
    let b: u16 = rng.random();
    let c: u16 = rng.random();
    format!(
        "fdaa:0:{:x}:a7b:{a:x}:{b:x}:{c:x}:2",
        org_numeric_id & 0xffff
    )
}

pub fn public_v6(rng: &mut StdRng) -> String {
    let a: u16 = rng.random();
    let b: u16 = rng.random();
    format!("2a09:8280:1::{a:x}:{b:x}")
}

pub fn public_v4(rng: &mut StdRng) -> String {
    let a: u8 = rng.random();
    let b: u8 = rng.random_range(1..=254);
    format!("137.66.{a}.{b}")
}

pub fn shared_v4(rng: &mut StdRng) -> String {
    let b: u8 = rng.random_range(1..=254);
    format!("66.241.124.{b}")
}

/// Fly's GraphQL-style slug from a display name: lower case, runs of
/// anything else than letters and digits become one `-`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "org".to_string()
    } else {
        slug
    }
}
