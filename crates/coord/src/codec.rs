//! The encoding of every payload Switchyard stores in ZooKeeper: a 4-byte header,
//! then the payload, zstd-compressed above a threshold.
//!
//! | byte | meaning                                       |
//! |------|-----------------------------------------------|
//! | 0-1  | magic `b"SY"`                                 |
//! | 2    | format version, 1                             |
//! | 3    | flags: bit 0 set = the rest is a zstd frame   |
//! | 4..  | payload                                       |
//!
//! Empty node data (structural nodes such as a shard's folder) decodes to an empty
//! payload. Anything else without the header is a decode error, never guessed at.

/// The header's magic bytes.
pub const MAGIC: [u8; 2] = *b"SY";
/// The newest format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_BYTES: usize = 4;
const FLAG_ZSTD: u8 = 1;
/// A decoded payload may be at most this large: a corrupt or hostile frame cannot
/// make a reader allocate more.
pub const MAX_DECODED_BYTES: usize = 256 << 20;
const ZSTD_LEVEL: i32 = 3;

/// Why bytes read from ZooKeeper could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The data does not start with Switchyard's header.
    #[error("not a Switchyard payload (no `SY` header); the node was written by something else")]
    NoHeader,
    /// A newer format than this build knows.
    #[error("payload format version {0} is newer than this build reads ({VERSION}); upgrade this process")]
    UnknownVersion(u8),
    /// Flags this build does not know.
    #[error("payload has unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The compressed frame is damaged or decodes past the size cap.
    #[error("compressed payload is corrupt: {0}")]
    Corrupt(String),
}

/// Encodes `payload`, compressing it when it is larger than `compress_above_bytes`
/// and compression makes it smaller.
pub fn encode(payload: &[u8], compress_above_bytes: usize) -> Vec<u8> {
    if payload.len() > compress_above_bytes {
        if let Ok(compressed) = zstd::bulk::compress(payload, ZSTD_LEVEL) {
            if compressed.len() < payload.len() {
                let mut out = Vec::with_capacity(HEADER_BYTES + compressed.len());
                out.extend_from_slice(&[MAGIC[0], MAGIC[1], VERSION, FLAG_ZSTD]);
                out.extend_from_slice(&compressed);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&[MAGIC[0], MAGIC[1], VERSION, 0]);
    out.extend_from_slice(payload);
    out
}

/// Decodes what [`encode`] wrote.
pub fn decode(data: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if data.len() < HEADER_BYTES || data[..2] != MAGIC {
        return Err(DecodeError::NoHeader);
    }
    let (version, flags, body) = (data[2], data[3], &data[HEADER_BYTES..]);
    if version != VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    match flags {
        0 => Ok(body.to_vec()),
        FLAG_ZSTD => {
            let size = zstd::zstd_safe::get_frame_content_size(body)
                .map_err(|_| DecodeError::Corrupt("not a zstd frame".into()))?
                .ok_or_else(|| DecodeError::Corrupt("zstd frame without a content size".into()))?;
            if size > MAX_DECODED_BYTES as u64 {
                return Err(DecodeError::Corrupt(format!(
                    "frame claims {size} bytes, over the {MAX_DECODED_BYTES}-byte cap"
                )));
            }
            let out = zstd::bulk::decompress(body, size as usize)
                .map_err(|err| DecodeError::Corrupt(err.to_string()))?;
            if out.len() as u64 != size {
                return Err(DecodeError::Corrupt(format!(
                    "frame decoded to {} bytes, header said {size}",
                    out.len()
                )));
            }
            Ok(out)
        }
        other => Err(DecodeError::UnknownFlags(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_are_stored_plain() {
        let encoded = encode(b"hello", 16);
        assert_eq!(encoded, b"SY\x01\x00hello");
        assert_eq!(decode(&encoded).unwrap(), b"hello");
    }

    #[test]
    fn large_payloads_are_compressed_and_round_trip() {
        let payload: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let encoded = encode(&payload, 4096);
        assert_eq!(encoded[3], FLAG_ZSTD);
        assert!(encoded.len() < payload.len() / 4, "{} bytes", encoded.len());
        assert_eq!(decode(&encoded).unwrap(), payload);
    }

    #[test]
    fn incompressible_payloads_stay_plain() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let payload: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let encoded = encode(&payload, 16);
        assert_eq!(encoded[3], 0);
        assert_eq!(decode(&encoded).unwrap(), payload);
    }

    #[test]
    fn empty_data_is_an_empty_payload() {
        assert_eq!(decode(b"").unwrap(), b"");
        assert_eq!(decode(&encode(b"", 0)).unwrap(), b"");
    }

    #[test]
    fn foreign_or_damaged_data_is_a_clear_error() {
        assert_eq!(decode(b"{\"json\":1}"), Err(DecodeError::NoHeader));
        assert_eq!(decode(b"SY"), Err(DecodeError::NoHeader));
        assert_eq!(decode(b"SY\x02\x00x"), Err(DecodeError::UnknownVersion(2)));
        assert_eq!(decode(b"SY\x01\x80x"), Err(DecodeError::UnknownFlags(0x80)));
        assert!(matches!(
            decode(b"SY\x01\x01garbage"),
            Err(DecodeError::Corrupt(_))
        ));
        let payload = vec![b'a'; 50_000];
        let mut encoded = encode(&payload, 0);
        let last = encoded.len() - 1;
        encoded.truncate(last);
        assert!(matches!(decode(&encoded), Err(DecodeError::Corrupt(_))));
    }
}
