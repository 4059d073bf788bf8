//! TLS between a coordinator and its workers (rustls).
//!
//! Off loopback the coordinator serves HTTPS: with the certificate given (`--tls-cert`,
//! `--tls-key`), or else with a self-signed one made once into the cache and reused, so its
//! fingerprint stays the same from run to run. A worker trusts a self-signed coordinator by
//! its certificate's SHA-256 fingerprint (`--fingerprint`, or `MVC_FINGERPRINT`): the
//! certificate must be exactly that one, whatever names it carries. Without a fingerprint an
//! `https://` coordinator is checked the usual way, against the system's certificate
//! authorities.

use anyhow::{Context, Result, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable a worker's fingerprint may come from (Slurm workers get it so).
pub const FINGERPRINT_ENV: &str = "MVC_FINGERPRINT";

/// The SHA-256 of a certificate (its DER bytes), as `openssl x509 -fingerprint -sha256`
/// prints it, without the colons.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// A pin no certificate has: a client pinned to it sees any server's certificate and
    /// trusts none (what a probe for "does this address speak TLS" needs).
    pub const NONE: Fingerprint = Fingerprint([0; 32]);

    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(sha2::Sha256::digest(der).into())
    }

    /// 64 hex digits; `sha256:` before them, colons between pairs and upper case are
    /// accepted (openssl's form).
    pub fn parse(text: &str) -> Result<Fingerprint> {
        let trimmed = text.trim();
        let hex: String = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .unwrap_or(trimmed)
            .chars()
            .filter(|&c| c != ':')
            .collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!(
                "`{trimmed}` is not a SHA-256 fingerprint: give the 64 hex digits the \
                 coordinator printed when it started"
            );
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Fingerprint(bytes))
    }

    /// `--fingerprint F` if given, else `MVC_FINGERPRINT` if set, else none.
    pub fn load(given: Option<&str>) -> Result<Option<Fingerprint>> {
        if let Some(text) = given {
            return Fingerprint::parse(text).map(Some).context("--fingerprint");
        }
        match std::env::var(FINGERPRINT_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                Fingerprint::parse(&v).map(Some).context(FINGERPRINT_ENV)
            }
            _ => Ok(None),
        }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::text::hex(&self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// One crypto provider for both ends, named rather than taken from the process default:
/// the dependency tree builds more than one, and rustls refuses to guess between them.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What a coordinator serves TLS with.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint: Fingerprint,
    /// Made by mvc (workers must pin it), not given by the user.
    pub self_signed: bool,
    /// Where the certificate is.
    pub cert: PathBuf,
}

impl ServerTls {
    /// The TLS a coordinator listening on `listen` serves: the given certificate and key,
    /// or off loopback the cache's self-signed certificate (made in `dir` on first use),
    /// or none (loopback stays plain HTTP: nothing there crosses a wire).
    pub fn choose(
        listen: std::net::SocketAddr,
        cert: Option<&Path>,
        key: Option<&Path>,
        dir: &Path,
    ) -> Result<Option<ServerTls>> {
        match (cert, key) {
            (Some(cert), Some(key)) => ServerTls::from_pem(cert, key).map(Some),
            (Some(_), None) | (None, Some(_)) => {
                bail!("--tls-cert and --tls-key go together: give both, or neither")
            }
            (None, None) if listen.ip().is_loopback() => Ok(None),
            (None, None) => ServerTls::self_signed(dir, listen).map(Some),
        }
    }

    /// A certificate chain and its private key, from PEM files.
    pub fn from_pem(cert: &Path, key: &Path) -> Result<ServerTls> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("--tls-cert {}: cannot read it", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("--tls-cert {}: not a PEM certificate", cert.display()))?;
        let Some(first) = certs.first() else {
            bail!(
                "--tls-cert {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
                cert.display()
            );
        };
        let fingerprint = Fingerprint::of(first.as_ref());
        let private = PrivateKeyDer::from_pem_file(key).with_context(|| {
            format!(
                "--tls-key {}: no PEM private key in it (expected -----BEGIN PRIVATE KEY-----)",
                key.display()
            )
        })?;
        let config = server_config(certs, private).with_context(|| {
            format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair",
                cert.display(),
                key.display()
            )
        })?;
        Ok(ServerTls {
            config,
            fingerprint,
            self_signed: false,
            cert: cert.to_path_buf(),
        })
    }

    /// The self-signed certificate kept in `dir` (made on first use, the key readable by
    /// this account only).
    pub fn self_signed(dir: &Path, listen: std::net::SocketAddr) -> Result<ServerTls> {
        let cert = dir.join("coordinator-cert.pem");
        let key = dir.join("coordinator-key.pem");
        if !(cert.exists() && key.exists()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut names = vec![crate::resources::hostname(), "localhost".to_string()];
            if !listen.ip().is_unspecified() {
                names.push(listen.ip().to_string());
            }
            let made = rcgen::generate_simple_self_signed(names)
                .context("making a self-signed certificate")?;
            write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
            std::fs::write(&cert, made.cert.pem())
                .with_context(|| format!("writing {}", cert.display()))?;
        }
        let mut tls = ServerTls::from_pem(&cert, &key).with_context(|| {
            format!(
                "the coordinator's certificate in {} is damaged: remove that folder and a new \
                 one is made (workers then need its new fingerprint)",
                dir.display()
            )
        })?;
        tls.self_signed = true;
        Ok(tls)
    }
}

/// Writes a file only this account may read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts exactly the certificate with the pinned fingerprint (names and dates are not
/// looked at: the pin says which certificate, and a self-signed one has no issuer to ask).
/// The handshake's signatures are checked as usual, so only the holder of that
/// certificate's key gets through.
#[derive(Debug)]
struct Pinned {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
    /// Set when a certificate was refused: the client reports that as final, not as a
    /// network error worth retrying.
    refused: Arc<AtomicBool>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity.as_ref());
        if seen == self.fingerprint {
            return Ok(ServerCertVerified::assertion());
        }
        self.refused.store(true, Ordering::SeqCst);
        Err(rustls::Error::General(format!(
            "the coordinator's certificate has fingerprint {seen}, not the {} given",
            self.fingerprint
        )))
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

/// A client configuration that trusts only the certificate with `fingerprint`; `refused`
/// is set whenever it turns one down.
pub fn pinned_client(
    fingerprint: Fingerprint,
    refused: Arc<AtomicBool>,
) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint,
            provider,
            refused,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_openssls_form_too() {
        let hex = "ab".repeat(32);
        let f = Fingerprint::parse(&hex).unwrap();
        assert_eq!(f.to_string(), hex);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(Fingerprint::parse(&format!("sha256:{colons}")).unwrap(), f);
        let err = Fingerprint::parse("abcd").unwrap_err().to_string();
        assert!(err.contains("not a SHA-256 fingerprint"), "{err}");
    }
}
