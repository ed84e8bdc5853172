//! The native judge: core's [`Judge`] over creme's sandbox, running a batch of
//! programs on `workers` threads.

use creme_core::dataset::TestProgram;
use creme_core::eval::{Judge, Judgement};

use super::{run_many, Limits, RunResult};

pub struct SandboxJudge {
    pub limits: Limits,
    pub workers: usize,
}

impl SandboxJudge {
    /// `timeout` seconds of wall and CPU time per program; `workers` parallel programs (default:
    /// the number of cores).
    pub fn new(timeout: u64, workers: Option<usize>) -> SandboxJudge {
        let workers = workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        SandboxJudge {
            limits: Limits {
                wall: std::time::Duration::from_secs(timeout),
                cpu_seconds: timeout,
                ..Limits::default()
            },
            workers,
        }
    }

    /// The pass trace's judge: the default limits, 4 programs at a time (the patched runs of a
    /// trace are judged in small batches).
    pub fn for_pass_trace() -> SandboxJudge {
        SandboxJudge::new(creme_core::eval::DEFAULT_TIMEOUT_S, Some(4))
    }

    /// Judge now, blocking (the sandbox is synchronous).
    pub fn judge_now(&self, programs: &[TestProgram]) -> Vec<Judgement> {
        run_many(programs, &self.limits, self.workers)
            .into_iter()
            .map(judgement)
            .collect()
    }
}

impl Judge for SandboxJudge {
    async fn judge(&mut self, programs: &[TestProgram]) -> Vec<Judgement> {
        self.judge_now(programs)
    }
}

fn judgement(r: RunResult) -> Judgement {
    Judgement {
        verdict: r.verdict,
        error_kind: r.error_kind,
        exit_code: r.exit_code,
        seconds: r.seconds,
        stdout_tail: r.stdout_tail,
        stderr_tail: r.stderr_tail,
    }
}
