//! Process measurements from /proc (CPU time, faults, RSS sampling, I/O), the merge's phase
//! clock, and the report's number formatting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use temper_merge::Progress;

pub(crate) fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stat {
    pub(crate) user_s: f64,
    pub(crate) sys_s: f64,
    pub(crate) minflt: u64,
    pub(crate) majflt: u64,
    pub(crate) threads: u64,
}

/// `/proc/self/stat`: times of all threads of the process, live and exited (USER_HZ = 100).
pub(crate) fn proc_stat() -> Stat {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return Stat::default();
    };
    let Some((_, rest)) = s.rsplit_once(") ") else {
        return Stat::default();
    };
    // rest starts at field 3 (state); field k is rest[k - 3].
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |k: usize| {
        f.get(k - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Stat {
        minflt: num(10),
        majflt: num(12),
        user_s: num(14) as f64 / 100.0,
        sys_s: num(15) as f64 / 100.0,
        threads: num(20),
    }
}

pub(crate) fn proc_io(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/io").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
}

pub(crate) fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// Samples VmRSS and RssAnon (kB) every 2 ms; `reset` starts a new window.
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    anon: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rss = Arc::new(AtomicU64::new(0));
        let anon = Arc::new(AtomicU64::new(0));
        let (s, r, a) = (stop.clone(), rss.clone(), anon.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string("/proc/self/status") {
                    for line in text.lines() {
                        let kb = |l: &str| {
                            l.split_whitespace()
                                .nth(1)
                                .and_then(|v| v.parse::<u64>().ok())
                        };
                        let target = if line.starts_with("VmRSS:") {
                            &r
                        } else if line.starts_with("RssAnon:") {
                            &a
                        } else {
                            continue;
                        };
                        if let Some(v) = kb(line) {
                            target.fetch_max(v, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            stop,
            rss,
            anon,
            handle: Some(handle),
        }
    }

    pub(crate) fn reset(&self) {
        self.rss.store(0, Ordering::Relaxed);
        self.anon.store(0, Ordering::Relaxed);
        // Reset VmHWM as well (Linux ≥ 4.0); harmless if refused.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    /// (peak VmRSS, peak RssAnon) in kB since the last reset.
    pub(crate) fn peaks(&self) -> (u64, u64) {
        // One more sample so a very short window is not empty.
        let rss = status_kb("VmRSS").unwrap_or(0);
        let anon = status_kb("RssAnon").unwrap_or(0);
        (
            self.rss.load(Ordering::Relaxed).max(rss),
            self.anon.load(Ordering::Relaxed).max(anon),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Records when execution starts and when the last tensor is done (phase split of a run).
#[derive(Debug, Default)]
pub(crate) struct PhaseClock {
    pub(crate) start: Mutex<Option<Instant>>,
    pub(crate) last: Mutex<Option<Instant>>,
}

impl Progress for PhaseClock {
    fn start(&self, _tensors: usize, _bytes: u64) {
        if let Ok(mut s) = self.start.lock() {
            *s = Some(Instant::now());
        }
    }

    fn tensor_done(&self, _name: &str, _bytes: u64) {
        if let Ok(mut s) = self.last.lock() {
            *s = Some(Instant::now());
        }
    }
}

pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn mib(kb: u64) -> f64 {
    round3(kb as f64 / 1024.0)
}
