//! The remembered HTTP responses of idempotent requests, indexed by a digest of their key.
//!
//! Every answered request that carried an `Idempotency-Key` is remembered for 10 minutes
//! under `(scope, key)`: at 100 + 100 clients that is some 5,000 entries a second and a few
//! hundred thousand kept, and every one is looked up, inserted and later evicted on all five
//! replicas. Indexed by the two strings, each of those operations compared strings (`scope`
//! starts with the same 19 bytes for every route of a session) some 20 to 40 times, and a
//! lookup allocated both. The index is now a 128-bit SipHash-1-3 digest of the pair
//! ([`digest`]): comparisons are integer compares and a lookup allocates nothing.
//!
//! The digest is fast, not secret (its keys are fixed so every replica computes the same), so
//! two pairs could share one, by chance (below 10^-20 even among a billion entries) or
//! crafted by someone who knows both pairs. Neither can do harm: a lookup answers only if the
//! stored pair is the one asked for, and a pair whose digest is already taken by another is
//! simply not remembered (that request keeps the duplicate tables' shorter protection), so
//! no client can read or displace another's response.
//!
//! **Snapshot format.** The store serializes exactly as the two fields it replaced did
//! (postcard is positional, so a pair is the two values back to back): the map
//! `(scope, key) -> (response, at_ms)`, then the eviction order as `(at_ms, scope, key)`.
//! Snapshots taken before this change restore unchanged. Entries are written in digest order
//! (eviction entries in time order), so replicas with the same state still write the same
//! bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::StoredResponse;

/// The 128-bit SipHash-1-3 digest of `(scope, key)` under fixed keys, each part
/// length-prefixed so no two pairs share an encoding.
pub fn digest(scope: &str, key: &str) -> u128 {
    use std::hash::Hasher;
    let mut h = SipHasher13::new_with_keys(0x6d61_726b_6574_2d72, 0x656d_656d_6265_7221);
    for part in [scope, key] {
        h.write(&(part.len() as u64).to_le_bytes());
        h.write(part.as_bytes());
    }
    h.finish128().as_u128()
}

/// One remembered response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scope: String,
    key: String,
    response: StoredResponse,
    at_ms: u64,
}

/// Remembered responses by digest, and their eviction order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Remembered {
    by_digest: BTreeMap<u128, Entry>,
    /// `(at_ms, digest)`, oldest first.
    age: BTreeSet<(u64, u128)>,
    /// Sum of the bodies' sizes.
    bytes: u64,
}

impl Remembered {
    /// Number of responses kept.
    pub(super) fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Sum of the kept bodies' sizes.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The response kept for `(scope, key)` and when it was remembered.
    pub(super) fn get(&self, scope: &str, key: &str) -> Option<(&StoredResponse, u64)> {
        self.by_digest
            .get(&digest(scope, key))
            .filter(|e| e.scope == scope && e.key == key)
            .map(|e| (&e.response, e.at_ms))
    }

    /// When the oldest response was remembered.
    pub(super) fn oldest_ms(&self) -> Option<u64> {
        self.age.first().map(|&(at, _)| at)
    }

    /// Forgets the oldest response.
    pub(super) fn forget_oldest(&mut self) {
        if let Some((_, d)) = self.age.pop_first() {
            if let Some(e) = self.by_digest.remove(&d) {
                self.bytes = self.bytes.saturating_sub(e.response.body.len() as u64);
            }
        }
    }

    /// Whether a response is kept under digest `d` (for this pair or, by a collision, for
    /// another).
    pub(super) fn taken(&self, d: u128) -> bool {
        self.by_digest.contains_key(&d)
    }

    /// Keeps `response` for `(scope, key)`, whose digest is `d`, unless `d` is taken (by this
    /// pair or another): the first stays. Returns whether it was kept.
    pub(super) fn insert(
        &mut self,
        d: u128,
        scope: String,
        key: String,
        response: StoredResponse,
        at_ms: u64,
    ) -> bool {
        if self.taken(d) {
            return false;
        }
        self.bytes = self.bytes.saturating_add(response.body.len() as u64);
        self.age.insert((at_ms, d));
        self.by_digest.insert(
            d,
            Entry {
                scope,
                key,
                response,
                at_ms,
            },
        );
        true
    }
}

/// `(response, at_ms)`, as the map's values were serialized before.
#[derive(Serialize, Deserialize)]
struct Value<'a> {
    response: std::borrow::Cow<'a, StoredResponse>,
    at_ms: u64,
}

impl Serialize for Remembered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Map<'a>(&'a Remembered);
        impl Serialize for Map<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.by_digest.len()))?;
                for e in self.0.by_digest.values() {
                    map.serialize_entry(
                        &(&e.scope, &e.key),
                        &Value {
                            response: std::borrow::Cow::Borrowed(&e.response),
                            at_ms: e.at_ms,
                        },
                    )?;
                }
                map.end()
            }
        }
        struct Age<'a>(&'a Remembered);
        impl Serialize for Age<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.age.len()))?;
                for (at, d) in &self.0.age {
                    let (scope, key) = self
                        .0
                        .by_digest
                        .get(d)
                        .map(|e| (e.scope.as_str(), e.key.as_str()))
                        .unwrap_or_default();
                    seq.serialize_element(&(at, scope, key))?;
                }
                seq.end()
            }
        }
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&Map(self))?;
        t.serialize_element(&Age(self))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Remembered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pair;
        impl<'de> Visitor<'de> for Pair {
            type Value = Remembered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("remembered responses and their eviction order")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Remembered, A::Error> {
                let map: BTreeMap<(String, String), Value<'static>> = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                // The eviction order is rebuilt from the entries' times; the stored one is
                // read (it is part of the format) but not needed.
                let _age: Vec<(u64, String, String)> = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(1, &self))?;
                let mut r = Remembered::default();
                for ((scope, key), v) in map {
                    let d = digest(&scope, &key);
                    r.insert(d, scope, key, v.response.into_owned(), v.at_ms);
                }
                Ok(r)
            }
        }
        deserializer.deserialize_tuple(2, Pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of the two fields this store replaced.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Before {
        remembered: BTreeMap<(String, String), OldValue>,
        remembered_age: BTreeSet<(u64, String, String)>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct OldValue {
        response: StoredResponse,
        at_ms: u64,
    }

    fn put(r: &mut Remembered, scope: &str, key: &str, response: StoredResponse, at: u64) -> bool {
        r.insert(digest(scope, key), scope.into(), key.into(), response, at)
    }

    fn response(n: u8) -> StoredResponse {
        StoredResponse {
            status: 200 + u16::from(n),
            body: vec![n; usize::from(n)],
        }
    }

    #[test]
    fn lookups_eviction_and_sizes() {
        let mut r = Remembered::default();
        assert!(put(&mut r, "t:1", "a", response(3), 10));
        assert!(put(&mut r, "t:1", "b", response(5), 5));
        assert!(put(&mut r, "t:2", "a", response(7), 20));
        assert!(!put(&mut r, "t:2", "a", response(1), 30), "the first stays");
        assert_eq!(r.len(), 3);
        assert_eq!(r.bytes(), 15);
        assert_eq!(r.get("t:1", "a"), Some((&response(3), 10)));
        assert_eq!(r.get("t:1", "c"), None);
        assert_eq!(r.get("t:1a", ""), None, "the pair is length-prefixed");
        assert_eq!(r.oldest_ms(), Some(5));
        r.forget_oldest();
        assert_eq!(r.get("t:1", "b"), None);
        assert_eq!(r.bytes(), 10);
        assert_eq!(r.oldest_ms(), Some(10));
        r.forget_oldest();
        r.forget_oldest();
        assert_eq!((r.len(), r.bytes(), r.oldest_ms()), (0, 0, None));
        r.forget_oldest();
        assert_eq!(r.len(), 0);
        assert_ne!(digest("ab", "c"), digest("a", "bc"));
    }

    #[test]
    fn a_collision_neither_reads_nor_displaces_another_pair() {
        let mut r = Remembered::default();
        let d = digest("t:1", "a");
        assert!(r.insert(d, "t:1".into(), "a".into(), response(3), 10));
        // Another pair under the same digest (as if it collided): not kept, and the first
        // pair's response is not served for it.
        assert!(!r.insert(d, "t:2".into(), "b".into(), response(4), 11));
        assert_eq!(r.get("t:1", "a"), Some((&response(3), 10)));
        assert_eq!((r.len(), r.bytes()), (1, 3));
        r.by_digest.get_mut(&d).unwrap().key = "z".into();
        assert_eq!(r.get("t:1", "a"), None, "a lookup checks the pair");
    }

    #[test]
    fn serializes_as_the_two_fields_it_replaced() {
        let mut r = Remembered::default();
        let mut before = Before {
            remembered: BTreeMap::new(),
            remembered_age: BTreeSet::new(),
        };
        for (i, (scope, key)) in [("t:9", "zz"), ("t:1", "k"), ("u:x", "k"), ("t:1", "a")]
            .into_iter()
            .enumerate()
        {
            let at = 100 - i as u64;
            put(&mut r, scope, key, response(i as u8), at);
            before.remembered.insert(
                (scope.into(), key.into()),
                OldValue {
                    response: response(i as u8),
                    at_ms: at,
                },
            );
            before.remembered_age.insert((at, scope.into(), key.into()));
        }
        // Old bytes restore into the new store.
        let old = postcard::to_stdvec(&before).unwrap();
        let restored: Remembered = postcard::from_bytes(&old).unwrap();
        assert_eq!(restored, r);
        // New bytes read back as the old layout, with the same content.
        let new = postcard::to_stdvec(&r).unwrap();
        let as_before: Before = postcard::from_bytes(&new).unwrap();
        assert_eq!(as_before, before);
        assert_eq!(postcard::from_bytes::<Remembered>(&new).unwrap(), r);
        // Same state, same bytes.
        assert_eq!(postcard::to_stdvec(&restored).unwrap(), new);
        assert_eq!(new.len(), old.len());
    }
}
