//! What the benchmarks read about processes from /proc: CPU time and peak
//! memory of the operator, the apiserver and PostgreSQL.

use std::fmt::Display;
use std::process::Command;

/// Clock ticks per second, the unit of /proc/<pid>/stat times.
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of /proc/<pid>/stat after the command name (state first,
/// then ppid, …; utime and stime at 11 and 12). The name may hold spaces,
/// so fields start after the last ')'. `pid` may be `self`.
pub fn stat_fields(pid: impl Display) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn field(fields: &[String], i: usize) -> Option<u64> {
    fields.get(i)?.parse().ok()
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: impl Display) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(field(&f, 11)? + field(&f, 12)?)
}

/// (ppid, utime + stime + cutime + cstime): a process's CPU time with that
/// of the children it has reaped, in clock ticks.
pub fn ppid_and_ticks_with_children(pid: impl Display) -> Option<(u32, u64)> {
    let f = stat_fields(pid)?;
    let ppid = u32::try_from(field(&f, 1)?).ok()?;
    Some((
        ppid,
        field(&f, 11)? + field(&f, 12)? + field(&f, 13)? + field(&f, 14)?,
    ))
}

/// Peak resident memory (VmHWM) of a process, in KiB; 0 when unreadable.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
