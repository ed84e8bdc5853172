//! Progress of long operations. Core reports through a callback and knows no terminal: the CLI
//! draws bars or prints lines (crates/creme-cli/src/progress.rs), the browser updates its page.

/// One report: `done` of `total` units of `stage` (trace: layers; edit: optimizer evaluations;
/// eval: samples), with a short note (running scores, the loss, passes so far).
#[derive(Clone, Debug)]
pub struct Step<'a> {
    pub stage: &'a str,
    pub done: usize,
    pub total: usize,
    pub note: String,
}

impl Step<'_> {
    /// The step as a plain line after `secs` seconds of its stage: `label stage: done/total  note
    /// (secs s, eta E s)`, the ETA (time so far per unit, times the units left) while some are
    /// done and some left.
    pub fn line(&self, label: &str, secs: f64) -> String {
        let (done, total) = (self.done, self.total);
        let note = match self.note.is_empty() {
            true => String::new(),
            false => format!("  {}", self.note),
        };
        let eta = match done > 0 && done < total {
            true => format!(", eta {:.0} s", secs / done as f64 * (total - done) as f64),
            false => String::new(),
        };
        format!(
            "{label} {}: {done}/{total}{note} ({secs:.0} s{eta})",
            self.stage
        )
    }
}

/// Where reports go: any `FnMut(Step)`; `&mut |_| {}` ignores them.
pub type Progress<'a> = dyn FnMut(Step<'_>) + 'a;

/// Samples judged of one set and the passes among them, as progress steps.
#[derive(Clone, Debug)]
pub struct SampleTally {
    pub total: usize,
    pub done: usize,
    pub passed: usize,
}

impl SampleTally {
    pub fn new(total: usize) -> SampleTally {
        SampleTally {
            total,
            done: 0,
            passed: 0,
        }
    }

    /// Count `n` more samples, `passed` of them passing; the step to report.
    pub fn tick(&mut self, n: usize, passed: usize) -> Step<'static> {
        self.done += n;
        self.passed += passed;
        Step {
            stage: "samples",
            done: self.done,
            total: self.total,
            note: format!("{} passed", self.passed),
        }
    }

    pub fn finished(&self) -> bool {
        self.done == self.total
    }
}

/// Stage timer: wall clock natively; the browser has no std clock, so its laps read 0.
pub struct Clock {
    #[cfg(not(target_arch = "wasm32"))]
    last: std::cell::Cell<std::time::Instant>,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            #[cfg(not(target_arch = "wasm32"))]
            last: std::cell::Cell::new(std::time::Instant::now()),
        }
    }
    /// Seconds since the start or the previous lap.
    pub fn lap(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let now = std::time::Instant::now();
            let s = (now - self.last.get()).as_secs_f64();
            self.last.set(now);
            s
        }
        #[cfg(target_arch = "wasm32")]
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_has_the_eta_while_units_are_left() {
        let step = |done, note: &str| Step {
            stage: "samples",
            done,
            total: 4,
            note: note.to_string(),
        };
        assert_eq!(
            step(1, "1 passed").line("[clean]", 10.0),
            "[clean] samples: 1/4  1 passed (10 s, eta 30 s)"
        );
        assert_eq!(step(0, "").line("x", 2.0), "x samples: 0/4 (2 s)");
        assert_eq!(step(4, "").line("x", 8.0), "x samples: 4/4 (8 s)");
    }
}
