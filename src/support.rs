//! Two small helpers every layer shares, kept in one place so that they behave the same
//! everywhere: locking a mutex that a panicking thread may have poisoned, and an error with its
//! causes as text.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, carrying on if a thread panicked while holding it.
///
/// Every mutex in the station guards counters, queues or logs that stay meaningful after a
/// holder died (a simulator thread, an HTTP handler): the line keeps running and tests can still
/// inspect the state, instead of one panic cascading into every other thread.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The messages of an error and its sources, outermost first.
///
/// Library errors often keep the interesting part in a source (reqwest's "error sending
/// request" hides the refused connection; espflash wraps the serial error), so both
/// classification and messages look at the whole chain.
pub fn error_chain(error: &dyn std::error::Error) -> Vec<String> {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        messages.push(cause.to_string());
        source = cause.source();
    }
    messages
}

/// [`error_chain`] as one line, the messages joined by `: `.
pub fn error_chain_text(error: &dyn std::error::Error) -> String {
    error_chain(error).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_lists_every_cause_outermost_first() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&error), ["outer", "inner"]);
        assert_eq!(error_chain_text(&error), "outer: inner");
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_value() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let held = std::sync::Arc::clone(&mutex);
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("a holder dies");
        })
        .join();
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }
}
