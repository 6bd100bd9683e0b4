//! Recognises the initramfs formats Linux unpacks, so that a file that is none of them
//! (a corrupt or wrong file) is refused before the guest runs instead of making the
//! guest kernel panic with "Initramfs unpacking failed" and reboot.
//!
//! Linux's `unpack_to_rootfs` accepts a sequence of archives, each a `newc` cpio
//! (`070701`, or `070702` with checksums) or a compressed one, with zero bytes of
//! padding allowed in front of and between them. This module checks the first archive's
//! magic after any leading zeros; it does not decompress or walk the archive.

/// The format of the first archive of an initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitrdFormat {
    /// Uncompressed `newc` cpio (`070701` / `070702`).
    Cpio,
    /// gzip.
    Gzip,
    /// bzip2.
    Bzip2,
    /// LZMA (legacy `.lzma`).
    Lzma,
    /// xz.
    Xz,
    /// LZO (`lzop`).
    Lzo,
    /// LZ4 legacy frame (what the kernel's `lz4 -l` build uses).
    Lz4,
    /// Zstandard.
    Zstd,
}

/// Magic numbers, longest first where prefixes overlap.
const MAGICS: [(&[u8], InitrdFormat); 9] = [
    (b"070701", InitrdFormat::Cpio),
    (b"070702", InitrdFormat::Cpio),
    (&[0x1f, 0x8b], InitrdFormat::Gzip),
    (&[0x1f, 0x9e], InitrdFormat::Gzip), // old gzip
    (b"BZh", InitrdFormat::Bzip2),
    (&[0x5d, 0x00, 0x00], InitrdFormat::Lzma),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], InitrdFormat::Xz),
    (
        &[0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a],
        InitrdFormat::Lzo,
    ),
    (&[0x02, 0x21, 0x4c, 0x18], InitrdFormat::Lz4),
];

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The format of the first archive in `head` (the start of the file), skipping leading
/// zero bytes; `None` when `head` starts with no known magic (or is all zeros).
pub fn identify(head: &[u8]) -> Option<InitrdFormat> {
    let start = head.iter().position(|&b| b != 0)?;
    let rest = &head[start..];
    if rest.starts_with(&ZSTD_MAGIC) {
        return Some(InitrdFormat::Zstd);
    }
    MAGICS
        .iter()
        .find(|(magic, _)| rest.starts_with(magic))
        .map(|&(_, format)| format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_formats_are_recognised() {
        assert_eq!(identify(b"070701000000"), Some(InitrdFormat::Cpio));
        assert_eq!(identify(b"070702000000"), Some(InitrdFormat::Cpio));
        assert_eq!(identify(&[0x1f, 0x8b, 8, 0]), Some(InitrdFormat::Gzip));
        assert_eq!(identify(b"BZh91AY"), Some(InitrdFormat::Bzip2));
        assert_eq!(identify(&[0x5d, 0, 0, 0x80]), Some(InitrdFormat::Lzma));
        assert_eq!(
            identify(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(InitrdFormat::Xz)
        );
        assert_eq!(
            identify(&[0x89, b'L', b'Z', b'O', 0, 0x0d, 0x0a, 0x1a, 0x0a]),
            Some(InitrdFormat::Lzo)
        );
        assert_eq!(
            identify(&[0x02, 0x21, 0x4c, 0x18, 1]),
            Some(InitrdFormat::Lz4)
        );
        assert_eq!(
            identify(&[0x28, 0xb5, 0x2f, 0xfd, 1]),
            Some(InitrdFormat::Zstd)
        );
    }

    #[test]
    fn leading_zero_padding_is_skipped() {
        let mut head = vec![0u8; 512];
        head.extend_from_slice(b"070701");
        assert_eq!(identify(&head), Some(InitrdFormat::Cpio));
    }

    #[test]
    fn anything_else_is_unknown() {
        assert_eq!(identify(&[]), None);
        assert_eq!(identify(&[0; 64]), None);
        assert_eq!(identify(b"07070"), None, "a cut-off magic is not a magic");
        assert_eq!(identify(b"\x7fELF"), None);
        assert_eq!(identify(&[1u8; 64]), None);
    }
}
