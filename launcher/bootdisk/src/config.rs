//! The boot configurations a Linux disk carries, parsed as text: GRUB's `grub.cfg` (the
//! default `menuentry`), Boot Loader Specification entries and extlinux's
//! `extlinux.conf`. Each gives the kernel and initrd paths (on the file system the
//! configuration is on) and the kernel command line. GRUB variables (`$…`) are dropped
//! from command lines: there is no GRUB to expand them.

/// What one boot configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Kernel path.
    pub kernel: String,
    /// Initrd paths (loaded one after the other).
    pub initrds: Vec<String>,
    /// Kernel command line.
    pub cmdline: String,
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn without_variables(args: &[&str]) -> String {
    args.iter()
        .filter(|arg| !arg.contains('$'))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn unquote(text: &str) -> &str {
    text.trim_matches(|c| c == '"' || c == '\'')
}

/// The entry GRUB boots by default: `set default=N` (an index of the top-level
/// `menuentry`s) or the first one; submenus are not entered.
pub fn grub(text: &str) -> Option<ConfigEntry> {
    let mut default = 0usize;
    let mut entries: Vec<ConfigEntry> = Vec::new();
    let mut current: Option<ConfigEntry> = None;
    let mut depth = 0usize;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let parts = words(line);
        if depth == 0 {
            if let Some(value) = line.strip_prefix("set default=") {
                default = unquote(value).parse().unwrap_or(0);
            }
        }
        if parts.first() == Some(&"menuentry") && depth == 0 {
            current = Some(ConfigEntry {
                kernel: String::new(),
                initrds: Vec::new(),
                cmdline: String::new(),
            });
        }
        if let Some(entry) = current.as_mut() {
            match parts.first().copied() {
                Some("linux" | "linux16" | "linuxefi") if parts.len() > 1 => {
                    entry.kernel = parts[1].to_string();
                    entry.cmdline = without_variables(&parts[2..]);
                }
                Some("initrd" | "initrd16" | "initrdefi") => {
                    entry.initrds = parts[1..].iter().map(|p| p.to_string()).collect();
                }
                _ => {}
            }
        }
        depth += line.matches('{').count();
        depth = depth.saturating_sub(line.matches('}').count());
        if depth == 0 {
            if let Some(entry) = current.take() {
                if !entry.kernel.is_empty() {
                    entries.push(entry);
                }
            }
        }
    }
    let index = if default < entries.len() { default } else { 0 };
    entries.into_iter().nth(index)
}

/// One Boot Loader Specification entry (`/loader/entries/*.conf`).
pub fn bls(text: &str) -> Option<ConfigEntry> {
    let mut entry = ConfigEntry {
        kernel: String::new(),
        initrds: Vec::new(),
        cmdline: String::new(),
    };
    for line in text.lines().map(str::trim) {
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "linux" => entry.kernel = value.to_string(),
            "initrd" => entry.initrds.push(value.to_string()),
            "options" => entry.cmdline = without_variables(&words(value)),
            _ => {}
        }
    }
    (!entry.kernel.is_empty()).then_some(entry)
}

/// The `DEFAULT` label of an `extlinux.conf` (or its first `LABEL`).
pub fn extlinux(text: &str) -> Option<ConfigEntry> {
    let mut default: Option<String> = None;
    let mut labels: Vec<(String, ConfigEntry)> = Vec::new();
    for line in text.lines().map(str::trim) {
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        match key.to_ascii_uppercase().as_str() {
            "DEFAULT" => default = Some(value.to_string()),
            "LABEL" => labels.push((
                value.to_string(),
                ConfigEntry {
                    kernel: String::new(),
                    initrds: Vec::new(),
                    cmdline: String::new(),
                },
            )),
            "KERNEL" | "LINUX" => {
                if let Some((_, entry)) = labels.last_mut() {
                    entry.kernel = value.to_string();
                }
            }
            "INITRD" => {
                if let Some((_, entry)) = labels.last_mut() {
                    entry.initrds = value.split(',').map(str::to_string).collect();
                }
            }
            "APPEND" => {
                if let Some((_, entry)) = labels.last_mut() {
                    entry.cmdline = value.to_string();
                }
            }
            _ => {}
        }
    }
    let chosen = default
        .and_then(|name| labels.iter().position(|(label, _)| *label == name))
        .unwrap_or(0);
    labels
        .into_iter()
        .nth(chosen)
        .map(|(_, entry)| entry)
        .filter(|entry| !entry.kernel.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_GRUB: &str = r#"
set default="1"
menuentry 'Debian GNU/Linux' --class debian {
	load_video
	search --no-floppy --fs-uuid --set=root 1234
	linux	/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID=1234 ro console=ttyS0 $vt_handoff
	initrd	/boot/initrd.img-6.1.0-57-cloud-amd64
}
submenu 'Advanced options' {
	menuentry 'Debian, recovery' {
		linux	/boot/vmlinuz-old root=UUID=1234 ro single
	}
}
menuentry 'Second' {
	linux /vmlinuz root=LABEL=r ro quiet
	initrd /ucode.img /initrd.img
}
"#;

    #[test]
    fn grub_boots_the_default_top_level_entry_without_variables() {
        let entry = grub(DEBIAN_GRUB).unwrap();
        // Index 1 among top-level entries (the submenu does not count as an entry).
        assert_eq!(entry.kernel, "/vmlinuz");
        assert_eq!(entry.initrds, ["/ucode.img", "/initrd.img"]);
        assert_eq!(entry.cmdline, "root=LABEL=r ro quiet");
        let first = grub(&DEBIAN_GRUB.replace("set default=\"1\"", "")).unwrap();
        assert_eq!(first.kernel, "/boot/vmlinuz-6.1.0-57-cloud-amd64");
        assert_eq!(first.cmdline, "root=UUID=1234 ro console=ttyS0");
        assert_eq!(grub("set timeout=5\n"), None);
    }

    #[test]
    fn bls_and_extlinux_entries_are_read() {
        let entry = bls("title Fedora\nlinux /vmlinuz-6.5\ninitrd /initramfs-6.5.img\noptions root=/dev/vda2 ro $tuned\n").unwrap();
        assert_eq!(entry.kernel, "/vmlinuz-6.5");
        assert_eq!(entry.initrds, ["/initramfs-6.5.img"]);
        assert_eq!(entry.cmdline, "root=/dev/vda2 ro");
        let conf = "DEFAULT lts\nLABEL edge\n  LINUX /boot/vmlinuz-edge\nLABEL lts\n  KERNEL /boot/vmlinuz-lts\n  INITRD /boot/initramfs-lts\n  APPEND root=/dev/vda1 modules=ext4\n";
        let entry = extlinux(conf).unwrap();
        assert_eq!(entry.kernel, "/boot/vmlinuz-lts");
        assert_eq!(entry.initrds, ["/boot/initramfs-lts"]);
        assert_eq!(entry.cmdline, "root=/dev/vda1 modules=ext4");
        assert_eq!(bls("title nothing\n"), None);
    }
}
