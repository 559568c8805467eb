//! Sharding: which shard an application is in, and which orchestrator owns a shard.
//!
//! Every function here is pure and uses [`stable_hash`], whose values are fixed
//! forever (on every platform, in every version): orchestrators of different builds
//! must agree on them during a rolling upgrade. The tests pin expected values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AppId, IdError, MemberId};

/// A shard number, `0..shard_count`.
///
/// Displays with at least 4 digits, zero-padded (`0042`, also the ZooKeeper node
/// name); [`FromStr`] accepts exactly that form, so `42` and `00042` are errors and
/// one shard has one name. Serialises as a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.0)
    }
}

impl FromStr for ShardId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u16>().ok())
            .flatten()
            .map(ShardId)
            .filter(|id| id.to_string() == s)
            .ok_or_else(|| IdError::Shard(s.to_owned()))
    }
}

/// FNV-1a, 64 bits: offset basis `0xcbf29ce484222325`, prime `0x100000001b3`; for
/// each byte, xor it in, then multiply (wrapping).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_continue(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a 64 of what gave `hash`, followed by `bytes`.
fn fnv1a64_continue(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// MurmurHash3's 64-bit finaliser (`fmix64`): every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash every sharding decision uses: FNV-1a 64 of `bytes`, then MurmurHash3's
/// `fmix64` finaliser. Written out here because `std`'s hashers are not stable.
///
/// Why the finaliser: in plain FNV-1a the low `k` bits of the hash depend only on
/// the low `k` bits of each byte (so with 16 shards `app-a` and `app-q` always
/// share one), and keys that differ only in their last bytes get scores that differ
/// in a fixed pattern, so rendezvous hashing gave every shard to one member.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

/// The shard `app` is in: `stable_hash(id) % shard_count`.
///
/// The shard count is fixed for the life of a region: changing it moves almost
/// every app.
///
/// # Panics
/// If `shard_count` is 0.
pub fn shard_of(app: &AppId, shard_count: u16) -> ShardId {
    assert!(shard_count > 0, "shard_count must be at least 1");
    let shard = stable_hash(app.as_str().as_bytes()) % u64::from(shard_count);
    ShardId(u16::try_from(shard).expect("less than shard_count"))
}

/// `member`'s score for `shard`: the hash of the member's id, a 0xff byte (which
/// no id contains) and the shard number as 2 big-endian bytes.
fn score(shard: ShardId, member: &MemberId) -> u64 {
    let hash = fnv1a64(member.as_str().as_bytes());
    let hash = fnv1a64_continue(hash, &[0xff]);
    fmix64(fnv1a64_continue(hash, &shard.0.to_be_bytes()))
}

/// The owner of `shard` among `members` by rendezvous (highest-random-weight)
/// hashing: the member with the highest score for the shard, the smaller id on a
/// tie. `None` if there are no members. The order of `members` does not matter.
///
/// When a member joins it takes about `1/(n+1)` of the shards, each from its old
/// owner, and no other shard moves; when one leaves, only its shards move.
pub fn rendezvous_owner(shard: ShardId, members: &[MemberId]) -> Option<&MemberId> {
    members
        .iter()
        .map(|m| (score(shard, m), m))
        .max_by(|(sa, a), (sb, b)| sa.cmp(sb).then_with(|| b.cmp(a)))
        .map(|(_, m)| m)
}

/// The shards in `0..shard_count` that [`rendezvous_owner`] gives to `member`, in
/// order; empty if `member` is not in `members`.
pub fn shards_for(member: &MemberId, members: &[MemberId], shard_count: u16) -> Vec<ShardId> {
    (0..shard_count)
        .map(ShardId)
        .filter(|&shard| rendezvous_owner(shard, members) == Some(member))
        .collect()
}
