//! Who answers for an act: the one rule, used for batches, attempts, exports and audit entries.
//!
//! In order: the name given on the command line (`--operator`), else `$STATION_OPERATOR` (the
//! person at the station now), else, for an attempt in a batch, the operator who opened the
//! batch, else the login name (`$USER`), else `unknown`. Blank values count as absent.

/// Resolves who answers for an act; `batch_operator` is given for a unit's attempt (the batch it
/// runs in).
pub fn resolve(named: Option<&str>, batch_operator: Option<&str>) -> String {
    let env = |name: &str| std::env::var(name).ok();
    resolve_with(named, batch_operator, env)
}

/// [`resolve`] over an environment lookup (tests pass their own).
fn resolve_with(
    named: Option<&str>,
    batch_operator: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> String {
    let present = |value: &&str| !value.trim().is_empty();
    named
        .filter(present)
        .map(str::to_owned)
        .or_else(|| env("STATION_OPERATOR").filter(|v| present(&v.as_str())))
        .or_else(|| batch_operator.filter(present).map(str::to_owned))
        .or_else(|| env("USER").filter(|v| present(&v.as_str())))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_named_operator_wins_then_the_station_then_the_batch_then_the_login() {
        let all = [("STATION_OPERATOR", "ana"), ("USER", "root")];
        assert_eq!(resolve_with(Some("bo"), Some("cy"), env(&all)), "bo");
        assert_eq!(resolve_with(None, Some("cy"), env(&all)), "ana");
        assert_eq!(resolve_with(Some("  "), None, env(&all)), "ana");
        let login = [("STATION_OPERATOR", " "), ("USER", "root")];
        assert_eq!(resolve_with(None, Some("cy"), env(&login)), "cy");
        assert_eq!(resolve_with(None, None, env(&login)), "root");
        assert_eq!(resolve_with(None, Some(""), env(&[])), "unknown");
    }
}
