//! Which process holds an open attempt, told apart from a later process that got the same pid.
//!
//! A pid alone is not an identity: after a power cut the next boot hands out the same small
//! pids again, and a busy machine reuses them within minutes. So an attempt stores its
//! process's pid with the boot it ran in (`/proc/sys/kernel/random/boot_id`, new at every
//! boot) and the process's start time (field 22 of `/proc/<pid>/stat`, in clock ticks since
//! that boot). The process still runs only if the boot is the same and a process with that pid
//! started at that very tick (proc(5)).

use std::sync::OnceLock;

/// A process as an attempt records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStamp {
    /// The pid.
    pub pid: i64,
    /// The boot it ran in, when the system says (Linux).
    pub boot_id: Option<String>,
    /// When it started, in clock ticks since boot, when the system says (Linux).
    pub started: Option<i64>,
}

impl ProcessStamp {
    /// This process.
    pub fn current() -> &'static ProcessStamp {
        static CURRENT: OnceLock<ProcessStamp> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let pid = i64::from(std::process::id());
            ProcessStamp {
                pid,
                boot_id: boot_id(),
                started: start_ticks(pid),
            }
        })
    }

    /// Whether the process this stamp names still runs. This process's own pid counts as not
    /// running: a row with it was left by an earlier process that had the same pid, or is one
    /// this process gives up on (the line's drain timeout).
    pub fn is_running(&self) -> bool {
        let own = ProcessStamp::current();
        if self.pid <= 0 || self.pid == own.pid {
            return false;
        }
        if let (Some(recorded), Some(now)) = (&self.boot_id, &own.boot_id)
            && recorded != now
        {
            // Recorded before the last boot: nothing of that boot runs any more.
            return false;
        }
        match (self.started, start_ticks(self.pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            // The pid is not in /proc: gone (or /proc is unavailable, asked below).
            (Some(_), None) if std::path::Path::new("/proc/self/stat").exists() => false,
            // A row from before stamps were kept, or a system without /proc: the pid alone.
            _ => pid_exists(self.pid),
        }
    }
}

/// The current boot's id.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// A process's start time in clock ticks since boot: field 22 of `/proc/<pid>/stat`. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// closing parenthesis.
fn start_ticks(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: field 22 is the 20th of them.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether any process has this pid (a signal 0 reaches it, or would but is not permitted).
fn pid_exists(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno == nix::errno::Errno::EPERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_told_from_a_reused_pid_and_an_earlier_boot() {
        let own = ProcessStamp::current();
        assert!(own.boot_id.is_some() && own.started.is_some(), "{own:?}");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i64::from(child.id());
        let running = ProcessStamp {
            pid,
            boot_id: own.boot_id.clone(),
            started: start_ticks(pid),
        };
        assert!(running.is_running());
        // The same pid, started at another tick: a reused pid.
        let reused = ProcessStamp {
            started: running.started.map(|t| t + 1),
            ..running.clone()
        };
        assert!(!reused.is_running());
        // The same pid and tick, but recorded in another boot (a power cut since).
        let earlier_boot = ProcessStamp {
            boot_id: Some("00000000-0000-0000-0000-000000000000".to_owned()),
            ..running.clone()
        };
        assert!(!earlier_boot.is_running());
        // A row without stamps falls back to the pid alone.
        let bare = ProcessStamp {
            pid,
            boot_id: None,
            started: None,
        };
        assert!(bare.is_running());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!running.is_running());
        assert!(!own.is_running(), "this process's own pid counts as gone");
    }

    #[test]
    fn start_time_is_read_past_a_name_with_spaces_and_parentheses() {
        // The test binary's own stat; the parser must find the same field however named.
        let own = i64::from(std::process::id());
        let stat = std::fs::read_to_string(format!("/proc/{own}/stat")).unwrap();
        let expected: i64 = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(start_ticks(own), Some(expected));
    }
}
