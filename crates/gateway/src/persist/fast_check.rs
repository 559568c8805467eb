//! Quick checks of the common forms of a route's strings, for the snapshot decoder.
//!
//! Each function accepts only strings that `model`'s own checks accept, all of them
//! ASCII (so valid UTF-8), in one pass over the bytes and without allocating; anything else (every invalid string, and the valid
//! forms these do not cover: IPv6 and host-name backends, uppercase that `model` refuses
//! with a suggestion, ...) goes to `model`, which decides, and words the error. So the
//! decoder accepts exactly what `model` accepts, at a fraction of the cost on the strings
//! a table is made of. The tests below hold these to `model`'s verdicts.

/// The bytes of a lowercase host name: `[a-z0-9.-]`.
static HOST_BYTES: [bool; 256] = {
    let mut allowed = [false; 256];
    let mut b = 0;
    while b < 256 {
        allowed[b] = matches!(b as u8, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.');
        b += 1;
    }
    allowed
};

/// An `AppId`: 1 to 63 of `[a-z0-9-]`. Accepts ASCII only.
pub(super) fn app_id(s: &[u8]) -> bool {
    (1..=model::AppId::MAX_LEN).contains(&s.len())
        && s.iter().all(|&b| HOST_BYTES[usize::from(b)] && b != b'.')
}

/// A `Domain`: lowercase labels of 1 to 63 of `[a-z0-9-]`, none starting or ending with
/// `-`, at most 253 bytes in all, the last label not all digits; or `*.` followed by at
/// least two such labels. Accepts ASCII only.
pub(super) fn domain(s: &[u8]) -> bool {
    let (body, min_labels) = match s.strip_prefix(b"*.") {
        Some(body) => (body, 2),
        None => (s, 1),
    };
    s.len() <= 253 && labels(body).is_some_and(|n| n >= min_labels)
}

/// Checks the labels of a host name (no wildcard, no trailing dot); returns how many
/// there are. The bytes first, in one predictable loop; then the labels.
fn labels(name: &[u8]) -> Option<usize> {
    if !name.iter().all(|&b| HOST_BYTES[usize::from(b)]) {
        return None;
    }
    let mut count = 0;
    let mut last: &[u8] = &[];
    for label in name.split(|&b| b == b'.') {
        let (&first, &end) = (label.first()?, label.last()?);
        if label.len() > 63 || first == b'-' || end == b'-' {
            return None;
        }
        count += 1;
        last = label;
    }
    (!last.iter().all(u8::is_ascii_digit)).then_some(count)
}

/// A `Backend`: an IPv4 address in its usual form and a port from 1 to 65535, without
/// leading zeros; a weight from 1 to 1000. Accepts ASCII only.
pub(super) fn backend(addr: &[u8], weight: u16) -> bool {
    if !(1..=model::Backend::MAX_WEIGHT).contains(&weight) {
        return false;
    }
    // Four octets, each ended by a dot, the last by the colon.
    let mut rest = addr;
    for end in [b'.', b'.', b'.', b':'] {
        let Some((octet, after)) = number_until(rest, end) else {
            return false;
        };
        if octet > 255 {
            return false;
        }
        rest = after;
    }
    number(rest).is_some_and(|port| (1..=65_535).contains(&port))
}

/// The number at the start of `bytes` (as [`number`]) and what follows the `end` byte
/// right after it.
fn number_until(bytes: &[u8], end: u8) -> Option<(u32, &[u8])> {
    let digits = bytes
        .iter()
        .take(6)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if bytes.get(digits) != Some(&end) {
        return None;
    }
    Some((number(&bytes[..digits])?, &bytes[digits + 1..]))
}

/// 1 to 5 digits without a leading zero (but `0` itself).
fn number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 5 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_domain(s: &str) -> bool {
        s.parse::<model::Domain>().is_ok()
    }

    fn model_app(s: &str) -> bool {
        s.parse::<model::AppId>().is_ok()
    }

    fn model_backend(addr: &str, weight: u16) -> bool {
        model::Backend::new(addr, weight).is_ok()
    }

    #[test]
    fn the_common_forms_pass_quickly() {
        for name in [
            "app-1.apps.example.com",
            "www.customer-999999.com",
            "*.example.com",
            "localhost",
            "xn--bcher-kva.example",
            "a.b.c.d.e.f",
            "1.example.com",
            "example.c0m",
        ] {
            assert!(domain(name.as_bytes()), "{name}");
            assert!(model_domain(name), "{name}");
        }
        for app in ["app-1", "bench", "0", "a-b-c"] {
            assert!(app_id(app.as_bytes()), "{app}");
        }
        for addr in ["127.0.0.1:8080", "10.255.0.1:1", "0.0.0.0:65535"] {
            assert!(backend(addr.as_bytes(), 1), "{addr}");
        }
    }

    #[test]
    fn nothing_model_refuses_passes() {
        let mut domains: Vec<String> = [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "-a.com",
            "a-.com",
            "a.-b.com",
            "A.com",
            "a.COM",
            "a_b.com",
            "a b.com",
            "é.com",
            "1.2.3.4",
            "example.123",
            "123",
            "*",
            "*.",
            "*.com",
            "**.example.com",
            "*a.example.com",
            "a.*.example.com",
            "*.*.example.com",
            "*.example.123",
            "*.-a.com",
            "a.b.c.",
            "a:80",
            "[::1]",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        domains.push(format!("{label63}.com"));
        domains.push(format!("{label64}.com"));
        domains.push(format!("*.{label64}.com"));
        for total in [252, 253, 254, 255] {
            let mut name = String::new();
            while name.len() < total {
                if !name.is_empty() {
                    name.push('.');
                }
                let room = total - name.len();
                name.push_str(&"b".repeat(room.min(50)));
            }
            domains.push(name.clone());
            domains.push(format!("*.{name}"));
        }
        for s in &domains {
            assert!(
                !domain(s.as_bytes()) || model_domain(s),
                "{s:?} passes but model refuses it"
            );
        }

        let mut apps: Vec<String> = ["", "A", "a_b", "a.b", ".", "..", "é", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        apps.push("a".repeat(63));
        apps.push("a".repeat(64));
        for s in &apps {
            assert!(
                !app_id(s.as_bytes()) || model_app(s),
                "{s:?} passes but model refuses it"
            );
        }

        let addrs = [
            "",
            ":",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:08080",
            "127.0.0.1:65536",
            "127.0.0.1:99999",
            "127.0.0.1:123456",
            "127.0.0.1:80a",
            "127.0.0.1:+80",
            "127.0.0.256:80",
            "127.0.0.01:80",
            "127.0.0:80",
            "127.0.0.1.1:80",
            "127..0.1:80",
            ".127.0.0.1:80",
            "127.0.0.1:80:80",
            "1.2.3.4 :80",
            "[::1]:80",
            "::1:80",
            "backend.internal:80",
        ];
        for addr in addrs {
            for weight in [0, 1, 1000, 1001] {
                assert!(
                    !backend(addr.as_bytes(), weight) || model_backend(addr, weight),
                    "{addr:?} weighing {weight} passes but model refuses it"
                );
            }
        }
    }

    #[test]
    fn random_strings_pass_only_if_model_accepts_them() {
        // Short strings over an alphabet that hits every rule (digits, dots, hyphens,
        // stars, colons, uppercase, a non-ASCII letter).
        let alphabet: Vec<char> = "ab09-.*:Aé".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut passed = 0;
        for _ in 0..200_000 {
            let len = (next() % 14) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let weight = [1, 7, 1000][(next() % 3) as usize];
            if domain(s.as_bytes()) {
                assert!(model_domain(&s), "{s:?} passes but model refuses it");
                passed += 1;
            }
            if app_id(s.as_bytes()) {
                assert!(model_app(&s), "{s:?} passes but model refuses it");
            }
            if backend(s.as_bytes(), weight) {
                assert!(
                    model_backend(&s, weight),
                    "{s:?} passes but model refuses it"
                );
            }
        }
        assert!(
            passed > 1000,
            "the alphabet makes valid names too ({passed})"
        );
    }
}
