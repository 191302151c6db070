//! Checking PEM files before they reach the TLS stack, whose errors say only "transport
//! error": a bad file gets a message naming it and what is wrong with it.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

fn certificates(pem: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{name}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{name}: holds no `-----BEGIN CERTIFICATE-----` block"
        )));
    }
    Ok(certs)
}

/// Checks that `cert` (named `cert_name` in messages) is a PEM certificate chain, that `key`
/// is a PEM private key of a supported type, and that the key belongs to the chain's first
/// certificate.
pub fn check_identity(cert: &[u8], key: &[u8], cert_name: &str, key_name: &str) -> Result<()> {
    let chain = certificates(cert, cert_name)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        Error::Tls(format!(
            "{key_name}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}"
        ))
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        Error::Tls(format!(
            "{key_name}: unsupported or malformed private key: {e}"
        ))
    })?;
    match rustls::sign::CertifiedKey::new(chain, signer).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Error::Tls(format!(
                "{key_name} is not the private key of the certificate in {cert_name}"
            )))
        }
        // The key type cannot tell its public key: the handshake will be the judge.
        Err(rustls::Error::InconsistentKeys(_)) => Ok(()),
        Err(e) => Err(Error::Tls(format!(
            "{cert_name}: unusable certificate: {e}"
        ))),
    }
}

/// Checks that `pem` (named `name` in messages) holds at least one CA certificate.
pub fn check_ca(pem: &[u8], name: &str) -> Result<()> {
    certificates(pem, name).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn bad_and_mismatched_files_are_named() {
        let (cert, key) = pair();
        let (_, other_key) = pair();
        check_identity(cert.as_bytes(), key.as_bytes(), "cert.pem", "key.pem").unwrap();
        let err = |c: &str, k: &str| {
            check_identity(c.as_bytes(), k.as_bytes(), "cert.pem", "key.pem")
                .unwrap_err()
                .to_string()
        };
        let mismatch = err(&cert, &other_key);
        assert!(
            mismatch.contains("key.pem is not the private key of the certificate in cert.pem"),
            "{mismatch}"
        );
        let no_cert = err("hello", &key);
        assert!(no_cert.contains("cert.pem: holds no"), "{no_cert}");
        let swapped = err(&key, &cert);
        assert!(swapped.contains("cert.pem"), "{swapped}");
        let no_key = err(&cert, "not a key");
        assert!(no_key.contains("key.pem: no PEM private key"), "{no_key}");
        check_ca(cert.as_bytes(), "ca.pem").unwrap();
        let ca = check_ca(b"junk", "ca.pem").unwrap_err().to_string();
        assert!(ca.contains("ca.pem: holds no"), "{ca}");
    }
}
