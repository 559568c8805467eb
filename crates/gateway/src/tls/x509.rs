//! What the gateway reads from a certificate itself: the DNS names of its subject
//! alternative name extension, and the end of its validity.
//!
//! rustls checks a certificate against a name (webpki's `verify_is_valid_for_subject_name`)
//! but does not list the names it holds, nor say when it expires, and a whole X.509
//! parser would be a large dependency for two fields. This reads the few DER elements
//! on the way to them. Every name it returns is then checked by webpki (see
//! `super::certified_key`), so a misread can only lose a name, never serve a
//! certificate for a name it lacks; the expiry only feeds warnings and a metric.

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

/// `UTCTime` and `GeneralizedTime`.
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The content of the certificate's `TBSCertificate`.
fn tbs(certificate: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(certificate)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    Some(tbs)
}

/// The end of the certificate's validity (`notAfter`), in seconds since the Unix
/// epoch; `None` if the DER does not read as a certificate.
pub(super) fn not_after(certificate: &[u8]) -> Option<i64> {
    let mut fields = tbs(certificate)?;
    // version [0] (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, rest) = element(fields)?;
    if tag == 0xa0 {
        fields = rest;
    }
    for _ in 0..3 {
        (_, _, fields) = element(fields)?;
    }
    let (SEQUENCE, validity, _) = element(fields)? else {
        return None;
    };
    let (_, _, validity) = element(validity)?;
    let (tag, time, _) = element(validity)?;
    seconds(tag, std::str::from_utf8(time).ok()?)
}

/// A DER time (`YYMMDDHHMMSSZ` or `YYYYMMDDHHMMSSZ`) in seconds since the Unix epoch.
fn seconds(tag: u8, time: &str) -> Option<i64> {
    let digits = time.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            // RFC 5280: 50-99 are 19xx, 00-49 are 20xx.
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |at: usize| -> Option<i64> { rest.get(at..at + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (the civil-date
/// algorithm of Howard Hinnant's `chrono`-compatible date library).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The `dNSName` entries of the certificate's subject alternative names, lowercased;
/// `None` if the DER does not read as a certificate.
pub(super) fn dns_names(certificate: &[u8]) -> Option<Vec<String>> {
    let mut tbs = tbs(certificate)?;
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
    fn reads_when_a_certificate_expires() {
        let key = rcgen::KeyPair::generate().unwrap();
        for (year, month, day, unix) in [
            (2031, 5, 17, 1_936_742_400),
            (2049, 12, 31, 2_524_521_600),
            // From 2050 on, X.509 writes GeneralizedTime.
            (2051, 3, 1, 2_561_241_600),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, month, day);
            let der = params.self_signed(&key).unwrap().der().to_vec();
            assert_eq!(not_after(&der), Some(unix), "{year}-{month}-{day}");
        }
    }

    #[test]
    fn der_times_are_read_by_the_calendar() {
        assert_eq!(seconds(UTC_TIME, "700101000000Z"), Some(0));
        assert_eq!(seconds(UTC_TIME, "491231235959Z"), Some(2_524_607_999));
        assert_eq!(seconds(UTC_TIME, "500101000000Z"), Some(-631_152_000));
        assert_eq!(
            seconds(GENERALIZED_TIME, "20000229120000Z"),
            Some(951_825_600)
        );
        for bad in [
            "700101000000",
            "7001010000Z",
            "701301000000Z",
            "70010100000xZ",
        ] {
            assert_eq!(seconds(UTC_TIME, bad), None, "{bad}");
        }
        assert_eq!(seconds(GENERALIZED_TIME, "700101000000Z"), None);
    }

    #[test]
    fn truncated_or_foreign_der_is_refused_not_misread() {
        let der = certificate(&["example.com"]);
        for cut in [1, 2, 10, der.len() / 2, der.len() - 1] {
            assert_eq!(dns_names(&der[..cut]), None, "cut at {cut}");
            assert_eq!(not_after(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(dns_names(b"not a certificate"), None);
        assert_eq!(dns_names(&[]), None);
    }

    #[test]
    fn any_damaged_der_is_read_without_a_panic_and_names_only_what_it_holds() {
        let der = certificate(&["a.example.com", "*.b.example.com"]);
        let mut rng = crate::seeded::Rng(0x0509_dead_beef);
        let (mut read, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut bytes = der.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(bytes.len());
                match rng.below(4) {
                    0 => bytes[at] = rng.next() as u8,
                    1 => bytes[at] ^= 0x80,
                    2 => drop(bytes.remove(at)),
                    _ => bytes.insert(at, rng.pick(&[0x00, 0x30, 0x82, 0x84, 0xff])),
                }
            }
            // Whatever the damage, the reading ends, without a panic, in names or in
            // nothing; a name misread from damaged bytes is refused by webpki, which
            // confirms each before it is served (see the module's docs).
            match dns_names(&bytes) {
                Some(_) => read += 1,
                None => refused += 1,
            }
            let _ = not_after(&bytes);
        }
        assert!(
            read > 1000 && refused > 1000,
            "{read} read, {refused} refused"
        );
    }
}
