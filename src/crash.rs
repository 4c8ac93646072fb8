//! Crash points for the tests that break things on purpose: `FER_CRASH_AT=<point>:<n>` ends the
//! process the n-th time it reaches `point` (n defaults to 1), at once and without cleaning up,
//! as a power cut or SIGKILL would; `FER_PANIC_AT=<point>:<n>` panics there instead, as a bug
//! would; `FER_HOLD_AT=<point>=<file>` holds the thread there while the file exists. Unset
//! (always, outside those tests), a crash point is a lookup of one environment variable.

use std::collections::HashMap;
use std::sync::Mutex;

static REACHED: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

/// The (point, n) that the variable names, if any.
fn target(variable: &str) -> Option<(String, usize)> {
    let spec = std::env::var(variable).ok()?;
    match spec.rsplit_once(':') {
        Some((point, n)) if n.parse::<usize>().is_ok() => Some((point.to_string(), n.parse().unwrap())),
        _ => Some((spec, 1)),
    }
}

/// Whether `variable` names this point and this is its n-th visit.
fn reached(variable: &str, name: &str) -> Option<usize> {
    let (point, n) = target(variable)?;
    if point != name {
        return None;
    }
    let mut reached = REACHED.lock().unwrap_or_else(|e| e.into_inner());
    let count = reached.get_or_insert_with(HashMap::new).entry(format!("{variable}:{point}")).or_insert(0);
    *count += 1;
    (*count == n).then_some(n)
}

/// Panics here if `FER_PANIC_AT` names this point and this is its n-th visit.
pub fn panic_point(name: &str) {
    if let Some(n) = reached("FER_PANIC_AT", name) {
        panic!("fer: panicking on purpose at {name} (visit {n}; FER_PANIC_AT)");
    }
}

/// Waits here while the file that `FER_HOLD_AT=<point>=<file>` names exists, after writing
/// `<file>.reached`, so that a test can hold a thread at a known place (a server's worker busy
/// for as long as the test needs) and let it go by deleting the file.
pub fn hold_point(name: &str) {
    let Ok(spec) = std::env::var("FER_HOLD_AT") else { return };
    let Some((point, file)) = spec.split_once('=') else { return };
    if point != name {
        return;
    }
    let file = std::path::Path::new(file);
    let _ = std::fs::write(file.with_extension("reached"), name);
    while file.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Ends the process here if `FER_CRASH_AT` names this point and this is its n-th visit.
pub fn point(name: &str) {
    if let Some(n) = reached("FER_CRASH_AT", name) {
        eprintln!("fer: crashing on purpose at {name} (visit {n}; FER_CRASH_AT)");
        // SIGKILL, as the kill it stands for: no handler, no unwinding, no core file.
        #[cfg(unix)]
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}
