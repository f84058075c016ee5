//! Knowing whether a login role's password is the desired one without
//! logging in as it at every resync.
//!
//! - When the admin role can read `pg_authid.rolpassword` (a superuser),
//!   the stored verifier is checked offline: a SCRAM-SHA-256 verifier
//!   (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`) by
//!   recomputing both keys from the desired password with its salt and
//!   iteration count, an MD5 one (`md5<hex>`) by recomputing it; compared in
//!   constant time. The outcome is remembered per (server, role) as
//!   fingerprints of the stored verifier and of the password, so the
//!   PBKDF2 work is done again only when one of them changes. Any
//!   `ALTER ROLE … PASSWORD` writes a new verifier (a fresh salt), so drift
//!   is found at the next observe.
//! - Otherwise (the verifier is unreadable, or in a format not known here)
//!   bulkhead logs in as the role, and remembers per (server, role) the
//!   fingerprint of the password it verified and when: the login is repeated
//!   only when the desired password changes, after bulkhead set it, or once
//!   [`LOGIN_RECHECK`] has passed (spread by up to a tenth of it, so the
//!   roles of a server do not come due together). Drift is then found
//!   within [`LOGIN_RECHECK`] plus one resync.
//!
//! Fingerprints are HMAC-SHA-256 under a key drawn at process start, held
//! in memory only: never a password or a verifier, never printable.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::conn::ServerId;

/// How long a password verified by logging in counts as verified (when the
/// stored verifier cannot be read).
pub const LOGIN_RECHECK: Duration = Duration::from_secs(3600);

/// Verifiers claiming more iterations than this are not recomputed (a
/// hostile catalog entry must not cost minutes of CPU): the login check
/// decides instead. PostgreSQL's default is 4096.
const MAX_ITERATIONS: u32 = 1_000_000;

/// Remembered entries per table before it is cleared (roles of deleted
/// clusters are never looked up again).
const MAX_ENTRIES: usize = 100_000;

type HmacSha256 = Hmac<Sha256>;

/// A keyed digest of a secret. Its Debug shows nothing of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(***)")
    }
}

static KEY: LazyLock<[u8; 32]> = LazyLock::new(|| {
    use rand::Rng;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key
});

/// The fingerprint of `secret` (a password, a verifier).
pub fn fingerprint(secret: &[u8]) -> Fingerprint {
    let mut out = [0u8; 32];
    if let Ok(mut mac) = HmacSha256::new_from_slice(&*KEY) {
        mac.update(secret);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    Fingerprint(out)
}

/// What a stored verifier says of a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch,
    /// A format not checked here (or implausible parameters).
    Unknown,
}

/// A role's stored password verifier, as read from `pg_authid`. Never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredVerifier(pub String);

impl std::fmt::Debug for StoredVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredVerifier(***)")
    }
}

/// SASLprep as PostgreSQL applies it (skipped when the password is not
/// valid for it, as libpq and the server do).
fn prepare(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    Some(out)
}

/// PBKDF2-HMAC-SHA-256 with one output block (SCRAM's `Hi`).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Option<[u8; 32]> {
    let keyed = HmacSha256::new_from_slice(password).ok()?;
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&[0, 0, 0, 1]);
    let mut prev: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = prev;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&prev);
        prev = mac.finalize().into_bytes().into();
        for (o, p) in out.iter_mut().zip(prev) {
            *o ^= p;
        }
    }
    Some(out)
}

/// Checks `password` of `role` against a stored verifier, offline.
pub fn verify(stored: &str, role: &str, password: &str) -> Verdict {
    if let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") {
        return verify_scram(rest, password).unwrap_or(Verdict::Unknown);
    }
    if stored.len() == 35 && stored.starts_with("md5") {
        let want = postgres_protocol::password::md5(password.as_bytes(), role);
        return if bool::from(want.as_bytes().ct_eq(stored.as_bytes())) {
            Verdict::Match
        } else {
            Verdict::Mismatch
        };
    }
    Verdict::Unknown
}

fn verify_scram(rest: &str, password: &str) -> Option<Verdict> {
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok()?;
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return None;
    }
    let salt = STANDARD.decode(salt).ok()?;
    let stored_key = STANDARD.decode(stored_key).ok()?;
    let server_key = STANDARD.decode(server_key).ok()?;
    if stored_key.len() != 32 || server_key.len() != 32 {
        return None;
    }
    let salted = hi(&prepare(password), &salt, iterations)?;
    let client_key = hmac(&salted, &[b"Client Key"])?;
    let computed_stored: [u8; 32] = Sha256::digest(client_key).into();
    let computed_server = hmac(&salted, &[b"Server Key"])?;
    let same = computed_stored.ct_eq(&stored_key[..]) & computed_server.ct_eq(&server_key[..]);
    Some(if bool::from(same) {
        Verdict::Match
    } else {
        Verdict::Mismatch
    })
}

type RoleKey = (ServerId, String);

/// Verifier → password pairs known to match, per (server, role).
static VERIFIED: LazyLock<Mutex<HashMap<RoleKey, (Fingerprint, Fingerprint)>>> =
    LazyLock::new(Default::default);

/// Passwords verified by logging in, per (server, role): the fingerprint
/// and when the check is due again.
static LOGINS: LazyLock<Mutex<HashMap<RoleKey, (Fingerprint, Instant)>>> =
    LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bounded<V>(map: &mut HashMap<RoleKey, V>) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
}

/// Checks the stored verifier of `role` against `password`, recomputing
/// only when the verifier or the password differs from the last match.
pub fn check_stored(server: &ServerId, role: &str, stored: &str, password: &str) -> Verdict {
    let key = (server.clone(), role.to_string());
    let seen = (
        fingerprint(stored.as_bytes()),
        fingerprint(password.as_bytes()),
    );
    if lock(&VERIFIED).get(&key) == Some(&seen) {
        return Verdict::Match;
    }
    let verdict = verify(stored, role, password);
    let mut verified = lock(&VERIFIED);
    if verdict == Verdict::Match {
        bounded(&mut verified);
        verified.insert(key, seen);
    } else {
        verified.remove(&key);
    }
    verdict
}

/// Bulkhead just stored `verifier` (computed from `password`) for `role`:
/// the offline check can trust it without recomputing, and a login check
/// is due.
pub fn record_set(server: &ServerId, role: &str, verifier: &str, password: &str) {
    let key = (server.clone(), role.to_string());
    lock(&LOGINS).remove(&key);
    let mut verified = lock(&VERIFIED);
    bounded(&mut verified);
    verified.insert(
        key,
        (
            fingerprint(verifier.as_bytes()),
            fingerprint(password.as_bytes()),
        ),
    );
}

/// Whether logging in as `role` with `password` succeeded recently enough
/// not to repeat it.
pub fn login_fresh(server: &ServerId, role: &str, password: &str) -> bool {
    let key = (server.clone(), role.to_string());
    lock(&LOGINS)
        .get(&key)
        .is_some_and(|(fp, due)| *fp == fingerprint(password.as_bytes()) && Instant::now() < *due)
}

/// Logging in as `role` with `password` just succeeded.
pub fn record_login(server: &ServerId, role: &str, password: &str) {
    use rand::RngExt;
    let spread = rand::rng().random_range(0..=LOGIN_RECHECK.as_secs() / 10);
    let due = Instant::now() + LOGIN_RECHECK - Duration::from_secs(spread);
    let mut logins = lock(&LOGINS);
    bounded(&mut logins);
    logins.insert(
        (server.clone(), role.to_string()),
        (fingerprint(password.as_bytes()), due),
    );
}

/// Forgets what is known of `role` (dropped, or its password failed).
pub fn forget(server: &ServerId, role: &str) {
    let key = (server.clone(), role.to_string());
    lock(&LOGINS).remove(&key);
    lock(&VERIFIED).remove(&key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifiers_made_by_postgres_protocol_check_out() {
        for password in ["correct horse", "pässwörd", "x", "with\u{00A0}nbsp"] {
            let stored = postgres_protocol::password::scram_sha_256(password.as_bytes());
            assert_eq!(verify(&stored, "r", password), Verdict::Match, "{password}");
            assert_eq!(
                verify(&stored, "r", &format!("{password}!")),
                Verdict::Mismatch
            );
        }
    }

    #[test]
    fn saslprep_maps_like_the_server() {
        // SASLprep maps a non-ASCII space to ASCII space: both spellings
        // match a verifier made from either.
        let stored = postgres_protocol::password::scram_sha_256("a\u{00A0}b".as_bytes());
        assert_eq!(verify(&stored, "r", "a b"), Verdict::Match);
    }

    #[test]
    fn other_iteration_counts_are_recomputed() {
        let salt = b"0123456789abcdef";
        let salted = hi(&prepare("pw"), salt, 10).expect("hi");
        let client_key = hmac(&salted, &[b"Client Key"]).expect("hmac");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, &[b"Server Key"]).expect("hmac");
        let stored = format!(
            "SCRAM-SHA-256$10:{}${}:{}",
            STANDARD.encode(salt),
            STANDARD.encode(stored_key),
            STANDARD.encode(server_key)
        );
        assert_eq!(verify(&stored, "r", "pw"), Verdict::Match);
        assert_eq!(verify(&stored, "r", "pW"), Verdict::Mismatch);
    }

    #[test]
    fn md5_and_unknown_formats() {
        let stored = postgres_protocol::password::md5(b"pw", "alice");
        assert_eq!(verify(&stored, "alice", "pw"), Verdict::Match);
        assert_eq!(verify(&stored, "bob", "pw"), Verdict::Mismatch);
        for odd in [
            "",
            "plain",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==$bad:bad",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$99999999:c2FsdA==$AAAA:AAAA",
        ] {
            assert_eq!(verify(odd, "r", "pw"), Verdict::Unknown, "{odd:?}");
        }
    }

    #[test]
    fn remembered_matches_and_logins() {
        let server = ServerId::for_tests("remembered");
        let stored = postgres_protocol::password::scram_sha_256(b"pw");
        assert_eq!(check_stored(&server, "r", &stored, "pw"), Verdict::Match);
        assert_eq!(check_stored(&server, "r", &stored, "pw"), Verdict::Match);
        assert_eq!(check_stored(&server, "r", &stored, "no"), Verdict::Mismatch);
        let other = postgres_protocol::password::scram_sha_256(b"new");
        assert_eq!(check_stored(&server, "r", &other, "pw"), Verdict::Mismatch);
        record_set(&server, "r", &other, "new");
        assert_eq!(check_stored(&server, "r", &other, "new"), Verdict::Match);

        assert!(!login_fresh(&server, "r", "pw"));
        record_login(&server, "r", "pw");
        assert!(login_fresh(&server, "r", "pw"));
        assert!(!login_fresh(&server, "r", "other"));
        forget(&server, "r");
        assert!(!login_fresh(&server, "r", "pw"));
    }

    #[test]
    fn debug_shows_no_secret() {
        assert_eq!(format!("{:?}", fingerprint(b"pw")), "Fingerprint(***)");
        assert_eq!(
            format!("{:?}", StoredVerifier("SCRAM-SHA-256$x".into())),
            "StoredVerifier(***)"
        );
    }
}
