//! Waiting for something another process does: poll a condition until it
//! holds or a deadline passes.
//!
//! What tests wait on (a log line, a state file, a unit's state inside a
//! container, a tally of replies) has no fd that would tell this process
//! when it changes, so it is polled; every caller names its patience, and
//! nothing is ever asserted after a bare sleep.

use std::fmt::Display;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Calls `check` every `every` until it returns Ok (that value) or
/// `timeout` has passed (the last Err). `check` runs at least once, and
/// once more at or after the deadline.
pub fn poll<T, E>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes
/// (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(timeout, Duration::from_millis(10), || {
        if cond() { Ok(()) } else { Err(()) }
    })
    .is_ok()
}

/// Polls `check` every 20 ms until it returns Ok; after `timeout`, panics
/// naming `what` and the last reason it was not yet so.
pub fn wait_for<T, E: Display>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<T, E>,
) -> T {
    poll(timeout, Duration::from_millis(20), check)
        .unwrap_or_else(|e| panic!("timed out after {timeout:?} waiting for {what}: {e}"))
}

/// Polls `child` every `every` until it exits (its status; it is reaped)
/// or `timeout` passes (None; None at once if it cannot be waited for).
pub fn child_exit(child: &mut Child, timeout: Duration, every: Duration) -> Option<ExitStatus> {
    poll(timeout, every, || match child.try_wait() {
        Ok(Some(status)) => Ok(Some(status)),
        Ok(None) => Err(()),
        Err(_) => Ok(None),
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok() {
        let mut n = 0;
        let r: Result<i32, &str> = poll(Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            if n == 3 { Ok(n) } else { Err("not yet") }
        });
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn gives_up_after_the_deadline_with_the_last_reason() {
        let t0 = Instant::now();
        let mut n = 0;
        let r: Result<(), i32> = poll(Duration::from_millis(50), Duration::from_millis(5), || {
            n += 1;
            Err(n)
        });
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(r, Err(n));
        assert!(!wait_until(Duration::ZERO, || false));
        assert!(wait_until(Duration::ZERO, || true));
    }

    #[test]
    fn child_exit_reaps_or_times_out() {
        let every = Duration::from_millis(5);
        let mut quick = std::process::Command::new("true").spawn().unwrap();
        let st = child_exit(&mut quick, Duration::from_secs(10), every).expect("true exits");
        assert!(st.success());
        let mut slow = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(child_exit(&mut slow, Duration::from_millis(50), every).is_none());
        slow.kill().unwrap();
        slow.wait().unwrap();
    }

    #[test]
    #[should_panic(expected = "waiting for the sky to fall: still up")]
    fn wait_for_panics_naming_what_and_why() {
        wait_for("the sky to fall", Duration::ZERO, || {
            Err::<(), _>("still up")
        });
    }
}
