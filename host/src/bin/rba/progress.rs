//! The terminal face of the library's progress reports: indicatif bars on
//! stderr (hidden when stderr is not a terminal) and note lines.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rba_host::progress::{Progress, Task, Unit};

/// Progress bars on stderr; notes go to stderr, or to stdout with an indent
/// (the demo's step-by-step output).
#[derive(Clone, Copy, Debug)]
pub struct Terminal {
    notes_on_stdout: bool,
}

impl Terminal {
    pub fn stderr() -> Terminal {
        Terminal { notes_on_stdout: false }
    }

    /// Notes as indented lines of the command's own output.
    pub fn notes_on_stdout() -> Terminal {
        Terminal { notes_on_stdout: true }
    }
}

impl Progress for Terminal {
    fn task(&self, name: &str, total: Option<u64>, unit: Unit) -> Box<dyn Task> {
        let template = match (unit, total) {
            (Unit::Images, _) => "{msg} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
            (Unit::Bytes, _) => "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            (Unit::Steps, _) => "{spinner} {msg}",
        };
        let bar = match (unit, total) {
            (Unit::Steps, _) | (_, None) => {
                let bar = ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
            (_, Some(n)) => ProgressBar::new(n),
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        Box::new(Bar(bar))
    }

    fn note(&self, line: &str) {
        if self.notes_on_stdout {
            println!("  {line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// A bar that clears itself when the task ends.
struct Bar(ProgressBar);

impl Task for Bar {
    fn set(&self, done: u64) {
        self.0.set_position(done);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn message(&self, text: &str) {
        self.0.set_message(text.to_string());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
