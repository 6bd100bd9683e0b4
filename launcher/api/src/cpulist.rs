//! Linux CPU lists ("0-2,5"), the notation of `/sys/devices/system/cpu/online`,
//! `cpuset.cpus` and `taskset -c`: parsing and printing, and the CPUs the calling thread
//! may run on.

use std::collections::BTreeSet;

use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

/// Highest CPU number a list may name plus one (glibc's `CPU_SETSIZE`).
pub const MAX_CPUS: u32 = 1024;

/// Why a CPU list cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// The list has no CPU in it.
    #[error("the CPU list is empty")]
    Empty,
    /// A part is neither `N` nor `N-M`.
    #[error("{part:?} is not a CPU number or a range N-M")]
    BadPart {
        /// The offending part.
        part: String,
    },
    /// A range runs backwards.
    #[error("range {part:?} runs backwards")]
    Backwards {
        /// The offending range.
        part: String,
    },
    /// A CPU number is too large.
    #[error("CPU {cpu} is out of range (CPUs are numbered 0 to {})", MAX_CPUS - 1)]
    TooLarge {
        /// The number.
        cpu: u32,
    },
}

/// Parses a CPU list ("1", "0-3", "0,2-3"; blanks around parts are ignored) into
/// sorted, distinct CPU numbers.
pub fn parse(text: &str) -> Result<Vec<u32>, CpuListError> {
    let mut cpus = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || CpuListError::BadPart {
            part: part.to_string(),
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u32>().map_err(|_| bad())?,
                b.trim().parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let cpu = part.parse::<u32>().map_err(|_| bad())?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(CpuListError::Backwards {
                part: part.to_string(),
            });
        }
        if last >= MAX_CPUS {
            return Err(CpuListError::TooLarge { cpu: last });
        }
        cpus.extend(first..=last);
    }
    if cpus.is_empty() {
        return Err(CpuListError::Empty);
    }
    Ok(cpus.into_iter().collect())
}

/// Prints CPU numbers as a CPU list with ranges ("0-2,5"); order and repeats in the input
/// do not matter.
pub fn format(cpus: &[u32]) -> String {
    let sorted: BTreeSet<u32> = cpus.iter().copied().collect();
    let mut parts = Vec::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

/// The CPU numbers in `set`, lowest first.
pub fn of_cpu_set(set: &CpuSet) -> Vec<u32> {
    (0..MAX_CPUS)
        .filter(|&cpu| set.is_set(cpu as usize).unwrap_or(false))
        .collect()
}

/// The CPUs the calling thread may run on (its `sched_getaffinity` set), lowest first.
pub fn of_this_thread() -> nix::Result<Vec<u32>> {
    sched_getaffinity(Pid::from_raw(0)).map(|set| of_cpu_set(&set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_cpus_ranges_and_mixtures_parse_sorted_and_distinct() {
        assert_eq!(parse("1").unwrap(), vec![1]);
        assert_eq!(parse("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse(" 5, 0-1 ,1").unwrap(), vec![0, 1, 5]);
        assert_eq!(parse("1023").unwrap(), vec![1023]);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert_eq!(parse(""), Err(CpuListError::Empty));
        assert_eq!(parse(" , "), Err(CpuListError::Empty));
        assert!(matches!(parse("a"), Err(CpuListError::BadPart { part }) if part == "a"));
        assert!(matches!(parse("1-"), Err(CpuListError::BadPart { .. })));
        assert!(matches!(parse("-1"), Err(CpuListError::BadPart { .. })));
        assert!(matches!(parse("3-1"), Err(CpuListError::Backwards { part }) if part == "3-1"));
        assert_eq!(parse("0-1024"), Err(CpuListError::TooLarge { cpu: 1024 }));
        let message = parse("x").unwrap_err().to_string();
        assert!(message.contains("\"x\""), "{message}");
    }

    #[test]
    fn this_thread_has_cpus_and_a_set_lists_its_members() {
        assert!(!of_this_thread().unwrap().is_empty());
        let mut set = CpuSet::new();
        set.set(3).unwrap();
        set.set(1).unwrap();
        assert_eq!(of_cpu_set(&set), vec![1, 3]);
    }

    #[test]
    fn format_collapses_runs_and_round_trips() {
        assert_eq!(format(&[]), "");
        assert_eq!(format(&[3]), "3");
        assert_eq!(format(&[5, 0, 1, 2, 2]), "0-2,5");
        assert_eq!(format(&[1, 3, 4, 7, 8, 9]), "1,3-4,7-9");
        for text in ["0", "0-7", "1,3-4,9"] {
            assert_eq!(format(&parse(text).unwrap()), text);
        }
    }
}
