//! The TLS settings of every HTTP client tollgate builds: reqwest's own
//! (rustls with aws-lc-rs, the platform's certificate verifier, HTTP/1.1),
//! except that the system's root certificates are read on the first TLS
//! handshake of the process, once, instead of once per client built.
//!
//! Why: reqwest reads and parses the whole system store (a bundle and a
//! folder of about 150 files) every time a client is built, and a run
//! builds three (the proxied and the direct provider clients, the local
//! server's health check) — about 30 ms of every `run` and `test`, spent
//! before the first call even when every model is on loopback over plain
//! HTTP, where no certificate is ever checked. The verifier is the same
//! (`rustls-platform-verifier`, what reqwest uses); only when it is made
//! changes.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A client builder with tollgate's TLS settings (see the module comment):
/// the start of every `reqwest::Client` tollgate builds.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(config())
}

/// The rustls configuration reqwest would build for itself with our
/// features (`rustls`, no `http2`): aws-lc-rs, TLS 1.2 and 1.3, SNI, ALPN
/// `http/1.1`, no client certificate — with the lazily made verifier.
fn config() -> rustls::ClientConfig {
    let provider = crypto();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        // aws-lc-rs supports both default versions: this cannot fail.
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LazyVerifier { provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// The crypto provider reqwest picks: one installed as the process
/// default, else aws-lc-rs.
fn crypto() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The platform verifier, made on first use and shared by every client of
/// the process; `Err` (kept) when the system has no usable root
/// certificate, which fails each handshake with the reason instead of
/// every client's construction.
fn platform(
    provider: &Arc<CryptoProvider>,
) -> Result<&'static rustls_platform_verifier::Verifier, rustls::Error> {
    static VERIFIER: OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>> =
        OnceLock::new();
    VERIFIER
        .get_or_init(|| rustls_platform_verifier::Verifier::new(Arc::clone(provider)))
        .as_ref()
        .map_err(Clone::clone)
}

/// Every check delegated to the platform verifier, made when the first
/// handshake needs it.
#[derive(Debug)]
struct LazyVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LazyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        platform(&self.provider)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        platform(&self.provider)?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        platform(&self.provider)?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Asked for the first ClientHello. Without a verifier the handshake
        // fails at the certificate with the reason; until then the
        // provider's own schemes (what the platform verifier offers on
        // Linux) are as good as any.
        match platform(&self.provider) {
            Ok(v) => v.supported_verify_schemes(),
            Err(_) => self
                .provider
                .signature_verification_algorithms
                .supported_schemes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What reqwest would have set, kept: a drift here would change what
    /// tollgate offers servers.
    #[test]
    fn the_config_offers_what_reqwest_would() {
        let c = config();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(c.enable_sni);
        assert!(!c.client_auth_cert_resolver.has_certs());
        client_builder()
            .build()
            .expect("reqwest takes the configuration");
    }

    /// The lazy verifier is the platform verifier: a certificate no trusted
    /// CA signed (here a CA certificate nobody trusts, presented as the
    /// server's) is refused, with the platform verifier's own error.
    #[test]
    fn an_untrusted_certificate_is_refused_as_the_platform_verifier_refuses_it() {
        let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls/other-ca.pem");
        let cert: CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_file(pem).expect("a certificate");
        let name = ServerName::try_from("localhost").expect("a name");
        let now = UnixTime::now();
        let lazy = LazyVerifier { provider: crypto() };
        let ours = lazy.verify_server_cert(&cert, &[], &name, &[], now);
        let theirs = rustls_platform_verifier::Verifier::new(crypto())
            .and_then(|v| v.verify_server_cert(&cert, &[], &name, &[], now));
        let (Err(ours), Err(theirs)) = (ours, theirs) else {
            panic!("an untrusted certificate was accepted");
        };
        // `OtherError`s compare by pointer: compare what they say.
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        if let Ok(platform) = rustls_platform_verifier::Verifier::new(crypto()) {
            assert_eq!(
                lazy.supported_verify_schemes(),
                platform.supported_verify_schemes()
            );
        }
    }
}
