//! Small helpers every layer shares, kept in one place so that they behave the same
//! everywhere: locking a mutex that a panicking thread may have poisoned, an error with its
//! causes as text, and echoing what someone typed without printing all of it.

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

/// The most characters of a value an error message echoes.
pub const SHOWN_CHARS: usize = 64;

/// `text` as an error message echoes it: whole when short, else its first characters and how
/// long it was. A 100 kB station id or a 309-digit number pasted by mistake must not flood a
/// terminal, a log or a ticket.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => {
            std::borrow::Cow::Owned(format!("{}... ({} bytes in all)", &text[..cut], text.len()))
        }
    }
}

/// The longest run without whitespace a rendered message keeps whole (a path is shorter).
const LONGEST_WORD: usize = 256;
/// The most characters a rendered message keeps.
const LONGEST_MESSAGE: usize = 4096;

/// A message bounded for display: every run of more than 256 characters without whitespace is
/// cut like [`shown`], and the whole is cut at 4096 characters. The last line of defence for
/// text that echoes input from places [`shown`] was not applied to (an argument parser's own
/// errors, a library's).
pub fn bounded(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(LONGEST_MESSAGE));
    let mut rest = message;
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(word_end);
        if word.chars().nth(LONGEST_WORD).is_some() {
            out.push_str(&shown(word));
        } else {
            out.push_str(word);
        }
        let space_end = tail
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(tail.len());
        out.push_str(&tail[..space_end]);
        rest = &tail[space_end..];
    }
    if let Some((cut, _)) = out.char_indices().nth(LONGEST_MESSAGE) {
        let total = out.len();
        out.truncate(cut);
        out.push_str(&format!("... (message cut; {total} bytes in all)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_shown_cut_with_their_length() {
        assert_eq!(shown("line1-st1"), "line1-st1");
        let long = "x".repeat(100_000);
        let cut = shown(&long);
        assert!(cut.len() < 100, "{cut}");
        assert!(cut.ends_with("... (100000 bytes in all)"), "{cut}");
        let digits = "9".repeat(309);
        let message = bounded(&format!("invalid value '{digits}' for '--target <TARGET>'"));
        assert!(!message.contains(&digits[..100]), "{message}");
        assert!(message.contains("(311 bytes in all)"), "{message}");
        assert!(message.ends_with("for '--target <TARGET>'"), "{message}");
        let spaced = "a ".repeat(10_000);
        assert!(bounded(&spaced).len() < 4200);
        // Multi-byte characters are cut on a character boundary.
        assert!(shown(&"é".repeat(100)).starts_with(&"é".repeat(64)));
    }

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
