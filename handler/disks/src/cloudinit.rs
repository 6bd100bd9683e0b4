//! cloud-init NoCloud seed disks, built in pure Rust.
//!
//! The seed is a raw disk image holding a FAT filesystem (FAT12 for small seeds) whose
//! volume label is `cidata`; cloud-init's NoCloud data source finds it by that label and
//! reads `user-data`, `meta-data` and, when present, `network-config` from its root
//! directory. The filesystem is written with the `fatfs` crate, so no `mkfs` tool is needed
//! on the node. Timestamps are the FAT epoch and the volume id is derived from the instance
//! id, so the same inputs always give the same image.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

use base64::Engine;
use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};

use crate::fsutil::{self, Publish};

/// The volume label cloud-init looks for.
pub const LABEL: &str = "cidata";
/// File name of the user data.
pub const USER_DATA: &str = "user-data";
/// File name of the instance metadata.
pub const META_DATA: &str = "meta-data";
/// File name of the network configuration.
pub const NETWORK_CONFIG: &str = "network-config";

const MIB: u64 = 1 << 20;
/// Existing seeds larger than this are rebuilt instead of compared in memory.
const MAX_COMPARE_BYTES: u64 = 64 * MIB;

/// Errors from building a NoCloud seed.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// Both `userData` and `userDataBase64` were given.
    #[error("userData and userDataBase64 are both set; give only one")]
    BothUserData,
    /// `userDataBase64` is not valid base64.
    #[error("userDataBase64 is not valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The filesystem holding the seed is full.
    #[error("no space left on the filesystem while writing the seed image")]
    NoSpace,
    /// Writing the seed image failed.
    #[error("cannot write the seed image: {0}")]
    Write(#[source] io::Error),
}

/// The contents of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudSeed {
    /// `user-data` (may be empty; cloud-init requires the file to exist).
    pub user_data: Vec<u8>,
    /// `meta-data`: YAML with `instance-id` and `local-hostname`.
    pub meta_data: Vec<u8>,
    /// `network-config`, written only when set.
    pub network_config: Option<Vec<u8>>,
    /// FAT volume serial number, derived from the instance id.
    volume_id: u32,
}

impl NoCloudSeed {
    /// Builds the seed for a VM. `user_data` and `user_data_base64` are exclusive; with
    /// neither, `user-data` is empty.
    pub fn new(
        instance_id: &str,
        hostname: &str,
        user_data: Option<&str>,
        user_data_base64: Option<&str>,
        network_config: Option<&str>,
    ) -> Result<Self, CloudInitError> {
        let user_data = match (user_data, user_data_base64) {
            (Some(_), Some(_)) => return Err(CloudInitError::BothUserData),
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, Some(encoded)) => {
                // Manifests often wrap long base64 over several lines.
                let compact: Vec<u8> = encoded
                    .bytes()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(CloudInitError::Base64)?
            }
            (None, None) => Vec::new(),
        };
        // JSON strings are valid YAML scalars, so any uid/name is quoted safely.
        let meta_data = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            json_string(instance_id),
            json_string(hostname)
        )
        .into_bytes();
        Ok(NoCloudSeed {
            user_data,
            meta_data,
            network_config: network_config.map(|n| n.as_bytes().to_vec()),
            volume_id: fnv1a32(instance_id.as_bytes()),
        })
    }

    /// The files of the seed, in the order they are written.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![
            (USER_DATA, self.user_data.as_slice()),
            (META_DATA, self.meta_data.as_slice()),
        ];
        if let Some(net) = &self.network_config {
            files.push((NETWORK_CONFIG, net.as_slice()));
        }
        files
    }

    /// Image size: the contents plus room for FAT metadata and cluster slack, rounded up
    /// to a MiB, at least 1 MiB.
    pub fn image_size(&self) -> u64 {
        let content: u64 = self.files().iter().map(|(_, d)| d.len() as u64).sum();
        let needed = content + content / 8 + MIB / 2;
        needed.div_ceil(MIB).max(1) * MIB
    }

    /// Formats `disk` (positioned anywhere; resized to [`Self::image_size`]) and writes the
    /// seed files into it.
    pub fn write_image(&self, disk: &mut File) -> io::Result<()> {
        disk.set_len(self.image_size())?;
        self.write_fat(disk)
    }

    fn write_fat<D: Read + Write + Seek>(&self, disk: &mut D) -> io::Result<()> {
        disk.seek(SeekFrom::Start(0))?;
        let mut label = [b' '; 11];
        label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
        fatfs::format_volume(
            &mut *disk,
            FormatVolumeOptions::new()
                .volume_label(label)
                .volume_id(self.volume_id),
        )?;
        disk.seek(SeekFrom::Start(0))?;
        let fs = FileSystem::new(&mut *disk, FsOptions::new())?;
        {
            let root = fs.root_dir();
            for (name, data) in self.files() {
                let mut file = root.create_file(name)?;
                file.write_all(data)?;
                file.flush()?;
            }
        }
        fs.unmount()?;
        disk.flush()
    }

    /// True if the seed image at `path` holds exactly this seed (label and files).
    /// Any read or parse problem counts as "does not match".
    pub fn matches_image(&self, path: &Path) -> bool {
        match self.compare(path) {
            Ok(same) => same,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "existing seed unreadable");
                false
            }
        }
    }

    fn compare(&self, path: &Path) -> io::Result<bool> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if len != self.image_size() || len > MAX_COMPARE_BYTES {
            return Ok(false);
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let fs = FileSystem::new(Cursor::new(bytes), FsOptions::new())?;
        if fs.volume_label() != LABEL || fs.volume_id() != self.volume_id {
            return Ok(false);
        }
        let expected = self.files();
        let root = fs.root_dir();
        let mut seen = 0;
        for entry in root.iter() {
            let entry = entry?;
            if !entry.is_file() {
                continue;
            }
            let name = entry.file_name();
            let Some((_, want)) = expected.iter().find(|(n, _)| *n == name) else {
                return Ok(false);
            };
            let mut got = Vec::new();
            entry.to_file().read_to_end(&mut got)?;
            if got != *want {
                return Ok(false);
            }
            seen += 1;
        }
        Ok(seen == expected.len())
    }
}

/// Writes the seed image to `path` unless an identical one is already there; returns true
/// if a new image was written. The image is built under a temporary name and renamed into
/// place, so a full filesystem leaves the previous file (or none) untouched.
pub fn write_seed(path: &Path, seed: &NoCloudSeed) -> Result<bool, CloudInitError> {
    if seed.matches_image(path) {
        return Ok(false);
    }
    fsutil::create_atomically(path, Publish::Replace, |file| seed.write_image(file)).map_err(
        |e| {
            if fsutil::is_no_space(&e) {
                CloudInitError::NoSpace
            } else {
                CloudInitError::Write(e)
            }
        },
    )?;
    Ok(true)
}

fn json_string(s: &str) -> String {
    // Serialising a &str cannot fail; fall back to a debug quote just in case.
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn seed(user: Option<&str>, net: Option<&str>) -> NoCloudSeed {
        NoCloudSeed::new("uid-1234", "vm1", user, None, net).unwrap()
    }

    fn read_back(path: &Path) -> (String, Vec<(String, Vec<u8>)>) {
        let bytes = std::fs::read(path).unwrap();
        let fs = FileSystem::new(Cursor::new(bytes), FsOptions::new()).unwrap();
        let label = fs
            .read_volume_label_from_root_dir()
            .unwrap()
            .unwrap_or_default();
        let mut files = Vec::new();
        for e in fs.root_dir().iter() {
            let e = e.unwrap();
            if e.is_file() {
                let mut data = Vec::new();
                e.to_file().read_to_end(&mut data).unwrap();
                files.push((e.file_name(), data));
            }
        }
        files.sort();
        (label, files)
    }

    #[test]
    fn seed_has_label_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let s = seed(Some("#cloud-config\nhostname: x\n"), Some("version: 2\n"));
        assert!(write_seed(&path, &s).unwrap());
        let (label, files) = read_back(&path);
        assert_eq!(label, "cidata");
        assert_eq!(
            files,
            vec![
                (
                    META_DATA.to_owned(),
                    b"instance-id: \"uid-1234\"\nlocal-hostname: \"vm1\"\n".to_vec()
                ),
                (NETWORK_CONFIG.to_owned(), b"version: 2\n".to_vec()),
                (
                    USER_DATA.to_owned(),
                    b"#cloud-config\nhostname: x\n".to_vec()
                ),
            ]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB);
    }

    #[test]
    fn without_user_data_an_empty_user_data_is_written_and_no_network_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed(&path, &seed(None, None)).unwrap();
        let (_, files) = read_back(&path);
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [META_DATA, USER_DATA]);
        assert!(files[1].1.is_empty());
    }

    #[test]
    fn base64_user_data_is_decoded_including_wrapped_lines() {
        let s = NoCloudSeed::new("u", "h", None, Some("I2Nsb3Vk\nLWNvbmZpZwo="), None).unwrap();
        assert_eq!(s.user_data, b"#cloud-config\n");
        let err = NoCloudSeed::new("u", "h", None, Some("!!!"), None).unwrap_err();
        assert!(matches!(err, CloudInitError::Base64(_)));
        let err = NoCloudSeed::new("u", "h", Some("a"), Some("YQ=="), None).unwrap_err();
        assert!(matches!(err, CloudInitError::BothUserData));
    }

    #[test]
    fn metadata_is_quoted_yaml() {
        let s = NoCloudSeed::new("id: \"x\"", "h", None, None, None).unwrap();
        assert_eq!(
            String::from_utf8(s.meta_data).unwrap(),
            "instance-id: \"id: \\\"x\\\"\"\nlocal-hostname: \"h\"\n"
        );
    }

    #[test]
    fn identical_seed_is_reused_and_changed_seed_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let s = seed(Some("a"), None);
        assert!(write_seed(&path, &s).unwrap());
        let first = std::fs::read(&path).unwrap();
        assert!(!write_seed(&path, &s).unwrap(), "identical seed is kept");
        let s2 = seed(Some("b"), None);
        assert!(write_seed(&path, &s2).unwrap());
        assert_ne!(std::fs::read(&path).unwrap(), first);
        assert_eq!(read_back(&path).1[1].1, b"b");
        // Same inputs → same bytes.
        let other = dir.path().join("again.img");
        write_seed(&other, &s2).unwrap();
        assert_eq!(
            std::fs::read(&other).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }

    #[test]
    fn large_user_data_fits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let big: String = "#cloud-config\n".to_owned() + &"x".repeat(5 * MIB as usize);
        let s = seed(Some(&big), None);
        write_seed(&path, &s).unwrap();
        let (_, files) = read_back(&path);
        assert_eq!(files[1].1.len(), big.len());
        assert!(s.matches_image(&path));
    }

    /// Cross-check with the Linux tools: fsck.fat, blkid and mtype read the image.
    #[test]
    #[ignore = "needs fsck.fat, blkid and mtype (Debian packages dosfstools, util-linux, mtools)"]
    fn fsck_and_blkid_accept_the_seed() {
        ironvisor_prereq::tool("fsck.fat", "dosfstools");
        ironvisor_prereq::tool("blkid", "util-linux");
        ironvisor_prereq::tool("mtype", "mtools");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed(&path, &seed(Some("#cloud-config\n"), Some("version: 2\n"))).unwrap();
        match Command::new("fsck.fat").arg("-n").arg(&path).output() {
            Ok(out) => assert!(
                out.status.success(),
                "fsck.fat: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("fsck.fat: {e} (dosfstools; scripts/install-deps.sh installs it)"),
        }
        match Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&path)
            .output()
        {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains("LABEL=cidata"), "blkid: {text}");
                assert!(text.contains("TYPE=vfat"), "blkid: {text}");
            }
            Err(e) => panic!("blkid: {e} (util-linux; scripts/install-deps.sh installs it)"),
        }
        match Command::new("mtype")
            .arg("-i")
            .arg(&path)
            .arg("::meta-data")
            .output()
        {
            Ok(out) => assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "instance-id: \"uid-1234\"\nlocal-hostname: \"vm1\"\n",
                "mtype: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("mtype: {e} (mtools; scripts/install-deps.sh installs it)"),
        }
    }
}
