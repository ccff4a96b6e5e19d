//! Runs jobs on N tool runners in parallel as a producer hands them over (compilation starts
//! while later pieces are still being exported), memory-aware, fail-fast: the first failure
//! kills every other tool process and is the error returned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Condvar, Mutex};

use anyhow::Result;

use super::progress::Progress;
use super::worker::{kill_all_children, ToolRunner};

/// What the scheduler needs to know about a job.
pub trait Job: Send {
    fn label(&self) -> String;
    /// Estimated peak memory, bytes.
    fn mem(&self) -> u64;
}

struct Budget {
    free: u64,
    running: usize,
}

/// Shared by the runner threads.
struct State<J> {
    queue: Mutex<Receiver<J>>,
    budget: Mutex<Budget>,
    freed: Condvar,
    failed: AtomicBool,
    first_error: Mutex<Option<anyhow::Error>>,
}

impl<J> State<J> {
    fn fail(&self, e: anyhow::Error) {
        // Only the first failure counts; later ones are the kills it caused.
        if !self.failed.swap(true, Ordering::SeqCst) {
            if let Ok(mut f) = self.first_error.lock() {
                *f = Some(e);
            }
            kill_all_children();
            self.freed.notify_all();
        }
    }

    fn acquire(&self, need: u64) {
        if let Ok(mut b) = self.budget.lock() {
            // Wait until the job fits, unless nothing else runs (then it must run anyway).
            while b.running > 0 && b.free < need && !self.failed.load(Ordering::SeqCst) {
                b = match self.freed.wait(b) {
                    Ok(b) => b,
                    Err(_) => return,
                };
            }
            b.free = b.free.saturating_sub(need);
            b.running += 1;
        }
    }

    fn release(&self, need: u64) {
        if let Ok(mut b) = self.budget.lock() {
            b.free += need;
            b.running -= 1;
        }
        self.freed.notify_all();
    }
}

/// Runs `work(job, runner)` for every job received until the sender hangs up; returns the
/// jobs with their results, in completion order.
pub fn run_stream<J, R, F>(
    jobs: Receiver<J>,
    runners: Vec<Box<dyn ToolRunner>>,
    mem_budget: u64,
    progress: &Progress,
    work: F,
) -> Result<Vec<(J, R)>>
where
    J: Job,
    R: Send,
    F: Fn(&J, &mut dyn ToolRunner) -> Result<R> + Sync,
{
    let state = State {
        queue: Mutex::new(jobs),
        budget: Mutex::new(Budget {
            free: mem_budget,
            running: 0,
        }),
        freed: Condvar::new(),
        failed: AtomicBool::new(false),
        first_error: Mutex::new(None),
    };
    let done: Mutex<Vec<(J, R)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for mut runner in runners {
            let (state, done, work) = (&state, &done, &work);
            s.spawn(move || loop {
                if state.failed.load(Ordering::SeqCst) {
                    return;
                }
                let next = match state.queue.lock() {
                    Ok(q) => q.recv().ok(),
                    Err(_) => None,
                };
                let Some(job) = next else { return };
                if state.failed.load(Ordering::SeqCst) {
                    return;
                }
                let (label, need) = (job.label(), job.mem());
                state.acquire(need);
                progress.start(&label);
                let out = work(&job, runner.as_mut());
                state.release(need);
                match out {
                    Ok(r) => {
                        progress.finish(&label);
                        if let Ok(mut d) = done.lock() {
                            d.push((job, r));
                        }
                    }
                    Err(e) => {
                        state.fail(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = state.first_error.into_inner().ok().flatten() {
        progress.abandon();
        return Err(e);
    }
    Ok(done.into_inner().unwrap_or_default())
}

/// Memory we allow the jobs to use: MemAvailable minus a reserve.
pub fn memory_budget() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30);
    avail.saturating_sub(1 << 30)
}
