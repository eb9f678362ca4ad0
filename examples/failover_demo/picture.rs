//! The failover as a picture: acknowledged writes per time bucket around the fault, one row per
//! bucket, so the gap (and who served the writes on either side of it) is seen at a glance.

use mirrorpool::Side;

/// Widest bar, in characters (a row stays within 80 columns).
const BAR_WIDTH: usize = 52;
/// Runs of at least this many empty buckets are shown as one line.
const COMPRESS_EMPTY: usize = 3;

/// A moment worth a line of its own (the fault, the switch, ...), in ms after the fault.
#[derive(Debug, Clone)]
pub struct Marker {
    pub at_ms: f64,
    pub label: String,
}

/// Which part of the run to draw: from `from_ms` to `to_ms` after the fault, in buckets of
/// `bucket_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub from_ms: f64,
    pub to_ms: f64,
    pub bucket_ms: f64,
}

impl Window {
    /// From 0.5 s before the fault to 1 s after the first write on the new side (or
    /// `show_until_ms`, if later), no later than the data (`end_ms`). Short windows get 50 ms
    /// buckets, longer ones (a hang takes ~2 s) 100 ms, so the picture stays short.
    pub fn around(first_write_ms: Option<f64>, show_until_ms: f64, end_ms: f64) -> Window {
        let wanted = first_write_ms.map_or(end_ms, |f| (f + 1000.0).max(show_until_ms));
        let to_ms = wanted.min(end_ms).max(0.0);
        let from_ms = -500.0;
        let bucket_ms = if to_ms - from_ms <= 2000.0 {
            50.0
        } else {
            100.0
        };
        Window {
            from_ms,
            to_ms,
            bucket_ms,
        }
    }
}

/// One bucket's writes.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    primary: usize,
    mirror: usize,
}

impl Bucket {
    fn total(self) -> usize {
        self.primary + self.mirror
    }

    fn label(self) -> &'static str {
        match (self.primary > 0, self.mirror > 0) {
            (true, true) => "P+M",
            (true, false) => "P",
            (false, true) => "M",
            (false, false) => "",
        }
    }
}

/// Draws `acks` (ms after the fault, and the side that acknowledged) in `window`, with the
/// `markers` as lines before the bucket they fall in. Returns the lines, without newlines.
pub fn draw(acks: &[(f64, Side)], markers: &[Marker], window: Window) -> Vec<String> {
    // Whole buckets only: a last, partial one would look like a drop.
    let n = ((window.to_ms - window.from_ms) / window.bucket_ms)
        .floor()
        .max(1.0) as usize;
    let mut buckets = vec![Bucket::default(); n];
    for &(at, side) in acks {
        if at < window.from_ms {
            continue;
        }
        let i = ((at - window.from_ms) / window.bucket_ms) as usize;
        match (buckets.get_mut(i), side) {
            (Some(b), Side::Primary) => b.primary += 1,
            (Some(b), Side::Mirror) => b.mirror += 1,
            (None, _) => {}
        }
    }
    let max = buckets.iter().map(|b| b.total()).max().unwrap_or(0).max(1);
    let start_of = |i: usize| window.from_ms + i as f64 * window.bucket_ms;
    let end_ms = start_of(n);
    let mut markers: Vec<&Marker> = markers
        .iter()
        .filter(|m| m.at_ms >= window.from_ms && m.at_ms < end_ms)
        .collect();
    markers.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let mut markers = markers.into_iter().peekable();

    let mut lines = vec![
        format!(
            "acknowledged writes per {} ms (P = by the primary, M = by the mirror)",
            window.bucket_ms
        ),
        format!("{:>8}  {:<3} {:>5}", "ms", "", "writes"),
    ];
    let mut empty_run: Vec<usize> = Vec::new();
    for (i, bucket) in buckets.iter().enumerate() {
        // A marker goes above the first bucket that starts at or after it, so the rows stay
        // in time order: a switch at +26 ms follows the row of the bucket starting at +0.
        if markers.peek().is_some_and(|m| m.at_ms <= start_of(i)) {
            flush_empty(&mut lines, &mut empty_run, start_of, window.bucket_ms);
            while let Some(m) = markers.next_if(|m| m.at_ms <= start_of(i)) {
                lines.push(marker_line(m));
            }
        }
        if bucket.total() == 0 {
            empty_run.push(i);
        } else {
            flush_empty(&mut lines, &mut empty_run, start_of, window.bucket_ms);
            lines.push(row(start_of(i), *bucket, max));
        }
    }
    flush_empty(&mut lines, &mut empty_run, start_of, window.bucket_ms);
    lines.extend(markers.map(marker_line));
    lines
}

fn marker_line(m: &Marker) -> String {
    format!("{:>+8.0}  ──── {}", m.at_ms, m.label)
}

/// One bucket's row: its start, who acknowledged, how many, and the bar.
fn row(start_ms: f64, bucket: Bucket, max: usize) -> String {
    let total = bucket.total();
    let width = if total == 0 {
        0
    } else {
        (total * BAR_WIDTH).div_ceil(max).max(1)
    };
    format!(
        "{:>+8.0}  {:<3} {:>5} {}",
        start_ms,
        bucket.label(),
        total,
        "█".repeat(width)
    )
    .trim_end()
    .to_owned()
}

/// Writes the pending empty buckets: one by one if few, else as one line.
fn flush_empty(
    lines: &mut Vec<String>,
    run: &mut Vec<usize>,
    start_of: impl Fn(usize) -> f64,
    bucket_ms: f64,
) {
    if run.len() >= COMPRESS_EMPTY {
        lines.push(format!(
            "{:>+8.0}  ... {} empty buckets ({} ms): no write acknowledged ...",
            start_of(run[0]),
            run.len(),
            run.len() as f64 * bucket_ms
        ));
    } else {
        for &i in run.iter() {
            lines.push(row(start_of(i), Bucket::default(), 1));
        }
    }
    run.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(at_ms: f64, label: &str) -> Marker {
        Marker {
            at_ms,
            label: label.into(),
        }
    }

    #[test]
    fn a_kill_shows_the_gap_the_markers_and_both_sides() {
        let mut acks = Vec::new();
        for i in 0..100 {
            acks.push((-500.0 + i as f64 * 5.0, Side::Primary)); // 10 per bucket before
        }
        for i in 0..40 {
            acks.push((300.0 + i as f64 * 5.0, Side::Mirror)); // 10 per bucket after 300 ms
        }
        let window = Window::around(Some(300.0), 0.0, 5000.0);
        assert_eq!(
            window,
            Window {
                from_ms: -500.0,
                to_ms: 1300.0,
                bucket_ms: 50.0
            }
        );
        let lines = draw(
            &acks,
            &[marker(0.0, "fault"), marker(31.0, "switched")],
            window,
        );
        let text = lines.join("\n");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        assert!(text.contains("    -500  P      10 ████"), "{text}");
        // The fault before the bucket it starts, the switch after that bucket's row.
        assert!(
            text.contains("\n      +0  ──── fault\n      +0          0\n     +31  ──── switched\n"),
            "{text}"
        );
        // 50..300 ms: five empty buckets, compressed into one line.
        assert!(
            text.contains("     +50  ... 5 empty buckets (250 ms)"),
            "{text}"
        );
        assert!(text.contains("    +300  M      10"), "{text}");
        // After the mirror's last write (500 ms) the empty tail is compressed too.
        assert!(
            text.ends_with("... 16 empty buckets (800 ms): no write acknowledged ..."),
            "{text}"
        );
    }

    #[test]
    fn few_empty_buckets_stay_visible_and_bars_scale_to_the_fullest_bucket() {
        let acks = [
            (-480.0, Side::Primary),
            (-470.0, Side::Primary),
            (-330.0, Side::Mirror),
        ];
        let window = Window {
            from_ms: -500.0,
            to_ms: -300.0,
            bucket_ms: 50.0,
        };
        let lines = draw(&acks, &[], window);
        assert_eq!(
            &lines[2..],
            [
                format!("    -500  P       2 {}", "█".repeat(BAR_WIDTH)),
                "    -450          0".to_owned(),
                "    -400          0".to_owned(),
                format!("    -350  M       1 {}", "█".repeat(BAR_WIDTH / 2)),
            ]
        );
    }

    #[test]
    fn long_windows_use_wider_buckets() {
        let w = Window::around(Some(2050.0), 0.0, 10_000.0);
        assert_eq!((w.to_ms, w.bucket_ms), (3050.0, 100.0));
        let w = Window::around(None, 0.0, 720.0);
        assert_eq!((w.to_ms, w.bucket_ms), (720.0, 50.0));
        // Whole buckets only: 720 ms ends with the bucket starting at 650.
        let lines = draw(&[(719.0, Side::Mirror), (640.0, Side::Mirror)], &[], w);
        assert!(
            lines[lines.len() - 2].starts_with("    +600  M       1 █"),
            "{lines:?}"
        );
        assert_eq!(lines[lines.len() - 1], "    +650          0");
        let w = Window::around(Some(50.0), 2000.0, 10_000.0);
        assert_eq!((w.to_ms, w.bucket_ms), (2000.0, 100.0));
    }
}
