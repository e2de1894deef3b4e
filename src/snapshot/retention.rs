//! Retention: which snapshots `snapshots prune` keeps. Pure, so every rule
//! is unit-tested without storage.

use std::time::Duration;

use super::found::Found;

/// Which snapshots to keep: the `keep_last` newest, all younger than
/// `keep_within`, and always the newest. `found` is oldest first.
pub fn keep(
    found: &[Found],
    keep_last: usize,
    keep_within: Option<Duration>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<bool> {
    let created: Vec<_> = found.iter().map(|f| f.manifest.created_at).collect();
    keep_times(&created, keep_last, keep_within, now)
}

/// The same rules for anything taken at the given times, oldest first
/// (restore points are kept by them too).
pub fn keep_times(
    created: &[chrono::DateTime<chrono::Utc>],
    keep_last: usize,
    keep_within: Option<Duration>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<bool> {
    let n = created.len();
    created
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let rank_from_newest = n - 1 - i;
            let young = keep_within.is_some_and(|w| {
                now.signed_duration_since(*at)
                    .to_std()
                    .map(|age| age <= w)
                    .unwrap_or(true)
            });
            rank_from_newest == 0 || rank_from_newest < keep_last || young
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::Manifest;

    fn found(id: &str, created: chrono::DateTime<chrono::Utc>) -> Found {
        Found {
            base: format!("dev/svc/{id}"),
            manifest: Manifest::empty_for_test(id, created),
        }
    }

    /// Five snapshots, a day apart, oldest first; the newest is a day old.
    fn five_days(now: chrono::DateTime<chrono::Utc>) -> Vec<Found> {
        (0..5)
            .map(|i| found(&format!("s{i}"), now - chrono::Duration::days(5 - i)))
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let now = chrono::Utc::now();
        let keep = keep(&five_days(now), 2, None, now);
        assert_eq!(keep, [false, false, false, true, true]);
    }

    #[test]
    fn the_newest_snapshot_is_always_kept() {
        let now = chrono::Utc::now();
        let keep = keep(&five_days(now), 0, Some(Duration::from_secs(60)), now);
        assert_eq!(keep, [false, false, false, false, true]);
    }

    #[test]
    fn keep_within_keeps_every_snapshot_younger_than_the_window() {
        let now = chrono::Utc::now();
        let window = Duration::from_secs(3 * 86_400 + 60);
        let keep = keep(&five_days(now), 1, Some(window), now);
        assert_eq!(keep, [false, false, true, true, true]);
    }

    #[test]
    fn both_rules_keep_the_union() {
        let now = chrono::Utc::now();
        let window = Duration::from_secs(86_400 + 60);
        let keep = keep(&five_days(now), 3, Some(window), now);
        assert_eq!(keep, [false, false, true, true, true]);
    }

    #[test]
    fn a_snapshot_from_the_future_counts_as_young() {
        let now = chrono::Utc::now();
        let found = vec![
            found("future", now + chrono::Duration::hours(1)),
            found("newest", now + chrono::Duration::hours(2)),
        ];
        let keep = keep(&found, 1, Some(Duration::from_secs(1)), now);
        assert_eq!(keep, [true, true]);
    }

    #[test]
    fn nothing_to_keep_from_nothing() {
        assert!(keep(&[], 3, None, chrono::Utc::now()).is_empty());
    }
}
