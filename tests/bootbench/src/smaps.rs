//! `/proc/PID/smaps`: the process's resident memory and which part of it is guest RAM.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

/// Why smaps could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum SmapsError {
    /// The file could not be read (the process is gone, or no permission).
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line did not look like an smaps mapping header or field.
    #[error("smaps line {line}: cannot parse {text:?}")]
    Parse { line: usize, text: String },
    /// No anonymous mapping has the guest memory size (allowing for a merged neighbour).
    #[error(
        "no anonymous mapping of {want_kib} KiB, or slightly more (largest anonymous, \
         (size, rss) KiB: {largest:?})"
    )]
    NoGuestMapping {
        want_kib: u64,
        largest: Vec<(u64, u64)>,
    },
}

/// One mapping of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permission string, e.g. `rw-p`.
    pub perms: String,
    /// Backing file or pseudo-name (`[heap]`, `[stack]`); empty for anonymous memory.
    pub pathname: String,
    /// `Size:` in KiB.
    pub size_kib: u64,
    /// `Rss:` in KiB.
    pub rss_kib: u64,
}

impl Mapping {
    /// True for memory with no file behind it (including `[anon:NAME]` mappings).
    pub fn is_anonymous(&self) -> bool {
        self.pathname.is_empty() || self.pathname.starts_with("[anon:")
    }
}

/// Memory summary of one process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Sum of `Rss:` over all mappings, KiB.
    pub total_rss_kib: u64,
    /// `Rss:` of the guest-RAM mapping, KiB.
    pub guest_rss_kib: u64,
    /// Size of the mapping taken for guest RAM, KiB (more than the guest memory when the
    /// kernel merged it with a neighbour).
    pub guest_size_kib: u64,
    /// Start address of the mapping taken for guest RAM.
    pub guest_start: u64,
}

impl MemoryUse {
    /// Resident memory that is not guest RAM: the VMM's own overhead, KiB.
    pub fn overhead_kib(&self) -> u64 {
        self.total_rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

fn parse_header(text: &str) -> Option<Mapping> {
    let mut fields = text.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.to_string();
    // offset, device, inode
    for _ in 0..3 {
        fields.next()?;
    }
    let pathname = fields.collect::<Vec<_>>().join(" ");
    Some(Mapping {
        start,
        end,
        perms,
        pathname,
        size_kib: 0,
        rss_kib: 0,
    })
}

/// Parses the text of an smaps file into its mappings.
pub fn parse(text: &str) -> Result<Vec<Mapping>, SmapsError> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parse_error = || SmapsError::Parse {
            line: index + 1,
            text: line.to_string(),
        };
        match line.split_once(':') {
            Some((key, value)) if !key.contains(' ') && !key.contains('-') => {
                let current = mappings.last_mut().ok_or_else(parse_error)?;
                let kib = || -> Result<u64, SmapsError> {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .map_err(|_| parse_error())
                };
                match key {
                    "Size" => current.size_kib = kib()?,
                    "Rss" => current.rss_kib = kib()?,
                    _ => {}
                }
            }
            _ => mappings.push(parse_header(line).ok_or_else(parse_error)?),
        }
    }
    Ok(mappings)
}

/// How much larger than the guest memory a mapping may be and still be taken for it:
/// the kernel merges adjacent anonymous mappings with the same flags into one VMA, so the
/// guest RAM can share its VMA with a small neighbour (a few pages of a thread's data).
pub fn merge_slack_kib(guest_kib: u64) -> u64 {
    (guest_kib / 64).max(2048)
}

/// Total Rss and the guest-RAM mapping.
///
/// The guest RAM is the anonymous mapping of exactly `guest_kib` KiB (the most resident
/// one when several match). When there is none, the smallest anonymous mapping at most
/// [`merge_slack_kib`] larger is used, and its excess is counted as VMM memory (assumed
/// resident), so a merge can only make the reported overhead larger, never smaller.
pub fn memory_use(mappings: &[Mapping], guest_kib: u64) -> Result<MemoryUse, SmapsError> {
    let total_rss_kib = mappings.iter().map(|m| m.rss_kib).sum();
    let exact = mappings
        .iter()
        .filter(|m| m.is_anonymous() && m.size_kib == guest_kib)
        .max_by_key(|m| m.rss_kib);
    let merged = || {
        mappings
            .iter()
            .filter(|m| {
                m.is_anonymous()
                    && m.size_kib > guest_kib
                    && m.size_kib <= guest_kib + merge_slack_kib(guest_kib)
            })
            .min_by_key(|m| (m.size_kib, std::cmp::Reverse(m.rss_kib)))
    };
    match exact.or_else(merged) {
        Some(g) => Ok(MemoryUse {
            total_rss_kib,
            guest_rss_kib: g.rss_kib.saturating_sub(g.size_kib - guest_kib),
            guest_size_kib: g.size_kib,
            guest_start: g.start,
        }),
        None => {
            let mut anon: Vec<(u64, u64)> = mappings
                .iter()
                .filter(|m| m.is_anonymous())
                .map(|m| (m.size_kib, m.rss_kib))
                .collect();
            anon.sort_unstable_by(|a, b| b.cmp(a));
            anon.truncate(3);
            Err(SmapsError::NoGuestMapping {
                want_kib: guest_kib,
                largest: anon,
            })
        }
    }
}

/// Where the overhead sits, KiB per kind: the VMM's own executable (`exe_text` executable,
/// `exe_rodata` read-only, `exe_data` writable: relocated pointers and statics),
/// `libraries` (other files), `heap` (`[heap]`), `main_stack`, `anonymous` (thread stacks,
/// allocator arenas, the guest mapping's merged excess) and `kernel` (`[vdso]`, `[vvar]`).
/// The kinds add up to [`MemoryUse::overhead_kib`].
pub fn overhead_breakdown(
    mappings: &[Mapping],
    exe_path: &str,
    guest: &MemoryUse,
) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    for m in mappings {
        let (kind, rss) = if m.start == guest.guest_start && m.is_anonymous() {
            ("anonymous", m.rss_kib.saturating_sub(guest.guest_rss_kib))
        } else if m.pathname == exe_path && m.perms.contains('x') {
            ("exe_text", m.rss_kib)
        } else if m.pathname == exe_path && m.perms.contains('w') {
            ("exe_data", m.rss_kib)
        } else if m.pathname == exe_path {
            ("exe_rodata", m.rss_kib)
        } else if m.pathname == "[heap]" {
            ("heap", m.rss_kib)
        } else if m.pathname == "[stack]" {
            ("main_stack", m.rss_kib)
        } else if m.is_anonymous() {
            ("anonymous", m.rss_kib)
        } else if m.pathname.starts_with('[') {
            ("kernel", m.rss_kib)
        } else {
            ("libraries", m.rss_kib)
        };
        *kinds.entry(kind.to_string()).or_insert(0) += rss;
    }
    kinds
}

/// Reads and parses `/proc/<pid>/smaps`.
pub fn read(pid: u32) -> Result<Vec<Mapping>, SmapsError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let text = fs::read_to_string(&path).map_err(|source| SmapsError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d5c8a00000-55d5c8a2c000 r--p 00000000 fe:01 1234                       /usr/bin/vmm
Size:                176 kB
KernelPageSize:        4 kB
Rss:                 170 kB
VmFlags: rd mr mw me dw sd
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:               40960 kB
Pss:               40960 kB
VmFlags: rd wr mr mw me ac sd
7f0010000000-7f0010021000 rw-p 00000000 00:00 0                          [anon:tokio]
Size:                132 kB
Rss:                  16 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn parses_headers_and_sizes() {
        let maps = parse(SAMPLE).unwrap();
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].pathname, "/usr/bin/vmm");
        assert_eq!(maps[0].perms, "r--p");
        assert_eq!((maps[0].size_kib, maps[0].rss_kib), (176, 170));
        assert_eq!(maps[1].start, 0x7f00_0000_0000);
        assert_eq!(maps[1].end - maps[1].start, 262_144 * 1024);
        assert!(maps[1].is_anonymous());
        assert!(maps[2].is_anonymous());
        assert!(!maps[3].is_anonymous());
    }

    #[test]
    fn guest_mapping_is_excluded_from_overhead() {
        let maps = parse(SAMPLE).unwrap();
        let usage = memory_use(&maps, 256 * 1024).unwrap();
        assert_eq!(usage.total_rss_kib, 170 + 40960 + 16 + 12);
        assert_eq!(usage.guest_rss_kib, 40960);
        assert_eq!(usage.guest_size_kib, 262_144);
        assert_eq!(usage.overhead_kib(), 170 + 16 + 12);
    }

    #[test]
    fn overhead_is_broken_down_by_kind_and_adds_up() {
        let text = format!(
            "{SAMPLE}\
55d5c8a2c000-55d5c8b00000 r-xp 0002c000 fe:01 1234 /usr/bin/vmm
Size:                848 kB
Rss:                 600 kB
55d5c8b00000-55d5c8b10000 rw-p 00100000 fe:01 1234 /usr/bin/vmm
Size:                 64 kB
Rss:                  64 kB
7f2000000000-7f2000100000 r-xp 00000000 fe:01 99 /usr/lib/libc.so.6
Size:               1024 kB
Rss:                 500 kB
55d5c9000000-55d5c9100000 rw-p 00000000 00:00 0 [heap]
Size:               1024 kB
Rss:                 300 kB
7ffd10000000-7ffd10002000 r-xp 00000000 00:00 0 [vdso]
Size:                  8 kB
Rss:                   4 kB
"
        );
        let maps = parse(&text).unwrap();
        let usage = memory_use(&maps, 256 * 1024).unwrap();
        let kinds = overhead_breakdown(&maps, "/usr/bin/vmm", &usage);
        assert_eq!(kinds["exe_rodata"], 170);
        assert_eq!(kinds["exe_text"], 600);
        assert_eq!(kinds["exe_data"], 64);
        assert_eq!(kinds["libraries"], 500);
        assert_eq!(kinds["heap"], 300);
        assert_eq!(kinds["main_stack"], 12);
        assert_eq!(kinds["anonymous"], 16);
        assert_eq!(kinds["kernel"], 4);
        assert_eq!(kinds.values().sum::<u64>(), usage.overhead_kib());
    }

    #[test]
    fn missing_guest_mapping_lists_candidates() {
        let maps = parse(SAMPLE).unwrap();
        let err = memory_use(&maps, 512 * 1024).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("of 524288 KiB"), "{text}");
        assert!(text.contains("(262144, 40960)"), "{text}");
    }

    #[test]
    fn merged_guest_mapping_counts_the_excess_as_overhead() {
        let text = "\
7f0000000000-7f0010021000 rw-p 00000000 00:00 0
Size:             262276 kB
Rss:               81924 kB
7f1000000000-7f1003fdf000 rw-p 00000000 00:00 0
Size:              65404 kB
Rss:                   0 kB
";
        let maps = parse(text).unwrap();
        let usage = memory_use(&maps, 262_144).unwrap();
        assert_eq!(usage.guest_size_kib, 262_276);
        assert_eq!(usage.guest_rss_kib, 81_924 - 132);
        assert_eq!(usage.overhead_kib(), 132);
        // Far larger mappings are not guest RAM.
        assert!(memory_use(&maps, 131_072).is_err());
    }

    #[test]
    fn rejects_garbage() {
        let err = parse("Size: 4 kB\n").unwrap_err();
        assert!(matches!(err, SmapsError::Parse { line: 1, .. }), "{err}");
        let err = parse("zzzz\n").unwrap_err();
        assert!(matches!(err, SmapsError::Parse { line: 1, .. }), "{err}");
    }

    #[test]
    fn reads_own_smaps() {
        let maps = read(std::process::id()).unwrap();
        assert!(maps.iter().any(|m| m.rss_kib > 0));
        assert!(matches!(read(u32::MAX), Err(SmapsError::Read { .. })));
    }
}
