//! Serde helpers for lists of byte buffers, written as byte strings.
//!
//! serde sees a `Vec<u8>` as a sequence: one `u8` per serializer (and deserializer) call.
//! postcard writes a byte string exactly as it writes that sequence (a varint length, then the
//! bytes), so marking a field `#[serde(with = "serde_bytes")]` keeps every message and every
//! stored record byte-identical while decoding it becomes one copy. `serde_bytes` covers
//! single buffers; this module covers `Vec<Vec<u8>>` (the payloads of a Request, a batch of
//! Raft messages).

use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};

/// Writes each buffer as a byte string.
pub fn serialize<S: Serializer>(buffers: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
    let mut seq = serializer.serialize_seq(Some(buffers.len()))?;
    for b in buffers {
        seq.serialize_element(serde_bytes::Bytes::new(b))?;
    }
    seq.end()
}

/// Reads a sequence of byte strings.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
    struct Buffers;
    impl<'de> Visitor<'de> for Buffers {
        type Value = Vec<Vec<u8>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of byte strings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // Never trust a length hint from the wire for an allocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(b) = seq.next_element::<serde_bytes::ByteBuf>()? {
                out.push(b.into_vec());
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Buffers)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        a: Vec<Vec<u8>>,
        b: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Marked {
        #[serde(with = "super")]
        a: Vec<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn same_postcard_bytes_as_plain_sequences() {
        let plain = Plain {
            a: vec![vec![], vec![1, 2, 3], vec![0xff; 300]],
            b: (0..=255).collect(),
        };
        let marked = Marked {
            a: plain.a.clone(),
            b: plain.b.clone(),
        };
        let bytes = postcard::to_stdvec(&plain).unwrap();
        assert_eq!(postcard::to_stdvec(&marked).unwrap(), bytes);
        let back: Marked = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, marked);
        // A truncated or lying length is an error, never a panic or a huge allocation.
        assert!(postcard::from_bytes::<Marked>(&bytes[..bytes.len() - 1]).is_err());
        assert!(postcard::from_bytes::<Marked>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
