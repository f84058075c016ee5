//! The admin connection: parsing a libpq connection string (URI or
//! `key=value` DSN), TLS as `sslmode` asks for it, connecting with a timeout,
//! and classifying errors into [`ProviderError`]s.
//!
//! Nothing here ever puts a password into an error message or a log line,
//! and a connection string that does not parse is described by its form
//! only: the Secret may hold something else entirely (a cloud token, a bare
//! password), and these messages end up in conditions and Events, so no
//! error quotes any part of the value.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::passwords::fingerprint;
use super::pool::{self, ADMIN_POOL_SIZE, DATABASE_POOL_SIZE, PoolKey, Session};
use crate::provider::ProviderError;
use crate::reasons;

/// How long establishing one connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions bulkhead opens wait at most this long for a lock, so a busy
/// object turns into a retry instead of a hung reconcile.
const LOCK_TIMEOUT: &str = "10s";

/// libpq `sslmode`, all six values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Which server a connection reaches (its hosts and ports): roles live
/// server-wide, so what is remembered of a role is keyed by this.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerId {
    hosts: Vec<String>,
    ports: Vec<u16>,
}

impl ServerId {
    #[cfg(test)]
    pub fn for_tests(host: &str) -> Self {
        ServerId {
            hosts: vec![host.to_string()],
            ports: vec![5432],
        }
    }
}

/// A parsed admin connection: everything but the database name, which each
/// call picks.
#[derive(Clone)]
pub struct ConnInfo {
    config: Config,
    tls: MakeRustlsConnect,
    /// The pool key of this connection, the database left empty.
    pool_key: PoolKey,
    pub server: ServerId,
    /// The maintenance database named in the connection string.
    pub admin_db: String,
    /// First host and port, reported as the cluster's endpoint.
    pub host: String,
    pub port: u16,
    /// The libpq `sslmode` applications should use to reach the same server.
    pub sslmode: &'static str,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config's Debug redacts the password; ours never prints it either.
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.config.get_user())
            .field("admin_db", &self.admin_db)
            .finish()
    }
}

/// Parameters [`ConnInfo::parse`] accepts, for the error naming an unsupported one.
const SUPPORTED: &str = "host, port, user, password, dbname, sslmode, sslrootcert, application_name, options, connect_timeout";

/// A parse error. `message` must describe the form of the connection
/// string and never quote it.
fn invalid(message: impl Into<String>) -> ProviderError {
    ProviderError::terminal(
        reasons::CREDENTIALS_UNAVAILABLE,
        format!("invalid PostgreSQL connection string: {}", message.into()),
    )
}

/// Splits a connection string into its `key`/`value` pairs, decoded.
fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, ProviderError> {
    let trimmed = s.trim();
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        parse_uri(rest)
    } else if trimmed.contains("://") {
        // Without the "://": the message must not echo the rejected scheme's tail.
        Err(invalid("a URI must use the scheme postgres or postgresql"))
    } else {
        parse_dsn(trimmed)
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, ProviderError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("bad percent-encoding in the {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| invalid(format!("the {what} is not UTF-8 after percent-decoding")))
}

fn parse_uri(rest: &str) -> Result<Vec<(String, String)>, ProviderError> {
    let mut pairs = Vec::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    // The userinfo ends at the last '@' (passwords may contain '@' only
    // percent-encoded, but be lenient).
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_string(), percent_decode(user, "user name")?));
            }
            if let Some(p) = password {
                pairs.push(("password".to_string(), percent_decode(p, "password")?));
            }
            hostspec
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for h in hostspec.split(',') {
            let (host, port) = if let Some(v6) = h.strip_prefix('[') {
                let (addr, after) = v6
                    .split_once(']')
                    .ok_or_else(|| invalid("an [IPv6] host has no closing ']'"))?;
                (
                    addr.to_string(),
                    after.strip_prefix(':').map(str::to_string),
                )
            } else {
                match h.rsplit_once(':') {
                    Some((host, port)) => (percent_decode(host, "host")?, Some(port.to_string())),
                    None => (percent_decode(h, "host")?, None),
                }
            };
            hosts.push(host);
            ports.push(port.unwrap_or_default());
        }
        pairs.push(("host".to_string(), hosts.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            pairs.push(("port".to_string(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_string(), percent_decode(db, "database name")?));
    }
    if let Some(query) = query {
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = param
                .split_once('=')
                .ok_or_else(|| invalid("an item of the URI query has no '='"))?;
            let key = percent_decode(k, "parameter name")?;
            let value = percent_decode(v, "parameter value")?;
            pairs.push((key, value));
        }
    }
    Ok(pairs)
}

/// libpq keyword/value syntax: `key = value` separated by whitespace;
/// values may be single-quoted, with `\'` and `\\` escapes.
fn parse_dsn(s: &str) -> Result<Vec<(String, String)>, ProviderError> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // Never the key: a bare token or password lands here whole.
            // (No "value" either: the message must not share words with
            // a token like `s3cr3tvalue`, for the tests to tell.)
            return Err(invalid("a keyword is not followed by '='"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(invalid("a quoted string has no closing quote")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(invalid("a quoted string has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

impl ConnInfo {
    /// Parses a libpq URI or keyword/value connection string.
    pub fn parse(s: &str) -> Result<Self, ProviderError> {
        let pairs = parse_pairs(s)?;
        let mut config = Config::new();
        let mut mode = TlsMode::Prefer;
        let mut root_cert: Option<String> = None;
        let mut user: Option<String> = None;
        let mut dbname: Option<String> = None;
        let mut hosts: Vec<String> = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        let mut options = String::new();
        for (key, value) in pairs {
            match key.as_str() {
                "host" => hosts = value.split(',').map(str::to_string).collect(),
                "port" => {
                    ports = value
                        .split(',')
                        .map(|p| {
                            if p.is_empty() {
                                Some(5432)
                            } else {
                                p.parse::<u16>().ok().filter(|p| *p != 0)
                            }
                        })
                        .collect::<Option<_>>()
                        .ok_or_else(|| invalid("a port is not a number from 1 to 65535"))?;
                }
                "user" => user = Some(value),
                "password" => {
                    config.password(value);
                }
                "dbname" => dbname = Some(value),
                "sslmode" => mode = TlsMode::parse(&value).ok_or_else(|| {
                    invalid(
                        "sslmode must be disable, allow, prefer, require, verify-ca or verify-full",
                    )
                })?,
                "sslrootcert" => root_cert = Some(value),
                "application_name" => {
                    config.application_name(value);
                }
                "options" => options = value,
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| invalid("connect_timeout must be seconds"))?;
                    if secs > 0 {
                        config.connect_timeout(Duration::from_secs(secs).min(CONNECT_TIMEOUT));
                    }
                }
                // Not the key: it may be a secret that happens to contain '='.
                _ => {
                    return Err(invalid(format!(
                        "an unsupported parameter (supported: {SUPPORTED})"
                    )));
                }
            }
        }
        let user = user
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid("no user"))?;
        if hosts.is_empty() || hosts.iter().any(String::is_empty) {
            return Err(invalid("no host"));
        }
        if ports.is_empty() {
            ports.push(5432);
        }
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(invalid(
                "the number of ports must be one or match the number of hosts",
            ));
        }
        for host in &hosts {
            if host.starts_with('/') {
                config.host_path(host);
            } else {
                config.host(host);
            }
        }
        for port in &ports {
            config.port(*port);
        }
        let admin_db = dbname
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        config.user(&user);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut full_options = format!("-c lock_timeout={LOCK_TIMEOUT}");
        if !options.is_empty() {
            full_options.push(' ');
            full_options.push_str(&options);
        }
        config.options(full_options);
        if config.get_application_name().is_none() {
            config.application_name("bulkhead");
        }
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Allow | TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        // libpq: with a root certificate given, `require` verifies the chain.
        let mode = if mode == TlsMode::Require && root_cert.is_some() {
            TlsMode::VerifyCa
        } else {
            mode
        };
        let tls = MakeRustlsConnect::new(tls_config(mode, root_cert.as_deref())?);
        let host = hosts[0].clone();
        let port = ports[0];
        let sslmode = mode.as_str();
        let pool_key = PoolKey {
            hosts: hosts.clone(),
            ports: ports.clone(),
            user,
            sslmode,
            root_cert,
            options: config.get_options().unwrap_or_default().to_string(),
            application_name: config.get_application_name().map(str::to_string),
            connect_timeout: config.get_connect_timeout().copied(),
            password: config.get_password().map(fingerprint),
            dbname: String::new(),
        };
        Ok(ConnInfo {
            config,
            tls,
            pool_key,
            server: ServerId { hosts, ports },
            admin_db,
            host,
            port,
            sslmode,
        })
    }

    fn pool_key(&self, dbname: &str) -> PoolKey {
        PoolKey {
            dbname: dbname.to_string(),
            ..self.pool_key.clone()
        }
    }

    /// A pooled admin session on `dbname`: it behaves as a fresh
    /// [`ConnInfo::connect_admin`] connection (timeout, lock_timeout, TLS,
    /// error classification), but is reused across calls and providers
    /// built from the same connection string (see `pool`).
    pub async fn session(&self, dbname: &str) -> Result<Session, ProviderError> {
        let size = if dbname == self.admin_db {
            ADMIN_POOL_SIZE
        } else {
            DATABASE_POOL_SIZE
        };
        pool::session(
            &self.config,
            &self.tls,
            self.pool_key(dbname),
            size,
            (&self.host, self.port),
        )
        .await
    }

    /// Closes the pooled sessions on `dbname` (before it is dropped).
    pub fn forget_sessions(&self, dbname: &str) {
        pool::forget(&self.pool_key(dbname));
    }

    /// Opens a fresh (unpooled) admin session on `dbname`, for work that
    /// changes session state or runs long (copies).
    pub async fn connect_admin(&self, dbname: &str) -> Result<Client, ProviderError> {
        let mut config = self.config.clone();
        config.dbname(dbname);
        connect(&config, &self.tls, dbname).await.map_err(|e| match e {
            ConnectFailure::TimedOut => ProviderError::unavailable(format!(
                "PostgreSQL unavailable: connecting to {}:{} (database {dbname}) timed out after {}s",
                self.host,
                self.port,
                CONNECT_TIMEOUT.as_secs()
            )),
            ConnectFailure::Pg(e) => classify(&e, &format!("connecting to database {dbname}")),
        })
    }

    /// Tries to authenticate as `user` with `password` (same host and TLS as
    /// the admin connection).
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<Client, ConnectFailure> {
        let mut config = self.config.clone();
        config.user(user).password(password).dbname(dbname);
        connect(&config, &self.tls, dbname).await
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectFailure {
    TimedOut,
    Pg(tokio_postgres::Error),
}

async fn connect(
    config: &Config,
    tls: &MakeRustlsConnect,
    dbname: &str,
) -> Result<Client, ConnectFailure> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        config.connect(tls.clone()),
    )
    .await
    {
        Ok(Ok((client, connection))) => {
            let db = dbname.to_string();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(database = %db, error = %e, "postgres connection ended");
                }
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(ConnectFailure::Pg(e)),
        Err(_) => Err(ConnectFailure::TimedOut),
    }
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(
    mode: TlsMode,
    root_cert: Option<&str>,
) -> Result<rustls::ClientConfig, ProviderError> {
    let provider = ring();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        // libpq does not verify the server certificate below verify-ca.
        TlsMode::Disable | TlsMode::Allow | TlsMode::Prefer | TlsMode::Require => {
            Arc::new(PartialVerifier {
                provider: provider.clone(),
                chain: None,
            })
        }
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = root_store(root_cert)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| invalid(format!("TLS setup: {e}")))?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(PartialVerifier {
                    provider: provider.clone(),
                    chain: Some(webpki),
                })
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Trust anchors: `sslrootcert=<PEM file>`, else (or with `system`) the
/// platform's store plus the Mozilla roots compiled in (the operator image
/// may have no CA bundle).
fn root_store(root_cert: Option<&str>) -> Result<RootCertStore, ProviderError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        // The path is part of the connection string: the errors name the
        // parameter, not the path; nor do they quote the file (PEM errors
        // can show a line of it, and it may not be a certificate at all).
        Some(path) if path != "system" => {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("the sslrootcert file cannot be read: {e}")))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|_| invalid("the sslrootcert file is not valid PEM"))?;
                roots.add(cert).map_err(|e| {
                    invalid(format!(
                        "the sslrootcert file holds an unusable certificate: {e}"
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(invalid("the sslrootcert file holds no certificate"));
            }
        }
        _ => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        }
    }
    Ok(roots)
}

/// Below `sslmode=verify-full`: prefer/require encrypt and check the
/// handshake signatures but do not verify the certificate (libpq's
/// behaviour); verify-ca also wants the chain to lead to a trusted root, but
/// does not check the host name.
#[derive(Debug)]
struct PartialVerifier {
    provider: Arc<CryptoProvider>,
    /// verify-ca's chain check; `None` below verify-ca.
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for PartialVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name, so a name error means the
        // chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Turns a driver error into the provider's classification. `doing` says
/// what bulkhead was doing (never contains a secret).
pub fn classify(e: &tokio_postgres::Error, doing: &str) -> ProviderError {
    let Some(db) = e.as_db_error() else {
        // I/O, TLS, timeout, closed connection: the server is not reachable
        // or went away.
        return ProviderError::unavailable(format!(
            "PostgreSQL unavailable while {doing}: {}",
            describe_io(e)
        ));
    };
    // Only the primary message: DETAIL can quote row values.
    let message = format!("{doing}: {} (SQLSTATE {})", db.message(), db.code().code());
    let code = db.code();
    let class = &code.code()[..2.min(code.code().len())];
    if *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || class == "08"
    {
        return ProviderError::unavailable(message);
    }
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::OBJECT_IN_USE
        || *code == SqlState::QUERY_CANCELED
        || class == "53"
        || class == "40"
    {
        return ProviderError::transient(reasons::DATABASE_BUSY, message);
    }
    if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        return ProviderError::terminal(reasons::CREDENTIALS_UNAVAILABLE, message);
    }
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return ProviderError::terminal(reasons::PERMISSION_DENIED, message);
    }
    if *code == SqlState::DUPLICATE_OBJECT || *code == SqlState::DUPLICATE_DATABASE {
        return ProviderError::terminal("NameConflict", message);
    }
    if *code == SqlState::INVALID_NAME
        || *code == SqlState::NAME_TOO_LONG
        || *code == SqlState::SYNTAX_ERROR
    {
        return ProviderError::terminal("InvalidName", message);
    }
    // Anything else (an object vanished under us, a constraint, ...):
    // retry with backoff; the message tells what happened.
    ProviderError::transient(reasons::DATABASE_ERROR, message)
}

/// A non-database error's text (tokio-postgres never includes the password).
fn describe_io(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn parses_uri() {
        let pairs = parse_pairs(
            "postgres://ad%40min:p%40ss:w@db.example:6543/main?sslmode=require&application_name=x",
        )
        .expect("parses");
        assert_eq!(get(&pairs, "user"), Some("ad@min"));
        assert_eq!(get(&pairs, "password"), Some("p@ss:w"));
        assert_eq!(get(&pairs, "host"), Some("db.example"));
        assert_eq!(get(&pairs, "port"), Some("6543"));
        assert_eq!(get(&pairs, "dbname"), Some("main"));
        assert_eq!(get(&pairs, "sslmode"), Some("require"));
    }

    #[test]
    fn parses_ipv6_uri() {
        let pairs = parse_pairs("postgresql://u@[::1]:5433").expect("parses");
        assert_eq!(get(&pairs, "host"), Some("::1"));
        assert_eq!(get(&pairs, "port"), Some("5433"));
    }

    #[test]
    fn parses_dsn() {
        let pairs = parse_pairs("host=h port = 5 user=u dbname=d sslmode=disable").expect("parses");
        assert_eq!(get(&pairs, "host"), Some("h"));
        assert_eq!(get(&pairs, "port"), Some("5"));
        assert_eq!(get(&pairs, "user"), Some("u"));
        assert_eq!(get(&pairs, "dbname"), Some("d"));
        let pairs = parse_pairs(r"user=u password='a \'b\' c\\d' host=h").expect("parses");
        assert_eq!(get(&pairs, "password"), Some(r"a 'b' c\d"));
    }

    #[test]
    fn errors_never_show_the_password() {
        let err =
            ConnInfo::parse("host=h user=u password=hunter2 bogus=1").expect_err("unknown key");
        assert!(!err.to_string().contains("hunter2"));
        let err = ConnInfo::parse("postgres://u:hunter2@h:notaport/db").expect_err("bad port");
        assert!(!err.to_string().contains("hunter2"));
        assert!(err.is_terminal());
        let info =
            ConnInfo::parse("postgres://u:hunter2@h/db?sslmode=verify-full").expect("parses");
        assert!(!format!("{info:?}").contains("hunter2"));
        // Nor does the pool key, which holds only a fingerprint of it.
        let key = format!("{:?}", info.pool_key("db"));
        assert!(
            !key.contains("hunter2") && !key.contains("assword"),
            "{key}"
        );
        let rotated =
            ConnInfo::parse("postgres://u:hunter3@h/db?sslmode=verify-full").expect("parses");
        assert!(
            info.pool_key("db") != rotated.pool_key("db"),
            "a rotated password gets a new pool"
        );
        assert!(info.pool_key("db") == info.pool_key("db"));
    }

    /// Words a parse error may contain although the input has them too:
    /// they name parameters and schemes, never a value.
    const KEYWORDS: &[&str] = &[
        "host",
        "port",
        "user",
        "password",
        "dbname",
        "sslmode",
        "sslrootcert",
        "application_name",
        "options",
        "connect_timeout",
        "postgres",
        "postgresql",
    ];

    /// Asserts that no substring of `input` of 4 or more characters shows up
    /// in `message`, case-insensitively, unless it is part of a keyword (the
    /// message may name the parameter `password`, so `pass` from
    /// `passw0rd=…` is fine; `w0rd` is not). Substrings with whitespace are
    /// skipped (messages are made of words too): a leak of 4 or more
    /// characters is still caught by its parts without whitespace.
    fn assert_quotes_nothing_of(input: &str, message: &str) {
        let input: Vec<char> = input.to_lowercase().chars().collect();
        let message = message.to_lowercase();
        for start in 0..input.len() {
            for end in start + 4..=input.len() {
                let fragment: String = input[start..end].iter().collect();
                if fragment.contains(char::is_whitespace)
                    || KEYWORDS.iter().any(|k| k.contains(&fragment))
                {
                    continue;
                }
                assert!(
                    !message.contains(&fragment),
                    "the error quotes {fragment:?} of the connection string: {message}"
                );
            }
        }
    }

    #[test]
    fn parse_errors_describe_the_form_only() {
        let root_cert = std::env::temp_dir().join(format!("s3cr3t-{}.pem", std::process::id()));
        std::fs::write(&root_cert, "-----BEGIN s3cr3tline-----\n").expect("write a bad PEM");
        let bad_pem = format!(
            "host=db user=admin sslmode=verify-full sslrootcert={}",
            root_cert.display()
        );
        let malformed = [
            "fm1r_ZXhhbXBsZXNlY3JldA",
            "fm1r_ZXhhbXBsZQ==",
            "s3cr3tvalue",
            "  s3cr3tvalue  ",
            "postgres//admin:s3cr3t@db",
            "mysql://u:p4ss@h/db",
            "host=db password='unterminated",
            r"host=db password='trailing\",
            "user=x passw0rd=hunter2",
            "host=db user=x hunter2",
            "postgres://u:%zz@h/db",
            "postgres://u:hunter2%@h/db",
            "postgres://u:%ff%fe@h/db",
            "postgres://u:hunter2@h:99999/db",
            "postgres://u:hunter2@h:0/db",
            "postgres://u:hunter2@[::1/db",
            "postgres://u:hunter2@h/db?s3cr3tparam",
            "postgres://u:hunter2@h/db?sslmode=s3cr3t",
            "postgres://u:hunter2@h/db?s3cr3t=1",
            "host=h user=u connect_timeout=s3cr3t",
            "postgres://hunter2@/db",
            "host=h password=hunter2",
            "host=h,h2 port=1,2,3 user=u password=hunter2",
            "host=db user=admin sslmode=verify-full sslrootcert=/nonexistent/s3cr3t.pem",
            &bad_pem,
        ];
        for input in malformed {
            let err = match ConnInfo::parse(input) {
                Ok(info) => panic!("{input:?} parsed: {info:?}"),
                Err(e) => e,
            };
            assert_eq!(err.reason(), reasons::CREDENTIALS_UNAVAILABLE, "{input:?}");
            assert!(err.is_terminal(), "{input:?}: {err:?}");
            assert_quotes_nothing_of(input, &err.to_string());
        }
        let _ = std::fs::remove_file(&root_cert);
    }

    #[test]
    fn the_fragment_check_catches_a_quote() {
        // The helper itself: a message quoting the input must fail it.
        let quoted = std::panic::catch_unwind(|| {
            assert_quotes_nothing_of("user=x passw0rd=hunter2", "unsupported \"passw0rd\"")
        });
        assert!(quoted.is_err());
        assert_quotes_nothing_of("user=x passw0rd=hunter2", "no password for the user");
    }

    #[test]
    fn modes() {
        let info = ConnInfo::parse("host=db user=admin").expect("parses");
        assert_eq!(info.admin_db, "admin");
        assert_eq!(info.port, 5432);
        assert!(ConnInfo::parse("host=db user=admin sslmode=bogus").is_err());
        assert!(ConnInfo::parse("mysql://x@y/z").is_err());
        assert!(ConnInfo::parse("user=admin").is_err());
    }
}
