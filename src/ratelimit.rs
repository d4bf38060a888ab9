//! Fixed-window counters for login attempts (per client IP and per account).
//!
//! Bounded: when more keys than `MAX_KEYS` are tracked, expired windows are
//! dropped, and if that is not enough the oldest half is forgotten (a
//! forgotten key simply starts a new window).

use std::collections::HashMap;
use std::sync::Mutex;

const MAX_KEYS: usize = 100_000;

pub struct Limiter {
    limit: u32,
    window_ms: i64,
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

/// A refusal: try again after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl Limiter {
    pub fn new(limit: u32, window_secs: u64) -> Self {
        Limiter {
            limit: limit.max(1),
            window_ms: i64::try_from(window_secs.max(1).saturating_mul(1000)).unwrap_or(i64::MAX),
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (i64, u32)>) -> T) -> T {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w)
    }

    fn retry_after(&self, start: i64, now: i64) -> RetryAfter {
        let left_ms = (start + self.window_ms - now).max(0);
        RetryAfter(u64::try_from(left_ms).unwrap_or(0).div_ceil(1000).max(1))
    }

    /// Is `key` over its limit right now (without counting)?
    pub fn check(&self, key: &str, now: i64) -> Result<(), RetryAfter> {
        self.with(|w| match w.get(key) {
            Some(&(start, n)) if now < start + self.window_ms && n >= self.limit => {
                Err(self.retry_after(start, now))
            }
            _ => Ok(()),
        })
    }

    /// Count one event for `key`; refused when the limit was already reached.
    /// Returns the count in the window, this event included.
    pub fn hit(&self, key: &str, now: i64) -> Result<u32, RetryAfter> {
        let window_ms = self.window_ms;
        let limit = self.limit;
        let res = self.with(|w| {
            if w.len() >= MAX_KEYS {
                w.retain(|_, (start, _)| now < *start + window_ms);
                if w.len() >= MAX_KEYS {
                    let mut starts: Vec<i64> = w.values().map(|v| v.0).collect();
                    starts.sort_unstable();
                    let cut = starts[starts.len() / 2];
                    w.retain(|_, (start, _)| *start > cut);
                }
            }
            let entry = w.entry(key.to_string()).or_insert((now, 0));
            if now >= entry.0 + window_ms {
                *entry = (now, 0);
            }
            if entry.1 >= limit {
                Err(entry.0)
            } else {
                entry.1 += 1;
                Ok(entry.1)
            }
        });
        res.map_err(|start| self.retry_after(start, now))
    }

    /// The limit per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Forget `key` (e.g. after a successful login).
    pub fn reset(&self, key: &str) {
        self.with(|w| w.remove(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_resets_after_it() {
        let l = Limiter::new(3, 60);
        for _ in 0..3 {
            assert!(l.hit("k", 1_000).is_ok());
        }
        assert_eq!(l.hit("k", 2_000), Err(RetryAfter(59)));
        assert!(l.check("k", 2_000).is_err());
        assert!(l.check("other", 2_000).is_ok());
        assert!(l.hit("k", 61_000).is_ok(), "a new window");
        l.reset("k");
        assert!(l.check("k", 61_000).is_ok());
    }
}
