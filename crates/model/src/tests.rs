//! Table-driven tests of every type and rule in the crate, with expect-test snapshots.

use std::borrow::Cow;
use std::fmt::{Display, Write as _};
use std::str::FromStr;

use expect_test::{expect, Expect};

use crate::shard::{rendezvous_owner, shard_of, shards_for, stable_hash};
use crate::*;

/// Shortens a long input for a table, so snapshots stay readable.
fn show(input: &str) -> String {
    if input.len() > 40 {
        format!("{:?}…({} chars)", &input[..20], input.len())
    } else {
        format!("{input:?}")
    }
}

/// One line per input: `input => ok` (with the value when it displays differently)
/// or `input => error: message`.
fn table<T: Display, E: Display>(
    inputs: &[&str],
    parse: impl Fn(&str) -> Result<T, E>,
    expect: Expect,
) {
    let mut out = String::new();
    for input in inputs {
        let result = match parse(input) {
            Ok(v) if v.to_string() == *input => "ok".to_owned(),
            Ok(v) => format!("ok {v}"),
            Err(e) => format!("error: {e}"),
        };
        writeln!(out, "{} => {result}", show(input)).unwrap();
    }
    expect.assert_eq(&out);
}

/// Validates `json` as an app: `ok` and the app as JSON, or one line per error.
/// Also checks that serde deserialisation agrees with `App::from_json`, and that a
/// valid app survives a round trip.
fn check(json: &str, expect: Expect) {
    let result = App::from_json(json.as_bytes());
    let via_serde = serde_json::from_str::<App>(json);
    // The fast reader of stored apps accepts exactly what the full one accepts.
    match (&result, App::from_stored(json.as_bytes())) {
        (Ok(app), Ok(stored)) => assert_eq!(&stored, app, "from_stored disagrees"),
        (Err(_), Err(message)) => assert!(!message.is_empty()),
        (full, fast) => panic!("from_json gave {full:?} but from_stored {fast:?}"),
    }
    let out = match &result {
        Ok(app) => {
            assert_eq!(via_serde.as_ref().ok(), Some(app), "serde disagrees");
            let again = serde_json::to_string(app).unwrap();
            assert_eq!(App::from_json(again.as_bytes()).as_ref(), Ok(app));
            assert_eq!(app.validate(), Ok(()));
            format!("ok {again}\n")
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let serde_error = via_serde.expect_err("serde accepted an invalid app");
            if errors[0].field.is_empty() && errors[0].message.starts_with("invalid JSON") {
                // Malformed JSON: serde's own message, not ours.
            } else {
                assert_eq!(serde_error.to_string(), lines.join("; "));
            }
            lines.iter().map(|l| format!("{l}\n")).collect()
        }
    };
    expect.assert_eq(&out);
}

// ---- identifiers -----------------------------------------------------------------

#[test]
fn app_ids() {
    let max = "a".repeat(63);
    let over = "a".repeat(64);
    table(
        &[
            "shop", "a", "0", "-", "my-app-2", &max, &over, "", "Shop", "shop_1", "shop.1", "café",
            "a b",
        ],
        AppId::from_str,
        expect![[r#"
            "shop" => ok
            "a" => ok
            "0" => ok
            "-" => ok
            "my-app-2" => ok
            "aaaaaaaaaaaaaaaaaaaa"…(63 chars) => ok
            "aaaaaaaaaaaaaaaaaaaa"…(64 chars) => error: must be at most 63 characters long (got 64)
            "" => error: must not be empty
            "Shop" => error: must be lowercase (did you mean `shop`?)
            "shop_1" => error: invalid character '_': only a-z, 0-9 and '-' are allowed
            "shop.1" => error: invalid character '.': only a-z, 0-9 and '-' are allowed
            "café" => error: invalid character 'é': only a-z, 0-9 and '-' are allowed
            "a b" => error: invalid character ' ': only a-z, 0-9 and '-' are allowed
        "#]],
    );
}

#[test]
fn member_ids() {
    let max = "m".repeat(128);
    let over = "m".repeat(129);
    table(
        &[
            "orch-1",
            "Orch_1.example.com",
            "...",
            ".a",
            &max,
            &over,
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a:b",
            "ü",
        ],
        MemberId::from_str,
        expect![[r#"
            "orch-1" => ok
            "Orch_1.example.com" => ok
            "..." => ok
            ".a" => ok
            "mmmmmmmmmmmmmmmmmmmm"…(128 chars) => ok
            "mmmmmmmmmmmmmmmmmmmm"…(129 chars) => error: must be at most 128 characters long (got 129)
            "" => error: must not be empty
            "." => error: `.` is not allowed (ZooKeeper reserves it in paths)
            ".." => error: `..` is not allowed (ZooKeeper reserves it in paths)
            "a/b" => error: invalid character '/': only A-Z, a-z, 0-9, '.', '_' and '-' are allowed
            "a b" => error: invalid character ' ': only A-Z, a-z, 0-9, '.', '_' and '-' are allowed
            "a:b" => error: invalid character ':': only A-Z, a-z, 0-9, '.', '_' and '-' are allowed
            "ü" => error: invalid character 'ü': only A-Z, a-z, 0-9, '.', '_' and '-' are allowed
        "#]],
    );
}

#[test]
fn ids_deserialise_through_validation() {
    let id: AppId = serde_json::from_str(r#""shop""#).unwrap();
    assert_eq!(serde_json::to_string(&id).unwrap(), r#""shop""#);
    let err = serde_json::from_str::<AppId>(r#""Shop""#).unwrap_err();
    assert_eq!(err.to_string(), "must be lowercase (did you mean `shop`?)");
    assert!(serde_json::from_str::<MemberId>(r#"".""#).is_err());
    assert!(serde_json::from_str::<Domain>(r#""*.com""#).is_err());
    assert!(serde_json::from_str::<HttpPath>(r#""healthz""#).is_err());
    let member: MemberId = serde_json::from_str(r#""orch-1""#).unwrap();
    assert_eq!(member.as_str(), "orch-1");
}

#[test]
fn shard_ids() {
    let shown: Vec<String> = [0, 7, 42, 999, 1234, 65535]
        .map(|n| ShardId(n).to_string())
        .to_vec();
    assert_eq!(shown, ["0000", "0007", "0042", "0999", "1234", "65535"]);
    table(
        &[
            "0042", "0000", "65535", "42", "00042", "042", "65536", "99999", "+042", "-042", "",
            "abcd", " 0042", "0x2a",
        ],
        ShardId::from_str,
        expect![[r#"
            "0042" => ok
            "0000" => ok
            "65535" => ok
            "42" => error: `42` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "00042" => error: `00042` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "042" => error: `042` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "65536" => error: `65536` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "99999" => error: `99999` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "+042" => error: `+042` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "-042" => error: `-042` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "" => error: `` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "abcd" => error: `abcd` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            " 0042" => error: ` 0042` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
            "0x2a" => error: `0x2a` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`
        "#]],
    );
    for n in 0..=u16::MAX {
        assert_eq!(ShardId(n).to_string().parse(), Ok(ShardId(n)));
    }
    assert_eq!(serde_json::to_string(&ShardId(42)).unwrap(), "42");
    assert_eq!(serde_json::from_str::<ShardId>("42").unwrap(), ShardId(42));
}

// ---- domains ---------------------------------------------------------------------

#[test]
fn domains() {
    let label63 = format!("{}.com", "a".repeat(63));
    let label64 = format!("{}.com", "a".repeat(64));
    // 4 labels of 63 and one of 1: 4 * 64 + 1 = 257; trim to exactly 253 and 254.
    let l = "a".repeat(63);
    let max = format!("{l}.{l}.{l}.{}", "b".repeat(61));
    let over = format!("{l}.{l}.{l}.{}", "b".repeat(62));
    assert_eq!((max.len(), over.len()), (253, 254));
    table(
        &[
            "example.com",
            "localhost",
            "a.b.c.d.example.com",
            "a-b.example.com",
            "xn--bcher-kva.example",
            "www.xn--bcher-kva.ch",
            "3com.com",
            "a1.b2",
            "*.example.com",
            "*.a.b.example.com",
            &label63,
            &max,
            &label64,
            &over,
            "",
            ".",
            "example.com.",
            "Example.com",
            "EXAMPLE.COM.",
            "Foo_Bar.com",
            "exa_mple.com",
            "exa mple.com",
            "example.com:80",
            "-a.com",
            "a-.com",
            "a.b-.com",
            "a..com",
            ".a.com",
            "bücher.de",
            "1.2.3.4",
            "123",
            "example.123",
            "*.com",
            "*",
            "*.",
            "a.*.com",
            "*a.example.com",
            "*.*.example.com",
            "**.example.com",
        ],
        Domain::from_str,
        expect![[r#"
            "example.com" => ok
            "localhost" => ok
            "a.b.c.d.example.com" => ok
            "a-b.example.com" => ok
            "xn--bcher-kva.example" => ok
            "www.xn--bcher-kva.ch" => ok
            "3com.com" => ok
            "a1.b2" => ok
            "*.example.com" => ok
            "*.a.b.example.com" => ok
            "aaaaaaaaaaaaaaaaaaaa"…(67 chars) => ok
            "aaaaaaaaaaaaaaaaaaaa"…(253 chars) => ok
            "aaaaaaaaaaaaaaaaaaaa"…(68 chars) => error: label `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa` must be at most 63 characters long (got 64)
            "aaaaaaaaaaaaaaaaaaaa"…(254 chars) => error: must be at most 253 characters long (got 254)
            "" => error: must not be empty
            "." => error: must not have an empty label (a leading dot or `..`)
            "example.com." => error: must not end with '.' (did you mean `example.com`?)
            "Example.com" => error: must be lowercase (did you mean `example.com`?)
            "EXAMPLE.COM." => error: must be lowercase (did you mean `example.com`?)
            "Foo_Bar.com" => error: label `Foo_Bar` has invalid character '_': only a-z, 0-9 and '-' are allowed
            "exa_mple.com" => error: label `exa_mple` has invalid character '_': only a-z, 0-9 and '-' are allowed
            "exa mple.com" => error: label `exa mple` has invalid character ' ': only a-z, 0-9 and '-' are allowed
            "example.com:80" => error: label `com:80` has invalid character ':': only a-z, 0-9 and '-' are allowed
            "-a.com" => error: label `-a` must not start or end with '-'
            "a-.com" => error: label `a-` must not start or end with '-'
            "a.b-.com" => error: label `b-` must not start or end with '-'
            "a..com" => error: must not have an empty label (a leading dot or `..`)
            ".a.com" => error: must not have an empty label (a leading dot or `..`)
            "bücher.de" => error: label `bücher` is not ASCII: write internationalised names in punycode (`xn--...`)
            "1.2.3.4" => error: the last label must not be all digits (an IP address is not a domain name)
            "123" => error: the last label must not be all digits (an IP address is not a domain name)
            "example.123" => error: the last label must not be all digits (an IP address is not a domain name)
            "*.com" => error: a wildcard needs at least two labels after `*.`, as in `*.example.com`: `*.com` would capture every name under a top-level domain, other customers' included
            "*" => error: a wildcard needs at least two labels after `*.`, as in `*.example.com`: `*.com` would capture every name under a top-level domain, other customers' included
            "*." => error: a wildcard needs at least two labels after `*.`, as in `*.example.com`: `*.com` would capture every name under a top-level domain, other customers' included
            "a.*.com" => error: `*` is only allowed as the whole leftmost label, as in `*.example.com`
            "*a.example.com" => error: `*` is only allowed as the whole leftmost label, as in `*.example.com`
            "*.*.example.com" => error: `*` is only allowed as the whole leftmost label, as in `*.example.com`
            "**.example.com" => error: `*` is only allowed as the whole leftmost label, as in `*.example.com`
        "#]],
    );
}

#[test]
fn wildcards() {
    let exact: Domain = "example.com".parse().unwrap();
    let wild: Domain = "*.example.com".parse().unwrap();
    assert!(!exact.is_wildcard());
    assert_eq!(exact.suffix(), None);
    assert!(wild.is_wildcard());
    assert_eq!(wild.suffix(), Some("example.com"));

    let hosts = [
        "example.com",
        "a.example.com",
        "a.b.example.com",
        ".example.com",
        "aexample.com",
        "a.example.org",
    ];
    let matched =
        |d: &Domain| -> Vec<&str> { hosts.iter().copied().filter(|h| d.matches(h)).collect() };
    assert_eq!(matched(&exact), ["example.com"]);
    assert_eq!(matched(&wild), ["a.example.com"]);
}

#[test]
fn normalize_hosts() {
    let inputs = [
        "example.com",
        "example.com:8080",
        "example.com.",
        "Example.COM:8080",
        "EXAMPLE.COM.:443",
        "example.com:",
        "localhost",
        "xn--bcher-kva.example",
        "10.0.0.1:80",
        "[::1]:80",
        "[::1]",
        "[::FFFF:1]:80",
        "",
        ":80",
        ":",
        ".",
        "example.com..",
        "example.com:abc",
        "example.com:65536",
        "example.com:+80",
        "example.com:80:80",
        "*.example.com",
        "exa mple.com",
        "user@example.com",
        "bücher.de",
        "::1",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[zz]:80",
        "[::1%eth0]:80",
        "-a.com",
    ];
    let mut out = String::new();
    for input in inputs {
        let result = match normalize_host(input) {
            None => "None".to_owned(),
            Some(Cow::Borrowed(h)) => format!("{h:?} (borrowed)"),
            Some(Cow::Owned(h)) => format!("{h:?} (owned)"),
        };
        writeln!(out, "{input:?} => {result}").unwrap();
    }
    expect![[r#"
        "example.com" => "example.com" (borrowed)
        "example.com:8080" => "example.com" (borrowed)
        "example.com." => "example.com" (borrowed)
        "Example.COM:8080" => "example.com" (owned)
        "EXAMPLE.COM.:443" => "example.com" (owned)
        "example.com:" => "example.com" (borrowed)
        "localhost" => "localhost" (borrowed)
        "xn--bcher-kva.example" => "xn--bcher-kva.example" (borrowed)
        "10.0.0.1:80" => "10.0.0.1" (borrowed)
        "[::1]:80" => "[::1]" (borrowed)
        "[::1]" => "[::1]" (borrowed)
        "[::FFFF:1]:80" => "[::ffff:1]" (owned)
        "" => None
        ":80" => None
        ":" => None
        "." => None
        "example.com.." => None
        "example.com:abc" => None
        "example.com:65536" => None
        "example.com:+80" => None
        "example.com:80:80" => None
        "*.example.com" => None
        "exa mple.com" => None
        "user@example.com" => None
        "bücher.de" => None
        "::1" => None
        "[::1" => None
        "[::1]x" => None
        "[::1]:" => "[::1]" (borrowed)
        "[zz]:80" => None
        "[::1%eth0]:80" => None
        "-a.com" => None
    "#]]
    .assert_eq(&out);

    // Whatever it returns for a name is a valid domain, or an IP address.
    for input in inputs {
        if let Some(host) = normalize_host(input) {
            let ip = host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok();
            assert!(
                ip || host.parse::<Domain>().is_ok(),
                "{input:?} gave {host:?}"
            );
        }
    }
}

#[test]
fn the_one_pass_host_check_agrees_with_the_full_one() {
    fn agree(input: &str) {
        assert_eq!(
            normalize_host(input),
            crate::domain::normalize_host_slowly(input),
            "{input:?}"
        );
    }
    // Every string of up to 6 characters from an alphabet that reaches each rule.
    let alphabet = ['a', 'Z', '0', '9', '-', '.', ':', '*'];
    let mut current = vec![String::new()];
    for _ in 0..6 {
        let mut longer = Vec::with_capacity(current.len() * alphabet.len());
        for s in &current {
            agree(s);
            for c in alphabet {
                longer.push(format!("{s}{c}"));
            }
        }
        current = longer;
    }
    current.iter().for_each(|s| agree(s));
    // The limits: label and name lengths, ports.
    let label = |n: usize| "a".repeat(n);
    let name = |n: usize| {
        let mut s = "a.".repeat(n / 2);
        s.truncate(n.saturating_sub(1));
        s.push('b');
        s
    };
    for input in [
        label(63),
        label(64),
        format!("{}.com", label(63)),
        format!("{}.com", label(64)),
        name(253),
        name(254),
        format!("{}:80", name(253)),
        format!("{}:80", name(254)),
        "example.com:65535".to_owned(),
        "example.com:65536".to_owned(),
        "example.com:99999".to_owned(),
        "example.com:000080".to_owned(),
        "example.com:00080".to_owned(),
        "a-b.c-d.e1".to_owned(),
        "1.2.3.4".to_owned(),
        "1.2.3.4:80".to_owned(),
        "1.2.3.a".to_owned(),
        "a.1-2".to_owned(),
    ] {
        agree(&input);
    }
    assert_eq!(name(253).len(), 253);
}

// ---- backends and health checks ---------------------------------------------------

#[test]
fn backend_addrs() {
    table(
        &[
            "10.0.0.1:8080",
            "[::1]:80",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.1]:80",
            "backend.internal:80",
            "localhost:1",
            "a:65535",
            "10.0.0.1",
            "backend.internal",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:080",
            "10.0.0.1:",
            "10.0.0.1:+80",
            "10.0.0.1:http",
            ":80",
            "[::1]",
            "::1:80",
            "[0::1]:80",
            "[2001:DB8::1]:80",
            "[zz]:80",
            "[::1%eth0]:80",
            "10.0.0.256:80",
            "010.0.0.1:80",
            "1.2.3:80",
            "Backend.internal:80",
            "back_end:80",
            "*.internal:80",
            "backend.internal.:80",
        ],
        |addr| Backend::new(addr, 1).map(|b| b.addr().to_owned()),
        expect![[r#"
            "10.0.0.1:8080" => ok
            "[::1]:80" => ok
            "[2001:db8::1]:443" => ok
            "[::ffff:10.0.0.1]:80" => ok
            "backend.internal:80" => ok
            "localhost:1" => ok
            "a:65535" => ok
            "10.0.0.1" => error: must be `host:port`, as in `10.0.0.1:8080` (no port in `10.0.0.1`)
            "backend.internal" => error: must be `host:port`, as in `10.0.0.1:8080` (no port in `backend.internal`)
            "10.0.0.1:0" => error: port `0` must be a number from 1 to 65535, without leading zeros
            "10.0.0.1:65536" => error: port `65536` must be a number from 1 to 65535, without leading zeros
            "10.0.0.1:080" => error: port `080` must be a number from 1 to 65535, without leading zeros
            "10.0.0.1:" => error: port `` must be a number from 1 to 65535, without leading zeros
            "10.0.0.1:+80" => error: port `+80` must be a number from 1 to 65535, without leading zeros
            "10.0.0.1:http" => error: port `http` must be a number from 1 to 65535, without leading zeros
            ":80" => error: invalid host: must not be empty
            "[::1]" => error: must be `host:port`, as in `10.0.0.1:8080` (no port in `[::1]`)
            "::1:80" => error: an IPv6 address must be in brackets, as in `[::1]:8080`
            "[0::1]:80" => error: write the IPv6 address as `[::1]`
            "[2001:DB8::1]:80" => error: write the IPv6 address as `[2001:db8::1]`
            "[zz]:80" => error: `[zz]` is not an IPv6 address
            "[::1%eth0]:80" => error: `[::1%eth0]` is not an IPv6 address
            "10.0.0.256:80" => error: `10.0.0.256` is not a valid IPv4 address
            "010.0.0.1:80" => error: `010.0.0.1` is not a valid IPv4 address
            "1.2.3:80" => error: `1.2.3` is not a valid IPv4 address
            "Backend.internal:80" => error: invalid host: must be lowercase (did you mean `backend.internal`?)
            "back_end:80" => error: invalid host: label `back_end` has invalid character '_': only a-z, 0-9 and '-' are allowed
            "*.internal:80" => error: invalid host: label `*` has invalid character '*': only a-z, 0-9 and '-' are allowed
            "backend.internal.:80" => error: invalid host: must not have an empty label (a leading dot or `..`)
        "#]],
    );
}

#[test]
fn backend_parts_and_weights() {
    let b = Backend::new("[::1]:8080", 7).unwrap();
    assert_eq!((b.host(), b.port(), b.weight()), ("[::1]", 8080, 7));
    let b = Backend::new("backend.internal:80", 1000).unwrap();
    assert_eq!(
        (b.host(), b.port(), b.weight()),
        ("backend.internal", 80, 1000)
    );
    assert_eq!(
        Backend::new("10.0.0.1:80", 0).unwrap_err().to_string(),
        "weight must be from 1 to 1000 (got 0)"
    );
    assert_eq!(
        Backend::new("10.0.0.1:80", 1001).unwrap_err(),
        BackendError::Weight(1001)
    );
    let b: Backend = serde_json::from_str(r#"{"addr": "10.0.0.1:80"}"#).unwrap();
    assert_eq!(b.weight(), Backend::DEFAULT_WEIGHT);
    assert_eq!(
        serde_json::to_string(&b).unwrap(),
        r#"{"addr":"10.0.0.1:80","weight":1}"#
    );
    let err = serde_json::from_str::<Backend>(r#"{"addr": "10.0.0.1", "weight": 0, "x": 1}"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "addr: must be `host:port`, as in `10.0.0.1:8080` (no port in `10.0.0.1`); \
         weight: must be from 1 to 1000 (got 0); x: unknown field (expected addr, weight)"
    );
}

#[test]
fn http_paths() {
    let long_ok = format!("/{}", "p".repeat(1023));
    let too_long = format!("/{}", "p".repeat(1024));
    table(
        &[
            "/",
            "/healthz",
            "/health?deep=1&x=%20",
            &long_ok,
            &too_long,
            "",
            "healthz",
            "/health z",
            "/health\tz",
            "/health\n",
            "/health\u{7f}",
            "/gesundheit/ü",
        ],
        HttpPath::from_str,
        expect![[r#"
            "/" => ok
            "/healthz" => ok
            "/health?deep=1&x=%20" => ok
            "/ppppppppppppppppppp"…(1024 chars) => ok
            "/ppppppppppppppppppp"…(1025 chars) => error: must be at most 1024 characters long (got 1025)
            "" => error: must start with '/'
            "healthz" => error: must start with '/'
            "/health z" => error: must not contain spaces or control characters (found ' ')
            "/health\tz" => error: must not contain spaces or control characters (found '\t')
            "/health\n" => error: must not contain spaces or control characters (found '\n')
            "/health\u{7f}" => error: must not contain spaces or control characters (found '\u{7f}')
            "/gesundheit/ü" => error: must be ASCII: percent-encode 'ü'
        "#]],
    );
}

#[test]
fn health_check_json() {
    let http: HealthCheck = serde_json::from_str(r#"{"type":"http","path":"/healthz"}"#).unwrap();
    assert_eq!(
        http,
        HealthCheck::Http {
            path: "/healthz".parse().unwrap()
        }
    );
    assert_eq!(
        serde_json::to_string(&http).unwrap(),
        r#"{"type":"http","path":"/healthz"}"#
    );
    let tcp: HealthCheck = serde_json::from_str(r#"{"type":"tcp"}"#).unwrap();
    assert_eq!(tcp, HealthCheck::Tcp);
    assert_eq!(serde_json::to_string(&tcp).unwrap(), r#"{"type":"tcp"}"#);
    let err = serde_json::from_str::<HealthCheck>(r#"{"type":"http","path":"x"}"#).unwrap_err();
    assert_eq!(err.to_string(), "path: must start with '/'");
}

// ---- applications ------------------------------------------------------------------

#[test]
fn valid_apps() {
    check(
        r#"{"id": "shop", "domains": ["shop.example.com"], "backends": [{"addr": "10.0.0.1:8080"}]}"#,
        expect![[r#"
            ok {"id":"shop","domains":["shop.example.com"],"backends":[{"addr":"10.0.0.1:8080","weight":1}],"version":0}
        "#]],
    );
    check(
        r#"{
            "id": "shop",
            "domains": ["shop.example.com", "*.shop.example.com", "localhost"],
            "backends": [{"addr": "10.0.0.1:8080", "weight": 1000}, {"addr": "[::1]:80", "weight": 3}],
            "health_check": {"type": "http", "path": "/healthz"},
            "version": 18446744073709551615
        }"#,
        expect![[r#"
            ok {"id":"shop","domains":["shop.example.com","*.shop.example.com","localhost"],"backends":[{"addr":"10.0.0.1:8080","weight":1000},{"addr":"[::1]:80","weight":3}],"health_check":{"type":"http","path":"/healthz"},"version":18446744073709551615}
        "#]],
    );
    check(
        r#"{"id": "a", "domains": ["a.example.com"], "backends": [{"addr": "a.internal:1"}], "health_check": {"type": "tcp"}, "version": 7}"#,
        expect![[r#"
            ok {"id":"a","domains":["a.example.com"],"backends":[{"addr":"a.internal:1","weight":1}],"health_check":{"type":"tcp"},"version":7}
        "#]],
    );
    check(
        r#"{"id": "a", "domains": ["a.example.com"], "backends": [{"addr": "a.internal:1"}], "health_check": null}"#,
        expect![[r#"
            ok {"id":"a","domains":["a.example.com"],"backends":[{"addr":"a.internal:1","weight":1}],"version":0}
        "#]],
    );
}

#[test]
fn malformed_bodies() {
    check(
        "{",
        expect![[r#"
            invalid JSON: EOF while parsing an object at line 1 column 1
        "#]],
    );
    check(
        "{\n  \"id\": }",
        expect![[r#"
            invalid JSON: expected value at line 2 column 9
        "#]],
    );
    check(
        "{} x",
        expect![[r#"
            invalid JSON: trailing characters at line 1 column 4
        "#]],
    );
    check(
        "",
        expect![[r#"
            invalid JSON: EOF while parsing a value at line 1 column 0
        "#]],
    );
    check(
        r#"{"id": "a", "id": "b"}"#,
        expect![[r#"
            invalid JSON: duplicate field `id` at line 1 column 16
        "#]],
    );
    check(
        r#"{"id": "a", "backends": [{"addr": "a:1", "addr": "b:1"}]}"#,
        expect![[r#"
            invalid JSON: duplicate field `addr` at line 1 column 47
        "#]],
    );
    check(
        "[]",
        expect![[r#"
            must be an object, not an array
        "#]],
    );
    check(
        "null",
        expect![[r#"
            must be an object, not null
        "#]],
    );
    check(
        r#""shop""#,
        expect![[r#"
            must be an object, not a string
        "#]],
    );
}

#[test]
fn app_fields_required_and_typed() {
    check(
        "{}",
        expect![[r#"
            id: is required
            domains: is required (at least one domain)
            backends: is required (at least one backend)
        "#]],
    );
    check(
        r#"{"id": 7, "domains": "a.example.com", "backends": {"addr": "a:1"}, "health_check": "http", "version": "1"}"#,
        expect![[r#"
            id: must be a string, not a number
            domains: must be an array, not a string
            backends: must be an array, not an object
            health_check: must be an object, not a string
            version: must be an integer, not a string
        "#]],
    );
    check(
        r#"{"id": null, "domains": null, "backends": null, "version": null}"#,
        expect![[r#"
            id: must be a string, not null
            domains: must be an array, not null
            backends: must be an array, not null
            version: must be an integer, not null
        "#]],
    );
    check(
        r#"{"id": "a", "domains": ["a.example.com"], "backends": [{"addr": "a:1"}], "version": -1}"#,
        expect![[r#"
            version: must not be negative (got -1)
        "#]],
    );
    check(
        r#"{"id": "a", "domains": ["a.example.com"], "backends": [{"addr": "a:1"}], "version": 1.5}"#,
        expect![[r#"
            version: must be an integer (got 1.5)
        "#]],
    );
}

#[test]
fn app_ids_in_json() {
    let app = |id: &str| {
        format!(r#"{{"id": {id}, "domains": ["a.example.com"], "backends": [{{"addr": "a:1"}}]}}"#)
    };
    check(
        &app(r#""""#),
        expect![[r#"
            id: must not be empty
        "#]],
    );
    check(
        &app(r#""My-Shop""#),
        expect![[r#"
            id: must be lowercase (did you mean `my-shop`?)
        "#]],
    );
    check(
        &app(r#""my_shop""#),
        expect![[r#"
            id: invalid character '_': only a-z, 0-9 and '-' are allowed
        "#]],
    );
    check(
        &app(&format!("{:?}", "a".repeat(64))),
        expect![[r#"
            id: must be at most 63 characters long (got 64)
        "#]],
    );
}

#[test]
fn app_domains() {
    let app = |domains: &str| {
        format!(r#"{{"id": "a", "domains": {domains}, "backends": [{{"addr": "a:1"}}]}}"#)
    };
    check(
        &app("[]"),
        expect![[r#"
            domains: must have at least one domain
        "#]],
    );
    check(
        &app(
            r#"["example.com", "Example.com", "example.com.", 3, "*.com", "a.*.com", "ok.example.com", "example.com", "ok.example.com", "example.com"]"#,
        ),
        expect![[r#"
            domains[1]: must be lowercase (did you mean `example.com`?)
            domains[2]: must not end with '.' (did you mean `example.com`?)
            domains[3]: must be a string, not a number
            domains[4]: a wildcard needs at least two labels after `*.`, as in `*.example.com`: `*.com` would capture every name under a top-level domain, other customers' included
            domains[5]: `*` is only allowed as the whole leftmost label, as in `*.example.com`
            domains[7]: `example.com` is already at domains[0]
            domains[8]: `ok.example.com` is already at domains[6]
            domains[9]: `example.com` is already at domains[0]
        "#]],
    );

    let names = |n: usize| -> String {
        let names: Vec<String> = (0..n).map(|i| format!("\"d{i}.example.com\"")).collect();
        format!("[{}]", names.join(","))
    };
    assert!(App::from_json(app(&names(MAX_DOMAINS)).as_bytes()).is_ok());
    check(
        &app(&names(MAX_DOMAINS + 1)),
        expect![[r#"
            domains: must have at most 1000 domains (got 1001)
        "#]],
    );
}

#[test]
fn app_backends() {
    let app = |backends: &str| {
        format!(r#"{{"id": "a", "domains": ["a.example.com"], "backends": {backends}}}"#)
    };
    check(
        &app("[]"),
        expect![[r#"
            backends: must have at least one backend
        "#]],
    );
    check(
        &app(r#"[
                "10.0.0.1:80",
                {},
                {"addr": 80},
                {"addr": "10.0.0.1"},
                {"addr": "10.0.0.2:80", "weight": 0},
                {"addr": "10.0.0.3:80", "weight": 1001},
                {"addr": "10.0.0.4:80", "weight": -1},
                {"addr": "10.0.0.5:80", "weight": 1.5},
                {"addr": "10.0.0.6:80", "weight": "2"},
                {"addr": "10.0.0.7:80", "weight": 70000},
                {"addr": "10.0.0.8:80", "port": 80},
                {"addr": "10.0.0.9:80"},
                {"addr": "10.0.0.9:80", "weight": 5},
                {"addr": "Backend.internal:80"}
            ]"#),
        expect![[r#"
            backends[0]: must be an object, not a string
            backends[1].addr: is required
            backends[2].addr: must be a string, not a number
            backends[3].addr: must be `host:port`, as in `10.0.0.1:8080` (no port in `10.0.0.1`)
            backends[4].weight: must be from 1 to 1000 (got 0)
            backends[5].weight: must be from 1 to 1000 (got 1001)
            backends[6].weight: must be from 1 to 1000 (got -1)
            backends[7].weight: must be an integer (got 1.5)
            backends[8].weight: must be an integer, not a string
            backends[9].weight: must be from 1 to 1000 (got 70000)
            backends[10].port: unknown field (expected addr, weight)
            backends[13].addr: invalid host: must be lowercase (did you mean `backend.internal`?)
            backends[12].addr: `10.0.0.9:80` is already at backends[11].addr
        "#]],
    );

    let addrs = |n: usize| -> String {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"addr": "10.0.{}.{}:80"}}"#, i / 256, i % 256))
            .collect();
        format!("[{}]", items.join(","))
    };
    assert!(App::from_json(app(&addrs(MAX_BACKENDS)).as_bytes()).is_ok());
    check(
        &app(&addrs(MAX_BACKENDS + 1)),
        expect![[r#"
            backends: must have at most 1000 backends (got 1001)
        "#]],
    );
}

#[test]
fn app_health_checks() {
    let app = |hc: &str| {
        format!(
            r#"{{"id": "a", "domains": ["a.example.com"], "backends": [{{"addr": "a:1"}}], "health_check": {hc}}}"#
        )
    };
    let cases = [
        r#"{}"#,
        r#"{"type": 1}"#,
        r#"{"type": "grpc"}"#,
        r#"{"type": "HTTP", "path": "/"}"#,
        r#"{"type": "http"}"#,
        r#"{"type": "http", "path": null}"#,
        r#"{"type": "http", "path": "healthz"}"#,
        r#"{"type": "http", "path": "/health z"}"#,
        r#"{"type": "http", "path": "/health\u0000"}"#,
        r#"{"type": "http", "path": "/healthz", "interval": 5}"#,
        r#"{"type": "tcp", "path": "/healthz"}"#,
        r#"[{"type": "tcp"}]"#,
    ];
    let mut out = String::new();
    for hc in cases {
        let json = app(hc);
        let errors = App::from_json(json.as_bytes()).expect_err(hc);
        // serde agrees (checked by `check` for the other cases).
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            serde_json::from_str::<App>(&json).unwrap_err().to_string(),
            lines.join("; ")
        );
        writeln!(out, "{hc} => {}", lines.join(" | ")).unwrap();
    }
    expect![[r#"
        {} => health_check.type: is required (`http` or `tcp`)
        {"type": 1} => health_check.type: must be a string, not a number
        {"type": "grpc"} => health_check.type: unknown type `grpc` (expected `http` or `tcp`)
        {"type": "HTTP", "path": "/"} => health_check.type: unknown type `HTTP` (expected `http` or `tcp`)
        {"type": "http"} => health_check.path: is required for an `http` check
        {"type": "http", "path": null} => health_check.path: must be a string, not null
        {"type": "http", "path": "healthz"} => health_check.path: must start with '/'
        {"type": "http", "path": "/health z"} => health_check.path: must not contain spaces or control characters (found ' ')
        {"type": "http", "path": "/health\u0000"} => health_check.path: must not contain spaces or control characters (found '\0')
        {"type": "http", "path": "/healthz", "interval": 5} => health_check.interval: unknown field (expected type, path)
        {"type": "tcp", "path": "/healthz"} => health_check.path: unknown field (expected type)
        [{"type": "tcp"}] => health_check: must be an object, not an array
    "#]]
    .assert_eq(&out);
}

#[test]
fn app_unknown_fields_and_everything_at_once() {
    check(
        r#"{"id": "a", "domains": ["a.example.com"], "backends": [{"addr": "a:1"}], "name": "x", "Domains": []}"#,
        expect![[r#"
            Domains: unknown field (expected id, domains, backends, health_check, version)
            name: unknown field (expected id, domains, backends, health_check, version)
        "#]],
    );
    check(
        r#"{
            "id": "Shop",
            "domains": ["Shop.example.com", "shop.example.com", "shop.example.com"],
            "backends": [{"addr": "10.0.0.1"}, {"addr": "10.0.0.1:80", "weight": 0}],
            "health_check": {"type": "http", "path": "healthz"},
            "version": -3,
            "owner": "me"
        }"#,
        expect![[r#"
            id: must be lowercase (did you mean `shop`?)
            domains[0]: must be lowercase (did you mean `shop.example.com`?)
            domains[2]: `shop.example.com` is already at domains[1]
            backends[0].addr: must be `host:port`, as in `10.0.0.1:8080` (no port in `10.0.0.1`)
            backends[1].weight: must be from 1 to 1000 (got 0)
            health_check.path: must start with '/'
            version: must not be negative (got -3)
            owner: unknown field (expected id, domains, backends, health_check, version)
        "#]],
    );
}

#[test]
fn app_validate_in_code() {
    let mut app = App::from_json(
        br#"{"id": "a", "domains": ["a.example.com"], "backends": [{"addr": "a:1"}]}"#,
    )
    .unwrap();
    assert_eq!(app.validate(), Ok(()));
    app.domains.push("a.example.com".parse().unwrap());
    app.backends.clear();
    let errors: Vec<String> = app
        .validate()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "domains[1]: `a.example.com` is already at domains[0]",
            "backends: must have at least one backend",
        ]
    );
    // A hand-built invalid app does not serialise into something that reads back.
    let json = serde_json::to_vec(&app).unwrap();
    assert!(App::from_json(&json).is_err());
}

#[test]
fn field_errors() {
    let e = FieldError {
        field: "domains[1]".into(),
        message: "must be lowercase (did you mean `example.com`?)".into(),
    };
    assert_eq!(
        e.to_string(),
        "domains[1]: must be lowercase (did you mean `example.com`?)"
    );
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"field":"domains[1]","message":"must be lowercase (did you mean `example.com`?)"}"#
    );
    let whole = FieldError {
        field: String::new(),
        message: "must be an object, not null".into(),
    };
    assert_eq!(whole.to_string(), "must be an object, not null");
}

// ---- sharding --------------------------------------------------------------------

fn members(names: &[&str]) -> Vec<MemberId> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

fn owners(members: &[MemberId], shard_count: u16) -> Vec<MemberId> {
    (0..shard_count)
        .map(|s| rendezvous_owner(ShardId(s), members).unwrap().clone())
        .collect()
}

#[test]
fn fnv1a64_matches_reference_vectors() {
    // From the FNV reference test suite (isthe.com/chongo/tech/comp/fnv).
    assert_eq!(shard::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(shard::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(shard::fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn hashes_are_pinned() {
    // These values must never change: orchestrators of different versions have to
    // agree on them. A change here is a breaking change of the region's sharding.
    let mut out = String::new();
    for key in ["", "a", "shop", "orch-1"] {
        writeln!(
            out,
            "stable_hash({key:?}) = {:#018x}",
            stable_hash(key.as_bytes())
        )
        .unwrap();
    }
    for id in ["shop", "a", "my-app-2", "blog"] {
        let app: AppId = id.parse().unwrap();
        let shards = [1, 16, 1024, u16::MAX].map(|n| shard_of(&app, n).to_string());
        writeln!(
            out,
            "shard_of({id}) for 1, 16, 1024, 65535 shards = {shards:?}"
        )
        .unwrap();
    }
    let m = members(&["orch-0", "orch-1", "orch-2"]);
    let first: Vec<String> = owners(&m, 8).into_iter().map(String::from).collect();
    writeln!(out, "owners of shards 0..8 among orch-0..2 = {first:?}").unwrap();
    expect![[r#"
        stable_hash("") = 0xefd01f60ba992926
        stable_hash("a") = 0x82a2a958a9bece5b
        stable_hash("shop") = 0xbd4ab54586fbfbcb
        stable_hash("orch-1") = 0xa222acd45ab42744
        shard_of(shop) for 1, 16, 1024, 65535 shards = ["0000", "0011", "0971", "62807"]
        shard_of(a) for 1, 16, 1024, 65535 shards = ["0000", "0011", "0603", "42005"]
        shard_of(my-app-2) for 1, 16, 1024, 65535 shards = ["0000", "0012", "0012", "19141"]
        shard_of(blog) for 1, 16, 1024, 65535 shards = ["0000", "0010", "0378", "21721"]
        owners of shards 0..8 among orch-0..2 = ["orch-0", "orch-0", "orch-1", "orch-1", "orch-2", "orch-1", "orch-0", "orch-0"]
    "#]]
    .assert_eq(&out);
}

#[test]
fn shard_of_spreads_apps() {
    let mut counts = [0u32; 16];
    for i in 0..16_000 {
        let app: AppId = format!("app-{i}").parse().unwrap();
        counts[usize::from(shard_of(&app, 16).0)] += 1;
    }
    // 1000 expected per shard; plain FNV-1a's weak low bits would skew this.
    assert!(
        counts.iter().all(|&c| (850..1150).contains(&c)),
        "{counts:?}"
    );
}

#[test]
#[should_panic(expected = "shard_count must be at least 1")]
fn shard_of_zero_shards_panics() {
    shard_of(&"a".parse().unwrap(), 0);
}

#[test]
fn rendezvous_every_shard_has_one_owner() {
    let m = members(&["orch-0", "orch-1", "orch-2", "orch-3"]);
    let mut all: Vec<ShardId> = m.iter().flat_map(|me| shards_for(me, &m, 1024)).collect();
    all.sort();
    assert_eq!(all, (0..1024).map(ShardId).collect::<Vec<_>>());

    // The order of the members does not matter.
    let mut reversed = m.clone();
    reversed.reverse();
    assert_eq!(owners(&m, 1024), owners(&reversed, 1024));

    assert_eq!(rendezvous_owner(ShardId(0), &[]), None);
    let stranger: MemberId = "orch-9".parse().unwrap();
    assert_eq!(shards_for(&stranger, &m, 1024), []);
    // A member listed twice is still one owner.
    let twice = members(&["orch-0", "orch-0"]);
    assert_eq!(shards_for(&twice[0], &twice, 16).len(), 16);
}

#[test]
fn rendezvous_distribution_is_even() {
    let m = members(&["orch-0", "orch-1", "orch-2"]);
    for me in &m {
        let n = shards_for(me, &m, 1024).len();
        assert!((250..=440).contains(&n), "{me} has {n} of 1024 shards");
    }
    let m = members(&[
        "orchestrator-a.region-1",
        "orchestrator-b.region-1",
        "orchestrator-c.region-1",
    ]);
    for me in &m {
        let n = shards_for(me, &m, 1024).len();
        assert!((250..=440).contains(&n), "{me} has {n} of 1024 shards");
    }
}

#[test]
fn rendezvous_adding_a_member_moves_only_its_share() {
    for n in 1..=8usize {
        let before: Vec<MemberId> = (0..n)
            .map(|i| format!("orch-{i}").parse().unwrap())
            .collect();
        let mut after = before.clone();
        let newcomer: MemberId = format!("orch-{n}").parse().unwrap();
        after.push(newcomer.clone());
        let (old, new) = (owners(&before, 1024), owners(&after, 1024));
        let moved: Vec<usize> = (0..1024).filter(|&s| old[s] != new[s]).collect();
        assert!(
            moved.len() < 2 * 1024 / (n + 1),
            "adding a member to {n} moved {} of 1024 shards",
            moved.len()
        );
        assert!(!moved.is_empty(), "the new member got nothing");
        assert!(
            moved.iter().all(|&s| new[s] == newcomer),
            "a shard moved to an old member"
        );
    }
}

#[test]
fn rendezvous_removing_a_member_moves_only_its_shards() {
    let all = members(&["orch-0", "orch-1", "orch-2", "orch-3", "orch-4"]);
    let old = owners(&all, 1024);
    for gone in &all {
        let rest: Vec<MemberId> = all.iter().filter(|m| *m != gone).cloned().collect();
        let new = owners(&rest, 1024);
        for s in 0..1024 {
            if old[s] == *gone {
                assert_ne!(new[s], *gone);
            } else {
                assert_eq!(new[s], old[s], "shard {s} moved though its owner stayed");
            }
        }
    }
}

mod route_stream {
    use crate::{Route, StreamLine};

    fn route() -> Route {
        Route {
            app: "shop".parse().unwrap(),
            domains: vec![
                "shop.example.com".parse().unwrap(),
                "*.shop.example.com".parse().unwrap(),
            ],
            backends: vec![crate::Backend::new("10.0.0.1:8080", 3).unwrap()],
            fail_open: false,
        }
    }

    #[test]
    fn lines_are_readable_json_and_round_trip() {
        let lines = [
            StreamLine::Snapshot {
                version: 7,
                routes: 1,
            },
            StreamLine::Route(route()),
            StreamLine::Ready { version: 7 },
            StreamLine::Resume { version: 7 },
            StreamLine::Upsert {
                version: 9,
                route: route(),
            },
            StreamLine::Remove {
                version: 10,
                app: "shop".parse().unwrap(),
            },
            StreamLine::Ping { version: 10 },
        ];
        for line in &lines {
            let bytes = line.to_line();
            assert_eq!(bytes.last(), Some(&b'\n'));
            assert_eq!(&StreamLine::parse(&bytes).unwrap(), line);
        }
        assert_eq!(
            String::from_utf8(StreamLine::Route(route()).to_line()).unwrap(),
            "{\"type\":\"route\",\"app\":\"shop\",\"domains\":[\"shop.example.com\",\"*.shop.example.com\"],\"backends\":[{\"addr\":\"10.0.0.1:8080\",\"weight\":3}],\"fail_open\":false}\n"
        );
    }

    #[test]
    fn unknown_or_invalid_lines_are_errors() {
        assert!(StreamLine::parse(b"{\"type\":\"teleport\",\"version\":1}").is_err());
        assert!(StreamLine::parse(b"{\"type\":\"ping\"}").is_err());
        assert!(StreamLine::parse(b"{\"type\":\"ping\",\"version\":1,\"extra\":2}").is_err());
        assert!(
            StreamLine::parse(b"{\"type\":\"remove\",\"version\":1,\"app\":\"Bad_Id\"}").is_err()
        );
        assert!(StreamLine::parse(
            b"{\"type\":\"route\",\"app\":\"a\",\"domains\":[\"UPPER.example\"],\"backends\":[]}"
        )
        .is_err());
        assert!(StreamLine::parse(b"not json").is_err());
    }
}
