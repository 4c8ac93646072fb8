//! What keeps `fer serve` answering under hostile clients: its own accept loop over hyper, with
//! a header read timeout per connection and a cap on open connections, and the admission
//! permits a request takes before its body is read.
//!
//! Slow clients lose to fresh ones. At the cap, a new connection closes the oldest one that is
//! not waiting on inference (idle, or still sending its request); when every admission permit
//! is held, a new request closes the oldest connection that has been sending its body for over
//! [`STALLED`]. So a thousand stalled uploads cost their own connections, not the next honest
//! request, and the stalled connections that remain are closed when their timeouts end.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A body still arriving after this is a stalled upload, which a new request may displace when
/// the server is full; honest uploads over loopback or a LAN finish well within it.
pub const STALLED: Duration = Duration::from_secs(2);

const NOT_SENDING: u64 = u64::MAX;

/// One open connection, as the limits see it.
pub struct Connection {
    id: u64,
    /// Since when (milliseconds from the limits' start) it holds an admission permit while its
    /// body arrives; NOT_SENDING otherwise.
    sending_body_since: AtomicU64,
    /// Its request is with the inference threads: never closed for another.
    waiting_on_inference: AtomicBool,
    /// The admission permit its request holds: kept here so that a request displacing this
    /// connection takes the very permit over, before a newer upload can.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    closed: Notify,
}

impl Connection {
    /// Resolves when the limits close this connection for a newer one.
    pub async fn closed_for_another(&self) {
        self.closed.notified().await
    }
}

/// The open connections, oldest first, and the admission permits.
pub struct Limits {
    max_connections: usize,
    open: Mutex<VecDeque<Arc<Connection>>>,
    next_id: AtomicU64,
    permits: Arc<Semaphore>,
    started: Instant,
}

impl Limits {
    /// `max_connections` open at once (lowered to fit the process's open-file limit), and
    /// `admitted` requests past their headers at once (reading a body, queued or in inference).
    pub fn new(max_connections: usize, admitted: usize) -> Limits {
        Limits {
            max_connections: max_connections.min(open_file_room()).max(1),
            open: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(admitted.max(1))),
            started: Instant::now(),
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Registers a new connection; at the cap, first closes the oldest one not waiting on
    /// inference.
    pub fn open(&self) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            sending_body_since: AtomicU64::new(NOT_SENDING),
            waiting_on_inference: AtomicBool::new(false),
            permit: Mutex::new(None),
            closed: Notify::new(),
        });
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.max_connections {
            close_oldest_idle(&mut open);
        }
        open.push_back(connection.clone());
        connection
    }

    pub fn close(&self, connection: &Connection) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| c.id != connection.id);
    }

    /// Closes the oldest connection, for an accept that failed for want of file descriptors.
    pub fn close_oldest_idle(&self) {
        close_oldest_idle(&mut self.open.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// An admission permit for a request about to send its body (on `connection` when it
    /// came through the accept loop). When none is free, the oldest connection whose body has
    /// been arriving for over [`STALLED`] is closed and its permit handed to this request; None
    /// when there is none.
    pub fn admit(&self, connection: Option<&Arc<Connection>>) -> Option<Admission> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // Nothing has been arriving for longer than STALLED while the server is younger.
                let stalled_before = self.now_ms().checked_sub(STALLED.as_millis() as u64);
                let victim = stalled_before.and_then(|before| {
                    let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                    open.iter()
                        .find(|c| {
                            let since = c.sending_body_since.load(Ordering::Acquire);
                            since != NOT_SENDING && since <= before && connection.is_none_or(|me| me.id != c.id)
                        })
                        .cloned()
                });
                victim.and_then(|v| {
                    v.sending_body_since.store(NOT_SENDING, Ordering::Release);
                    v.closed.notify_one();
                    v.permit.lock().unwrap_or_else(|e| e.into_inner()).take()
                })
            }
        }?;
        let own = match connection {
            Some(c) => {
                c.sending_body_since.store(self.now_ms(), Ordering::Release);
                *c.permit.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
                None
            }
            None => Some(permit),
        };
        Some(Admission { own, connection: connection.cloned() })
    }
}

/// Tells the oldest of `open` not waiting on inference to close, and forgets it.
fn close_oldest_idle(open: &mut VecDeque<Arc<Connection>>) {
    if let Some(i) = open.iter().position(|c| !c.waiting_on_inference.load(Ordering::Acquire)) {
        open.remove(i).expect("a position in the queue").closed.notify_one();
    }
}

/// A request's admission: while it lives, the request holds one of the permits (on its
/// connection, where it has one).
pub struct Admission {
    own: Option<OwnedSemaphorePermit>,
    connection: Option<Arc<Connection>>,
}

impl Admission {
    /// The body is in: from now on the request waits on inference and its connection stays.
    pub fn body_received(&self) {
        if let Some(c) = &self.connection {
            c.sending_body_since.store(NOT_SENDING, Ordering::Release);
            c.waiting_on_inference.store(true, Ordering::Release);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        drop(self.own.take());
        if let Some(c) = &self.connection {
            // Released here, unless a newer request took it over when it closed this one.
            drop(c.permit.lock().unwrap_or_else(|e| e.into_inner()).take());
            c.sending_body_since.store(NOT_SENDING, Ordering::Release);
            c.waiting_on_inference.store(false, Ordering::Release);
        }
    }
}

/// Connections the process can still open files for: its soft open-file limit less a margin
/// for the model files, the listener and the runtime.
fn open_file_room() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given, nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    (limit.rlim_cur as usize).saturating_sub(64).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_connection_not_in_inference_is_closed() {
        let limits = Limits::new(2, 4);
        let a = limits.open();
        let b = limits.open();
        a.waiting_on_inference.store(true, Ordering::Release);
        let _c = limits.open();
        assert_eq!(limits.open_connections(), 2);
        // b was closed, not a (which waits on inference): b's notice is already there to take,
        // a has none (one poll each, no timer).
        use std::future::Future;
        let told = |c: &Connection| {
            let notice = std::pin::pin!(c.closed_for_another());
            notice.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready()
        };
        assert!(told(&b), "b is told to close");
        assert!(!told(&a), "a stays");
    }

    #[test]
    fn a_request_without_a_permit_takes_over_the_permit_of_the_oldest_stalled_upload() {
        let mut limits = Limits::new(10, 1);
        // A server up for a while: only then can an upload have been arriving that long.
        limits.started = Instant::now().checked_sub(3 * STALLED).unwrap();
        let slow = limits.open();
        let held = limits.admit(Some(&slow)).expect("a free permit");
        let fresh = limits.open();
        // A body that has just begun is not stalled: no one is closed for the fresh request.
        assert!(limits.admit(Some(&fresh)).is_none());
        // Backdated to the server's start, it has been arriving for longer than STALLED: the
        // fresh request takes its permit at once, and the slow one is told to close.
        slow.sending_body_since.store(0, Ordering::Release);
        let admitted = limits.admit(Some(&fresh)).expect("the slow upload's permit");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), slow.closed_for_another()).await.expect("the slow upload is closed");
        });
        // Its handler ends without giving back a permit it no longer has: still one in use.
        drop(held);
        assert_eq!(limits.permits.available_permits(), 0);
        // With the body in, the request waits on inference: a third finds no one to displace.
        admitted.body_received();
        let third = limits.open();
        assert!(limits.admit(Some(&third)).is_none());
        drop(admitted);
        assert_eq!(limits.permits.available_permits(), 1, "given back when the request ends");
    }
}
