//! Everything printed after the run: the timeline, the picture, the errors callers saw, the
//! loss check, the pool's status and the verdict.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use mirrorpool::event::Event;
use mirrorpool::testkit::Ledger;
use mirrorpool::{Side, Status};

use crate::args::Args;
use crate::picture::{self, Marker, Window};
use crate::workload::{ReadFrom, ReadStats};

/// How the demo ended, and so its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Interrupted,
}

/// What one run recorded.
pub struct Run<'a> {
    pub engine: &'static str,
    pub args: &'a Args,
    pub fault_at: Instant,
    pub restarted_at: Option<Instant>,
    pub events: Vec<(Instant, Event)>,
    pub ledger: Ledger,
    pub reads: &'a ReadStats,
    /// The rows on the mirror (the new primary) after the run.
    pub rows: HashSet<(i32, i64)>,
    /// The pool's status at the end of the run, before the fault was released.
    pub status: Status,
}

impl Run<'_> {
    /// Milliseconds from the fault to `t` (negative before it).
    fn ms(&self, t: Instant) -> f64 {
        if t >= self.fault_at {
            (t - self.fault_at).as_secs_f64() * 1e3
        } else {
            -((self.fault_at - t).as_secs_f64() * 1e3)
        }
    }

    /// The first event at or after the fault that matches.
    fn first(&self, pred: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.events
            .iter()
            .find(|(t, e)| *t >= self.fault_at && pred(e))
            .map(|(t, _)| *t)
    }
}

/// The moments of the failover, in ms after the fault.
struct Timeline {
    detected: Option<Instant>,
    switched: Option<Instant>,
    promoted: Option<(Instant, f64)>,
    first_write: Option<Instant>,
    split_brain: Option<Instant>,
}

impl Timeline {
    fn of(run: &Run<'_>) -> Timeline {
        Timeline {
            detected: run.first(|e| matches!(e, Event::SideDown(d) if d.side() == Side::Primary)),
            switched: run.first(|e| matches!(e, Event::Switch(s) if s.to() == Side::Mirror)),
            promoted: run
                .events
                .iter()
                .find(|(t, e)| {
                    *t >= run.fault_at
                        && matches!(e, Event::Promotion(p) if p.side() == Side::Mirror && p.error().is_none())
                })
                .map(|(t, e)| match e {
                    Event::Promotion(p) => (*t, p.duration().as_secs_f64() * 1e3),
                    _ => (*t, 0.0),
                }),
            first_write: run.ledger.first_ack_on(Side::Mirror, run.fault_at),
            split_brain: run.first(|e| matches!(e, Event::SplitBrain(_))),
        }
    }
}

/// Prints the report and says whether the failover passed.
pub fn print(run: &Run<'_>) -> Outcome {
    let t = Timeline::of(run);
    let ms = |x: Option<Instant>| x.map(|x| run.ms(x));
    let show = |x: Option<f64>| x.map_or("—".to_owned(), |v| format!("{v:>8.1} ms"));

    println!();
    println!(
        "== timeline ({}, {}; ms after the fault) ==",
        run.engine,
        run.args.fault.describe()
    );
    let line = |label: &str, at: Option<f64>| println!("  {label:<44}{}", show(at));
    line("fault injected", Some(0.0));
    line("primary marked down (detected)", ms(t.detected));
    line("writers switched to the mirror", ms(t.switched));
    match t.promoted {
        Some((at, took)) => line(
            &format!("mirror promoted (promotion took {took:.0} ms)"),
            Some(run.ms(at)),
        ),
        None => line("mirror promoted", None),
    }
    line("first write acknowledged by the mirror", ms(t.first_write));
    if let Some(r) = run.restarted_at {
        line("old primary restarting", Some(run.ms(r)));
        line("split brain seen, old primary fenced", ms(t.split_brain));
    }

    println!();
    let end_ms = run
        .ledger
        .acked
        .iter()
        .map(|a| run.ms(a.at))
        .fold(0.0, f64::max);
    // After a restart, also show the old primary coming back and being fenced.
    let show_until = [
        run.restarted_at.map(|r| run.ms(r) + 500.0),
        ms(t.split_brain).map(|s| s + 300.0),
    ]
    .into_iter()
    .flatten()
    .fold(0.0, f64::max);
    let window = Window::around(ms(t.first_write), show_until, end_ms);
    let acks: Vec<(f64, Side)> = run
        .ledger
        .acked
        .iter()
        .map(|a| (run.ms(a.at), a.side))
        .collect();
    let mut markers = vec![Marker {
        at_ms: 0.0,
        label: format!("fault: {}", run.args.fault.describe()),
    }];
    let mut mark = |at: Option<Instant>, label: &str| {
        if let Some(at) = at {
            markers.push(Marker {
                at_ms: run.ms(at),
                label: format!("{label} (+{:.1} ms)", run.ms(at)),
            });
        }
    };
    mark(t.switched, "writers switched to the mirror");
    mark(t.promoted.map(|p| p.0), "mirror promoted");
    mark(run.restarted_at, "old primary restarting");
    mark(t.split_brain, "split brain: old primary fenced");
    for line in picture::draw(&acks, &markers, window) {
        println!("{line}");
    }

    println!();
    println!("== what callers saw ==");
    let ledger = &run.ledger;
    println!(
        "  writes acknowledged:  {} ({} by the primary, {} by the mirror)",
        ledger.acked.len(),
        ledger
            .acked
            .iter()
            .filter(|a| a.side == Side::Primary)
            .count(),
        ledger
            .acked
            .iter()
            .filter(|a| a.side == Side::Mirror)
            .count()
    );
    println!(
        "  failed statements:    {} (cut off by the fault, not retried; {} committed)",
        ledger.failed.len(),
        ledger.failed_but_committed(&run.rows)
    );
    print_grouped(ledger.failed.iter().map(|f| f.error.as_str()));
    println!("  failed get() calls:   {}", ledger.get_errors.len());
    print_grouped(ledger.get_errors.iter().map(|g| g.error.as_str()));
    let failures = run.reads.failures();
    for from in [ReadFrom::Active, ReadFrom::Mirror] {
        let mine: Vec<_> = failures.iter().filter(|f| f.from == from).collect();
        println!(
            "  reads via {:<28} {} failed ({} of them in get())",
            format!("{}:", from.describe()),
            mine.len(),
            mine.iter().filter(|f| f.checkout).count()
        );
        print_grouped(mine.iter().map(|f| f.error.as_str()));
    }
    println!("  reads served:         {}", run.reads.ok());

    println!();
    println!("== the pool at the end ==");
    for line in run.status.to_string().lines() {
        println!("  {line}");
    }
    if let Some(r) = run.restarted_at {
        explain_restart(run, r);
    }

    println!();
    let lost = ledger.lost_against(&run.rows);
    let moved = run.status.active == Side::Mirror && t.first_write.is_some();
    if moved {
        println!(
            "ok: writers moved to the mirror, which acknowledged its first write\n    {:.1} ms \
             after the fault",
            ms(t.first_write).unwrap_or_default()
        );
    } else {
        println!("FAILED: writers did not move to the mirror (see the log lines above)");
    }
    if lost.is_empty() {
        println!(
            "ok: all {} acknowledged writes are on the new primary (the mirror)",
            ledger.acked.len()
        );
    } else if run.args.synchronous {
        println!(
            "FAILED: {} acknowledged writes are missing on the new primary despite\n    \
             synchronous replication, e.g. {:?}",
            lost.len(),
            lost.iter().take(3).map(|a| a.row()).collect::<Vec<_>>()
        );
    } else {
        println!(
            "note: {} acknowledged writes are missing on the new primary: with --async\n    \
             the primary acknowledges before the mirror has the write, so a failover can\n    \
             lose the last ones (run without --async to see none lost)",
            lost.len()
        );
    }
    if !run.args.synchronous && lost.is_empty() {
        println!("note: asynchronous replication may lose acknowledged writes; none this time");
    }
    if moved && (lost.is_empty() || !run.args.synchronous) {
        Outcome::Passed
    } else {
        Outcome::Failed
    }
}

/// Explains what became of the old primary after `--fault restart`.
fn explain_restart(run: &Run<'_>, restarted: Instant) {
    let on_old = run.ledger.acked_since(Side::Primary, restarted);
    println!();
    if run.status.fenced == Some(Side::Primary) {
        println!(
            "  The old primary came back writable next to the promoted mirror: two primaries.\n  \
             The pool saw the split brain, kept writers on the mirror (the newer primary) and\n  \
             fenced the old one, so no write went there ({on_old} acknowledged by it after the\n  \
             restart). Nothing demotes it: rebuild it as a replica of the new primary."
        );
    } else if run.status.active == Side::Primary {
        println!(
            "  The old primary came back and writers are on it again ({on_old} writes acknowledged\n  \
             by it after the restart): the mirror had not been promoted yet, so the pool went back."
        );
    } else {
        println!(
            "  The old primary restarted; writers stay on the {} ({on_old} writes acknowledged by\n  \
             the old primary after the restart; split brain: {}).",
            run.status.active, run.status.split_brain
        );
    }
}

/// Prints distinct messages with their counts, most frequent first, a few at most.
fn print_grouped<'a>(messages: impl Iterator<Item = &'a str>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in messages {
        *counts.entry(m).or_default() += 1;
    }
    let mut sorted: Vec<_> = counts.into_iter().collect();
    sorted.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    for (msg, n) in sorted.iter().take(4) {
        println!("    {n:>4} × {}", shorten(msg, 72));
    }
    if sorted.len() > 4 {
        println!("    ... and {} other messages", sorted.len() - 4);
    }
}

/// At most `max` characters, on one line.
fn shorten(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
