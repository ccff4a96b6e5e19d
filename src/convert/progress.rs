//! Progress of a long conversion: an indicatif bar on a terminal (done/total, running pieces,
//! ETA), plain one-line-per-event output otherwise (CI logs), nothing with `quiet`.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    running: Mutex<Vec<String>>,
    total: u64,
    done: Mutex<u64>,
}

impl Progress {
    pub fn new(total: u64, what: &str, quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let b = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(what.to_string());
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        Progress {
            bar,
            plain: !quiet && !tty,
            running: Mutex::new(Vec::new()),
            total,
            done: Mutex::new(0),
        }
    }

    fn show_running(&self) {
        if let (Some(b), Ok(r)) = (&self.bar, self.running.lock()) {
            b.set_message(format!("running: {}", r.join(" ")));
        }
    }

    pub fn start(&self, label: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.push(label.to_string());
        }
        self.show_running();
    }

    pub fn finish(&self, label: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.retain(|l| l != label);
        }
        let n = self.done.lock().map(|mut d| {
            *d += 1;
            *d
        });
        if let Some(b) = &self.bar {
            b.inc(1);
        }
        self.show_running();
        if self.plain {
            eprintln!("[{}/{}] {label}", n.unwrap_or(0), self.total);
        }
    }

    /// A line of text above the bar (or on its own).
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None if self.plain => eprintln!("{text}"),
            None => {}
        }
    }

    pub fn abandon(&self) {
        if let Some(b) = &self.bar {
            b.abandon();
        }
    }

    pub fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
