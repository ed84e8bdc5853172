//! Progress on stderr for core's reports (creme_core::progress): bars on a terminal (indicatif),
//! plain lines when stderr is not a terminal (at most one per stage every few seconds, and
//! each stage's end), nothing with --quiet.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use creme_core::progress::Step;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress at all.
pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

enum Mode {
    Bars,
    Lines,
    Quiet,
}

/// One long operation (`label`: what it is about), possibly of several stages.
pub struct Reporter {
    label: String,
    mode: Mode,
    bar: Option<ProgressBar>,
    stage: String,
    stage_start: Instant,
    last_line: Option<Instant>,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Reporter {
    pub fn new(label: &str) -> Reporter {
        let mode = if QUIET.load(Ordering::Relaxed) {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        };
        Reporter {
            label: label.to_string(),
            mode,
            bar: None,
            stage: String::new(),
            stage_start: Instant::now(),
            last_line: None,
        }
    }

    pub fn step(&mut self, s: Step<'_>) {
        let new_stage = s.stage != self.stage;
        if new_stage {
            self.finish();
            self.stage = s.stage.to_string();
            self.stage_start = Instant::now();
        }
        match self.mode {
            Mode::Quiet => {}
            Mode::Bars => {
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::with_draw_target(
                        Some(s.total as u64),
                        ProgressDrawTarget::stderr(),
                    );
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{bar:28}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    b.set_prefix(format!("{} {}", self.label, s.stage));
                    b
                });
                bar.set_length(s.total as u64);
                bar.set_position(s.done as u64);
                bar.set_message(s.note);
            }
            Mode::Lines => {
                let due = self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY);
                if new_stage || s.done >= s.total || due {
                    let secs = self.stage_start.elapsed().as_secs_f64();
                    eprintln!("{}", s.line(&self.label, secs));
                    self.last_line = Some(Instant::now());
                }
            }
        }
    }

    /// End the current stage's bar (lines need nothing).
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        self.last_line = None;
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Progress of an operation in named parts run one after another (a trace's logprob and pass
/// traces): one [`Reporter`] per part, the previous one finished when the next part starts.
#[derive(Default)]
pub struct Parts {
    current: Option<(String, Reporter)>,
}

impl Parts {
    /// End the current part's bar (before printing below it).
    pub fn finish(&mut self) {
        if let Some((_, bar)) = &mut self.current {
            bar.finish();
        }
    }

    pub fn step(&mut self, part: &str, s: Step<'_>) {
        if self.current.as_ref().is_none_or(|(p, _)| p != part) {
            self.current = Some((part.to_string(), Reporter::new(part)));
        }
        if let Some((_, bar)) = &mut self.current {
            bar.step(s);
        }
    }
}
