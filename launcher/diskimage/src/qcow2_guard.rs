//! Checks on a qcow2 header that imago 0.2.6 does not make before it trips over the data.
//!
//! imago indexes every 48-byte entry of a feature name table header extension as if it
//! were whole: a table whose length is 1 more than a multiple of 48 (with a known feature
//! type in its last byte) panics in `HeaderExtension::deserialize`, and with
//! `panic = "abort"` a hostile containerDisk would abort the node agent that inspects it.
//! The qcow2 specification makes the table a whole number of entries, so anything else
//! is refused here, before imago parses the header.
//!
//! An image with an **external data file** is refused too: its guest data lives in a host
//! file named in the header, which imago opens read-write when the launcher opens the
//! image's overlay. An untrusted containerDisk could thus hand its guest any host file.
//! The only file an image may name is its backing file, which the node agent checks.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Header extension type of the feature name table.
const FEATURE_NAME_TABLE: u32 = 0x6803_f857;
/// Bytes per feature name table entry.
const FEATURE_ENTRY_LEN: u32 = 48;
/// Byte offset of `header_length` in a version 3 header.
const HEADER_LENGTH_OFFSET: u64 = 100;
/// Byte offset of `incompatible_features` in a version 3 header.
const INCOMPATIBLE_FEATURES_OFFSET: u64 = 72;
/// `incompatible_features` bit 2: the guest data is in an external data file.
const EXTERNAL_DATA_FILE_BIT: u32 = 1 << 2;
/// Header extension type naming the external data file.
const DATA_FILE_NAME: u32 = 0x4441_5441;

/// Refuses a header whose feature name table is not a whole number of entries. Anything
/// else that is wrong (short file, bad version, extensions beyond the first cluster) is
/// left for imago to report.
pub(crate) fn check_header_extensions(file: &File) -> io::Result<()> {
    let Some(version) = read_u32(file, 4)? else {
        return Ok(());
    };
    let Some(cluster_bits) = read_u32(file, 20)? else {
        return Ok(());
    };
    if version < 3 {
        return Ok(());
    }
    let Some(cluster_size) = 1u64.checked_shl(cluster_bits) else {
        return Ok(());
    };
    // The low half of the big-endian u64 holds the bits the specification defines.
    let incompatible = read_u32(file, INCOMPATIBLE_FEATURES_OFFSET + 4)?.unwrap_or(0);
    if incompatible & EXTERNAL_DATA_FILE_BIT != 0 {
        return Err(external_data_file());
    }
    let Some(header_length) = read_u32(file, HEADER_LENGTH_OFFSET)? else {
        return Ok(());
    };
    // The same walk as imago's: 8-byte extension headers, data padded to 8 bytes, all
    // inside the first cluster, up to the end marker (type 0).
    let mut offset = u64::from(header_length);
    while offset + 8 <= cluster_size {
        let (Some(kind), Some(len)) = (read_u32(file, offset)?, read_u32(file, offset + 4)?) else {
            return Ok(());
        };
        offset += 8;
        if kind == 0 || offset + u64::from(len) > cluster_size {
            return Ok(());
        }
        if kind == DATA_FILE_NAME {
            return Err(external_data_file());
        }
        if kind == FEATURE_NAME_TABLE && len % FEATURE_ENTRY_LEN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "feature name table of {len} bytes is not a whole number of \
                     {FEATURE_ENTRY_LEN}-byte entries"
                ),
            ));
        }
        offset += u64::from(len).next_multiple_of(8);
    }
    Ok(())
}

fn external_data_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the image keeps its data in an external data file; only a backing file may be named",
    )
}

/// The big-endian u32 at `offset`; `None` past the end of the file.
fn read_u32(file: &File, offset: u64) -> io::Result<Option<u32>> {
    let mut bytes = [0u8; 4];
    match file.read_exact_at(&mut bytes, offset) {
        Ok(()) => Ok(Some(u32::from_be_bytes(bytes))),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A version 3 header (cluster_bits 16, header_length 104) followed by `extensions`.
    fn image(extensions: &[u8]) -> tempfile::NamedTempFile {
        let mut header = vec![0u8; 104];
        header[..4].copy_from_slice(&crate::QCOW2_MAGIC);
        header[4..8].copy_from_slice(&3u32.to_be_bytes());
        header[20..24].copy_from_slice(&16u32.to_be_bytes());
        header[100..104].copy_from_slice(&104u32.to_be_bytes());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&header).unwrap();
        file.write_all(extensions).unwrap();
        file.write_all(&[0u8; 8]).unwrap();
        file
    }

    fn extension(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(8), 0);
        out
    }

    #[test]
    fn a_feature_name_table_with_a_partial_entry_is_refused() {
        // Found by the qcow2_image fuzz target: imago 0.2.6 panics on this one.
        let mut table = vec![0u8; 49];
        table[48] = 1;
        let file = image(&extension(FEATURE_NAME_TABLE, &table));
        let err = check_header_extensions(file.as_file()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // And `inspect` refuses it instead of panicking.
        assert!(crate::inspect(file.path()).is_err());
    }

    #[test]
    fn whole_tables_and_other_extensions_pass() {
        let mut extensions = extension(0xe279_2aca, b"raw");
        extensions.extend(extension(FEATURE_NAME_TABLE, &[0u8; 96]));
        let file = image(&extensions);
        check_header_extensions(file.as_file()).unwrap();
        let file = image(&[]);
        check_header_extensions(file.as_file()).unwrap();
    }

    #[test]
    fn an_external_data_file_is_refused_by_flag_or_by_name() {
        // The incompatible feature bit alone.
        let file = image(&[]);
        file.as_file()
            .write_all_at(
                &u64::from(EXTERNAL_DATA_FILE_BIT).to_be_bytes(),
                INCOMPATIBLE_FEATURES_OFFSET,
            )
            .unwrap();
        let err = check_header_extensions(file.as_file()).unwrap_err();
        assert!(err.to_string().contains("external data file"), "{err}");
        // The extension naming a host file.
        let file = image(&extension(DATA_FILE_NAME, b"/etc/shadow"));
        assert!(check_header_extensions(file.as_file()).is_err());
        let err = crate::inspect(file.path()).unwrap_err();
        assert!(err.to_string().contains("external data file"), "{err}");
    }
}
