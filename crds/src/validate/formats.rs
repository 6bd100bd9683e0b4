//! Syntax of names, paths and addresses used in manifests. Each check returns what rule
//! a value breaks, so the caller can report it with the field path.

use super::MAX_SERIAL_BYTES;

/// An absolute file path without `..` components or NUL bytes, other than `/` itself.
pub fn absolute_path(value: &str) -> bool {
    value.starts_with('/')
        && value.len() > 1
        && !value.contains('\0')
        && !value.split('/').any(|component| component == "..")
}

/// Image names resolve to local files in standalone mode, so they are kept to a safe
/// alphabet: `[registry/]name[:tag][@digest]` without empty, `.` or `..` components.
/// The standalone node also reads OCI layouts, `oci:/abs/dir[:tag]` and
/// `oci-archive:/abs/file.tar[:tag]`: their path after the first `/` follows the same rules.
/// (`oci:5000/x` stays a registry host with a port.)
pub fn image_reference(value: &str) -> Result<(), &'static str> {
    let oci_path = ["oci:/", "oci-archive:/"]
        .iter()
        .find_map(|prefix| value.strip_prefix(prefix));
    if let Some(path) = oci_path {
        return image_reference(path);
    }
    if value.len() > 255 {
        Err("longer than 255 characters")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c))
    {
        Err("only letters, digits and . _ - / : @ + are allowed")
    } else if value.starts_with(['/', '.', '-', ':', '@']) {
        Err("must start with a letter or digit")
    } else if value
        .split('/')
        .any(|part| part.is_empty() || part == ".." || part == ".")
    {
        Err("empty, '.' or '..' path components are not allowed")
    } else {
        Ok(())
    }
}

/// A disk serial: 1 to 20 letters, digits, `-`, `_`, `.`, `+`.
pub fn serial(serial: &str) -> bool {
    !serial.is_empty()
        && serial.len() <= MAX_SERIAL_BYTES
        && serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

/// A UUID in RFC 4122 text form: 8-4-4-4-12 hexadecimal digits (either case).
pub fn uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Longest SMBIOS string accepted for a system serial.
pub const MAX_SMBIOS_STRING_BYTES: usize = 64;

/// A string SMBIOS can carry: 1 to 64 printable ASCII characters.
pub fn smbios_string(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_SMBIOS_STRING_BYTES
        && text.chars().all(|c| c.is_ascii_graphic() || c == ' ')
}

/// A machine type of the q35 family: `q35` or a versioned `pc-q35-*` (KubeVirt's
/// default on amd64, in every VM it exports).
pub fn q35_machine(name: &str) -> bool {
    name == "q35" || name.starts_with("pc-q35-")
}

/// Parses "52:54:00:12:34:56" (or with '-') into octets; refuses multicast and zero.
pub fn parse_mac(text: &str) -> Result<[u8; 6], &'static str> {
    let separator = if text.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = text.split(separator).collect();
    if parts.len() != 6 {
        return Err("expected six octets separated by ':' or '-'");
    }
    let mut octets = [0u8; 6];
    for (octet, part) in octets.iter_mut().zip(&parts) {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("each octet must be two hexadecimal digits");
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| "octet is not hexadecimal")?;
    }
    if octets[0] & 1 == 1 {
        return Err(
            "multicast address (lowest bit of the first octet set); a NIC needs a unicast address",
        );
    }
    if octets == [0; 6] {
        return Err("all-zero address");
    }
    Ok(octets)
}
/// RFC 1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending with an alphanumeric.
pub fn dns_label_check(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > 63 {
        return Err("must be at most 63 characters (DNS-1123 label)");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must consist of lower case letters, digits and '-' (DNS-1123 label)");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must start and end with a letter or digit (DNS-1123 label)");
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated labels.
pub fn dns_subdomain(value: &str) -> Result<(), &'static str> {
    if value.len() > 253 {
        return Err("must be at most 253 characters (DNS-1123 subdomain)");
    }
    value.split('.').try_for_each(|label| {
        dns_label_check(label)
            .map_err(|_| "must be dot-separated lower case labels of letters, digits and '-' (DNS-1123 subdomain)")
    })
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS subdomain, name 1 to 63 of
/// `[A-Za-z0-9_.-]` starting and ending with an alphanumeric.
pub fn qualified_name(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err("prefix before '/' must not be empty");
            }
            dns_subdomain(prefix).map_err(|_| "prefix must be a DNS-1123 subdomain")?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("name part must not be empty");
    }
    label_value(name)
}

/// A label value: empty, or 1 to 63 of `[A-Za-z0-9_.-]` starting and ending with an
/// alphanumeric.
pub fn label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err("must be at most 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("must consist of letters, digits, '-', '_' and '.'");
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !alnum(value.bytes().next()) || !alnum(value.bytes().last()) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["a", "vm-1", "0abc", &"a".repeat(63)] {
            assert_eq!(dns_label_check(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns_label_check(bad).is_err(), "{bad}");
        }
        assert_eq!(dns_subdomain("storage.example.com"), Ok(()));
        assert!(dns_subdomain("a..b").is_err());
        assert!(dns_subdomain(&"a.".repeat(127)).is_err());
    }

    #[test]
    fn label_keys_and_values() {
        for good in [
            "app",
            "kubernetes.io/hostname",
            "a.b_c-d",
            "ironvisor.io/vm",
        ] {
            assert_eq!(qualified_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/app",
            "Example.com/app",
            "app/",
            "a b",
            "-app",
            "a/b/c",
        ] {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
        assert_eq!(label_value(""), Ok(()));
        assert_eq!(label_value("Node_1.x"), Ok(()));
        assert!(label_value("x-").is_err());
        assert!(label_value(&"x".repeat(64)).is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:ef"),
            Ok([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])
        );
        assert_eq!(parse_mac("02-00-00-00-00-01"), Ok([2, 0, 0, 0, 0, 1]));
        assert!(parse_mac("02:00-00:00:00:01").is_err(), "mixed separators");
        assert!(parse_mac("03:00:00:00:00:01").is_err(), "multicast");
        assert!(parse_mac("00:00:00:00:00:00").is_err(), "zero");
        assert!(
            parse_mac("+2:00:00:00:00:01").is_err(),
            "sign is not a digit"
        );
    }

    #[test]
    fn uuids_smbios_strings_and_machine_types() {
        assert!(uuid("6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab"));
        assert!(uuid("6A1C7D1E-8B3F-4C5A-9E2D-0123456789AB"));
        assert!(!uuid("6a1c7d1e8b3f4c5a9e2d0123456789ab"));
        assert!(!uuid("6a1c7d1e-8b3f-4c5a-9e2d-0123456789ag"));
        assert!(!uuid("6a1c7d1e-8b3f-4c5a-9e2d-0123456789abc"));
        assert!(smbios_string("SN-0042 rev B"));
        assert!(!smbios_string(""));
        assert!(!smbios_string("tab\there"));
        assert!(!smbios_string("é"));
        assert!(!smbios_string(&"x".repeat(65)));
        assert!(q35_machine("q35"));
        assert!(q35_machine("pc-q35-rhel9.2.0"));
        assert!(!q35_machine("pc-i440fx-2.12"));
        assert!(!q35_machine("microvm"));
    }

    #[test]
    fn paths_images_serials() {
        assert!(absolute_path("/var/lib/x.raw"));
        for bad in ["", "/", "x.raw", "/a/../b", "/a\0b"] {
            assert!(!absolute_path(bad), "{bad:?}");
        }
        for good in [
            "ironvisor/rootfs:busybox",
            "registry.local:5000/a/b:1.0",
            "a@sha256:0123abcd",
            "oci:/var/lib/images/rootfs",
            "oci-archive:/var/cache/ironvisor/oci/rootfs.tar:busybox",
            "oci:5000/registry/with/port:1",
        ] {
            assert_eq!(image_reference(good), Ok(()), "{good}");
        }
        for bad in [
            "../x",
            "/x",
            "a//b",
            "a/./b",
            "a b",
            "a\nb",
            ".hidden",
            "oci-archive:/a/../b.tar",
            "oci:/",
            "oci://a",
        ] {
            assert!(image_reference(bad).is_err(), "{bad:?}");
        }
        assert!(serial("ROOT-0001"));
        assert!(!serial(""));
        assert!(!serial(&"x".repeat(21)));
    }
}
