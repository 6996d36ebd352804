//! A few short strings in one allocation, to keep open state small.

use serde::{Deserialize, Serialize};

/// Strings packed as `u16` length + bytes. Longer strings are cut at 65 535 bytes, which
/// the wire limits already rule out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed(Box<[u8]>);

impl Packed {
    pub fn new<'a>(parts: impl IntoIterator<Item = &'a str> + Clone) -> Packed {
        let len: usize = parts
            .clone()
            .into_iter()
            .map(|p| 2 + p.len().min(u16::MAX as usize))
            .sum();
        let mut buf = Vec::with_capacity(len);
        for p in parts {
            let bytes = &p.as_bytes()[..p.len().min(u16::MAX as usize)];
            buf.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
        Packed(buf.into_boxed_slice())
    }

    /// The `index`th string, or "" past the end.
    pub fn get(&self, index: usize) -> &str {
        let mut at = 0;
        let mut i = 0;
        while at + 2 <= self.0.len() {
            let len = u16::from_le_bytes([self.0[at], self.0[at + 1]]) as usize;
            let start = at + 2;
            if i == index {
                return std::str::from_utf8(&self.0[start..start + len]).unwrap_or("");
            }
            at = start + len;
            i += 1;
        }
        ""
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn packs_and_reads_back() {
        let p = super::Packed::new(["a", "", "héllo"]);
        assert_eq!(
            (p.get(0), p.get(1), p.get(2), p.get(3)),
            ("a", "", "héllo", "")
        );
    }
}
