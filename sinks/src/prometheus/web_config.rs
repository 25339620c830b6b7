//! The web configuration of `/metrics`, in the file format of Prometheus's
//! exporter-toolkit (what node_exporter's `--web.config.file` reads), named by
//! the sink's `web_config`:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/ds01/metrics.crt      # PEM: the certificate, then its chain
//!   key_file: /etc/ds01/metrics.key       # PEM private key; readable by root only
//!   client_auth_type: NoClientCert        # or VerifyClientCertIfGiven, RequireAndVerifyClientCert
//!   client_ca_file: /etc/ds01/clients.crt # the CAs that sign client certificates
//!   min_version: TLS12                    # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...                # bcrypt hash (htpasswd -nBC 10 prometheus)
//! ```
//!
//! Relative paths are relative to the file's directory. The file names what
//! guards the metrics, so it is read like the main configuration (owned by
//! root and writable by no one else when the scan runs as root); the key file
//! must not be readable by other users. TLS is rustls with the *ring* provider
//! (the one bollard already brings); bcrypt hashes are checked by the
//! `bcrypt` crate. Unknown keys are refused (exporter-toolkit's
//! `cipher_suites`, `http_server_config`, ... are not supported).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

use crate::fsafe::read_trusted;

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<TlsVersion>,
}

/// exporter-toolkit's `client_auth_type` values that rustls can honour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum TlsVersion {
    TLS12,
    TLS13,
}

/// What the file configures, ready to serve with.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// TLS, when `tls_server_config` is set.
    pub tls: Option<Arc<ServerConfig>>,
    /// User name -> bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks the web configuration file `path`: its certificates,
    /// key and hashes are loaded now, so a broken file is refused at start (or
    /// at a reload, keeping the running configuration).
    pub fn load(path: &Path) -> Result<WebConfig, String> {
        let text = read_trusted(path, "web configuration")?;
        let file: File = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("web configuration {}: {e}", path.display()))?;
        let fail = |e: String| format!("web configuration {}: {e}", path.display());
        let base = path.parent().unwrap_or(Path::new("/"));
        for (user, hash) in &file.basic_auth_users {
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                fail(format!(
                    "basic_auth_users.{user}: not a bcrypt hash ({e}); make one with \
                     `htpasswd -nBC 10 {user}`"
                ))
            })?;
        }
        let tls = match &file.tls_server_config {
            Some(t) => Some(Arc::new(tls_config(t, base).map_err(fail)?)),
            None => None,
        };
        Ok(WebConfig {
            tls,
            users: file.basic_auth_users,
        })
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn tls_config(t: &TlsFile, base: &Path) -> Result<ServerConfig, String> {
    let cert_file = resolve(base, &t.cert_file);
    let key_file = resolve(base, &t.key_file);
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no certificate in it",
            cert_file.display()
        ));
    }
    check_key_file(&key_file)?;
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        Some(TlsVersion::TLS13) => &[&rustls::version::TLS13],
        Some(TlsVersion::TLS12) | None => rustls::DEFAULT_VERSIONS,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (t.client_auth_type, &t.client_ca_file) {
        (ClientAuth::NoClientCert, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(format!(
                "client_auth_type {:?} needs client_ca_file",
                t.client_auth_type
            ))
        }
        (auth, Some(ca)) => {
            let ca = resolve(base, ca);
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca)
                .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?
            {
                let cert = cert.map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file/key_file: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A private key other users can read is refused: anyone could then pose as
/// this exporter.
fn check_key_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("key_file {}: {e}", path.display()))?;
    if meta.mode() & 0o004 != 0 {
        return Err(format!(
            "key_file {}: readable by every user (mode {:04o}); run `chmod o-r` on it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn users_and_their_hashes_are_read_and_bad_hashes_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hash = bcrypt::hash("secret", 4).expect("hash");
        let p = write(
            dir.path(),
            "web.yml",
            &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
        );
        let config = WebConfig::load(&p).expect("load");
        assert!(config.tls.is_none());
        assert_eq!(config.users["prometheus"], hash);
        let bad = write(dir.path(), "bad.yml", "basic_auth_users:\n  p: secret\n");
        let err = WebConfig::load(&bad).expect_err("plain password");
        assert!(
            err.contains("basic_auth_users.p: not a bcrypt hash"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_unsupported_client_auth_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "web.yml",
            "http_server_config:\n  http2: true\n",
        );
        let err = WebConfig::load(&p).expect_err("unknown key");
        assert!(err.contains("http_server_config"), "{err}");
        let p = write(
            dir.path(),
            "web2.yml",
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequestClientCert\n",
        );
        let err = WebConfig::load(&p).expect_err("unsupported");
        assert!(err.contains("RequestClientCert"), "{err}");
        let p = write(
            dir.path(),
            "web3.yml",
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
        );
        let err = WebConfig::load(&p).expect_err("missing cert");
        assert!(err.contains("missing.crt"), "{err}");
    }
}
