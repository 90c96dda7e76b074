//! Raising this process's open-file limit. (Reading /proc is `bench_support::procfs`.)

/// Raises the soft RLIMIT_NOFILE to at least `wanted` (capped at the hard limit); returns the
/// soft limit now in force.
pub fn raise_nofile(wanted: u64) -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    let new = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard)?;
    Ok(new)
}
