//! When a starting generation counts as ready.
//!
//! Today there is one way: the generation (its leader, or a process in its
//! process group) sends `READY=1` to baton's notify socket, as sd_notify(3)
//! describes; the loop checks the sender and hands the state machine the
//! [`Evidence`]. The state machine asks [`Mode::accepts`] before it treats a
//! generation as ready, so other ways of telling (for apps that cannot
//! notify) are modes added here, not special cases in the state machine.

/// How a release shows it is ready to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// `READY=1` from the generation (sd_notify(3)).
    #[default]
    Notify,
}

/// Something the loop saw that may mean a generation is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// `READY=1` from the generation's leader or its process group.
    Notified,
}

impl Mode {
    /// Whether `evidence` makes a generation of this mode ready.
    pub fn accepts(self, evidence: Evidence) -> bool {
        match (self, evidence) {
            (Mode::Notify, Evidence::Notified) => true,
        }
    }
}
