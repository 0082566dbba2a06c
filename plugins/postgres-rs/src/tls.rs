//! TLS for the native reader: libpq's `sslmode` and `sslrootcert` with rustls (ring), no OpenSSL.
//!
//! | sslmode | TLS | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `allow`, `prefer` (libpq's default) | if the server offers it | no | no |
//! | `require` | always | only when `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! Trusted roots: the PEM file `sslrootcert` names; `sslrootcert=system`, or no
//! `sslrootcert` with `verify-ca`/`verify-full`, uses the operating system's store.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as PgSslMode, SslNegotiation};
use tokio_postgres::{CancelToken, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::decode::NativeError;
use crate::session::{self, Session};
use crate::stream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => {
                Err(format!("sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"))
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS part of a connection string.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

/// How connections (and cancel requests) of one reader are made.
#[derive(Clone)]
pub enum Connector {
    /// Unix sockets and `hostaddr`-only connections (no host name for TLS).
    Plain,
    Rustls(MakeRustlsConnect),
    /// TCP connections with a host name, TLS or not (stream.rs).
    Buffered(stream::Connect),
}

/// Split a libpq `key=value` string into the settings rust-postgres parses and the TLS ones.
///
/// Values may be single-quoted with `\'` and `\\` escapes, as libpq (and dativo's Python side) writes them.
pub fn split_conninfo(conninfo: &str) -> Result<(String, TlsSettings), String> {
    let mut rest = Vec::new();
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    for (key, value) in parse_pairs(conninfo)? {
        match key.as_str() {
            "sslmode" => mode = SslMode::parse(&value)?,
            "sslrootcert" => root_cert = Some(value).filter(|v| !v.is_empty()),
            _ => rest.push(format!("{key}={}", quote(&value))),
        }
    }
    Ok((rest.join(" "), TlsSettings { mode, root_cert }))
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn parse_pairs(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("connection setting '{key}' has no '=value'"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("connection setting '{key}' has an unterminated quoted value")),
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
}

// ring rather than aws-lc-rs: it builds with a C compiler alone (no cmake/clang), like the rest of this crate.
#[allow(deprecated)] // rustls marks ring's provider deprecated for lacking post-quantum key exchange
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(settings: &TlsSettings) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match settings.root_cert.as_deref() {
        Some(path) if path != "system" => {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read sslrootcert '{path}': {e}"))?;
            let mut reader = std::io::BufReader::new(pem.as_slice());
            let mut found = 0usize;
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| format!("sslrootcert '{path}' is not a PEM certificate file: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert '{path}' holds a certificate rustls cannot use: {e}"))?;
                found += 1;
            }
            if found == 0 {
                return Err(format!("sslrootcert '{path}' holds no PEM certificate"));
            }
        }
        _ => {
            let result = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(result.certs);
            if roots.is_empty() {
                return Err(format!(
                    "sslmode={} needs trusted root certificates: set sslrootcert to the server's CA file \
                     (none found in the system store)",
                    settings.mode.name()
                ));
            }
        }
    }
    Ok(roots)
}

/// Accepts any certificate (sslmode prefer/require without sslrootcert): encryption without authentication, as libpq.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain against the roots but not the host name (sslmode=verify-ca).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn client_config(settings: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let verify_chain = match settings.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require => settings.root_cert.is_some(), // libpq: a root file makes require behave as verify-ca
        SslMode::Prefer | SslMode::Disable => false,
    };
    let config = if !verify_chain {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
    } else {
        let roots = Arc::new(load_roots(settings)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        if settings.mode == SslMode::VerifyFull {
            builder.dangerous().with_custom_certificate_verifier(webpki).with_no_client_auth()
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(webpki))).with_no_client_auth()
        }
    };
    Ok(config)
}

/// Parse `conninfo`, set up TLS as its `sslmode` asks and connect.
///
/// A malformed string is `Invalid`; an unusable `sslrootcert` and every connection
/// failure are `Server` errors (TLS ones start with "SSL/TLS:" and say what to change).
pub fn connect(conninfo: &str) -> Result<(Session, Connector), ConnectFailure> {
    let (rest, settings) = split_conninfo(conninfo).map_err(ConnectFailure::Invalid)?;
    let mut config: Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectFailure::Invalid(format!("invalid connection settings: {e}")))?;
    let rt = session::runtime().map_err(|e| {
        ConnectFailure::Server(NativeError::Server {
            sqlstate: None,
            message: format!("cannot start the I/O runtime: {e}"),
        })
    })?;
    let tls = if settings.mode == SslMode::Disable {
        None
    } else {
        let tls_config = client_config(&settings).map_err(|message| {
            ConnectFailure::Server(NativeError::Server { sqlstate: None, message: format!("SSL/TLS: {message}") })
        })?;
        Some(MakeRustlsConnect::new(tls_config))
    };
    let fail = |e| ConnectFailure::Server(tls_error(e, &settings));
    let tcp = !config.get_hosts().is_empty() && config.get_hosts().iter().all(|h| matches!(h, Host::Tcp(_)));
    if tcp {
        // Our own stream with large reads (stream.rs): tokio-postgres hands it each socket untouched.
        config.ssl_mode(PgSslMode::Require).ssl_negotiation(SslNegotiation::Direct);
        let connect = stream::Connect::new(settings.mode, tls);
        let client = Session::connect(rt, &config, connect.clone()).map_err(fail)?;
        return Ok((client, Connector::Buffered(connect)));
    }
    match tls {
        None => {
            config.ssl_mode(PgSslMode::Disable);
            let client = Session::connect(rt, &config, NoTls).map_err(fail)?;
            Ok((client, Connector::Plain))
        }
        Some(tls) => {
            config.ssl_mode(if settings.mode == SslMode::Prefer { PgSslMode::Prefer } else { PgSslMode::Require });
            let client = Session::connect(rt, &config, tls.clone()).map_err(fail)?;
            Ok((client, Connector::Rustls(tls)))
        }
    }
}

/// A connection failure: a malformed connection string, or the server's (or the network's, or TLS's) answer.
pub enum ConnectFailure {
    Invalid(String),
    Server(NativeError),
}

/// Say which TLS requirement failed, in words a user can act on.
fn tls_error(err: tokio_postgres::Error, settings: &TlsSettings) -> NativeError {
    let mut native = NativeError::from(err);
    if let NativeError::Server { sqlstate: None, message } = &mut native {
        let mode = settings.mode.name();
        let roots = settings.root_cert.as_deref().unwrap_or("the system's trusted roots");
        let hint = if message.contains("server does not support TLS") {
            Some(format!("the server does not accept TLS connections, but sslmode={mode} requires TLS"))
        } else if message.contains("NotValidForName") || message.contains("not valid for name") {
            Some(format!(
                "the server's certificate does not name the host connected to (sslmode={mode} checks the host name; \
                 connect with the name the certificate carries, or use sslmode=verify-ca)"
            ))
        } else if message.contains("UnknownIssuer") || message.contains("invalid peer certificate") {
            Some(format!("the server's certificate is not signed by a CA in {roots} (sslmode={mode})"))
        } else {
            None
        };
        if let Some(hint) = hint {
            *message = format!("SSL/TLS: {hint} ({message})");
        }
    }
    native
}

/// Ask the server to cancel what runs on a connection, over the same kind of transport.
pub fn cancel(token: &CancelToken, connector: &Connector) {
    let Ok(rt) = session::runtime() else { return };
    let _ = match connector {
        Connector::Plain => rt.block_on(token.cancel_query(NoTls)),
        Connector::Rustls(tls) => rt.block_on(token.cancel_query(tls.clone())),
        Connector::Buffered(connect) => rt.block_on(token.cancel_query(connect.clone())),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_are_split_out_and_quoting_survives() {
        let (rest, tls) =
            split_conninfo("host='db' password='it\\'s \\\\ x' sslmode='verify-full' sslrootcert='/a b/ca.pem'")
                .unwrap();
        assert_eq!(rest, "host='db' password='it\\'s \\\\ x'");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/a b/ca.pem"));
        let (_, tls) = split_conninfo("host=db").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert!(split_conninfo("sslmode=sometimes").is_err());
        assert!(split_conninfo("host='db").is_err());
    }
}
