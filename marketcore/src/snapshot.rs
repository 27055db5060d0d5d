//! The on-disk format of the two state machines' snapshots: a format header, then the state
//! in postcard.
//!
//! postcard is not self-describing: a build whose state has a field more or less cannot read
//! another build's bytes, and without a header it would say only "unexpected end of input"
//! (or, worse, decode garbage that happens to fit). So every snapshot starts with a 4-byte
//! magic naming the machine and a little-endian `u16` format version; [`decode`] refuses a
//! snapshot of another machine or another version with an error that says which, so an
//! operator who upgrades a cluster in place learns at once that the new build cannot read the
//! replica's data, rather than chasing a decode error. The state must also use every byte
//! (postcard alone ignores trailing bytes, so another machine's snapshot could pass for a
//! short state).
//!
//! Snapshots written before the header existed (the machines' layout of version 1, with no
//! header) are still read: bytes that do not start with the magic are decoded as version 1.
//! A version-1 state whose encoding happens to start with the magic is decoded as such too
//! when the headed reading fails.
//!
//! Bump a machine's version whenever its serialized state changes shape.

use serde::{de::DeserializeOwned, Serialize};

use replication::SnapshotError;

/// Which machine a snapshot belongs to, and the version of its state's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Four bytes naming the machine, first in every snapshot.
    pub magic: [u8; 4],
    /// The layout version this build writes and reads.
    pub version: u16,
}

/// The layout version of snapshots written before the header existed.
pub const UNHEADED_VERSION: u16 = 1;

/// Serializes `state` behind `format`'s header. Equal states give equal bytes.
pub fn encode<T: Serialize>(format: Format, state: &T) -> Vec<u8> {
    let header = || {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(&format.magic);
        out.extend_from_slice(&format.version.to_le_bytes());
        out
    };
    // Serializing plain maps, numbers and strings into a Vec cannot fail; were it ever to,
    // the header alone is written and `decode` refuses it rather than restoring nothing.
    postcard::to_extend(state, header()).unwrap_or_else(|_| header())
}

/// Reads a snapshot made by [`encode`] with the same `format` (or an unheaded one of version
/// [`UNHEADED_VERSION`], when that is `format.version`).
pub fn decode<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, SnapshotError> {
    let magic = String::from_utf8_lossy(&format.magic).into_owned();
    // A snapshot written before headers existed, if this build's layout is still that one.
    let unheaded = || -> Result<T, String> {
        if format.version != UNHEADED_VERSION {
            return Err(format!(
                "a snapshot without a format header (version {UNHEADED_VERSION}); this build \
                 reads version {}",
                format.version
            ));
        }
        whole(bytes).map_err(|e| {
            format!(
                "not a {magic} snapshot: no header, nor a version-{UNHEADED_VERSION} state ({e})"
            )
        })
    };
    let header = bytes
        .strip_prefix(&format.magic[..])
        .and_then(|body| Some((body.get(..2)?, &body[2..])));
    let Some((version, body)) = header else {
        return unheaded().map_err(SnapshotError);
    };
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version != format.version {
        // Not a header after all, if the whole reads as an unheaded state.
        return unheaded().map_err(|_| {
            SnapshotError(format!(
                "{magic} snapshot format version {version}; this build reads version {} \
                 (run the build that wrote it)",
                format.version
            ))
        });
    }
    whole(body).or_else(|e| {
        unheaded().map_err(|_| SnapshotError(format!("{magic} version {version} snapshot: {e}")))
    })
}

/// Decodes `bytes` as one `T` and nothing after it: postcard alone would ignore trailing
/// bytes, so a snapshot of something else could pass for a short state.
fn whole<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((state, [])) => Ok(state),
        Ok((_, rest)) => Err(format!("{} bytes left over after the state", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        a: u64,
        b: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        a: u64,
        b: String,
        c: Vec<u32>,
    }

    const F1: Format = Format {
        magic: *b"TEST",
        version: 1,
    };
    const F2: Format = Format {
        magic: *b"TEST",
        version: 2,
    };

    fn v1() -> V1 {
        V1 {
            a: 7,
            b: "x".into(),
        }
    }

    #[test]
    fn round_trips_behind_its_header() {
        let bytes = encode(F1, &v1());
        assert_eq!(&bytes[..6], b"TEST\x01\x00");
        assert_eq!(decode::<V1>(F1, &bytes).unwrap(), v1());
        assert_eq!(encode(F1, &v1()), bytes, "deterministic");
    }

    #[test]
    fn reads_a_snapshot_written_before_the_header() {
        let old = postcard::to_stdvec(&v1()).unwrap();
        assert_eq!(decode::<V1>(F1, &old).unwrap(), v1());
    }

    #[test]
    fn refuses_another_version_saying_which() {
        let newer = encode(
            F2,
            &V2 {
                a: 1,
                b: "y".into(),
                c: vec![3],
            },
        );
        let e = decode::<V1>(F1, &newer).unwrap_err();
        assert!(
            e.0.contains("version 2") && e.0.contains("reads version 1"),
            "{e}"
        );
        let older = encode(F1, &v1());
        let e = decode::<V2>(F2, &older).unwrap_err();
        assert!(
            e.0.contains("version 1") && e.0.contains("reads version 2"),
            "{e}"
        );
        let unheaded = postcard::to_stdvec(&v1()).unwrap();
        let e = decode::<V2>(F2, &unheaded).unwrap_err();
        assert!(e.0.contains("without a format header"), "{e}");
    }

    #[test]
    fn refuses_garbage_and_truncation_without_panicking() {
        for bytes in [
            &b""[..],
            b"TE",
            b"TEST",
            b"TEST\x01",
            b"TEST\x01\x00\xff\xff\xff",
        ] {
            assert!(decode::<V1>(F1, bytes).is_err(), "{bytes:?}");
        }
        let whole = encode(F1, &v1());
        for cut in 0..whole.len() {
            assert!(decode::<V1>(F1, &whole[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn an_unheaded_state_that_starts_like_the_magic_still_reads() {
        // A version-1 state whose encoding begins with the magic bytes.
        // `a` = 'T', then the string's length (69) is 'E' and the string starts "ST", then
        // what reads as version 1 and a body that does not decode.
        let s = V1 {
            a: u64::from(b'T'),
            b: format!("ST\u{1}\u{0}{}", "x".repeat(65)),
        };
        let old = postcard::to_stdvec(&s).unwrap();
        assert!(old.starts_with(b"TEST\x01\x00"));
        assert_eq!(decode::<V1>(F1, &old).unwrap(), s);
    }
}
