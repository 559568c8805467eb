//! The DNS names in a certificate's subject alternative name extension.
//!
//! rustls checks a certificate against a name (webpki's `verify_is_valid_for_subject_name`)
//! but does not list the names it holds, and a whole X.509 parser would be a large
//! dependency for one list. This reads the few DER elements on the way to the
//! extension; every name it returns is then checked by webpki (see `super::Cert`),
//! so a misread can only lose a name, never serve a certificate for a name it lacks.

/// `id-ce-subjectAltName`, 2.5.29.17, as the content of its DER OBJECT IDENTIFIER.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IMPLICIT IA5String` in GeneralNames.
const DNS_NAME: u8 = 0x82;

/// The `dNSName` entries of the certificate's subject alternative names, lowercased;
/// `None` if the DER does not read as a certificate.
pub(super) fn dns_names(certificate: &[u8]) -> Option<Vec<String>> {
    let (tag, cert, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut names = Vec::new();
    while !tbs.is_empty() {
        let (tag, content, rest) = element(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut extensions, _) = element(content)? else {
            return None;
        };
        while !extensions.is_empty() {
            let (tag, extension, rest) = element(extensions)?;
            extensions = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (OID, id, mut fields) = element(extension)? else {
                return None;
            };
            if id != SUBJECT_ALT_NAME {
                continue;
            }
            let (mut tag, mut value, rest) = element(fields)?;
            if tag == BOOLEAN {
                fields = rest;
                (tag, value, _) = element(fields)?;
            }
            if tag != OCTET_STRING {
                return None;
            }
            let (SEQUENCE, mut general_names, _) = element(value)? else {
                return None;
            };
            while !general_names.is_empty() {
                let (tag, name, rest) = element(general_names)?;
                general_names = rest;
                if tag == DNS_NAME {
                    names.push(std::str::from_utf8(name).ok()?.to_ascii_lowercase());
                }
            }
        }
    }
    Some(names)
}

/// The first DER element of `input`: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // High tag numbers (0x1f) do not occur on the way to the names.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[&str]) -> Vec<u8> {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_every_dns_name_lowercased() {
        let der = certificate(&["Example.COM", "*.apps.example.com", "b.test"]);
        assert_eq!(
            dns_names(&der).unwrap(),
            ["example.com", "*.apps.example.com", "b.test"]
        );
    }

    #[test]
    fn a_certificate_without_names_has_none() {
        assert_eq!(dns_names(&certificate(&[])).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn truncated_or_foreign_der_is_refused_not_misread() {
        let der = certificate(&["example.com"]);
        for cut in [1, 2, 10, der.len() / 2, der.len() - 1] {
            assert_eq!(dns_names(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(dns_names(b"not a certificate"), None);
        assert_eq!(dns_names(&[]), None);
    }
}
