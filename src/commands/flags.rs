//! Value parsers for the flags that are not plain text: every duration and every slot list is
//! checked once, when clap parses it, and arrives as a [`Duration`] or [`SlotOverrides`].
//! clap names the flag in the error ("invalid value 'inf' for '--grace <SECS>': …"), so a
//! bad value never reaches the command (where `Duration::from_secs_f64` would panic on it).

use crate::resources::SlotOverrides;
use std::time::Duration;

/// The longest any duration flag may be: longer is a typo (a week of grace, of idling, of a
/// silent worker keeping its units).
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// Seconds in `[min, MAX_SECONDS]`; `min_exclusive` makes the lower bound strict.
fn seconds_within(text: &str, min: f64, min_exclusive: bool) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds (e.g. 30 or 2.5)"))?;
    if !value.is_finite() {
        return Err(format!(
            "`{text}` is not a finite number of seconds (e.g. 30 or 2.5)"
        ));
    }
    let below = if min_exclusive {
        value <= min
    } else {
        value < min
    };
    if below {
        return Err(if min_exclusive {
            format!("{value} s: give more than {min} seconds")
        } else {
            format!("{value} s: give at least {min} seconds")
        });
    }
    if value > MAX_SECONDS {
        return Err(format!(
            "{value} s is more than a week ({MAX_SECONDS} s), the most this flag takes"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `--grace`, `--exit-when-idle`: zero or more seconds.
pub fn seconds(text: &str) -> Result<Duration, String> {
    seconds_within(text, 0.0, false)
}

/// `--lease-timeout`: more than zero seconds (a lease of no time expires at once).
pub fn positive_seconds(text: &str) -> Result<Duration, String> {
    seconds_within(text, 0.0, true)
}

/// `--slots cpu=4,gpu=1`.
pub fn slots(text: &str) -> Result<SlotOverrides, String> {
    SlotOverrides::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked_when_parsed() {
        assert_eq!(seconds("30").unwrap(), Duration::from_secs(30));
        assert_eq!(seconds("0").unwrap(), Duration::ZERO);
        assert_eq!(positive_seconds("0.5").unwrap(), Duration::from_millis(500));
        for (bad, says) in [
            ("inf", "not a finite number"),
            ("NaN", "not a finite number"),
            ("-1", "at least 0"),
            ("1e30", "more than a week"),
            ("ten", "not a number of seconds"),
            ("", "not a number of seconds"),
        ] {
            let err = seconds(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(positive_seconds("0").unwrap_err().contains("more than 0"));
    }
}
