//! One integration test binary (as ripgrep does): real baton, real example
//! app, real sockets and files. See util/ for the harness.

mod util;

mod cli;
mod faults;
mod hostile;
mod probes;
mod properties;
mod reliability;
mod rollout;
mod upgrade;
