//! Progress of long work: a bar on a terminal; without one (CI, `nohup`, a pipe), plain
//! lines on stderr — at every tenth of the work and at least every 30 s — so that a log
//! shows how far a run got and how long the rest will take. `--quiet` silences both.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// At most this long between two plain lines while work goes on.
const PLAIN_EVERY: Duration = Duration::from_secs(30);

struct Plain {
    label: String,
    unit: &'static str,
    start: Instant,
    /// (time of the last line, tenths of the work reported so far).
    last: Mutex<(Instant, u64)>,
}

/// A progress report (see the module docs).
pub struct Progress {
    bar: ProgressBar,
    plain: Option<Plain>,
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Progress {
    /// `label` names the work in plain lines; `unit` what is counted; `template` is the
    /// terminal bar's indicatif template.
    pub fn new(label: &str, unit: &'static str, template: &str, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = if quiet || !terminal {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let now = Instant::now();
        let plain = (!quiet && !terminal).then(|| Plain {
            label: label.to_string(),
            unit,
            start: now,
            last: Mutex::new((now, 0)),
        });
        Self { bar, plain }
    }

    /// The terminal bar (for messages and styles of its own).
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// `done` of `total` finished: the bar and the plain lines.
    pub fn update(&self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.report(done, total);
    }

    /// The plain lines only (for work whose bar counts something else, e.g. bytes).
    pub fn report(&self, done: u64, total: u64) {
        let Some(p) = &self.plain else { return };
        if total == 0 {
            return;
        }
        let tenths = done.saturating_mul(10) / total;
        let Ok(mut last) = p.last.lock() else { return };
        let now = Instant::now();
        if tenths <= last.1 && now.duration_since(last.0) < PLAIN_EVERY && done < total {
            return;
        }
        if done == total && last.1 >= 10 {
            return;
        }
        *last = (now, tenths.max(last.1));
        let elapsed = now.duration_since(p.start);
        let eta = if done > 0 && done < total {
            let rest = elapsed.mul_f64((total - done) as f64 / done as f64);
            format!(", eta {}", seconds(rest))
        } else {
            String::new()
        };
        eprintln!(
            "{}: {done}/{total} {} ({}%), {}{eta}",
            p.label,
            p.unit,
            done * 100 / total,
            seconds(elapsed)
        );
    }

    /// Remove the bar (plain lines stay in the log).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Work in a few long phases with nothing to count (`convert`: reading, then writing): a
/// spinner naming the phase on a terminal; without one, a plain line as each phase begins,
/// with the time since the first.
pub struct Phases {
    bar: ProgressBar,
    plain: Option<Instant>,
}

impl Phases {
    pub fn new(message: &str) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        let phases = Self {
            bar,
            plain: (!terminal).then(Instant::now),
        };
        phases.set(message);
        phases
    }

    /// The next phase begins.
    pub fn set(&self, message: &str) {
        self.bar.set_message(message.to_string());
        if let Some(start) = self.plain {
            eprintln!("{message} ({})", seconds(start.elapsed()));
        }
    }

    /// Remove the spinner (plain lines stay in the log).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
