//! TLS on the proxy's second listener: a certificate per domain, chosen by the name the
//! client asks for (SNI), from a folder of PEM files.
//!
//! Each `*.pem` file in the folder holds one certificate chain (the server's certificate
//! first) and its private key, as HAProxy's `crt` folders do. The names a certificate
//! serves are those of its subject alternative names; `*.example.com` serves every name
//! one label under `example.com`, and an exact name wins over a wildcard. A client
//! that names no host (or an IP address), or one no certificate covers, gets the
//! certificate of `default.pem` if the folder has one (as nginx's default server and
//! HAProxy's first certificate do), and is refused in the handshake otherwise. ALPN
//! offers `h2` and `http/1.1`.
//!
//! A certificate that expires within [`EXPIRY_WARNING`] (or has expired) is served
//! but logged at every load, and the earliest expiry is a metric: the classic outage of
//! an edge is a certificate nobody renewed.
//!
//! **Invariant:** a certificate set is loaded whole or not at all: a file that is
//! unreadable, holds no certificate or no key, a key that does not match, or two files
//! claiming one name fail the load with an error naming the file; a reload that fails
//! keeps the set in use.

mod x509;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The folder cannot be listed.
    #[error("cannot read the TLS certificate folder {dir}: {source}")]
    ReadDir {
        /// The folder.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The folder holds no `*.pem` file.
    #[error("the TLS certificate folder {dir} holds no *.pem file; put one certificate chain and its key in each")]
    Empty {
        /// The folder.
        dir: PathBuf,
    },
    /// A file in the folder cannot be used; `reason` says why.
    #[error("TLS certificate file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Two files hold a certificate for the same name.
    #[error(
        "TLS certificate files {first} and {second} both hold a certificate for {name}; keep one"
    )]
    Duplicate {
        /// The name.
        name: String,
        /// The file read first.
        first: PathBuf,
        /// The other file.
        second: PathBuf,
    },
}

fn file_error(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// One file's certificate chain and key, ready for handshakes.
#[derive(Clone)]
struct Cert {
    key: Arc<CertifiedKey>,
    file: Arc<Path>,
    /// The server certificate's `notAfter`, in seconds since the Unix epoch.
    not_after: Option<i64>,
}

/// How long before a certificate expires the gateway starts warning about it.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// A folder's certificates, indexed by the names they serve.
#[derive(Default)]
pub struct Certificates {
    exact: HashMap<String, Cert>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Cert>,
    /// [`DEFAULT_FILE`]'s, for a client that asks for no name or an unknown one.
    default: Option<Cert>,
    files: usize,
}

/// The file whose certificate serves clients no other certificate is for.
pub const DEFAULT_FILE: &str = "default.pem";

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .field("names", &(self.exact.len() + self.wildcard.len()))
            .finish()
    }
}

impl Certificates {
    /// Reads every `*.pem` file in `dir` (see the module's documentation).
    pub fn load(dir: &Path) -> Result<Certificates, TlsError> {
        let read_dir = |source| TlsError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            if path.extension().is_some_and(|e| e == "pem") {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(TlsError::Empty {
                dir: dir.to_owned(),
            });
        }
        paths.sort();
        let mut certificates = Certificates::default();
        for path in paths {
            let pem = std::fs::read(&path).map_err(|e| file_error(&path, e.to_string()))?;
            let (key, names) = certified_key(&path, &pem)?;
            let is_default = path.file_name().is_some_and(|name| name == DEFAULT_FILE);
            let not_after = key
                .end_entity_cert()
                .ok()
                .and_then(|der| x509::not_after(der));
            let cert = Cert {
                key,
                file: path.into(),
                not_after,
            };
            if is_default {
                certificates.default = Some(cert.clone());
            }
            certificates.add(cert, names)?;
        }
        Ok(certificates)
    }

    fn add(&mut self, cert: Cert, names: Vec<String>) -> Result<(), TlsError> {
        for name in names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.wildcard, parent.to_owned()),
                None => (&mut self.exact, name.clone()),
            };
            if let Some(first) = map.get(&key) {
                if !Arc::ptr_eq(&first.file, &cert.file) {
                    return Err(TlsError::Duplicate {
                        name,
                        first: first.file.to_path_buf(),
                        second: cert.file.to_path_buf(),
                    });
                }
            }
            map.insert(key, cert.clone());
        }
        self.files += 1;
        Ok(())
    }

    /// Files loaded.
    pub fn files(&self) -> usize {
        self.files
    }

    /// Every loaded file and when its certificate expires (seconds since the Unix
    /// epoch; `None` if its validity could not be read), soonest first.
    pub fn expiries(&self) -> Vec<(Option<i64>, &Path)> {
        let mut seen = std::collections::HashSet::new();
        let mut all: Vec<(Option<i64>, &Path)> = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .filter(|cert| seen.insert(Arc::as_ptr(&cert.file)))
            .map(|cert| (cert.not_after, &*cert.file))
            .collect();
        all.sort_by_key(|(not_after, file)| (not_after.unwrap_or(i64::MAX), *file));
        all
    }

    /// Logs every certificate that has expired or expires within [`EXPIRY_WARNING`].
    fn warn_of_expiry(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for (not_after, file) in self.expiries() {
            let Some(not_after) = not_after else {
                tracing::warn!(file = %file.display(), "cannot read when this TLS certificate expires");
                continue;
            };
            let left = not_after - now;
            if left <= 0 {
                tracing::error!(file = %file.display(), expired_days_ago = -left / 86_400, "a TLS certificate has EXPIRED: clients refuse it; renew it and reload");
            } else if left < EXPIRY_WARNING.as_secs() as i64 {
                tracing::warn!(file = %file.display(), days_left = left / 86_400, "a TLS certificate expires soon; renew it and reload");
            }
        }
    }

    /// The certificate for `name` (an exact name, else a wildcard one label up), and
    /// the file it came from.
    pub fn find(&self, name: &str) -> Option<(&Arc<CertifiedKey>, &Path)> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let cert = self.exact.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })?;
        Some((&cert.key, &cert.file))
    }

    /// The certificate a handshake asking for `name` (or for none) gets: [`find`]'s,
    /// else the default one.
    ///
    /// [`find`]: Certificates::find
    pub fn choose(&self, name: Option<&str>) -> Option<(&Arc<CertifiedKey>, &Path)> {
        name.and_then(|name| self.find(name))
            .or_else(|| self.default.as_ref().map(|cert| (&cert.key, &*cert.file)))
    }
}

/// The chain and key in one PEM file, and the names webpki agrees the chain serves.
fn certified_key(path: &Path, pem: &[u8]) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("unreadable PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(path, "holds no CERTIFICATE block"));
    };
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error(path, "holds no private key (PRIVATE KEY block)")
        }
        e => file_error(path, format!("unreadable private key: {e}")),
    })?;
    let signer = provider::sign::any_supported_type(&key)
        .map_err(|e| file_error(path, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    certified.keys_match().map_err(|e| {
        file_error(
            path,
            format!("the private key does not belong to the first certificate: {e}"),
        )
    })?;

    let Some(listed) = x509::dns_names(leaf) else {
        return Err(file_error(path, "the first certificate is not valid X.509"));
    };
    let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        file_error(
            path,
            format!("the first certificate is not valid X.509: {e}"),
        )
    })?;
    let names: Vec<String> = listed
        .into_iter()
        .filter(|name| {
            // A wildcard is checked with a name it should cover.
            let probe = match name.strip_prefix("*.") {
                Some(parent) => format!("wildcard-probe.{parent}"),
                None => name.clone(),
            };
            ServerName::try_from(probe.as_str())
                .is_ok_and(|probe| parsed.verify_is_valid_for_subject_name(&probe).is_ok())
        })
        .collect();
    if names.is_empty() {
        return Err(file_error(
            path,
            "the first certificate names no DNS name (subjectAltName) to serve",
        ));
    }
    Ok((Arc::new(certified), names))
}

/// Picks the certificate for each handshake from the set in use, which a reload swaps.
#[derive(Debug)]
pub struct Resolver {
    certificates: ArcSwap<Certificates>,
}

impl Resolver {
    /// A resolver serving `certificates`.
    pub fn new(certificates: Certificates) -> Arc<Resolver> {
        Arc::new(Resolver {
            certificates: ArcSwap::from_pointee(certificates),
        })
    }

    /// Reads `dir` again and serves what it holds from the next handshake on; on an
    /// error, the set in use stays.
    pub fn reload(&self, dir: &Path) -> Result<usize, TlsError> {
        let certificates = Certificates::load(dir)?;
        let files = certificates.files();
        self.certificates.store(Arc::new(certificates));
        Ok(files)
    }

    /// The set in use.
    pub fn certificates(&self) -> arc_swap::Guard<Arc<Certificates>> {
        self.certificates.load()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        let certificates = self.certificates.load();
        let found = certificates.choose(name).map(|(key, _)| Arc::clone(key));
        if found.is_none() {
            tracing::debug!(sni = name, "no TLS certificate for the name asked for");
        }
        found
    }
}

/// The certificate folder a gateway serves from, and what it loaded.
#[derive(Debug)]
pub struct CertFolder {
    dir: PathBuf,
    resolver: Arc<Resolver>,
}

impl CertFolder {
    /// Loads `dir` (an error if it cannot be used, see [`Certificates::load`]).
    pub fn load(dir: &Path) -> Result<CertFolder, TlsError> {
        let certificates = Certificates::load(dir)?;
        certificates.warn_of_expiry();
        Ok(CertFolder {
            dir: dir.to_owned(),
            resolver: Resolver::new(certificates),
        })
    }

    /// Reads the folder again (see [`Resolver::reload`]), logging the outcome; the
    /// number of files now served.
    pub fn reload(&self) -> Result<usize, TlsError> {
        match self.resolver.reload(&self.dir) {
            Ok(files) => {
                tracing::info!(dir = %self.dir.display(), files, "TLS certificates reloaded");
                self.resolver.certificates().warn_of_expiry();
                Ok(files)
            }
            Err(error) => {
                tracing::error!(%error, "TLS certificates not reloaded; the previous ones stay in use");
                Err(error)
            }
        }
    }

    /// Files served now.
    pub fn files(&self) -> usize {
        self.resolver.certificates().files()
    }

    /// When the first of the certificates served now expires (seconds since the Unix
    /// epoch), if any could be read.
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.resolver
            .certificates()
            .expiries()
            .first()
            .and_then(|(not_after, _)| *not_after)
    }

    /// The handshake side, serving from this folder (and its reloads).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        acceptor(Arc::clone(&self.resolver))
    }
}

/// The server side of the TLS listener: certificates from `resolver`, ALPN `h2` and
/// `http/1.1`, TLS 1.2 and 1.3.
pub fn acceptor(resolver: Arc<Resolver>) -> tokio_rustls::TlsAcceptor {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests;
