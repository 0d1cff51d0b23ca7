//! TLS to the team ledger, as libpq users expect it: `sslmode`
//! (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` and a client certificate (`sslcert`, `sslkey`) in the
//! state URL, or `PGSSLMODE` / `PGSSLROOTCERT` / `PGSSLCERT` / `PGSSLKEY`
//! in the environment.
//!
//! rust-postgres' own parser knows only `disable`, `prefer` and `require`
//! and nothing of root certificates, so [`take_params`] takes both
//! parameters out of the URL before it is handed over, and [`Tls`] keeps
//! what they mean: whether TLS is asked of the server, and how far its
//! certificate is checked. The stack is rustls (the one reqwest uses, with
//! the same aws-lc-rs provider), plugged into the client by
//! `tokio-postgres-rustls`.
//!
//! **The default** differs from libpq's `prefer` for a remote host, on
//! purpose: the ledger is not only storage. It decides whether paid calls
//! may be made (budgets) and it serves answers to steps (the response
//! cache), so whoever can pose as it can spend the team's money and put
//! words in a model's mouth. A URL naming a host that is not this machine
//! therefore defaults to `verify-full` (the system's CAs, or
//! `sslrootcert`); a loopback host or a Unix socket keeps libpq's `prefer`
//! (TLS when the server offers it, unverified: there is no network path to
//! attack). A weaker mode chosen for a remote host is allowed, and warned
//! about ([`Tls::warning`]).
//!
//! libpq's finer points kept: a root certificate given with `prefer` or
//! `require` makes them check the chain (as `verify-ca`); Unix sockets
//! never use TLS; `sslrootcert=system` means the system's CAs and requires
//! `verify-full`.
//!
//! **Client certificates** (for a `cert` line in the server's
//! `pg_hba.conf`): `sslcert` and `sslkey` go together, through rustls'
//! client authentication. The key is a secret: its content never appears
//! in a message (a key that does not parse is "not a PEM private key",
//! never the parser's quote of it), and a key file readable by group or
//! others is refused as libpq refuses it (0600 at most, 0640 when owned by
//! root). Not supported: encrypted keys (`sslpassword`), `sslcertmode`
//! (refused, never ignored) and libpq's implicit files under
//! `~/.postgresql/` (`root.crt`: the system's CAs are used instead;
//! `postgresql.crt`/`.key`: name them).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use postgres::config::{Host, SslMode as ClientMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The largest root certificate file read: a system bundle is ~200 KiB.
const MAX_ROOT_FILE: u64 = 4 * 1024 * 1024;

/// The largest client certificate or key file read (an RSA-8192 key in
/// PEM is ~6 KiB; a chain a few certificates).
const MAX_CLIENT_FILE: u64 = 1024 * 1024;

/// libpq's `sslmode`, all five values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How far the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not at all: encryption against a passive listener only.
    Nothing,
    /// Signed by a trusted CA (`verify-ca`), whatever name it holds.
    Chain,
    /// Signed by a trusted CA and naming the host connected to.
    Full,
}

/// Which CAs are trusted.
#[derive(Debug, Clone)]
enum Roots {
    /// The certificates of an `sslrootcert` file (only those: a private
    /// CA is not weakened by the hundred public ones).
    File {
        path: PathBuf,
        store: Arc<RootCertStore>,
    },
    /// The system's store.
    System,
}

/// The TLS parameters a state URL carried, taken out of it.
#[derive(Debug, Default)]
pub(super) struct Params {
    /// The URL without them, for rust-postgres' parser.
    pub url: String,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a URL's
/// query (the last of each wins, as in libpq), keeping every other
/// parameter exactly as written (a re-encoding would turn `%20` into `+`,
/// which the client does not decode). Encrypted keys and `sslcertmode` are
/// refused with a clear message.
pub(super) fn take_params(url: &str) -> Result<Params, String> {
    let (before_fragment, fragment) = match url.find('#') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let Some((base, query)) = before_fragment.split_once('?') else {
        return Ok(Params {
            url: url.to_owned(),
            ..Params::default()
        });
    };
    let mut params = Params::default();
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k);
        match key.as_str() {
            "sslmode" => params.sslmode = Some(decode(v)),
            "sslrootcert" => params.sslrootcert = Some(decode(v)),
            "sslcert" => params.sslcert = Some(decode(v)),
            "sslkey" => params.sslkey = Some(decode(v)),
            // The value is never quoted: it is a key's passphrase.
            "sslpassword" => {
                return Err(
                    "TOLLGATE_STATE_URL: `sslpassword`: encrypted client keys are not supported; \
                     give an unencrypted key file readable by you alone (chmod 600) in sslkey"
                        .to_owned(),
                );
            }
            "sslcertmode" => {
                return Err(
                    "TOLLGATE_STATE_URL: `sslcertmode` is not supported: a client certificate is sent \
                     whenever sslcert and sslkey are given"
                        .to_owned(),
                );
            }
            _ => kept.push(pair),
        }
    }
    params.url = if kept.is_empty() {
        format!("{base}{fragment}")
    } else {
        format!("{base}?{}{fragment}", kept.join("&"))
    };
    Ok(params)
}

/// A query component, percent-decoded (lossy: a parameter is text).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A warning about a connection that an attacker on the network could
/// read or impersonate: what, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsWarning {
    pub message: String,
    pub help: String,
}

/// What the state URL's TLS settings mean.
#[derive(Debug, Clone)]
pub(super) struct Tls {
    pub(super) mode: SslMode,
    check: Check,
    roots: Roots,
    /// Every host is this machine (loopback or a Unix socket).
    local: bool,
    /// The client certificate and key, when given.
    client: Option<Arc<ClientIdentity>>,
}

/// A client certificate chain and its private key, read once. Its `Debug`
/// names the files, never the key.
struct ClientIdentity {
    cert_path: PathBuf,
    key_path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The settings for `config` (already parsed from the URL without its
    /// TLS parameters): the URL's values, else the environment's
    /// (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`), else the
    /// defaults (module docs). The root, certificate and key files are read
    /// now, so a wrong path is an error before any connection.
    pub(super) fn new(params: &Params, config: &postgres::Config) -> Result<Tls, String> {
        Self::new_with(params, config, |k| std::env::var(k).ok())
    }

    /// [`Tls::new`] with the environment given (tests).
    fn new_with(
        params: &Params,
        config: &postgres::Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Tls, String> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let (sslmode, sslrootcert) = (params.sslmode.clone(), params.sslrootcert.clone());
        let client = match (
            params.sslcert.clone().or_else(|| env("PGSSLCERT")),
            params.sslkey.clone().or_else(|| env("PGSSLKEY")),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Arc::new(read_identity(
                Path::new(cert.trim()),
                Path::new(key.trim()),
            )?)),
            (Some(_), None) => {
                return Err(
                    "TOLLGATE_STATE_URL: sslcert is given without sslkey (or PGSSLKEY): \
                     a client certificate needs its private key"
                        .to_owned(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "TOLLGATE_STATE_URL: sslkey is given without sslcert (or PGSSLCERT): \
                     a private key needs its client certificate"
                        .to_owned(),
                );
            }
        };
        let local = all_local(config);
        let mode = match sslmode.or_else(|| env("PGSSLMODE")) {
            Some(v) => Some(SslMode::parse(v.trim()).ok_or_else(|| {
                format!(
                    "TOLLGATE_STATE_URL: sslmode `{v}` is not one of disable, prefer, require, verify-ca, verify-full"
                )
            })?),
            None => None,
        };
        let root = sslrootcert.or_else(|| env("PGSSLROOTCERT"));
        let roots = match root.as_deref().map(str::trim) {
            None | Some("system") => Roots::System,
            Some(path) => {
                let path = PathBuf::from(path);
                let store = read_roots(&path)?;
                Roots::File { path, store }
            }
        };
        let system_asked = root.as_deref().map(str::trim) == Some("system");
        let mode = match mode {
            Some(m) => m,
            // libpq: `sslrootcert=system` implies verify-full.
            None if system_asked || !local => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system_asked && mode != SslMode::VerifyFull {
            return Err(format!(
                "TOLLGATE_STATE_URL: sslmode={} may not be used with sslrootcert=system (use verify-full)",
                mode.as_str()
            ));
        }
        let given_root = matches!(roots, Roots::File { .. });
        let check = match mode {
            SslMode::Disable => Check::Nothing,
            // libpq checks the chain whenever a root certificate is given.
            SslMode::Prefer | SslMode::Require if given_root => Check::Chain,
            SslMode::Prefer | SslMode::Require => Check::Nothing,
            SslMode::VerifyCa => Check::Chain,
            SslMode::VerifyFull => Check::Full,
        };
        Ok(Tls {
            mode,
            check,
            roots,
            local,
            client,
        })
    }

    /// What the client is told: TLS or not, and whether it may fall back
    /// to plain. Unix sockets never use TLS (the server refuses it there).
    pub(super) fn client_mode(&self, config: &postgres::Config) -> ClientMode {
        let unix_only = config.get_hostaddrs().is_empty()
            && !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        match self.mode {
            _ if unix_only => ClientMode::Disable,
            SslMode::Disable => ClientMode::Disable,
            SslMode::Prefer => ClientMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ClientMode::Require,
        }
    }

    /// The warning for a remote host reached in plain text or without
    /// checking who answers.
    pub(super) fn warning(&self, host: &str) -> Option<TlsWarning> {
        if self.local {
            return None;
        }
        let message = match (self.mode, self.check) {
            (SslMode::Disable, _) => format!(
                "TOLLGATE_STATE_URL: sslmode=disable: the team ledger at {host} is reached in plain text: \
                 anyone on the network path can read its traffic and answer in its place (its budgets, its cached answers)"
            ),
            (_, Check::Nothing) => format!(
                "TOLLGATE_STATE_URL: sslmode={}: the team ledger at {host} is not verified: \
                 anyone on the network path can pose as it (its budgets, its cached answers)",
                self.mode.as_str()
            ),
            _ => return None,
        };
        Some(TlsWarning {
            message,
            help: "drop sslmode (verify-full, with the system's CAs, is the default for a remote host), \
                   or give the server's CA with sslrootcert=PATH (or PGSSLROOTCERT)"
                .to_owned(),
        })
    }

    /// The client's TLS connector: the protocol versions rustls deems safe,
    /// and the certificate check the mode asks for. The system's CAs are
    /// loaded once per process, and only when a check needs them.
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match (self.check, &self.roots) {
            (Check::Nothing, _) => Arc::new(RootCertStore::empty()),
            (_, Roots::File { store, .. }) => Arc::clone(store),
            (_, Roots::System) => system_roots()?,
        };
        let verifier = Verifier {
            check: self.check,
            roots,
            algorithms: provider.signature_verification_algorithms,
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            // rustls checks that the key is one it can sign with (and, where
            // it can tell, that it is the certificate's).
            Some(c) => builder
                .with_client_auth_cert(c.certs.clone(), c.key.clone_key())
                .map_err(|e| {
                    format!(
                        "TOLLGATE_STATE_URL: sslcert {} with sslkey {}: {e}",
                        c.cert_path.display(),
                        c.key_path.display()
                    )
                })?,
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// What to do about a failed connection, when TLS is why it failed.
    pub(super) fn hint(&self, error: &postgres::Error) -> Option<String> {
        let mode = self.mode.as_str();
        let whose = match &self.roots {
            Roots::File { path, .. } => format!("the CA in sslrootcert {}", path.display()),
            Roots::System => "a CA this machine trusts".to_owned(),
        };
        let chain = message_chain(error);
        if let Some(e) = rustls_error(error) {
            if let rustls::Error::AlertReceived(alert) = e {
                use rustls::AlertDescription as A;
                return match (&self.client, alert) {
                    (
                        Some(c),
                        A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied
                        | A::CertificateExpired | A::CertificateRevoked | A::UnsupportedCertificate,
                    ) => Some(format!(
                        "the server refused the client certificate in sslcert {}: it must be signed by a CA in the server's ssl_ca_file, and be valid now",
                        c.cert_path.display()
                    )),
                    (None, A::CertificateRequired | A::HandshakeFailure) => Some(
                        "the server asks for a client certificate: give sslcert=PATH and sslkey=PATH (or PGSSLCERT and PGSSLKEY)"
                            .to_owned(),
                    ),
                    _ => None,
                };
            }
            return match e {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    Some(format!(
                        "sslmode={mode}: the server's certificate is not signed by {whose}; \
                     give the server's CA with sslrootcert=PATH (or PGSSLROOTCERT)"
                    ))
                }
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => Some(format!(
                    "sslmode={mode}: the server's certificate does not name the host in the URL; \
                     connect by a name it holds, or use sslmode=verify-ca to check only its CA"
                )),
                rustls::Error::InvalidCertificate(_) => Some(format!(
                    "sslmode={mode}: the server's certificate was refused"
                )),
                _ => None,
            };
        }
        if chain.contains("requires a valid client certificate") {
            return Some(match &self.client {
                None => "the server's pg_hba.conf lets this role in with a client certificate only: give sslcert=PATH and sslkey=PATH (or PGSSLCERT and PGSSLKEY)".to_owned(),
                Some(c) => format!(
                    "the server did not accept the client certificate in sslcert {}",
                    c.cert_path.display()
                ),
            });
        }
        if chain.contains("certificate authentication failed") {
            if let Some(c) = &self.client {
                return Some(format!(
                    "the common name (CN) of the client certificate in sslcert {} must be the user name in the URL (or mapped to it in pg_ident.conf)",
                    c.cert_path.display()
                ));
            }
        }
        chain
            .contains("server does not support TLS")
            .then(|| {
                format!(
                    "sslmode={mode} needs TLS and the server does not offer it (ssl = off): turn TLS on in the server{}",
                    if self.local {
                        ", or use sslmode=prefer"
                    } else {
                        " (a remote ledger defaults to verify-full)"
                    }
                )
            })
    }
}

/// Every host of the URL is this machine: a Unix socket, `localhost` or a
/// loopback address (where a connection goes: `hostaddr` when given).
fn all_local(config: &postgres::Config) -> bool {
    let addrs = config.get_hostaddrs();
    if !addrs.is_empty() {
        return addrs.iter().all(|a| a.is_loopback());
    }
    config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => is_loopback_name(name),
        #[cfg(unix)]
        Host::Unix(_) => true,
    })
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The certificates of a root file (PEM), bounded; none is an error.
fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let shown = path.display();
    let text = crate::files::read_text_limited(path, MAX_ROOT_FILE)
        .map_err(|e| format!("TOLLGATE_STATE_URL: sslrootcert {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!("TOLLGATE_STATE_URL: sslrootcert {shown}: not PEM certificates ({e})")
        })?;
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "TOLLGATE_STATE_URL: sslrootcert {shown} holds no usable certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(Arc::new(store))
}

/// A client certificate chain (PEM) and its private key (PEM: PKCS#8,
/// PKCS#1 or SEC1), bounded; the key only from a file no one else may read.
/// No message quotes the key file's content.
fn read_identity(cert_path: &Path, key_path: &Path) -> Result<ClientIdentity, String> {
    let shown = cert_path.display();
    let text = crate::files::read_text_limited(cert_path, MAX_CLIENT_FILE)
        .map_err(|e| format!("TOLLGATE_STATE_URL: sslcert {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TOLLGATE_STATE_URL: sslcert {shown}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!(
            "TOLLGATE_STATE_URL: sslcert {shown} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    key_private_to_owner(key_path)?;
    let shown = key_path.display();
    let bytes = crate::files::read_bytes_limited(key_path, MAX_CLIENT_FILE)
        .map_err(|e| format!("TOLLGATE_STATE_URL: sslkey {shown}: {e}"))?;
    // The parser's error may quote a line of the file: never shown.
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        format!(
            "TOLLGATE_STATE_URL: sslkey {shown} is not a PEM private key (PKCS#8, PKCS#1 or SEC1; \
             encrypted keys are not supported)"
        )
    })?;
    Ok(ClientIdentity {
        cert_path: cert_path.to_owned(),
        key_path: key_path.to_owned(),
        certs,
        key,
    })
}

/// libpq's rule for a private key file: no access for others, and none for
/// the group unless root owns it (then read at most): 0600 or 0640.
fn key_private_to_owner(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| format!("TOLLGATE_STATE_URL: sslkey {shown}: {e}"))?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(format!(
            "TOLLGATE_STATE_URL: sslkey {shown} may be read by {} (mode {mode:04o}): a private key must be its owner's alone; chmod 600 {shown}",
            if mode & 0o007 != 0 {
                "others"
            } else {
                "its group"
            }
        ));
    }
    Ok(())
}

/// The system's CAs, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "no CA certificates found on this machine to verify the server with; \
                     give the server's CA with sslrootcert=PATH (or PGSSLROOTCERT)"
                        .to_owned(),
                );
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// The rustls error under a client error, if TLS is why it failed (an
/// `io::Error` wraps it, and hides it from `source()`).
fn rustls_error(error: &postgres::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

fn message_chain(error: &postgres::Error) -> String {
    let mut m = error.to_string();
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        m.push_str(&format!(": {e}"));
        next = e.source();
    }
    m
}

/// The certificate check of one connection. Handshake signatures are
/// always verified (so the server holds the key of the certificate it
/// sent); the certificate itself as far as [`Check`] says.
#[derive(Debug)]
struct Verifier {
    check: Check,
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == Check::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check == Check::Full {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> postgres::Config {
        take_params(url).unwrap().url.parse().unwrap()
    }

    /// The settings of `url` with no `PGSSL…` variables in the way.
    fn tls(url: &str) -> Result<Tls, String> {
        let p = take_params(url)?;
        let config: postgres::Config = p.url.parse().unwrap();
        Tls::new_with(&p, &config, |_| None)
    }

    /// The TLS parameters are taken out of the query and everything else
    /// is kept byte for byte (rust-postgres does not decode `+`).
    #[test]
    fn tls_parameters_are_taken_out_and_the_rest_kept() {
        let p = take_params(
            "postgres://u:p@h/db?sslmode=verify-full&options=-c%20statement_timeout%3D2s&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            p.url,
            "postgres://u:p@h/db?options=-c%20statement_timeout%3D2s&connect_timeout=3"
        );
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/tmp/ca.pem"));
        let p = take_params("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(p.url, "postgres://u@h/db");
        let p = take_params("postgres://u@h/db").unwrap();
        assert_eq!((p.url.as_str(), p.sslmode), ("postgres://u@h/db", None));
        // The last one wins, as in libpq.
        let p = take_params("postgres://u@h/db?sslmode=disable&sslmode=require").unwrap();
        assert_eq!(p.sslmode.as_deref(), Some("require"));
        // Client certificates are taken out and kept.
        let p = take_params("postgres://u@h/db?sslcert=%2Fc.pem&sslkey=/k.pem&x=1").unwrap();
        assert_eq!(p.url, "postgres://u@h/db?x=1");
        assert_eq!(
            (p.sslcert.as_deref(), p.sslkey.as_deref()),
            (Some("/c.pem"), Some("/k.pem"))
        );
        // An encrypted key's passphrase is refused, never quoted.
        let e = take_params("postgres://u@h/db?sslpassword=hunter2-passphrase").unwrap_err();
        assert!(e.contains("`sslpassword`"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(take_params("postgres://u@h/db?sslcertmode=require").is_err());
    }

    /// The client key: refused when others may read it (libpq's rule, the
    /// fix named), when it is not a key (its content never quoted), or
    /// when it comes without its certificate; `PGSSLCERT` / `PGSSLKEY`
    /// fill in for the URL.
    #[test]
    fn a_client_key_others_may_read_or_that_is_no_key_is_refused_without_quoting_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.crt");
        std::fs::write(&cert, OTHER_CA).unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==SECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let c = config("postgres://u@127.0.0.1/x");
        let with = |cert: Option<&Path>, key: Option<&Path>| {
            let p = Params {
                sslcert: cert.map(|c| c.display().to_string()),
                sslkey: key.map(|k| k.display().to_string()),
                ..Params::default()
            };
            Tls::new_with(&p, &c, |_| None)
        };
        for mode in [0o644, 0o604, 0o640, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            // Root may let its group read (0640); nobody lets others.
            let root_owned = std::fs::metadata(&key)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
                .unwrap();
            if root_owned && mode == 0o640 {
                continue;
            }
            let e = with(Some(&cert), Some(&key)).unwrap_err();
            assert!(e.contains(&format!("chmod 600 {}", key.display())), "{e}");
            assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = with(Some(&cert), Some(&key)).unwrap_err();
        assert!(e.contains("is not a PEM private key"), "{e}");
        assert!(
            !e.contains("SECRETKEYMATERIAL") && !e.contains("c2VjcmV0"),
            "{e}"
        );
        let e = with(Some(&cert), None).unwrap_err();
        assert!(e.contains("sslcert is given without sslkey"), "{e}");
        let e = with(None, Some(&key)).unwrap_err();
        assert!(e.contains("sslkey is given without sslcert"), "{e}");
        // From the environment: the same checks on the same files.
        let env = |k: &str| match k {
            "PGSSLCERT" => Some(cert.display().to_string()),
            "PGSSLKEY" => Some(key.display().to_string()),
            _ => None,
        };
        let e = Tls::new_with(&Params::default(), &c, env).unwrap_err();
        assert!(e.contains("is not a PEM private key"), "{e}");
        // No certificate at all in the certificate file.
        std::fs::write(&cert, "nothing here\n").unwrap();
        let e = with(Some(&cert), Some(&key)).unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
    }

    /// A remote host is verified unless the URL says otherwise; this
    /// machine keeps libpq's `prefer`. Unix sockets never use TLS.
    #[test]
    fn the_default_verifies_a_remote_host_and_prefers_tls_locally() {
        for (url, mode, check) in [
            (
                "postgres://u@db.example/x",
                SslMode::VerifyFull,
                Check::Full,
            ),
            ("postgres://u@10.0.0.5/x", SslMode::VerifyFull, Check::Full),
            ("postgres://u@127.0.0.1/x", SslMode::Prefer, Check::Nothing),
            (
                "postgres://u@localhost:5433/x",
                SslMode::Prefer,
                Check::Nothing,
            ),
            ("postgres://u@[::1]/x", SslMode::Prefer, Check::Nothing),
            (
                "postgres://u@%2Fvar%2Frun%2Fpostgresql/x",
                SslMode::Prefer,
                Check::Nothing,
            ),
            // Where the connection goes decides: hostaddr when given.
            (
                "postgres://u@db.example/x?hostaddr=127.0.0.1",
                SslMode::Prefer,
                Check::Nothing,
            ),
            (
                "postgres://u@localhost/x?hostaddr=10.1.2.3",
                SslMode::VerifyFull,
                Check::Full,
            ),
            (
                "postgres://u@localhost,db.example/x",
                SslMode::VerifyFull,
                Check::Full,
            ),
            (
                "postgres://u@db.example/x?sslmode=require",
                SslMode::Require,
                Check::Nothing,
            ),
            (
                "postgres://u@db.example/x?sslmode=verify-ca",
                SslMode::VerifyCa,
                Check::Chain,
            ),
            (
                "postgres://u@db.example/x?sslrootcert=system",
                SslMode::VerifyFull,
                Check::Full,
            ),
        ] {
            let t = tls(url).unwrap();
            assert_eq!((t.mode, t.check), (mode, check), "{url}");
        }
        let client = |url: &str| tls(url).unwrap().client_mode(&config(url));
        assert_eq!(client("postgres://u@db.example/x"), ClientMode::Require);
        assert_eq!(client("postgres://u@127.0.0.1/x"), ClientMode::Prefer);
        assert_eq!(
            client("postgres://u@h/x?sslmode=disable"),
            ClientMode::Disable
        );
        assert_eq!(
            client("postgres://u@%2Frun%2Fpostgresql/x?sslmode=verify-full"),
            ClientMode::Disable
        );
    }

    /// The environment fills in what the URL leaves out, as libpq's
    /// variables do; the URL wins.
    #[test]
    fn pgsslmode_and_pgsslrootcert_fill_in_for_the_url() {
        let root = std::env::temp_dir().join(format!("tollgate-root-{}.pem", fastrand::u64(..)));
        std::fs::write(&root, OTHER_CA).unwrap();
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("require".to_owned()),
            "PGSSLROOTCERT" => Some(root.display().to_string()),
            _ => None,
        };
        let c = config("postgres://u@db.example/x");
        let t = Tls::new_with(&Params::default(), &c, env).unwrap();
        // A root certificate makes `require` check the chain (libpq).
        assert_eq!((t.mode, t.check), (SslMode::Require, Check::Chain));
        assert!(matches!(t.roots, Roots::File { .. }));
        let p = Params {
            sslmode: Some("verify-full".into()),
            ..Params::default()
        };
        let t = Tls::new_with(&p, &c, env).unwrap();
        assert_eq!((t.mode, t.check), (SslMode::VerifyFull, Check::Full));
        std::fs::remove_file(&root).unwrap();
    }

    /// Bad settings are errors naming what is wrong, before any connection.
    #[test]
    fn bad_settings_are_refused_before_connecting() {
        let e = tls("postgres://u@h/x?sslmode=allow-all").unwrap_err();
        assert!(
            e.contains("sslmode `allow-all` is not one of disable, prefer"),
            "{e}"
        );
        let e = tls("postgres://u@h/x?sslmode=require&sslrootcert=system").unwrap_err();
        assert!(
            e.contains("sslmode=require may not be used with sslrootcert=system"),
            "{e}"
        );
        let e = tls("postgres://u@h/x?sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert_eq!(
            e,
            "TOLLGATE_STATE_URL: sslrootcert /nonexistent/ca.pem: no such file"
        );
        let junk = std::env::temp_dir().join(format!("tollgate-junk-{}.pem", fastrand::u64(..)));
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = tls(&format!("postgres://u@h/x?sslrootcert={}", junk.display())).unwrap_err();
        assert!(e.contains("holds no usable certificate"), "{e}");
        std::fs::remove_file(&junk).unwrap();
    }

    /// A remote ledger reached in plain text or unverified is warned
    /// about; a verified one and this machine are not.
    #[test]
    fn a_remote_ledger_reached_unverified_is_warned_about() {
        let warning = |url: &str| tls(url).unwrap().warning("db.example");
        let w = warning("postgres://u@db.example/x?sslmode=disable").unwrap();
        assert!(w.message.contains("reached in plain text"), "{w:?}");
        let w = warning("postgres://u@db.example/x?sslmode=require").unwrap();
        assert!(
            w.message
                .contains("sslmode=require: the team ledger at db.example is not verified"),
            "{w:?}"
        );
        assert!(w.help.contains("sslrootcert=PATH"), "{w:?}");
        assert!(warning("postgres://u@db.example/x?sslmode=prefer").is_some());
        assert_eq!(warning("postgres://u@db.example/x"), None);
        assert_eq!(warning("postgres://u@db.example/x?sslmode=verify-ca"), None);
        assert_eq!(warning("postgres://u@127.0.0.1/x?sslmode=disable"), None);
    }

    #[test]
    fn loopback_names() {
        for name in [
            "localhost",
            "LOCALHOST.",
            "db.localhost",
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in ["db.example", "10.0.0.1", "localhost.example", "::2"] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }

    /// A CA certificate that signed nothing (the tests' wrong root).
    const OTHER_CA: &str = include_str!("../../tests/data/tls/other-ca.pem");
}
