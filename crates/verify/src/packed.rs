//! A few short strings in one allocation, to keep open state small and cheap to copy.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Strings packed as `u16` length + bytes, shared behind an `Arc` so that copying the
/// engine's state for a checkpoint copies no text.
///
/// Invariant: every part is valid UTF-8. `new` builds parts from `&str` cut on a char
/// boundary, and deserialization checks each part, so `get` need not check again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed(Arc<[u8]>);

/// Longest part kept, in bytes (the wire limits keep fields far shorter).
const PART_BYTES_MAX: usize = u16::MAX as usize;

fn cut(p: &str) -> &str {
    if p.len() <= PART_BYTES_MAX {
        return p;
    }
    let mut end = PART_BYTES_MAX;
    while !p.is_char_boundary(end) {
        end -= 1;
    }
    &p[..end]
}

impl Packed {
    pub fn new<'a>(parts: impl IntoIterator<Item = &'a str> + Clone) -> Packed {
        let len: usize = parts.clone().into_iter().map(|p| 2 + cut(p).len()).sum();
        // Written straight into the shared allocation: one allocation per entry.
        let mut arc = Arc::<[u8]>::new_uninit_slice(len);
        let dst = Arc::get_mut(&mut arc).expect("a new Arc is unique");
        let mut at = 0;
        for p in parts {
            let bytes = cut(p).as_bytes();
            let end = at + 2 + bytes.len();
            assert!(end <= len, "parts yield the same strings twice");
            dst[at..at + 2].write_copy_of_slice(&(bytes.len() as u16).to_le_bytes());
            dst[at + 2..end].write_copy_of_slice(bytes);
            at = end;
        }
        assert_eq!(at, len, "parts yield the same strings twice");
        // SAFETY: the loop above wrote all `len` bytes (checked just before).
        Packed(unsafe { arc.assume_init() })
    }

    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let buf = &self.0;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at + 2 > buf.len() {
                return None;
            }
            let len = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
            let start = at + 2;
            let end = (start + len).min(buf.len());
            at = end;
            Some(&buf[start..end])
        })
    }

    /// The `index`th string, or "" past the end.
    pub fn get(&self, index: usize) -> &str {
        match self.parts().nth(index) {
            // SAFETY: every part is valid UTF-8 (the type's invariant, see above).
            Some(bytes) => unsafe { std::str::from_utf8_unchecked(bytes) },
            None => "",
        }
    }
}

impl Serialize for Packed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Packed, D::Error> {
        let buf = serde_bytes::ByteBuf::deserialize(d)?.into_vec();
        let mut at = 0;
        while at < buf.len() {
            let end = buf
                .get(at..at + 2)
                .map(|l| at + 2 + u16::from_le_bytes([l[0], l[1]]) as usize)
                .filter(|&end| end <= buf.len())
                .ok_or_else(|| serde::de::Error::custom("packed strings are cut short"))?;
            std::str::from_utf8(&buf[at + 2..end]).map_err(serde::de::Error::custom)?;
            at = end;
        }
        Ok(Packed(buf.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::Packed;

    #[test]
    fn packs_and_reads_back() {
        let p = Packed::new(["a", "", "héllo"]);
        assert_eq!(
            (p.get(0), p.get(1), p.get(2), p.get(3)),
            ("a", "", "héllo", "")
        );
        let bytes = postcard::to_allocvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<Packed>(&bytes).unwrap(), p);
    }

    #[test]
    fn refuses_damaged_bytes() {
        let bad = postcard::to_allocvec(&serde_bytes::Bytes::new(&[2, 0, 0xff, 0xfe])).unwrap();
        assert!(postcard::from_bytes::<Packed>(&bad).is_err());
        let short = postcard::to_allocvec(&serde_bytes::Bytes::new(&[9, 0, b'a'])).unwrap();
        assert!(postcard::from_bytes::<Packed>(&short).is_err());
    }

    #[test]
    fn long_parts_are_cut_on_a_char_boundary() {
        let long = "é".repeat(40_000);
        let p = Packed::new([long.as_str(), "next"]);
        assert!(p.get(0).len() <= u16::MAX as usize && p.get(0).chars().all(|c| c == 'é'));
        assert_eq!(p.get(1), "next");
    }
}
