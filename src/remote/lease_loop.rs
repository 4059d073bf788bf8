//! The worker's loop as state changes, without I/O: from what the worker sees (its units,
//! its free slots, how long it has been idle, whether it must register again) it decides to
//! register, to ask for units, to wait or to leave; the answers to its lease requests change
//! that state. `worker.rs` makes the calls and feeds the answers back. The unit tests below
//! drive it with no coordinator, socket or timer.

use crate::resources::Resources;
use std::time::{Duration, Instant};

/// What the worker sees when it decides.
#[derive(Clone, Debug)]
pub struct Seen {
    pub now: Instant,
    /// Whether any unit runs (or reports).
    pub running: bool,
    /// How long since a unit last ran.
    pub idle_for: Duration,
    /// The coordinator does not know this worker (yet, or any more: it restarted).
    pub must_register: bool,
    /// The slots no unit and no lease request holds.
    pub free: Resources,
}

/// What the worker does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Stop: the reason (idle too long, the run is over).
    Leave(String),
    /// Register with the coordinator (no lease request is out).
    Register,
    /// Ask for units for these free slots (reserved until the answer comes).
    Lease(Resources),
    /// Wait for an answer, a unit to end, or the time to ask again.
    Wait,
}

/// The worker's loop state between events.
#[derive(Debug)]
pub struct LeaseLoop {
    /// Set once the worker has decided to leave; a unit that still arrives cancels it.
    leaving: Option<String>,
    /// Lease requests out. The worker never leaves or registers while one is: a unit the
    /// coordinator sent in answer would be lost until its lease expired.
    polls: usize,
    /// No new request before this (after an error, the backoff).
    pause_until: Instant,
    /// `--exit-when-idle`.
    idle_limit: Option<Duration>,
}

impl LeaseLoop {
    pub fn new(now: Instant, idle_limit: Option<Duration>) -> LeaseLoop {
        LeaseLoop {
            leaving: None,
            polls: 0,
            pause_until: now,
            idle_limit,
        }
    }

    /// Lease requests not answered yet.
    #[cfg(test)]
    pub fn polls(&self) -> usize {
        self.polls
    }

    /// What to do now. A [`Next::Lease`] counts as a request out until it is answered.
    pub fn next(&mut self, seen: &Seen) -> Next {
        let idle_too_long = self.idle_limit.is_some_and(|limit| seen.idle_for >= limit);
        if self.leaving.is_none() && !seen.running && idle_too_long {
            self.leaving = Some(format!("idle for {:.0}s", seen.idle_for.as_secs_f64()));
        }
        if let Some(why) = &self.leaving
            && self.polls == 0
            && !seen.running
        {
            return Next::Leave(why.clone());
        }
        if seen.must_register && self.polls == 0 && self.leaving.is_none() {
            return Next::Register;
        }
        let may_poll =
            self.leaving.is_none() && !seen.must_register && seen.now >= self.pause_until;
        if may_poll && !seen.free.is_zero() {
            self.polls += 1;
            return Next::Lease(seen.free);
        }
        Next::Wait
    }

    /// When to look again by itself while paused after an error (none when not paused).
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        (self.leaving.is_none() && now < self.pause_until).then_some(self.pause_until)
    }

    /// A lease request was answered: with a unit (run it: returns true; a unit that arrives
    /// while leaving is run all the same), or with none, and `finished` when the run is over
    /// (a worker with an idle limit then leaves).
    pub fn answered(&mut self, with_unit: bool, finished: bool) -> bool {
        self.polls -= 1;
        if with_unit {
            self.leaving = None;
        } else if finished && self.idle_limit.is_some() {
            self.leaving
                .get_or_insert_with(|| "the run is over".to_string());
        }
        with_unit
    }

    /// A lease request failed (the network, or the coordinator's error): no new one before
    /// `delay` has passed.
    pub fn failed(&mut self, now: Instant, delay: Duration) {
        self.polls -= 1;
        self.pause_until = now + delay;
    }

    /// A lease request was refused because the coordinator does not know this worker: it
    /// registers again once no request is out.
    pub fn unknown(&mut self) {
        self.polls -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(now: Instant, free: u32) -> Seen {
        Seen {
            now,
            running: false,
            idle_for: Duration::ZERO,
            must_register: false,
            free: Resources {
                cpu: free,
                ..Resources::default()
            },
        }
    }

    #[test]
    fn it_registers_first_then_asks_for_its_free_slots_once_per_request() {
        let now = Instant::now();
        let mut l = LeaseLoop::new(now, None);
        let first = Seen {
            must_register: true,
            ..seen(now, 4)
        };
        assert_eq!(l.next(&first), Next::Register);
        assert_eq!(l.next(&seen(now, 4)), Next::Lease(seen(now, 4).free));
        assert_eq!(l.polls(), 1);
        // Its slots are reserved by that request: nothing is free until it is answered.
        assert_eq!(l.next(&seen(now, 0)), Next::Wait);
        assert!(l.answered(true, false), "a unit came: run it");
        assert_eq!(l.polls(), 0);
    }

    #[test]
    fn it_registers_again_only_when_no_request_is_out() {
        let now = Instant::now();
        let mut l = LeaseLoop::new(now, None);
        assert!(matches!(l.next(&seen(now, 2)), Next::Lease(_)));
        let lost = Seen {
            must_register: true,
            ..seen(now, 0)
        };
        assert_eq!(
            l.next(&lost),
            Next::Wait,
            "a request is out: its unit would be lost"
        );
        l.unknown();
        assert_eq!(l.next(&lost), Next::Register);
    }

    #[test]
    fn after_an_error_it_waits_out_the_backoff() {
        let now = Instant::now();
        let mut l = LeaseLoop::new(now, None);
        l.next(&seen(now, 1));
        l.failed(now, Duration::from_secs(2));
        let soon = now + Duration::from_secs(1);
        assert_eq!(l.next(&seen(soon, 1)), Next::Wait);
        assert_eq!(l.wake_at(soon), Some(now + Duration::from_secs(2)));
        let later = now + Duration::from_secs(2);
        assert_eq!(
            l.wake_at(later),
            None,
            "not paused any more: no spin on a past instant"
        );
        assert!(matches!(l.next(&seen(later, 1)), Next::Lease(_)));
    }

    #[test]
    fn an_idle_worker_leaves_once_its_requests_are_answered_and_a_late_unit_keeps_it() {
        let now = Instant::now();
        let mut l = LeaseLoop::new(now, Some(Duration::from_secs(30)));
        assert!(matches!(l.next(&seen(now, 1)), Next::Lease(_)));
        let idle = Seen {
            idle_for: Duration::from_secs(31),
            ..seen(now, 0)
        };
        assert_eq!(l.next(&idle), Next::Wait, "a request is out");
        // A unit arrives in answer: the worker stays and runs it.
        assert!(l.answered(true, false));
        let busy = Seen {
            running: true,
            ..idle.clone()
        };
        assert_eq!(
            l.next(&busy),
            Next::Wait,
            "never leaves with a unit running"
        );
        assert_eq!(l.next(&idle), Next::Leave("idle for 31s".into()));
    }

    #[test]
    fn a_worker_with_an_idle_limit_leaves_when_the_run_is_over() {
        let now = Instant::now();
        let mut with_limit = LeaseLoop::new(now, Some(Duration::from_secs(600)));
        with_limit.next(&seen(now, 1));
        assert!(!with_limit.answered(false, true));
        assert_eq!(
            with_limit.next(&seen(now, 1)),
            Next::Leave("the run is over".into())
        );

        let mut without = LeaseLoop::new(now, None);
        without.next(&seen(now, 1));
        without.answered(false, true);
        assert!(
            matches!(without.next(&seen(now, 1)), Next::Lease(_)),
            "without a limit it waits for the next run"
        );
    }
}
