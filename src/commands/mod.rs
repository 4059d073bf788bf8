//! The CLI verbs beyond `run` and `plan`: `why`, `status`, `gc` and `export` (their output
//! formatting; the work is in `store` and `exec`).

pub mod export;
pub mod gc;
pub mod status;
pub mod why;

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
