//! The on-disk format of `checkpoints/<key>/state.bin`: a header that lets a resume trust the
//! bytes it hands back to a stage. A bit flip or a truncated write, or a file copied in from
//! another instance, would otherwise be resumed from silently and commit different bytes under
//! the same cache key.
//!
//! ```text
//! magic "FP2ECKPT" | format version u32 LE | key length u32 LE | key (UTF-8)
//! | payload length u64 LE | blake3(payload) 32 bytes | payload
//! ```

const MAGIC: &[u8; 8] = b"FP2ECKPT";
/// Bump when the layout above changes; older files are then discarded, not misread.
pub const FORMAT_VERSION: u32 = 1;

/// Wraps a stage's state for the instance `key`.
pub fn encode(key: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 64 + key.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(payload).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a checkpoint written for `key`, or why it cannot be trusted.
pub fn decode<'a>(key: &str, bytes: &'a [u8]) -> Result<&'a [u8], String> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a checkpoint (bad magic)".into());
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "checkpoint format {version}, this binary reads {FORMAT_VERSION}"
        ));
    }
    let key_len = r.u32()? as usize;
    let stored_key = r.take(key_len)?;
    if stored_key != key.as_bytes() {
        return Err(format!(
            "written for instance {}, not {key}",
            String::from_utf8_lossy(stored_key)
        ));
    }
    let len = r.u64()?;
    let digest: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
    let payload = &bytes[r.pos..];
    if payload.len() as u64 != len {
        return Err(format!(
            "payload is {} bytes, header says {len}",
            payload.len()
        ));
    }
    if blake3::hash(payload) != blake3::Hash::from(digest) {
        return Err("payload digest mismatch".into());
    }
    Ok(payload)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated header ({} bytes)", self.bytes.len()))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let b = encode("k1", b"state bytes");
        assert_eq!(decode("k1", &b).unwrap(), b"state bytes");
        assert_eq!(decode("k1", &encode("k1", b"")).unwrap(), b"");
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let b = encode("k1", b"some state");
        for i in 0..b.len() * 8 {
            let mut d = b.clone();
            d[i / 8] ^= 1 << (i % 8);
            assert!(decode("k1", &d).is_err(), "flip of bit {i} accepted");
        }
    }

    #[test]
    fn truncation_another_key_and_old_formats_are_refused() {
        let b = encode("k1", b"some state");
        for n in 0..b.len() {
            assert!(decode("k1", &b[..n]).is_err(), "truncated to {n} accepted");
        }
        assert!(decode("k2", &b)
            .unwrap_err()
            .contains("written for instance k1"));
        // A pre-header checkpoint (raw JSON state) is not misread.
        assert!(decode("k1", br#"{"next_round":3}"#).is_err());
        let mut v = b.clone();
        v[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(decode("k1", &v).unwrap_err().contains("checkpoint format"));
    }
}
