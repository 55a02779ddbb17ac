//! The operator commands: `baton status`, `reload`, `switch`, `releases`.

use anyhow::{Result, bail};

use crate::cli::Command;

/// Runs a client command; returns the exit code.
pub fn main(command: Command) -> Result<u8> {
    bail!("{command:?}: not implemented yet")
}
