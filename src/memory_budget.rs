//! How many bytes this process may still allocate: the smallest of the address-space limit
//! (`ulimit -v`: the soft RLIMIT_AS of /proc/self/limits minus VmSize of /proc/self/status), the
//! cgroup's memory limit (v2 memory.max − memory.current, or v1 memory.limit_in_bytes −
//! memory.usage_in_bytes) and MemAvailable of /proc/meminfo, and a cap the caller passes (a test
//! switch). Every source is optional: a file that is absent or unreadable, "max" or "unlimited" sets
//! no bound. Parsing is split from reading so that fixture strings test it. Also the fallible
//! allocation of big buffers (`try_zeroed_vec`): an error naming the buffer instead of an abort.
//!
//! Layer 1: reads /proc and /sys only, imports nothing of the crate (the caller reads the switch).

use std::fmt;
use std::path::{Path, PathBuf};

/// Which limit bounds the allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// RLIMIT_AS (`ulimit -v`) less the address space already mapped.
    AddressSpace,
    /// The cgroup's memory limit less its usage.
    Cgroup,
    /// The kernel's estimate of memory available without swapping.
    MemAvailable,
    /// The cap the caller gave (e.g. `HRK_MEMORY_LIMIT_MB`).
    Cap(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::AddressSpace => write!(f, "address-space limit, ulimit -v"),
            Source::Cgroup => write!(f, "cgroup memory limit"),
            Source::MemAvailable => write!(f, "MemAvailable of /proc/meminfo"),
            Source::Cap(name) => write!(f, "{name}"),
        }
    }
}

/// Bytes the process may still allocate, and the limit that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: Source,
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", human_bytes(self.bytes), self.source)
    }
}

/// `bytes` as GiB / MiB / KiB with one decimal, or plain bytes.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    const UNITS: [(&str, f64); 4] =
        [("TiB", 1099511627776.0), ("GiB", 1073741824.0), ("MiB", 1048576.0), ("KiB", 1024.0)];
    match UNITS.iter().find(|(_, size)| b >= *size) {
        Some((unit, size)) => format!("{:.1} {unit}", b / size),
        None => format!("{bytes} bytes"),
    }
}

/// The smallest bound of all sources now (None: nothing bounds the process), with `cap` (bytes and
/// the name of what set it) as one more bound.
pub fn available(cap: Option<(u64, &'static str)>) -> Option<Budget> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let status = read(Path::new("/proc/self/status")).unwrap_or_default();
    let address_space = read(Path::new("/proc/self/limits"))
        .and_then(|limits| address_space_left(&limits, &status))
        .map(|bytes| Budget { bytes, source: Source::AddressSpace });
    let cgroup = cgroup_left(&read).map(|bytes| Budget { bytes, source: Source::Cgroup });
    let meminfo = read(Path::new("/proc/meminfo"))
        .and_then(|m| mem_available(&m))
        .map(|bytes| Budget { bytes, source: Source::MemAvailable });
    let cap = cap.map(|(bytes, name)| Budget { bytes, source: Source::Cap(name) });
    [cap, address_space, cgroup, meminfo].into_iter().flatten().min_by_key(|b| b.bytes)
}

/// The soft "Max address space" of /proc/self/limits less VmSize of /proc/self/status (None when
/// unlimited or unreadable).
pub fn address_space_left(limits: &str, status: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    let soft = line["Max address space".len()..].split_whitespace().next()?;
    let limit: u64 = soft.parse().ok()?;
    Some(limit.saturating_sub(kib_field(status, "VmSize:").unwrap_or(0)))
}

/// MemAvailable of /proc/meminfo, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable:")
}

/// A `Name:   1234 kB` field, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(name))?;
    let mut words = rest.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// A cgroup limit file's value less its usage file's (None for "max", an unparsable value, or v1's
/// "no limit", which is a number near 2^63).
pub fn limit_left(limit: &str, usage: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    Some(limit.saturating_sub(usage.trim().parse().unwrap_or(0)))
}

/// The cgroup of this process (v2's `0::/path` line of /proc/self/cgroup, else the v1 memory
/// controller's) and what its limit leaves; the mount's own root is tried too (inside a container the
/// namespace root is the process's cgroup).
fn cgroup_left(read: &dyn Fn(&Path) -> Option<String>) -> Option<u64> {
    let own = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
    let v2 = own.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim);
    let v1 = own
        .lines()
        .find_map(|l| l.split_once(':').and_then(|(_, r)| r.split_once(':')))
        .filter(|(controllers, _)| controllers.split(',').any(|c| c == "memory"))
        .map(|(_, path)| path.trim());
    let under = |root: &str, path: Option<&str>| -> Vec<PathBuf> {
        let root = PathBuf::from(root);
        let own = path.map(|p| root.join(p.trim_start_matches('/')));
        own.into_iter().chain([root]).collect()
    };
    let try_dirs = |dirs: Vec<PathBuf>, limit: &str, usage: &str| {
        dirs.iter().find_map(|d| limit_left(&read(&d.join(limit))?, &read(&d.join(usage)).unwrap_or_default()))
    };
    try_dirs(under("/sys/fs/cgroup", v2), "memory.max", "memory.current")
        .or_else(|| try_dirs(under("/sys/fs/cgroup/memory", v1), "memory.limit_in_bytes", "memory.usage_in_bytes"))
}

/// `n` zeros of `T`, or an error naming `what` and its size when the allocator cannot provide them
/// (instead of the abort of `vec![0; n]`). Allocated zeroed (calloc: fresh pages come zeroed from the
/// OS), so it costs no fill pass over `vec!`'s.
pub fn try_zeroed_vec<T: bytemuck::Zeroable>(n: usize, what: &str) -> anyhow::Result<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if n == 0 || size == 0 {
        return Ok(Vec::new());
    }
    let failed = || {
        let bytes = (n as u128 * size as u128).min(u64::MAX as u128) as u64;
        anyhow::anyhow!(
            "out of memory: {what} ({n} values of {size} bytes, {}) could not be allocated",
            human_bytes(bytes)
        )
    };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| failed())?;
    // SAFETY: the layout's size is non-zero (n > 0, T is not zero-sized), as alloc_zeroed requires.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(failed());
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `n` T's (exactly what a Vec
    // of capacity n uses), all n elements are initialised (all-zero bytes are a valid T: Zeroable),
    // and the Vec becomes the allocation's only owner.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max address space         4096000000           unlimited            bytes     \n\
        Max file locks            unlimited            unlimited            locks     \n";
    const STATUS: &str = "Name:\thrk\nVmPeak:\t  200000 kB\nVmSize:\t  100000 kB\nVmRSS:\t   5000 kB\n";

    #[test]
    fn address_space_is_the_soft_limit_less_the_mapped_size() {
        assert_eq!(address_space_left(LIMITS, STATUS), Some(4096000000 - 100000 * 1024));
        let unlimited = LIMITS.replace("4096000000          ", "unlimited           ");
        assert_eq!(address_space_left(&unlimited, STATUS), None);
        assert_eq!(address_space_left("", STATUS), None);
        // Mapped beyond the limit (lowered after start): nothing left, not an underflow.
        assert_eq!(address_space_left(LIMITS, "VmSize:\t 9000000 kB\n"), Some(0));
    }

    #[test]
    fn meminfo_gives_mem_available_in_bytes() {
        let m = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(m), Some(20000000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn cgroup_limits_max_and_v1_unlimited_set_no_bound() {
        assert_eq!(limit_left("4294967296\n", "1073741824\n"), Some(3 << 30));
        assert_eq!(limit_left("max\n", "1073741824\n"), None);
        assert_eq!(limit_left("9223372036854771712\n", "5\n"), None);
        assert_eq!(limit_left("1000\n", "5000\n"), Some(0));
        assert_eq!(limit_left("1000\n", ""), Some(1000));
    }

    #[test]
    fn an_impossible_allocation_is_an_error_naming_the_buffer() {
        // 256 TiB: more than x86-64's user address space, refused even with overcommit on.
        let e = try_zeroed_vec::<f32>(1 << 46, "test buffer").unwrap_err().to_string();
        assert_eq!(
            e,
            "out of memory: test buffer (70368744177664 values of 4 bytes, 256.0 TiB) could not be allocated"
        );
        // Past isize::MAX bytes: refused before the allocator is asked.
        let e = try_zeroed_vec::<f64>(usize::MAX / 4, "huge").unwrap_err().to_string();
        assert!(e.starts_with("out of memory: huge ("), "{e}");
        let v = try_zeroed_vec::<f32>(100_000, "small").unwrap();
        assert!(v.len() == 100_000 && v.capacity() == 100_000 && v.iter().all(|&x| x == 0.0));
        assert!(try_zeroed_vec::<u8>(0, "empty").unwrap().is_empty());
    }

    #[test]
    fn the_smallest_source_wins_and_is_named() {
        let cap = available(Some((1 << 20, "HRK_MEMORY_LIMIT_MB"))).unwrap();
        assert!(cap.bytes <= 1 << 20);
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(12), "12 bytes");
        let b = Budget { bytes: 3 << 30, source: Source::AddressSpace };
        assert_eq!(b.to_string(), "3.0 GiB (address-space limit, ulimit -v)");
    }
}
