//! Progress lines for steps that take more than a moment (loading and
//! rewriting a model, each verify and bench run): one line per step on
//! stderr with the seconds since the command started.
//!
//! On when stderr is a terminal; `TESSERA_PROGRESS=1` turns it on
//! elsewhere (logs, tests) and `TESSERA_PROGRESS=0` off. The verify/bench
//! driver inherits the decision through the same variable, so a piped
//! run stays quiet end to end.

use std::fmt::Display;
use std::io::IsTerminal;
use std::time::Instant;

/// The environment variable that forces progress on (`1`) or off (`0`).
pub const ENV: &str = "TESSERA_PROGRESS";

/// A command's clock and whether it reports.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    start: Instant,
    on: bool,
}

impl Progress {
    /// Start the clock; report per [`ENV`], else when stderr is a terminal.
    pub fn start() -> Self {
        let on = match std::env::var(ENV).as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => std::io::stderr().is_terminal(),
        };
        Self {
            start: Instant::now(),
            on,
        }
    }

    /// Whether lines are printed.
    pub fn on(&self) -> bool {
        self.on
    }

    /// `[  12.3s] what` on stderr, when on.
    pub fn step(&self, what: impl Display) {
        if self.on {
            eprintln!("[{:7.1}s] {what}", self.start.elapsed().as_secs_f64());
        }
    }
}
