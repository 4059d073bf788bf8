//! What the signal that ended a process says about why it ended, in words that say what to
//! check: a SIGKILL from outside is most often the kernel's OOM killer (or a scheduler, or a
//! neighbour), which is the machine's doing, where a SIGSEGV is the program's.

/// `SIGKILL`, `SIGSEGV`… for the signals a task may die of; `signal N` for others.
pub fn name(signal: i32) -> String {
    let known = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    known.to_string()
}

/// "killed by SIGKILL: out of memory? see dmesg" and the like: how a process that `signal`
/// ended died, and where to look.
pub fn death(signal: i32) -> String {
    let name = name(signal);
    match signal {
        libc::SIGKILL => format!(
            "killed by {name}: out of memory? see dmesg (the kernel names the OOM killer's \
             victims there); a job scheduler or another user's kill looks the same"
        ),
        libc::SIGSEGV
        | libc::SIGBUS
        | libc::SIGILL
        | libc::SIGFPE
        | libc::SIGABRT
        | libc::SIGSYS
        | libc::SIGTRAP => format!("crashed ({name})"),
        libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT => {
            format!("stopped by {name} from outside mvc")
        }
        libc::SIGXCPU | libc::SIGXFSZ => {
            format!("killed by {name}: it reached a resource limit (ulimit)")
        }
        _ => format!("killed by {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_name_the_signal_and_what_to_check() {
        assert_eq!(name(libc::SIGKILL), "SIGKILL");
        assert_eq!(name(64), "signal 64");
        assert!(death(libc::SIGKILL).starts_with("killed by SIGKILL: out of memory? see dmesg"));
        assert_eq!(death(libc::SIGSEGV), "crashed (SIGSEGV)");
        assert!(death(libc::SIGTERM).contains("from outside"));
    }
}
