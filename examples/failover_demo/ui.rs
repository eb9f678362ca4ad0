//! The terminal: one live progress line (indicatif) with every other line printed above it,
//! the pool's own log lines included (a logger that suspends the bar while it writes, so log
//! lines never tear the bar).

use std::io::Write as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The progress line and the clock every printed line is stamped with.
#[derive(Clone)]
pub struct Ui {
    bar: ProgressBar,
    start: Instant,
}

impl Ui {
    /// Starts the spinner and installs the logger (`RUST_LOG`, default `mirrorpool=warn`: the
    /// pool logs switches, downs, promotions and refusals at `warn`).
    pub fn install(start: Instant) -> Ui {
        // Hidden by indicatif itself when stderr is not a terminal.
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(100));
        let logger = env_logger::Builder::from_env(
            env_logger::Env::default().default_filter_or("mirrorpool=warn"),
        )
        .format(move |buf, record| {
            writeln!(
                buf,
                "{}  {:<5} {}",
                stamp(start.elapsed()),
                record.level(),
                record.args()
            )
        })
        .build();
        let max_level = logger.filter();
        let wrapper = BarLogger {
            inner: logger,
            bar: bar.clone(),
        };
        if log::set_boxed_logger(Box::new(wrapper)).is_ok() {
            log::set_max_level(max_level);
        }
        Ui { bar, start }
    }

    /// Prints a line above the progress line.
    pub fn say(&self, line: impl AsRef<str>) {
        self.bar.suspend(|| println!("{}", line.as_ref()));
    }

    /// Prints a line stamped with the time since the start, like the log lines.
    pub fn event(&self, line: impl AsRef<str>) {
        self.say(format!(
            "{}  {}",
            stamp(self.start.elapsed()),
            line.as_ref()
        ));
    }

    /// Replaces the progress line's text.
    pub fn status(&self, text: String) {
        self.bar.set_message(text);
    }

    /// Removes the progress line for good (the report follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `"  5.034 s"`: seconds since the start, as every line printed during the run begins.
pub fn stamp(d: Duration) -> String {
    format!("{:>7.3} s", d.as_secs_f64())
}

/// `env_logger` behind the progress bar: the bar is cleared while a record is written and
/// redrawn after (the `indicatif-log-bridge` pattern).
struct BarLogger {
    inner: env_logger::Logger,
    bar: ProgressBar,
}

impl log::Log for BarLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.inner.matches(record) {
            self.bar.suspend(|| self.inner.log(record));
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}
