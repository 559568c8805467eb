//! The gateway's last-known-good route table on disk: a crash-safe, checksummed store
//! that keeps two generations of an opaque payload (invariant 1: a gateway never forgets
//! its routes).
//!
//! The store knows nothing about routes: it keeps the bytes of a serialised table and its
//! [`Meta`] in a folder of its own, opened with [`SnapshotStore::open`]:
//!
//! | file | what |
//! | --- | --- |
//! | `routes.snap` | current generation: the table written last |
//! | `routes.snap.prev` | previous generation: the one written before it |
//! | `routes.snap.tmp` | a write in progress; never read, and left alone by a load (see below) |
//!
//! [`SnapshotStore::write`] returns only once the new table is durable (see the comments in
//! it for what a crash between any two of its steps leaves). [`SnapshotStore::write_with`]
//! and [`SnapshotStore::load_with`] do what `write` and `load` do with the payload
//! streamed, compressed as the caller writes it and decompressed as the caller reads it,
//! so that a large table's payload is never whole in memory. [`SnapshotStore::load`]
//! returns the newest *valid* generation; a corrupt current generation is skipped, logged
//! with `tracing::warn!` and listed in [`Loaded::rejected`]. It returns `Ok(None)` only when
//! neither generation exists (a fresh gateway), never when they exist but are unusable:
//! that is [`Error::NoValidSnapshot`], so a damaged disk can never turn into an empty
//! route table silently.
//!
//! # File format (version 1)
//!
//! All integers are little-endian. CRCs are CRC-32 (IEEE, as in zlib and gzip).
//!
//! | offset | size | field | content |
//! | ---: | ---: | --- | --- |
//! | 0 | 8 | magic | `SWYDSNAP` in ASCII |
//! | 8 | 4 | format version | u32, `1` |
//! | 12 | 4 | prefix CRC | u32, CRC of bytes 0..12 |
//! | 16 | 8 | table version | u64, [`Meta::table_version`] |
//! | 24 | 8 | route count | u64, [`Meta::route_count`] |
//! | 32 | 8 | compressed length | u64, bytes of payload that follow the header |
//! | 40 | 8 | uncompressed length | u64, at most [`MAX_PAYLOAD_LEN`] |
//! | 48 | 4 | CRC | u32, CRC of bytes 0..48 followed by the compressed payload |
//! | 52 | compressed length | payload | one zstd frame of the caller's payload |
//!
//! The file ends right after the payload: anything shorter or longer is corrupt.
//!
//! **Bytes 0..16 (magic, format version, prefix CRC) are the same in every format
//! version, past and future.** The prefix CRC is what lets `load` tell a file written by a
//! newer binary (an error, [`Error::NewerFormat`]: the binary was downgraded, and silently
//! falling back to an older generation would serve a stale table) from a file whose
//! version field was damaged (just corrupt: skipped). A future format version may change
//! everything after byte 16, and must keep this prefix.
//!
//! One process owns a folder: two stores writing the same folder at once (two gateways
//! given the same path) would overwrite each other's `routes.snap.tmp`. Within a process,
//! one [`SnapshotStore`] serialises its own writes and loads. Loading writes nothing, so
//! any process may load while the owner writes: a new gateway loads the folder of the one
//! it replaces while that one still runs, and a `routes.snap.tmp` it finds may be the
//! owner's write in progress. Only the owner removes a leftover, with
//! [`SnapshotStore::remove_leftover_tmp`] (the gateway's writer does once it holds the
//! folder's lock); until then, or until the next write replaces it, it is ignored.

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// File name of the current generation.
pub const CURRENT_FILE: &str = "routes.snap";
/// File name of the previous generation.
pub const PREVIOUS_FILE: &str = "routes.snap.prev";
/// File name of a write in progress.
pub const TMP_FILE: &str = "routes.snap.tmp";
/// File `open` creates and removes to check that the folder is writable, followed by the
/// process id: two processes opening the folder at once (a gateway starting beside the
/// one it replaces) must not remove each other's probe.
const PROBE_FILE: &str = "routes.snap.probe";

/// The first 8 bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"SWYDSNAP";
/// The format version this code writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest payload (uncompressed) the store writes or reads: 4 GiB. `load` checks a
/// header's uncompressed length against it before allocating anything.
pub const MAX_PAYLOAD_LEN: u64 = 4 << 30;

/// Magic, format version and prefix CRC: the part every format version shares.
const PREFIX_LEN: usize = 16;
/// The whole version-1 header, up to and including its CRC.
const HEADER_LEN: usize = 52;
/// Where the CRC sits in the version-1 header; it covers everything before it.
const CRC_OFFSET: usize = 48;
/// zstd level 1. On a million-route table (118 MB of payload) it compresses as well as
/// the default level 3 (20 MB), faster, and decompresses about 15% faster (1.2 GB/s
/// against 1.05 GB/s on one core of the development machine): decompression is on the
/// path of every start.
const ZSTD_LEVEL: i32 = 1;

/// What the store keeps about a table besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Meta {
    /// The route table's version, as the orchestrator numbered it.
    pub table_version: u64,
    /// How many routes the table holds (for logs and for the gateway's sanity checks).
    pub route_count: u64,
}

/// Which of the two files a table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// `routes.snap`, the table written last.
    Current,
    /// `routes.snap.prev`, the one written before it.
    Previous,
}

impl Generation {
    /// The generation's file name inside the store's folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Generation::Current => CURRENT_FILE,
            Generation::Previous => PREVIOUS_FILE,
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Generation::Current => "current",
            Generation::Previous => "previous",
        })
    }
}

/// A table read back by [`SnapshotStore::load`].
pub struct Loaded {
    /// The table's metadata.
    pub meta: Meta,
    /// The payload exactly as it was given to [`SnapshotStore::write`].
    pub payload: Vec<u8>,
    /// The file it came from: [`Generation::Previous`] means the current one was missing
    /// (an interrupted write) or rejected (see `rejected`).
    pub generation: Generation,
    /// The files that were skipped, and why (at most the current one).
    pub rejected: Vec<Rejected>,
}

impl fmt::Debug for Loaded {
    // The payload can be tens of megabytes: show its length, not its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("meta", &self.meta)
            .field("payload_len", &self.payload.len())
            .field("generation", &self.generation)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// A table read back by [`SnapshotStore::load_with`]: what its `decode` made of the
/// newest valid generation's payload.
#[derive(Debug)]
pub struct Decoded<T> {
    /// The table's metadata.
    pub meta: Meta,
    /// What `decode` returned. An error here is about the payload's content: the file
    /// passed every check of the store, and its payload decompressed whole.
    pub value: T,
    /// The file it came from (see [`Loaded::generation`]).
    pub generation: Generation,
    /// The files that were skipped, and why (at most the current one).
    pub rejected: Vec<Rejected>,
}

/// A generation's payload as it decompresses, for [`SnapshotStore::load_with`]: reads
/// at most the length the header announces. A decompression failure, or a payload
/// shorter than announced, is an error here and makes the store skip the file, whatever
/// `decode` returns.
pub struct Payload<'a> {
    decoder: zstd::stream::read::Decoder<'a, &'a [u8]>,
    len: u64,
    read: u64,
    failure: Option<RejectReason>,
}

impl<'a> Payload<'a> {
    fn new(compressed: &'a [u8], len: u64) -> Result<Payload<'a>, RejectReason> {
        let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
            .map_err(RejectReason::Decompress)?;
        Ok(Payload {
            decoder,
            len,
            read: 0,
            failure: None,
        })
    }

    /// The payload's length, as its header says.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the payload is empty, as its header says.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the rest of the payload (the part `decode` did not read) and that nothing
    /// follows it.
    fn finish(mut self) -> Result<(), RejectReason> {
        if self.failure.is_none() {
            let _ = io::copy(&mut self, &mut io::sink());
        }
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        let mut one = [0u8; 1];
        match self.decoder.read(&mut one) {
            Ok(0) => Ok(()),
            Ok(_) => Err(RejectReason::Decompress(io::Error::other(format!(
                "the payload decompresses to more than the {} bytes its header says",
                self.len
            )))),
            Err(e) => Err(RejectReason::Decompress(e)),
        }
    }
}

impl io::Read for Payload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the snapshot payload does not decompress"));
        }
        let left = self.len - self.read;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match self.decoder.read(&mut buf[..want]) {
            Ok(0) => {
                self.failure = Some(RejectReason::UncompressedLength {
                    expected: self.len,
                    actual: self.read,
                });
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the snapshot payload is shorter than its header says",
                ))
            }
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let error =
                    io::Error::other(format!("the snapshot payload does not decompress: {e}"));
                self.failure = Some(RejectReason::Decompress(e));
                Err(error)
            }
        }
    }
}

/// A snapshot file that `load` skipped, and why.
#[derive(Debug)]
pub struct Rejected {
    /// Which generation it was.
    pub generation: Generation,
    /// Its path.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: RejectReason,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} generation): {}",
            self.path.display(),
            self.generation,
            self.reason
        )
    }
}

/// Why a snapshot file was skipped. Every reason but `Unreadable` means the file's bytes
/// are damaged (or it is not a snapshot at all).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// It exists but could not be read (an I/O error, or it is a folder).
    #[error("cannot read it: {0}")]
    Unreadable(#[source] io::Error),
    /// Shorter than a header: truncated.
    #[error("truncated: {len} bytes, shorter than the header")]
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// Does not start with [`MAGIC`]: not a snapshot, or its first bytes are damaged.
    #[error("bad magic bytes: not a snapshot file, or its first bytes are damaged")]
    BadMagic,
    /// The prefix CRC does not match: the format version field cannot be trusted.
    #[error("prefix checksum mismatch: the format version field is damaged")]
    PrefixChecksum,
    /// A well-formed format version that no Switchyard ever wrote (0).
    #[error("format version {version} was never written by any Switchyard")]
    UnknownVersion {
        /// The version found.
        version: u32,
    },
    /// The header's compressed length does not match the file's length.
    #[error("length mismatch: the header says {expected} bytes in all, the file has {actual} (truncated, or trailing garbage)")]
    LengthMismatch {
        /// The length the header implies.
        expected: u64,
        /// The file's length.
        actual: u64,
    },
    /// The CRC over the header and the compressed payload does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes on disk.
        computed: u32,
    },
    /// The header claims an uncompressed length over [`MAX_PAYLOAD_LEN`].
    #[error("uncompressed length {len} is over the {max}-byte limit")]
    TooLarge {
        /// The length in the header.
        len: u64,
        /// [`MAX_PAYLOAD_LEN`].
        max: u64,
    },
    /// The payload is not a valid zstd frame of the announced size.
    #[error("payload does not decompress: {0}")]
    Decompress(#[source] io::Error),
    /// The payload decompressed to another length than the header says.
    #[error("payload decompresses to {actual} bytes, the header says {expected}")]
    UncompressedLength {
        /// The length in the header.
        expected: u64,
        /// The decompressed length.
        actual: u64,
    },
}

/// An error from the snapshot store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The snapshot folder's path exists and is not a folder.
    #[error("snapshot folder {path} exists but is not a folder; point the gateway at a folder of its own, or move that file away")]
    NotADirectory {
        /// The path given to [`SnapshotStore::open`].
        path: PathBuf,
    },
    /// The snapshot folder cannot be created, read or written.
    #[error("cannot use snapshot folder {path}: {source}; the gateway must be able to create, list and write it (check the path, its owner and permissions, the mount, and free space)")]
    Folder {
        /// The folder, or the file in it that could not be created.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A payload over [`MAX_PAYLOAD_LEN`] was refused; nothing was written.
    #[error("refused to write a route table snapshot of {size} bytes, over the {max}-byte limit; nothing was written")]
    PayloadTooLarge {
        /// The payload's length.
        size: u64,
        /// [`MAX_PAYLOAD_LEN`].
        max: u64,
    },
    /// zstd failed to compress the payload; nothing was written.
    #[error("cannot compress the route table snapshot: {source}; nothing was written")]
    Compress {
        /// zstd's error.
        source: io::Error,
    },
    /// Writing, renaming or syncing a snapshot file failed.
    #[error("cannot write route table snapshot {path}: {source}; this table is NOT safely saved (check free space, permissions and the disk's health); the tables saved before it are still on disk and load")]
    Write {
        /// The file (or folder, for a sync) that failed.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A generation was written by a newer binary, in a format this one cannot read.
    #[error("{path} is snapshot format version {found}, but this binary reads versions up to {supported}: it was written by a newer Switchyard, so the gateway binary was probably downgraded. Run the newer binary again; to deliberately start from an older table instead, move {path} away (and restart)")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// Snapshot files exist but none of them is valid.
    #[error("no valid route table snapshot in {dir}: {}; refusing to go on with an empty route table. Restore a good snapshot into {dir} (from a backup or another gateway), or, to start this gateway without a table on purpose, move these files away", list(.rejected))]
    NoValidSnapshot {
        /// The store's folder.
        dir: PathBuf,
        /// Every file that exists, and what is wrong with it.
        rejected: Vec<Rejected>,
    },
}

fn list(rejected: &[Rejected]) -> String {
    let items: Vec<String> = rejected.iter().map(Rejected::to_string).collect();
    items.join("; ")
}

/// The two-generation snapshot store in one folder. See the [module docs](self).
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// Held by `write` and `load` for their whole run, so that they do not interleave.
    /// The flag says whether the last `load` rejected the current generation: `write` then
    /// replaces that file instead of rotating it into `.prev`, where it would push out the
    /// valid previous table that `load` fell back to.
    current_rejected: Mutex<bool>,
}

impl SnapshotStore {
    /// Opens the store in `dir`, creating the folder (and its parents) if missing.
    ///
    /// Checks that the folder can be listed and written, so a misconfigured path fails at
    /// start-up rather than at the first table.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SnapshotStore, Error> {
        let dir = dir.into();
        let folder_error = |path: &Path, source| Error::Folder {
            path: path.to_owned(),
            source,
        };
        match fs::metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return Err(Error::NotADirectory { path: dir }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_dir_durably(&dir).map_err(|e| folder_error(&dir, e))?;
            }
            Err(e) => return Err(folder_error(&dir, e)),
        }
        fs::read_dir(&dir).map_err(|e| folder_error(&dir, e))?;
        let probe = dir.join(format!("{PROBE_FILE}.{}", std::process::id()));
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| folder_error(&probe, e))?;
        Ok(SnapshotStore {
            dir,
            current_rejected: Mutex::new(false),
        })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a generation's file.
    pub fn path(&self, generation: Generation) -> PathBuf {
        self.dir.join(generation.file_name())
    }

    /// Writes a table as the new current generation; the current one becomes the previous
    /// one. Returns once the new file and the folder are synced to disk.
    ///
    /// On an error the table is not saved, and `load` still returns a table that was saved
    /// before.
    pub fn write(&self, meta: &Meta, payload: &[u8]) -> Result<(), Error> {
        let size = payload.len() as u64;
        if size > MAX_PAYLOAD_LEN {
            return Err(Error::PayloadTooLarge {
                size,
                max: MAX_PAYLOAD_LEN,
            });
        }
        self.write_with(meta, |out| out.write_all(payload))
            .map(drop)
    }

    /// [`write`](SnapshotStore::write), with the payload written by `payload` into a
    /// compressor as it is produced, so that it is never whole in memory; returns its
    /// length. An error from `payload` is a [`Error::Compress`]; nothing is written then.
    pub fn write_with(
        &self,
        meta: &Meta,
        payload: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<u64, Error> {
        let mut current_rejected = self.lock();
        let encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
            .map_err(|source| Error::Compress { source })?;
        let mut counted = Counted {
            inner: encoder,
            len: 0,
        };
        let produced = payload(&mut counted);
        if counted.len > MAX_PAYLOAD_LEN {
            return Err(Error::PayloadTooLarge {
                size: counted.len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        produced.map_err(|source| Error::Compress { source })?;
        let size = counted.len;
        let compressed = counted
            .inner
            .finish()
            .map_err(|source| Error::Compress { source })?;
        let header = encode_header(
            FORMAT_VERSION,
            meta,
            compressed.len() as u64,
            size,
            &compressed,
        );

        let tmp = self.dir.join(TMP_FILE);
        let current = self.path(Generation::Current);
        let previous = self.path(Generation::Previous);
        let write_error = |path: &Path, source| Error::Write {
            path: path.to_owned(),
            source,
        };

        // Each step is durable before the next begins, so a crash (or power loss) leaves
        // exactly one of these states, and `load` copes with each:
        //
        // 1. Write the new table to `.tmp` and fsync it. The fsync makes the bytes durable
        //    before any name points at them: without it, a crash after the renames could
        //    leave `routes.snap` naming a file whose data never reached the disk.
        //    Crash during or after: `.tmp` is partial or whole, current and prev are
        //    untouched. `load` ignores and removes `.tmp`, returns current.
        if let Err(source) = write_synced(&tmp, &[&header, &compressed]) {
            let _ = fs::remove_file(&tmp);
            return Err(write_error(&tmp, source));
        }
        // 2. Rename current -> prev (replacing the old prev), then fsync the folder so the
        //    rename is on disk before the next one (POSIX does not order renames that are
        //    not synced). The current table thus stays on disk under one name or the
        //    other at every instant. Skipped when there is no current (a first write, or
        //    a write after a crash at this very point), and when the last `load` rejected
        //    the current file: rotating it would push the valid prev out for a corrupt
        //    file; step 3 replaces it instead.
        //    Crash after: only prev (the old current) and `.tmp`. `load` finds no current,
        //    returns prev (the newest table whose write completed) and removes `.tmp`.
        if !*current_rejected {
            match fs::rename(&current, &previous) {
                Ok(()) => sync_dir(&self.dir).map_err(|e| write_error(&self.dir, e))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(write_error(&previous, e));
                }
            }
        }
        // 3. Rename `.tmp` -> current: atomic, so `routes.snap` is the old file or the new
        //    one, never a mix. Crash after: current (new) and prev (old); `load` returns
        //    current.
        if let Err(e) = fs::rename(&tmp, &current) {
            let _ = fs::remove_file(&tmp);
            return Err(write_error(&current, e));
        }
        // 4. Fsync the folder: until the rename is on disk, a power loss could undo it and
        //    bring back the state after step 2. After it, the table is saved and `write`
        //    may return Ok.
        sync_dir(&self.dir).map_err(|e| write_error(&self.dir, e))?;
        *current_rejected = false;
        tracing::debug!(
            path = %current.display(),
            table_version = meta.table_version,
            route_count = meta.route_count,
            payload_bytes = size,
            file_bytes = HEADER_LEN + compressed.len(),
            "route table snapshot written"
        );
        Ok(size)
    }

    /// Reads back the newest valid generation.
    ///
    /// - `Ok(Some(_))` with the current generation if it is valid, else with the previous
    ///   one (and the current one, if it exists, listed in [`Loaded::rejected`] and logged
    ///   with `tracing::warn!`);
    /// - `Ok(None)` only when neither file exists: a fresh gateway;
    /// - [`Error::NoValidSnapshot`] when files exist but none is valid;
    /// - [`Error::NewerFormat`] when the file it would use was written by a newer binary.
    ///
    /// A `routes.snap.tmp` (a write in progress, or the leftover of an interrupted one) is
    /// ignored and left in place: see the module docs.
    pub fn load(&self) -> Result<Option<Loaded>, Error> {
        let decoded = self.load_with(|_, payload| {
            // Capped by MAX_PAYLOAD_LEN, checked before the payload is handed out.
            let mut bytes = Vec::with_capacity(usize::try_from(payload.len()).unwrap_or(0));
            // A failure is the store's to report: the file is then skipped.
            let _ = payload.read_to_end(&mut bytes);
            Ok::<_, Infallible>(bytes)
        })?;
        Ok(decoded.map(|decoded| {
            let Ok(payload) = decoded.value;
            Loaded {
                meta: decoded.meta,
                payload,
                generation: decoded.generation,
                rejected: decoded.rejected,
            }
        }))
    }

    /// [`load`](SnapshotStore::load), with the payload streamed out of the decompressor
    /// into `decode` instead of returned whole: the same files are used, skipped and
    /// refused for the same reasons, and `decode`'s result is returned with the
    /// generation it came from.
    ///
    /// `decode` runs on a generation once every check of the store has passed but
    /// decompression, which happens as it reads. When the payload then turns out not to
    /// decompress whole (to exactly the announced length, which the store checks after
    /// `decode` returns, reading what it left), whatever `decode` returned is dropped and
    /// the file skipped like any other damaged one. `decode` may stop reading early (on
    /// an error of its own, say).
    pub fn load_with<T>(
        &self,
        mut decode: impl FnMut(&Meta, &mut Payload<'_>) -> T,
    ) -> Result<Option<Decoded<T>>, Error> {
        let mut current_rejected = self.lock();
        *current_rejected = false;
        let mut rejected = Vec::new();
        let mut current_missing = false;
        for generation in [Generation::Current, Generation::Previous] {
            let path = self.path(generation);
            let bytes = match fs::read(&path) {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    current_missing |= generation == Generation::Current;
                    continue;
                }
                Err(e) => Err(RejectReason::Unreadable(e)),
            };
            let outcome = bytes.and_then(|bytes| match check(&bytes) {
                Checked::Valid {
                    meta,
                    compressed,
                    len,
                } => {
                    let mut payload = Payload::new(compressed, len)?;
                    let value = decode(&meta, &mut payload);
                    payload.finish()?;
                    Ok(Ok((meta, value)))
                }
                Checked::Newer(found) => Ok(Err(found)),
                Checked::Rejected(reason) => Err(reason),
            });
            match outcome {
                Ok(Ok((meta, value))) => {
                    if current_missing {
                        tracing::warn!(
                            path = %path.display(),
                            "no current route table snapshot (a write was interrupted); using the previous one"
                        );
                    }
                    tracing::info!(
                        path = %path.display(),
                        %generation,
                        table_version = meta.table_version,
                        route_count = meta.route_count,
                        "route table snapshot loaded"
                    );
                    return Ok(Some(Decoded {
                        meta,
                        value,
                        generation,
                        rejected,
                    }));
                }
                Ok(Err(found)) => {
                    return Err(Error::NewerFormat {
                        path,
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                Err(reason) => {
                    tracing::warn!(
                        path = %path.display(),
                        %generation,
                        %reason,
                        "route table snapshot rejected"
                    );
                    *current_rejected |= generation == Generation::Current;
                    rejected.push(Rejected {
                        generation,
                        path,
                        reason,
                    });
                }
            }
        }
        if rejected.is_empty() {
            tracing::info!(dir = %self.dir.display(), "no route table snapshot: a fresh gateway");
            Ok(None)
        } else {
            Err(Error::NoValidSnapshot {
                dir: self.dir.clone(),
                rejected,
            })
        }
    }

    /// Removes a `routes.snap.tmp` that an interrupted write left. Only for the folder's
    /// owner, the one process that writes there: anyone else could remove the owner's
    /// write in progress (whose last rename would then fail).
    pub fn remove_leftover_tmp(&self) {
        let _serialised = self.lock();
        let tmp = self.dir.join(TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => tracing::info!(
                path = %tmp.display(),
                "removed the leftover of an interrupted snapshot write"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Harmless for loading; the next write truncates it, or fails naming it.
            Err(e) => tracing::warn!(
                path = %tmp.display(),
                error = %e,
                "cannot remove the leftover of an interrupted snapshot write"
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        // A panic while holding the lock leaves nothing half-done in memory: the files are
        // the state, and every state they can be in is handled.
        self.current_rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the checks of one generation's file found.
enum Checked<'a> {
    /// Every check passed but decompression.
    Valid {
        meta: Meta,
        compressed: &'a [u8],
        /// The payload's length once decompressed, at most [`MAX_PAYLOAD_LEN`].
        len: u64,
    },
    Rejected(RejectReason),
    /// A well-formed file in a newer format version.
    Newer(u32),
}

/// Checks a whole file, all but the decompression of its payload (which
/// [`Payload`] checks as it goes). The uncompressed length is capped before anyone
/// allocates for it.
fn check(bytes: &[u8]) -> Checked<'_> {
    let reject = Checked::Rejected;
    let len = bytes.len() as u64;
    if bytes.len() < PREFIX_LEN {
        return reject(RejectReason::TooShort { len });
    }
    if bytes[..8] != MAGIC {
        return reject(RejectReason::BadMagic);
    }
    if u32_at(bytes, 12) != crc32fast::hash(&bytes[..12]) {
        return reject(RejectReason::PrefixChecksum);
    }
    let version = u32_at(bytes, 8);
    if version > FORMAT_VERSION {
        return Checked::Newer(version);
    }
    if version != FORMAT_VERSION {
        return reject(RejectReason::UnknownVersion { version });
    }
    if bytes.len() < HEADER_LEN {
        return reject(RejectReason::TooShort { len });
    }
    let meta = Meta {
        table_version: u64_at(bytes, 16),
        route_count: u64_at(bytes, 24),
    };
    let compressed_len = u64_at(bytes, 32);
    let uncompressed_len = u64_at(bytes, 40);
    let expected = compressed_len.saturating_add(HEADER_LEN as u64);
    if expected != len {
        return reject(RejectReason::LengthMismatch {
            expected,
            actual: len,
        });
    }
    let stored = u32_at(bytes, CRC_OFFSET);
    let computed = checksum(&bytes[..CRC_OFFSET], &bytes[HEADER_LEN..]);
    if stored != computed {
        return reject(RejectReason::Checksum { stored, computed });
    }
    if uncompressed_len > MAX_PAYLOAD_LEN {
        return reject(RejectReason::TooLarge {
            len: uncompressed_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    // Fits in usize on 64-bit targets, the only ones the gateway runs on.
    if usize::try_from(uncompressed_len).is_err() {
        return reject(RejectReason::TooLarge {
            len: uncompressed_len,
            max: usize::MAX as u64,
        });
    }
    Checked::Valid {
        meta,
        compressed: &bytes[HEADER_LEN..],
        len: uncompressed_len,
    }
}

/// Counts the bytes written through it, and refuses those past [`MAX_PAYLOAD_LEN`].
struct Counted<W> {
    inner: W,
    len: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len + buf.len() as u64 > MAX_PAYLOAD_LEN {
            self.len += buf.len() as u64;
            return Err(io::Error::other("the payload is over the size limit"));
        }
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The 16 bytes every format version starts with.
fn encode_prefix(version: u32) -> [u8; PREFIX_LEN] {
    let mut prefix = [0; PREFIX_LEN];
    prefix[..8].copy_from_slice(&MAGIC);
    prefix[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&prefix[..12]);
    prefix[12..16].copy_from_slice(&crc.to_le_bytes());
    prefix
}

/// A version-1 header (with any version number, for tests) for `compressed`.
fn encode_header(
    version: u32,
    meta: &Meta,
    compressed_len: u64,
    uncompressed_len: u64,
    compressed: &[u8],
) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..PREFIX_LEN].copy_from_slice(&encode_prefix(version));
    header[16..24].copy_from_slice(&meta.table_version.to_le_bytes());
    header[24..32].copy_from_slice(&meta.route_count.to_le_bytes());
    header[32..40].copy_from_slice(&compressed_len.to_le_bytes());
    header[40..48].copy_from_slice(&uncompressed_len.to_le_bytes());
    let crc = checksum(&header[..CRC_OFFSET], compressed);
    header[CRC_OFFSET..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    header
}

fn checksum(header: &[u8], compressed: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(compressed);
    hasher.finalize()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut le = [0; 4];
    le.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(le)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

/// Creates (or truncates) `path`, writes `parts` to it and fsyncs it.
fn write_synced(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut file = File::create(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()
}

/// Fsyncs a folder, making the renames and creations in it durable (Linux).
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then fsyncs the parent of every folder it created, so the folder
/// itself survives a power loss along with the snapshots the store syncs into it.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .collect();
    fs::create_dir_all(dir)?;
    for created in missing {
        match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}
