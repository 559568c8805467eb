//! Tests of the snapshot store, on real files in temporary folders.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::*;

fn temp() -> TempDir {
    tempfile::tempdir().expect("create a temporary folder")
}

fn meta(version: u64) -> Meta {
    Meta {
        table_version: version,
        route_count: version * 10 + 1,
    }
}

/// A route-table-like payload: compressible, different for each seed.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut text = String::with_capacity(len + 64);
    let mut i = 0u64;
    while text.len() < len {
        let _ = writeln!(
            text,
            "app{seed}-{i}.example.com 10.{}.{}.{}:8080",
            seed % 250,
            i % 250,
            i % 7
        );
        i += 1;
    }
    let mut bytes = text.into_bytes();
    bytes.truncate(len);
    bytes
}

fn current(dir: &Path) -> std::path::PathBuf {
    dir.join(CURRENT_FILE)
}

fn previous(dir: &Path) -> std::path::PathBuf {
    dir.join(PREVIOUS_FILE)
}

fn tmp(dir: &Path) -> std::path::PathBuf {
    dir.join(TMP_FILE)
}

fn load_ok(dir: &Path) -> Loaded {
    SnapshotStore::open(dir)
        .unwrap()
        .load()
        .unwrap()
        .expect("a snapshot")
}

/// The bytes of a current and a previous snapshot file: (meta, payload, file bytes) each.
struct TwoGenerations {
    previous: (Meta, Vec<u8>, Vec<u8>),
    current: (Meta, Vec<u8>, Vec<u8>),
}

fn two_generations(payload_len: usize) -> TwoGenerations {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let (meta_a, payload_a) = (meta(1), payload(1, payload_len));
    let (meta_b, payload_b) = (meta(2), payload(2, payload_len));
    store.write(&meta_a, &payload_a).unwrap();
    store.write(&meta_b, &payload_b).unwrap();
    TwoGenerations {
        previous: (meta_a, payload_a, fs::read(previous(dir.path())).unwrap()),
        current: (meta_b, payload_b, fs::read(current(dir.path())).unwrap()),
    }
}

/// Lays out a store folder from scratch with these files (None: absent).
fn lay_out(dir: &Path, current_bytes: Option<&[u8]>, previous_bytes: Option<&[u8]>) {
    for (path, bytes) in [
        (current(dir), current_bytes),
        (previous(dir), previous_bytes),
    ] {
        let _ = fs::remove_file(&path);
        if let Some(bytes) = bytes {
            fs::write(&path, bytes).unwrap();
        }
    }
}

/// Asserts that loading `dir` falls back to the previous generation of `gens`, the current
/// one being rejected.
fn assert_falls_back(dir: &Path, gens: &TwoGenerations, what: &str) {
    let loaded = match SnapshotStore::open(dir).unwrap().load() {
        Ok(Some(loaded)) => loaded,
        other => panic!("{what}: expected the previous generation, got {other:?}"),
    };
    assert_eq!(loaded.generation, Generation::Previous, "{what}");
    assert_eq!(loaded.meta, gens.previous.0, "{what}");
    assert!(loaded.payload == gens.previous.1, "{what}: wrong payload");
    assert_eq!(loaded.rejected.len(), 1, "{what}: {:?}", loaded.rejected);
    assert_eq!(loaded.rejected[0].generation, Generation::Current, "{what}");
    assert_eq!(loaded.rejected[0].path, current(dir), "{what}");
}

/// A file in a well-formed prefix of format `version`, followed by `rest`.
fn file_of_version(version: u32, rest: &[u8]) -> Vec<u8> {
    let mut bytes = encode_prefix(version).to_vec();
    bytes.extend_from_slice(rest);
    bytes
}

/// A version-1 file with a valid CRC but whatever lengths and payload the test wants.
fn crafted(compressed: &[u8], compressed_len: u64, uncompressed_len: u64) -> Vec<u8> {
    let mut bytes = encode_header(
        FORMAT_VERSION,
        &meta(9),
        compressed_len,
        uncompressed_len,
        compressed,
    )
    .to_vec();
    bytes.extend_from_slice(compressed);
    bytes
}

#[test]
fn round_trip() {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let m = Meta {
        table_version: u64::MAX - 1,
        route_count: 123_456,
    };
    let p = payload(7, 5000);
    store.write(&m, &p).unwrap();

    let loaded = store.load().unwrap().unwrap();
    assert_eq!(loaded.meta, m);
    assert_eq!(loaded.payload, p);
    assert_eq!(loaded.generation, Generation::Current);
    assert!(loaded.rejected.is_empty());
    // A new store on the same folder (a restarted gateway) reads the same.
    let again = load_ok(dir.path());
    assert_eq!((again.meta, again.payload), (m, p));
    assert!(!previous(dir.path()).exists());
    assert!(!tmp(dir.path()).exists());
}

#[test]
fn file_layout_matches_the_documented_table() {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let m = Meta {
        table_version: 0x0102_0304_0506_0708,
        route_count: 42,
    };
    let p = payload(3, 1000);
    store.write(&m, &p).unwrap();
    let bytes = fs::read(current(dir.path())).unwrap();

    assert_eq!(&bytes[..8], b"SWYDSNAP");
    assert_eq!(bytes[8..12], 1u32.to_le_bytes());
    assert_eq!(bytes[12..16], crc32fast::hash(&bytes[..12]).to_le_bytes());
    assert_eq!(bytes[16..24], m.table_version.to_le_bytes());
    assert_eq!(bytes[24..32], 42u64.to_le_bytes());
    let compressed_len = u64::from_le_bytes(bytes[32..40].try_into().unwrap());
    assert_eq!(compressed_len, bytes.len() as u64 - 52);
    assert_eq!(bytes[40..48], 1000u64.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..48]);
    crc.update(&bytes[52..]);
    assert_eq!(bytes[48..52], crc.finalize().to_le_bytes());
    assert_eq!(zstd::bulk::decompress(&bytes[52..], 1000).unwrap(), p);
    assert!(compressed_len < 1000, "the payload is compressed");
}

#[test]
fn empty_payload_round_trips() {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.write(&meta(0), &[]).unwrap();
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(loaded.meta, meta(0));
    assert!(loaded.payload.is_empty());
}

#[test]
fn fresh_folder_loads_none_and_open_creates_missing_folders() {
    let dir = temp();
    let nested = dir.path().join("a/b/snapshots");
    let store = SnapshotStore::open(&nested).unwrap();
    assert!(nested.is_dir());
    assert_eq!(store.dir(), nested);
    assert!(store.load().unwrap().is_none());
    // open leaves nothing behind (its write probe is removed).
    assert_eq!(fs::read_dir(&nested).unwrap().count(), 0);
}

#[test]
fn second_write_becomes_current_and_first_becomes_previous() {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.write(&meta(1), &payload(1, 3000)).unwrap();
    let first_file = fs::read(current(dir.path())).unwrap();
    store.write(&meta(2), &payload(2, 3000)).unwrap();

    let loaded = store.load().unwrap().unwrap();
    assert_eq!(loaded.generation, Generation::Current);
    assert_eq!(loaded.meta, meta(2));
    assert_eq!(loaded.payload, payload(2, 3000));
    assert_eq!(fs::read(previous(dir.path())).unwrap(), first_file);

    // A third write pushes the first one out.
    store.write(&meta(3), &payload(3, 3000)).unwrap();
    fs::remove_file(current(dir.path())).unwrap();
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(
        (loaded.generation, loaded.meta),
        (Generation::Previous, meta(2))
    );
    assert_eq!(loaded.payload, payload(2, 3000));
}

#[test]
fn every_flipped_byte_of_current_falls_back_to_previous() {
    let gens = two_generations(120);
    let good = &gens.current.2;
    assert!(
        good.len() > HEADER_LEN && good.len() < 400,
        "a small file: {}",
        good.len()
    );
    for at in 0..good.len() {
        let dir = temp();
        // The whole byte inverted, then each single bit.
        for mask in [0xFFu8, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
            let mut bad = good.clone();
            bad[at] ^= mask;
            lay_out(dir.path(), Some(&bad), Some(&gens.previous.2));
            assert_falls_back(dir.path(), &gens, &format!("byte {at} ^ {mask:#04x}"));
        }
    }
}

#[test]
fn current_truncated_at_every_length_falls_back_to_previous() {
    let gens = two_generations(120);
    let good = &gens.current.2;
    let dir = temp();
    for len in 0..good.len() {
        lay_out(dir.path(), Some(&good[..len]), Some(&gens.previous.2));
        assert_falls_back(dir.path(), &gens, &format!("truncated to {len} bytes"));
    }
}

#[test]
fn trailing_garbage_falls_back_to_previous() {
    let gens = two_generations(500);
    let dir = temp();
    for extra in [&[0u8][..], b"garbage", &[0u8; 4096]] {
        let mut bad = gens.current.2.clone();
        bad.extend_from_slice(extra);
        lay_out(dir.path(), Some(&bad), Some(&gens.previous.2));
        assert_falls_back(dir.path(), &gens, &format!("{} extra bytes", extra.len()));
        let loaded = load_ok(dir.path());
        assert!(
            matches!(
                loaded.rejected[0].reason,
                RejectReason::LengthMismatch { .. }
            ),
            "{:?}",
            loaded.rejected[0].reason
        );
    }
}

#[test]
fn damage_behind_a_valid_checksum_is_still_caught() {
    let gens = two_generations(500);
    let good = &gens.current.2;
    let compressed = &good[HEADER_LEN..];
    let dir = temp();
    type Expected = fn(&RejectReason) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
        (
            "absurd uncompressed length",
            crafted(compressed, compressed.len() as u64, u64::MAX),
            |r| matches!(r, RejectReason::TooLarge { len: u64::MAX, .. }),
        ),
        (
            "just over the cap",
            crafted(compressed, compressed.len() as u64, MAX_PAYLOAD_LEN + 1),
            |r| matches!(r, RejectReason::TooLarge { .. }),
        ),
        (
            "not zstd",
            crafted(b"this is not a zstd frame", 24, 500),
            |r| matches!(r, RejectReason::Decompress(_)),
        ),
        (
            "uncompressed length one too many",
            crafted(compressed, compressed.len() as u64, 501),
            |r| {
                matches!(
                    r,
                    RejectReason::UncompressedLength {
                        expected: 501,
                        actual: 500
                    }
                )
            },
        ),
        (
            "uncompressed length one too few",
            crafted(compressed, compressed.len() as u64, 499),
            |r| {
                matches!(
                    r,
                    RejectReason::Decompress(_) | RejectReason::UncompressedLength { .. }
                )
            },
        ),
        (
            "compressed length beyond the file",
            crafted(compressed, u64::MAX, 500),
            |r| matches!(r, RejectReason::LengthMismatch { .. }),
        ),
        (
            "format version 0",
            file_of_version(0, &good[PREFIX_LEN..]),
            |r| matches!(r, RejectReason::UnknownVersion { version: 0 }),
        ),
        ("empty file", Vec::new(), |r| {
            matches!(r, RejectReason::TooShort { len: 0 })
        }),
        (
            "another file",
            b"not a snapshot at all, long enough".to_vec(),
            |r| matches!(r, RejectReason::BadMagic),
        ),
    ];
    for (what, bytes, expected) in cases {
        lay_out(dir.path(), Some(&bytes), Some(&gens.previous.2));
        assert_falls_back(dir.path(), &gens, what);
        let reason = &load_ok(dir.path()).rejected[0].reason;
        assert!(expected(reason), "{what}: {reason:?}");
    }
}

#[test]
fn current_that_is_a_folder_falls_back_to_previous() {
    let gens = two_generations(200);
    let dir = temp();
    lay_out(dir.path(), None, Some(&gens.previous.2));
    fs::create_dir(current(dir.path())).unwrap();
    assert_falls_back(dir.path(), &gens, "current is a folder");
    let reason = &load_ok(dir.path()).rejected[0].reason;
    assert!(matches!(reason, RejectReason::Unreadable(_)), "{reason:?}");
}

#[test]
fn both_generations_corrupt_is_an_error_listing_both() {
    let gens = two_generations(200);
    let dir = temp();
    let mut bad_current = gens.current.2.clone();
    bad_current[60] ^= 1;
    let bad_previous = &gens.previous.2[..30];
    lay_out(dir.path(), Some(&bad_current), Some(bad_previous));

    let err = SnapshotStore::open(dir.path()).unwrap().load().unwrap_err();
    let Error::NoValidSnapshot {
        dir: err_dir,
        rejected,
    } = &err
    else {
        panic!("expected NoValidSnapshot, got {err:?}");
    };
    assert_eq!(err_dir, dir.path());
    assert_eq!(rejected.len(), 2);
    assert!(
        matches!(rejected[0].reason, RejectReason::Checksum { .. }),
        "{rejected:?}"
    );
    assert!(
        matches!(rejected[1].reason, RejectReason::TooShort { len: 30 }),
        "{rejected:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&current(dir.path()).display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&previous(dir.path()).display().to_string()),
        "{message}"
    );
    assert!(message.contains("empty route table"), "{message}");
}

#[test]
fn a_single_corrupt_generation_is_an_error_not_an_empty_table() {
    let gens = two_generations(200);
    let dir = temp();
    let bad = &gens.current.2[..gens.current.2.len() - 1];
    for (cur, prev) in [(Some(bad), None), (None, Some(bad))] {
        lay_out(dir.path(), cur, prev);
        let result = SnapshotStore::open(dir.path()).unwrap().load();
        assert!(
            matches!(&result, Err(Error::NoValidSnapshot { rejected, .. }) if rejected.len() == 1),
            "{result:?}"
        );
    }
}

#[test]
fn only_previous_present_after_a_crash_between_the_renames() {
    // The state a crash leaves after `current -> prev` and before `tmp -> current`.
    let gens = two_generations(300);
    let dir = temp();
    lay_out(dir.path(), None, Some(&gens.previous.2));
    fs::write(tmp(dir.path()), &gens.current.2).unwrap();

    let loaded = load_ok(dir.path());
    assert_eq!(loaded.generation, Generation::Previous);
    assert_eq!(
        (loaded.meta, &loaded.payload),
        (gens.previous.0, &gens.previous.1)
    );
    assert!(
        loaded.rejected.is_empty(),
        "a missing file is not a rejected one"
    );
    assert!(
        tmp(dir.path()).exists(),
        "a load leaves the tmp: it may be the owner's write in progress"
    );

    // The next write keeps that previous generation.
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.write(&meta(3), &payload(3, 300)).unwrap();
    assert_eq!(fs::read(previous(dir.path())).unwrap(), gens.previous.2);
    assert_eq!(store.load().unwrap().unwrap().meta, meta(3));
}

#[test]
fn a_tmp_file_is_never_read_nor_removed_by_a_load() {
    let gens = two_generations(300);
    let dir = temp();
    // Crash during the first write ever (or that write still going on in the folder's
    // owner): only a partial tmp.
    fs::write(tmp(dir.path()), &gens.current.2[..40]).unwrap();
    assert!(SnapshotStore::open(dir.path())
        .unwrap()
        .load()
        .unwrap()
        .is_none());
    assert_eq!(fs::read(tmp(dir.path())).unwrap(), &gens.current.2[..40]);

    // A partial or even complete tmp beside both generations.
    for tmp_bytes in [&gens.current.2[..100], &gens.current.2[..], b"junk"] {
        lay_out(dir.path(), Some(&gens.previous.2), None);
        fs::write(tmp(dir.path()), tmp_bytes).unwrap();
        let loaded = load_ok(dir.path());
        assert_eq!(loaded.generation, Generation::Current);
        assert_eq!(loaded.meta, gens.previous.0, "the tmp file is never read");
        assert_eq!(fs::read(tmp(dir.path())).unwrap(), tmp_bytes);
    }
}

#[test]
fn the_owner_removes_a_leftover_tmp_and_a_write_replaces_one() {
    let gens = two_generations(300);
    let dir = temp();
    lay_out(dir.path(), Some(&gens.previous.2), None);
    let store = SnapshotStore::open(dir.path()).unwrap();
    fs::write(tmp(dir.path()), b"junk").unwrap();
    store.remove_leftover_tmp();
    assert!(!tmp(dir.path()).exists());
    // Nothing to remove is no error.
    store.remove_leftover_tmp();

    fs::write(tmp(dir.path()), &gens.current.2[..100]).unwrap();
    store.write(&meta(3), &payload(3, 300)).unwrap();
    assert!(
        !tmp(dir.path()).exists(),
        "the write's own tmp became the current file"
    );
    assert_eq!(store.load().unwrap().unwrap().meta, meta(3));
}

#[test]
fn write_after_a_rejected_current_keeps_the_good_previous() {
    let gens = two_generations(300);
    let dir = temp();
    let mut bad = gens.current.2.clone();
    bad[HEADER_LEN + 3] ^= 0x10;
    lay_out(dir.path(), Some(&bad), Some(&gens.previous.2));
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(
        store.load().unwrap().unwrap().generation,
        Generation::Previous
    );

    store.write(&meta(3), &payload(3, 300)).unwrap();
    // The corrupt file was replaced, not rotated over the good previous one.
    assert_eq!(fs::read(previous(dir.path())).unwrap(), gens.previous.2);
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(
        (loaded.generation, loaded.meta),
        (Generation::Current, meta(3))
    );

    // Back to normal rotation afterwards.
    store.write(&meta(4), &payload(4, 300)).unwrap();
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(loaded.meta, meta(4));
    fs::remove_file(current(dir.path())).unwrap();
    assert_eq!(store.load().unwrap().unwrap().meta, meta(3));
}

#[test]
fn newer_format_version_is_a_specific_error() {
    let gens = two_generations(200);
    let newer = file_of_version(FORMAT_VERSION + 1, b"whatever a future header holds");
    let dir = temp();

    // Current is newer: an error even though a valid previous generation exists.
    lay_out(dir.path(), Some(&newer), Some(&gens.previous.2));
    let err = SnapshotStore::open(dir.path()).unwrap().load().unwrap_err();
    match &err {
        Error::NewerFormat {
            path,
            found,
            supported,
        } => {
            assert_eq!(path, &current(dir.path()));
            assert_eq!((*found, *supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&current(dir.path()).display().to_string()),
        "{message}"
    );
    assert!(message.contains("newer"), "{message}");
    assert!(message.contains("downgraded"), "{message}");

    // Current corrupt, previous newer: still that error, about the previous file.
    lay_out(dir.path(), Some(&gens.current.2[..10]), Some(&newer));
    let err = SnapshotStore::open(dir.path()).unwrap().load().unwrap_err();
    assert!(
        matches!(&err, Error::NewerFormat { path, .. } if *path == previous(dir.path())),
        "{err:?}"
    );

    // A huge version number too.
    lay_out(dir.path(), Some(&file_of_version(u32::MAX, &[])), None);
    let err = SnapshotStore::open(dir.path()).unwrap().load().unwrap_err();
    assert!(
        matches!(
            err,
            Error::NewerFormat {
                found: u32::MAX,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn open_on_a_regular_file_is_an_error_naming_it() {
    let dir = temp();
    let file = dir.path().join("snapshots");
    fs::write(&file, b"not a folder").unwrap();

    let err = SnapshotStore::open(&file).unwrap_err();
    assert!(
        matches!(&err, Error::NotADirectory { path } if *path == file),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
    assert_eq!(
        fs::read(&file).unwrap(),
        b"not a folder",
        "the file is left alone"
    );

    // Below a regular file: the OS error, with the path.
    let below = file.join("sub");
    let err = SnapshotStore::open(&below).unwrap_err();
    let Error::Folder { path, source } = &err else {
        panic!("expected Folder, got {err:?}")
    };
    assert_eq!(path, &below);
    assert_eq!(source.kind(), std::io::ErrorKind::NotADirectory);
    assert!(
        err.to_string().contains(&below.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_failed_write_leaves_the_saved_tables_loadable() {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.write(&meta(1), &payload(1, 300)).unwrap();
    store.write(&meta(2), &payload(2, 300)).unwrap();

    // The tmp file cannot be created.
    fs::create_dir(tmp(dir.path())).unwrap();
    let err = store.write(&meta(3), &payload(3, 300)).unwrap_err();
    assert!(
        matches!(&err, Error::Write { path, .. } if *path == tmp(dir.path())),
        "{err:?}"
    );
    assert!(err.to_string().contains("NOT safely saved"), "{err}");
    fs::remove_dir(tmp(dir.path())).unwrap();
    assert_eq!(store.load().unwrap().unwrap().meta, meta(2));

    // Current cannot be rotated into prev (prev is a non-empty folder).
    let prev = previous(dir.path());
    fs::remove_file(&prev).unwrap();
    fs::create_dir(&prev).unwrap();
    fs::write(prev.join("x"), b"x").unwrap();
    let err = store.write(&meta(3), &payload(3, 300)).unwrap_err();
    assert!(
        matches!(&err, Error::Write { path, .. } if *path == prev),
        "{err:?}"
    );
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(
        (loaded.generation, loaded.meta),
        (Generation::Current, meta(2))
    );
    assert!(!tmp(dir.path()).exists());
}

#[test]
fn ten_megabyte_payload_round_trips_compressed() {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let mut big = payload(5, 10 * 1024 * 1024);
    // Some incompressible bytes too (xorshift).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for byte in big.iter_mut().step_by(3) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let m = Meta {
        table_version: 77,
        route_count: 250_000,
    };
    store.write(&m, &big).unwrap();
    let file_len = fs::metadata(current(dir.path())).unwrap().len();
    assert!(file_len < big.len() as u64, "compressed: {file_len}");

    let loaded = load_ok(dir.path());
    assert_eq!(loaded.meta, m);
    assert_eq!(loaded.payload.len(), big.len());
    assert!(loaded.payload == big, "payload differs");
}

#[test]
fn a_fallback_reports_the_rejected_file_and_why() {
    let gens = two_generations(200);
    let dir = temp();
    let mut bad = gens.current.2.clone();
    bad[0] = b'X';
    lay_out(dir.path(), Some(&bad), Some(&gens.previous.2));

    // The same record is logged as a warning; tracing's per-callsite caching makes a
    // captured log unreliable across test threads, so the report itself is checked.
    let loaded = load_ok(dir.path());
    assert_eq!(loaded.generation, Generation::Previous);
    assert_eq!(loaded.rejected.len(), 1, "{:?}", loaded.rejected);
    let rejected = &loaded.rejected[0];
    assert_eq!(rejected.path, current(dir.path()));
    assert!(rejected.to_string().contains("bad magic"), "{rejected}");
}

#[test]
fn a_streamed_load_reads_the_same_payload_and_checks_what_decode_leaves() {
    let gens = two_generations(200_000);
    let dir = temp();
    lay_out(dir.path(), Some(&gens.current.2), Some(&gens.previous.2));
    let store = SnapshotStore::open(dir.path()).unwrap();
    // Read in small pieces: the same bytes as `load`.
    let decoded = store
        .load_with(|meta, payload| {
            assert_eq!(payload.len(), gens.current.1.len() as u64);
            let mut bytes = Vec::new();
            let mut piece = [0u8; 1000];
            loop {
                match payload.read(&mut piece).unwrap() {
                    0 => break,
                    n => bytes.extend_from_slice(&piece[..n]),
                }
            }
            (*meta, bytes)
        })
        .unwrap()
        .unwrap();
    assert_eq!(decoded.generation, Generation::Current);
    assert_eq!(decoded.value.0, gens.current.0);
    assert!(decoded.value.1 == gens.current.1);

    // A decode that stops early (an error of its own) gets its result back, with the
    // generation: the file is fine.
    let decoded = store
        .load_with(|_, payload| {
            let mut first = [0u8; 10];
            payload.read_exact(&mut first).unwrap();
            Err::<(), _>("not what I expected")
        })
        .unwrap()
        .unwrap();
    assert_eq!(decoded.value, Err("not what I expected"));
    assert_eq!(decoded.generation, Generation::Current);
    assert!(decoded.rejected.is_empty());

    // A payload that does not decompress to its announced length is skipped, whatever
    // decode made of it, even when decode stopped before the end.
    let compressed = &gens.current.2[HEADER_LEN..];
    let len = gens.current.1.len() as u64;
    for (what, bytes) in [
        (
            "one byte more announced",
            crafted(compressed, compressed.len() as u64, len + 1),
        ),
        (
            "one byte less announced",
            crafted(compressed, compressed.len() as u64, len - 1),
        ),
    ] {
        lay_out(dir.path(), Some(&bytes), Some(&gens.previous.2));
        for read_all in [true, false] {
            let decoded = store
                .load_with(|meta, payload| {
                    let mut bytes = Vec::new();
                    if read_all {
                        let _ = payload.read_to_end(&mut bytes);
                    } else {
                        let mut first = [0u8; 10];
                        payload.read_exact(&mut first).unwrap();
                    }
                    *meta
                })
                .unwrap()
                .unwrap();
            assert_eq!(decoded.generation, Generation::Previous, "{what}");
            assert_eq!(decoded.value, gens.previous.0, "{what}");
            assert_eq!(decoded.rejected.len(), 1, "{what}");
        }
    }
}

#[test]
fn a_streamed_write_is_a_write() {
    let dir = temp();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let bytes = payload(3, 300_000);
    let written = store
        .write_with(&meta(3), |out| {
            for piece in bytes.chunks(777) {
                out.write_all(piece)?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(written, bytes.len() as u64);
    let loaded = load_ok(dir.path());
    assert_eq!(loaded.meta, meta(3));
    assert!(loaded.payload == bytes);

    // A payload that fails half-way writes nothing.
    let err = store
        .write_with(&meta(4), |out| {
            out.write_all(b"half")?;
            Err(io::Error::other("the table went away"))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Compress { .. }), "{err:?}");
    assert_eq!(load_ok(dir.path()).meta, meta(3));
    assert!(!tmp(dir.path()).exists());
}
