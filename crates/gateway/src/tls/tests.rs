use super::*;

/// A self-signed certificate for `names`, and its key, as PEM.
fn issue(names: &[&str]) -> (String, String) {
    issue_until(names, (2040, 1, 1))
}

/// [`issue`], valid until the day `(year, month, day)`.
fn issue_until(names: &[&str], (year, month, day): (i32, u8, u8)) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn pem_file(dir: &Path, file: &str, names: &[&str]) {
    let (cert, key) = issue(names);
    write(dir, file, &format!("{cert}{key}"));
}

fn file_of(certificates: &Certificates, name: &str) -> Option<String> {
    certificates
        .find(name)
        .map(|(_, file)| file.file_name().unwrap().to_string_lossy().into_owned())
}

#[test]
fn an_exact_name_wins_over_a_wildcard_which_covers_one_label() {
    let dir = tempfile::tempdir().unwrap();
    pem_file(dir.path(), "wild.pem", &["*.apps.test"]);
    pem_file(dir.path(), "one.pem", &["shop.apps.test", "shop.test"]);
    write(dir.path(), "README.txt", "not a certificate, and not read");
    let certificates = Certificates::load(dir.path()).unwrap();
    assert_eq!(certificates.files(), 2);
    assert_eq!(
        file_of(&certificates, "shop.apps.test").as_deref(),
        Some("one.pem")
    );
    assert_eq!(
        file_of(&certificates, "SHOP.test.").as_deref(),
        Some("one.pem")
    );
    assert_eq!(
        file_of(&certificates, "blog.apps.test").as_deref(),
        Some("wild.pem")
    );
    assert_eq!(file_of(&certificates, "a.blog.apps.test"), None);
    assert_eq!(file_of(&certificates, "apps.test"), None);
    assert_eq!(file_of(&certificates, "other.test"), None);
}

#[test]
fn a_folder_without_certificates_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = Certificates::load(dir.path()).unwrap_err();
    assert!(matches!(err, TlsError::Empty { .. }), "{err}");
    let missing = dir.path().join("missing");
    let err = Certificates::load(&missing).unwrap_err();
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "{err}"
    );
}

#[test]
fn every_unusable_file_is_named_with_its_fault() {
    let (cert, key) = issue(&["a.test"]);
    let (_, other_key) = issue(&["a.test"]);
    let (bare, bare_key) = issue(&[]);
    let cases = [
        ("no-key.pem", cert.clone(), "holds no private key"),
        ("no-cert.pem", key.clone(), "holds no CERTIFICATE block"),
        (
            "mismatch.pem",
            format!("{cert}{other_key}"),
            "does not belong to the first certificate",
        ),
        (
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_string(),
            "unreadable PEM",
        ),
        (
            "nameless.pem",
            format!("{bare}{bare_key}"),
            "names no DNS name",
        ),
    ];
    for (file, text, fault) in cases {
        let dir = tempfile::tempdir().unwrap();
        pem_file(dir.path(), "good.pem", &["good.test"]);
        write(dir.path(), file, &text);
        let err = Certificates::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(file) && err.contains(fault), "{file}: {err}");
    }
}

#[test]
fn two_files_for_one_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    pem_file(dir.path(), "a.pem", &["x.test", "*.y.test"]);
    pem_file(dir.path(), "b.pem", &["*.y.test"]);
    let err = Certificates::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("a.pem") && err.contains("b.pem") && err.contains("*.y.test"),
        "{err}"
    );
}

#[test]
fn a_failed_reload_keeps_the_certificates_in_use() {
    let dir = tempfile::tempdir().unwrap();
    pem_file(dir.path(), "a.pem", &["a.test"]);
    let resolver = Resolver::new(Certificates::load(dir.path()).unwrap());

    pem_file(dir.path(), "b.pem", &["b.test"]);
    assert_eq!(resolver.reload(dir.path()).unwrap(), 2);
    assert!(resolver.certificates().find("b.test").is_some());

    write(dir.path(), "c.pem", "garbage");
    assert!(resolver.reload(dir.path()).is_err());
    let kept = resolver.certificates();
    assert_eq!(kept.files(), 2);
    assert!(kept.find("a.test").is_some() && kept.find("b.test").is_some());
}

#[test]
fn default_pem_serves_clients_asking_for_no_name_or_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    pem_file(dir.path(), "shop.pem", &["shop.test"]);
    let without = Certificates::load(dir.path()).unwrap();
    assert!(without.choose(None).is_none());
    assert!(without.choose(Some("other.test")).is_none());

    pem_file(dir.path(), DEFAULT_FILE, &["fallback.test"]);
    let with = Certificates::load(dir.path()).unwrap();
    let chosen = |name| {
        with.choose(name)
            .map(|(_, file)| file.file_name().unwrap().to_string_lossy().into_owned())
    };
    assert_eq!(chosen(None).as_deref(), Some(DEFAULT_FILE));
    assert_eq!(chosen(Some("other.test")).as_deref(), Some(DEFAULT_FILE));
    assert_eq!(chosen(Some("fallback.test")).as_deref(), Some(DEFAULT_FILE));
    assert_eq!(chosen(Some("shop.test")).as_deref(), Some("shop.pem"));
}

#[test]
fn expiries_are_listed_soonest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issue_until(&["late.test"], (2040, 1, 1));
    write(dir.path(), "late.pem", &format!("{cert}{key}"));
    let (cert, key) = issue_until(&["soon.test", "*.soon.test"], (2035, 6, 1));
    write(dir.path(), "soon.pem", &format!("{cert}{key}"));
    let folder = CertFolder::load(dir.path()).unwrap();
    let expiries: Vec<(Option<i64>, String)> = folder
        .resolver
        .certificates()
        .expiries()
        .into_iter()
        .map(|(at, file)| (at, file.file_name().unwrap().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        expiries,
        [
            (Some(2_064_268_800), "soon.pem".to_string()),
            (Some(2_208_988_800), "late.pem".to_string()),
        ]
    );
    assert_eq!(folder.earliest_expiry(), Some(2_064_268_800));
}
