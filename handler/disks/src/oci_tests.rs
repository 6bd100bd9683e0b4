//! Tests of the OCI containerDisk modules on small layouts and archives built here.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::oci_cache::{OciCache, OciCacheError};
use crate::oci_layers::OciLayerError;
use crate::oci_layout::{
    hex, OciLayoutError, OciReference, Transport, MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR,
    MEDIA_MANIFEST, REF_NAME_ANNOTATION,
};
use crate::DiskFormat;

/// One tar entry of a test layer.
enum E {
    File(&'static str, Vec<u8>),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
    /// A name written as is (absolute, with `..`), bypassing the tar crate's checks.
    Raw(&'static str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(0);
        match entry {
            E::File(name, data) => {
                header.set_size(data.len() as u64);
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, name, &data[..]).unwrap();
            }
            E::Dir(name) => {
                header.set_size(0);
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, name, &[][..]).unwrap();
            }
            E::Symlink(name, target) => {
                header.set_size(0);
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, name, target).unwrap();
            }
            E::Raw(name) => {
                header.set_size(1);
                header.set_entry_type(tar::EntryType::Regular);
                let field = &mut header.as_old_mut().name;
                field[..name.len()].copy_from_slice(name.as_bytes());
                header.set_cksum();
                builder.append(&header, &b"x"[..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// An OCI image layout being built: blobs and index entries.
#[derive(Default, Clone)]
struct Layout {
    blobs: Vec<(String, Vec<u8>)>,
    manifests: Vec<serde_json::Value>,
}

impl Layout {
    fn blob(&mut self, data: Vec<u8>) -> serde_json::Value {
        let hex = sha(&data);
        let descriptor = json!({"digest": format!("sha256:{hex}"), "size": data.len()});
        if !self.blobs.iter().any(|(h, _)| *h == hex) {
            self.blobs.push((hex, data));
        }
        descriptor
    }

    fn descriptor(&mut self, media_type: &str, data: Vec<u8>) -> serde_json::Value {
        let mut d = self.blob(data);
        d["mediaType"] = json!(media_type);
        d
    }

    /// Adds an image of `layers` (data, media type), tagged `tag`; returns its manifest hex.
    fn image(&mut self, layers: Vec<(Vec<u8>, &str)>, tag: Option<&str>) -> String {
        let config = self.descriptor(
            MEDIA_CONFIG,
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec(),
        );
        let layers: Vec<_> = layers
            .into_iter()
            .map(|(data, media)| self.descriptor(media, data))
            .collect();
        let manifest = json!({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config, "layers": layers});
        let mut d = self.descriptor(MEDIA_MANIFEST, serde_json::to_vec(&manifest).unwrap());
        if let Some(tag) = tag {
            d["annotations"] = json!({REF_NAME_ANNOTATION: tag});
        }
        self.manifests.push(d.clone());
        d["digest"].as_str().unwrap()[7..].to_owned()
    }

    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.manifests});
        let mut files = vec![
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_owned(), serde_json::to_vec(&index).unwrap()),
        ];
        for (hex, data) in &self.blobs {
            files.push((format!("blobs/sha256/{hex}"), data.clone()));
        }
        files
    }

    fn write_dir(&self, dir: &Path) {
        for (name, data) in self.files() {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
    }

    fn archive(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in self.files() {
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, name, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }
}

/// A raw disk of 1 MiB: a pattern at the start and the end, zeros between.
fn raw_disk() -> Vec<u8> {
    let mut disk = vec![0u8; 1 << 20];
    disk[..4096]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 251) as u8 + 1);
    disk[(1 << 20) - 512..].fill(0xab);
    disk
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cache: OciCache,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let cache = OciCache::new(root.join("cache"));
    Fixture {
        _tmp: tmp,
        root,
        cache,
    }
}

impl Fixture {
    fn archive(&self, name: &str, layout: &Layout) -> String {
        let path = self.root.join(name);
        fs::write(&path, layout.archive()).unwrap();
        format!("oci-archive:{}", path.display())
    }

    fn dir(&self, name: &str, layout: &Layout) -> String {
        let path = self.root.join(name);
        layout.write_dir(&path);
        format!("oci:{}", path.display())
    }

    /// The cache directory's entries, scratch included.
    fn cache_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.cache.dir())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Resolves `image`, expecting an error; checks nothing was cached.
    fn fails(&self, image: &str) -> OciCacheError {
        let err = self.cache.resolve(image).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("image {image}")), "{msg}");
        assert!(
            self.cache_entries().is_empty(),
            "{image}: left {:?}",
            self.cache_entries()
        );
        err
    }
}

fn one_disk_image(tag: Option<&str>) -> (Layout, String) {
    let mut layout = Layout::default();
    let digest = layout.image(
        vec![(
            gzip(&layer(&[
                E::Dir("disk/"),
                E::File("disk/rootfs.img", raw_disk()),
            ])),
            MEDIA_LAYER_GZIP,
        )],
        tag,
    );
    (layout, digest)
}

#[test]
fn references_parse_with_and_without_tags() {
    let r = OciReference::parse("oci:/srv/images/rootfs").unwrap();
    assert_eq!(
        (r.transport, r.path.as_path(), r.tag),
        (Transport::Dir, Path::new("/srv/images/rootfs"), None)
    );
    let r = OciReference::parse("oci-archive:/srv/a.b/rootfs.tar:busy-box_1.2").unwrap();
    assert_eq!(r.transport, Transport::Archive);
    assert_eq!(r.path, Path::new("/srv/a.b/rootfs.tar"));
    assert_eq!(r.tag.as_deref(), Some("busy-box_1.2"));
    assert!(OciReference::is_oci("oci:/x"));
    assert!(!OciReference::is_oci("ironvisor/rootfs:busybox"));
    for bad in [
        "oci:relative/dir",
        "oci-archive:/a/../b.tar",
        "oci:/a:",
        "oci:/a:b c",
        "oci:/",
        "oci:",
        "docker://x",
    ] {
        assert!(
            matches!(
                OciReference::parse(bad),
                Err(OciLayoutError::InvalidReference { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn a_layout_directory_is_unpacked_once_into_the_cache() {
    let f = fixture();
    let (layout, digest) = one_disk_image(None);
    let image = f.dir("layout", &layout);
    let disk = f.cache.resolve(&image).unwrap();
    assert!(disk.unpacked);
    assert_eq!(disk.format, DiskFormat::Raw);
    assert_eq!(disk.digest, format!("sha256:{digest}"));
    assert_eq!(
        disk.path,
        f.cache.dir().join(format!("sha256-{digest}/disk.img"))
    );
    assert_eq!(fs::read(&disk.path).unwrap(), raw_disk());
    let meta = fs::metadata(&disk.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    // Two 64 KiB blocks hold data; the 896 KiB of zeros between them are a hole.
    assert!(
        meta.blocks() * 512 <= 128 << 10,
        "zeros were written: {} blocks",
        meta.blocks()
    );
    assert_eq!(f.cache_entries(), vec![format!("sha256-{digest}")]);

    let again = f.cache.resolve(&image).unwrap();
    assert!(!again.unpacked, "the second use must not unpack again");
    assert_eq!(again.path, disk.path);
    assert_eq!(fs::metadata(&again.path).unwrap().ino(), meta.ino());
}

#[test]
fn archives_plain_and_gzip_share_the_entry_of_the_same_manifest() {
    let f = fixture();
    let (layout, digest) = one_disk_image(Some("busybox"));
    let plain = f.archive("plain.tar", &layout);
    let gz_path = f.root.join("image.tar.gz");
    fs::write(&gz_path, gzip(&layout.archive())).unwrap();
    let first = f.cache.resolve(&plain).unwrap();
    assert!(first.unpacked);
    let second = f
        .cache
        .resolve(&format!("oci-archive:{}:busybox", gz_path.display()))
        .unwrap();
    assert!(!second.unpacked);
    assert_eq!(second.path, first.path);
    let dir = f.dir("dir", &layout);
    assert!(!f.cache.resolve(&dir).unwrap().unpacked);
    // The decompressed archive was scratch: only the entry remains.
    assert_eq!(f.cache_entries(), vec![format!("sha256-{digest}")]);
}

#[test]
fn uncompressed_and_docker_layers_and_later_layers_apply_in_order() {
    let f = fixture();
    let mut layout = Layout::default();
    layout.image(
        vec![
            (
                layer(&[
                    E::File("disk/old.img", vec![1; 512]),
                    E::File("etc/x", vec![2]),
                ]),
                MEDIA_LAYER_TAR,
            ),
            // Replaces old.img with new content, then a whiteout removes a lower file.
            (
                layer(&[E::File("disk/old.img", vec![3; 512])]),
                "application/vnd.docker.image.rootfs.diff.tar",
            ),
        ],
        None,
    );
    let disk = f.cache.resolve(&f.archive("a.tar", &layout)).unwrap();
    assert_eq!(fs::read(&disk.path).unwrap(), vec![3; 512]);
}

#[test]
fn whiteouts_remove_lower_disks() {
    let f = fixture();
    let mut layout = Layout::default();
    layout.image(
        vec![
            (
                layer(&[
                    E::File("disk/a.img", vec![1; 512]),
                    E::File("disk/b.img", vec![2; 512]),
                ]),
                MEDIA_LAYER_TAR,
            ),
            (
                layer(&[
                    E::File("disk/.wh.a.img", vec![]),
                    E::File("disk/c.img", vec![4; 512]),
                ]),
                MEDIA_LAYER_TAR,
            ),
            // Opaque: everything lower in disk/ goes; this layer's own file stays.
            (
                layer(&[
                    E::File("disk/.wh..wh..opq", vec![]),
                    E::File("disk/d.img", vec![5; 512]),
                ]),
                MEDIA_LAYER_TAR,
            ),
        ],
        None,
    );
    let disk = f.cache.resolve(&f.archive("w.tar", &layout)).unwrap();
    assert_eq!(fs::read(&disk.path).unwrap(), vec![5; 512]);

    let mut layout = Layout::default();
    layout.image(
        vec![
            (
                layer(&[E::File("disk/a.img", vec![1; 512])]),
                MEDIA_LAYER_TAR,
            ),
            (layer(&[E::File(".wh.disk", vec![])]), MEDIA_LAYER_TAR),
        ],
        None,
    );
    let image = f.archive("gone.tar", &layout);
    let err = f.cache.resolve(&image).unwrap_err();
    assert!(
        matches!(
            err,
            OciCacheError::Layers {
                source: OciLayerError::NoDisk { layers: 2 },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tags_select_the_image_and_name_the_alternatives() {
    let f = fixture();
    let (mut layout, first) = one_disk_image(Some("one"));
    let second = layout.image(
        vec![(
            layer(&[E::File("disk/two.img", vec![9; 512])]),
            MEDIA_LAYER_TAR,
        )],
        Some("two"),
    );
    let image = f.archive("two.tar", &layout);
    let disk = f.cache.resolve(&format!("{image}:two")).unwrap();
    assert_eq!(disk.digest, format!("sha256:{second}"));
    assert_eq!(fs::read(&disk.path).unwrap(), vec![9; 512]);
    let disk = f.cache.resolve(&format!("{image}:one")).unwrap();
    assert_eq!(disk.digest, format!("sha256:{first}"));

    let err = f.cache.resolve(&image).unwrap_err().to_string();
    assert!(
        err.contains("the index holds 2 images; name one with :TAG (tags: one, two)"),
        "{err}"
    );
    let err = f.cache.resolve(&format!("{image}:three")).unwrap_err();
    assert!(err.is_not_found());
    assert!(
        err.to_string()
            .contains(r#"no image tagged "three" in the index (tags: one, two)"#),
        "{err}"
    );
}

#[test]
fn missing_paths_and_non_layouts_are_named() {
    let f = fixture();
    let err = f.fails("oci-archive:/nonexistent/image.tar");
    assert!(err.is_not_found());
    assert!(
        err.to_string()
            .contains("/nonexistent/image.tar does not exist"),
        "{err}"
    );
    fs::create_dir_all(f.root.join("empty")).unwrap();
    let err = f.fails(&format!("oci:{}", f.root.join("empty").display()));
    assert!(
        err.to_string()
            .contains("is not an OCI image layout: it has no oci-layout file"),
        "{err}"
    );
    let err = f.fails(&format!("oci-archive:{}", f.root.join("empty").display()));
    assert!(
        err.to_string()
            .contains("not a regular file (use oci: for a layout directory)"),
        "{err}"
    );
    let err = f.fails("oci:relative");
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn corrupt_and_truncated_archives_are_refused() {
    let f = fixture();
    let garbage = f.root.join("garbage.tar");
    fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    let err = f.fails(&format!("oci-archive:{}", garbage.display()));
    assert!(
        err.to_string().contains("is not a readable tar archive"),
        "{err}"
    );

    let (layout, _) = one_disk_image(None);
    let bytes = layout.archive();
    let truncated = f.root.join("truncated.tar");
    // Cut inside the last blob (the layer is written last).
    fs::write(&truncated, &bytes[..bytes.len() - 2048]).unwrap();
    let err = f.fails(&format!("oci-archive:{}", truncated.display()));
    assert!(err.to_string().contains("truncated"), "{err}");

    let bad_gzip = f.root.join("bad.tar.gz");
    let mut gz = gzip(&bytes);
    gz.truncate(gz.len() / 2);
    fs::write(&bad_gzip, gz).unwrap();
    let err = f.fails(&format!("oci-archive:{}", bad_gzip.display()));
    assert!(err.to_string().contains("gzip"), "{err}");
}

#[test]
fn blobs_must_match_their_digests_and_sizes() {
    let f = fixture();
    let (layout, _) = one_disk_image(None);
    // A flipped byte in the layer blob.
    let mut tampered = layout.clone();
    let last = tampered
        .blobs
        .iter_mut()
        .find(|(_, d)| d.starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let mid = last.1.len() / 2;
    last.1[mid] ^= 0xff;
    let err = f.fails(&f.archive("tampered.tar", &tampered));
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );

    // The manifest's descriptor in the index understates its size.
    let mut short = layout.clone();
    short.manifests[0]["size"] = json!(10);
    let err = f.fails(&f.dir("short", &short));
    assert!(
        err.to_string()
            .contains("has more than the 10 bytes its descriptor says"),
        "{err}"
    );

    let mut missing = layout.clone();
    missing.blobs.retain(|(_, d)| !d.starts_with(&[0x1f, 0x8b]));
    let err = f.fails(&f.dir("missing", &missing));
    assert!(
        err.to_string().contains("is missing from the layout"),
        "{err}"
    );

    let mut bad_digest = layout;
    bad_digest.manifests[0]["digest"] = json!("sha512:abc");
    let err = f.fails(&f.dir("sha512", &bad_digest));
    assert!(
        err.to_string()
            .contains("is not sha256:<64 lowercase hex digits>"),
        "{err}"
    );
}

#[test]
fn media_types_are_checked() {
    let f = fixture();
    let mut layout = Layout::default();
    layout.image(
        vec![(
            layer(&[E::File("disk/a.img", vec![1; 512])]),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        )],
        None,
    );
    let err = f.fails(&f.archive("zstd.tar", &layout));
    assert!(err.to_string().contains("tar+zstd"), "{err}");

    let (mut nested, _) = one_disk_image(None);
    nested.manifests[0]["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    let err = f.fails(&f.archive("nested.tar", &nested));
    assert!(err.to_string().contains("nested indexes"), "{err}");

    let mut gzip_claimed = Layout::default();
    gzip_claimed.image(
        vec![(
            layer(&[E::File("disk/a.img", vec![1; 512])]),
            MEDIA_LAYER_GZIP,
        )],
        None,
    );
    let err = f.fails(&f.archive("notgzip.tar", &gzip_claimed));
    assert!(
        err.to_string()
            .contains("cannot read it as a gzip-compressed tar"),
        "{err}"
    );
}

#[test]
fn zero_or_several_disks_are_errors_naming_them() {
    let f = fixture();
    let mut layout = Layout::default();
    layout.image(
        vec![(
            layer(&[
                E::File("etc/hostname", vec![1]),
                E::File("disk/sub/deep.img", vec![1]),
            ]),
            MEDIA_LAYER_TAR,
        )],
        None,
    );
    let err = f.fails(&f.archive("none.tar", &layout));
    assert!(
        err.to_string()
            .contains("no disk file under /disk/ in its 1 layer(s)"),
        "{err}"
    );

    let mut layout = Layout::default();
    layout.image(
        vec![
            (
                layer(&[E::File("disk/a.qcow2", vec![1; 512])]),
                MEDIA_LAYER_TAR,
            ),
            (
                layer(&[E::File("./disk/b.img", vec![2; 512])]),
                MEDIA_LAYER_TAR,
            ),
        ],
        None,
    );
    let err = f.fails(&f.archive("two.tar", &layout));
    assert!(
        err.to_string()
            .contains("2 files under /disk/ (/disk/a.qcow2, /disk/b.img)"),
        "{err}"
    );
}

#[test]
fn links_absolute_names_and_dotdot_are_refused() {
    let f = fixture();
    for (name, entries, expected) in [
        (
            "symlink",
            vec![E::Symlink("disk/root.img", "/etc/shadow")],
            "/disk/root.img is a symbolic link",
        ),
        (
            "dirlink",
            vec![E::Symlink("disk", "/var")],
            "/disk is a symbolic link",
        ),
        (
            "absolute",
            vec![E::Raw("/disk/a.img")],
            "absolute names are not accepted",
        ),
        (
            "dotdot",
            vec![E::Raw("disk/../../a.img")],
            "'..' components are not accepted",
        ),
    ] {
        let mut layout = Layout::default();
        let mut entries = entries;
        entries.push(E::File("disk/ok.img", vec![1; 512]));
        layout.image(vec![(layer(&entries), MEDIA_LAYER_TAR)], None);
        let err = f.fails(&f.archive(&format!("{name}.tar"), &layout));
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
}

#[test]
fn a_qcow2_disk_with_a_backing_file_is_refused() {
    let f = fixture();
    let base = f.root.join("base.img");
    fs::write(&base, vec![0u8; 1 << 16]).unwrap();
    let overlay = f.root.join("over.qcow2");
    ironvisor_diskimage::create_overlay(&overlay, &base, DiskFormat::Raw).unwrap();
    let mut layout = Layout::default();
    layout.image(
        vec![(
            layer(&[E::File("disk/over.qcow2", fs::read(&overlay).unwrap())]),
            MEDIA_LAYER_TAR,
        )],
        None,
    );
    let err = f.fails(&f.archive("backed.tar", &layout));
    assert!(matches!(err, OciCacheError::BackingFile { .. }), "{err}");
    assert!(err.to_string().contains("must be self-contained"), "{err}");
}

#[test]
fn concurrent_unpacks_publish_one_entry_and_stale_scratch_goes() {
    let f = fixture();
    fs::create_dir_all(f.cache.dir().join(".tmp-999999999-0-sha256-dead/x")).unwrap();
    let (layout, digest) = one_disk_image(None);
    let image = f.archive("c.tar", &layout);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| f.cache.resolve(&image)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    assert!(results.iter().all(|r| r.path == results[0].path));
    assert_eq!(fs::read(&results[0].path).unwrap(), raw_disk());
    assert_eq!(f.cache_entries(), vec![format!("sha256-{digest}")]);
}

#[test]
fn a_damaged_entry_is_reported_not_used() {
    let f = fixture();
    let (layout, digest) = one_disk_image(None);
    let image = f.archive("d.tar", &layout);
    let entry = f.cache.dir().join(format!("sha256-{digest}"));
    fs::create_dir_all(&entry).unwrap();
    let err = f.cache.resolve(&image).unwrap_err();
    assert!(
        err.to_string()
            .contains("is damaged (it holds no disk.qcow2 or disk.img); remove it"),
        "{err}"
    );
}
