//! Whether this machine's memory can hold a job of a given size, asked before it starts: a
//! job killed by the OOM killer half way says nothing useful and may leave work half done.

use crate::text::group_digits;

/// Memory the system could give a new process now (`MemAvailable` of `/proc/meminfo`), in
/// bytes; `None` where the system does not say.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_available(&text)
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a job of `count` things needs at its peak: `each` bytes per thing and `fixed` bytes
/// besides.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub each: u64,
    pub fixed: u64,
}

impl Need {
    pub fn of(&self, count: u64) -> u64 {
        count.saturating_mul(self.each).saturating_add(self.fixed)
    }

    /// The most things that fit in `available` bytes.
    pub fn most_in(&self, available: u64) -> u64 {
        available.saturating_sub(self.fixed) / self.each.max(1)
    }

    /// `Err(message)` when `count` things (named `things`, e.g. "tasks") need more than
    /// `available` bytes: how much they need, how much there is, and the most that fit.
    /// `setting` names where the count was asked for (`MVC_BENCH_TASKS`).
    pub fn check(
        &self,
        count: u64,
        things: &str,
        setting: &str,
        available: Option<u64>,
    ) -> Result<(), String> {
        let Some(available) = available else {
            return Ok(());
        };
        let need = self.of(count);
        if need <= available {
            return Ok(());
        }
        Err(format!(
            "{} {things} need about {} MB of memory at their peak (about {} bytes per \
             {}), and this machine has {} MB available; nothing was started. Ask for at most \
             {setting}={}, or run it on a machine with more memory.",
            group_digits(count),
            group_digits(need >> 20),
            self.each,
            things.strip_suffix('s').unwrap_or(things),
            group_digits(available >> 20),
            self.most_in(available)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\n";
        assert_eq!(mem_available(meminfo), Some(2_048_000_000));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn a_size_that_does_not_fit_is_refused_with_what_fits() {
        let need = Need {
            each: 1000,
            fixed: 1 << 20,
        };
        let available = Some(101 << 20);
        assert_eq!(
            need.check(1000, "tasks", "MVC_BENCH_TASKS", available),
            Ok(())
        );
        let refused = need
            .check(1_000_000_000, "tasks", "MVC_BENCH_TASKS", available)
            .unwrap_err();
        assert_eq!(
            refused,
            "1,000,000,000 tasks need about 953,675 MB of memory at their peak (about 1000 \
             bytes per task), and this machine has 101 MB available; nothing was started. Ask \
             for at most MVC_BENCH_TASKS=104857, or run it on a machine with more memory."
        );
        // The most it offers does fit.
        assert_eq!(
            need.check(104_857, "tasks", "MVC_BENCH_TASKS", available),
            Ok(())
        );
        assert!(
            need.check(104_858, "tasks", "MVC_BENCH_TASKS", available)
                .is_err()
        );
        // Without a figure from the system nothing is refused.
        assert_eq!(
            need.check(u64::MAX, "tasks", "MVC_BENCH_TASKS", None),
            Ok(())
        );
    }
}
