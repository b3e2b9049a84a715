//! The one-line STATUS= for `systemctl status`, kept current.

use super::flock::{Flock, Phase};
use super::model::*;
use crate::units::format_size;

impl Flock {
    /// "2/2 ready · 1 restarts · generation 3 · 96.4 MiB", with "· 12 queued"
    /// while connections wait in the listen queue for a worker to accept them.
    pub fn status_line(&self) -> String {
        let memory: u64 = self.workers.iter().filter_map(|w| w.memory).sum();
        let memory = if memory > 0 {
            format!(" · {}", format_size(memory))
        } else {
            String::new()
        };
        let generation = match (&self.rollout, &self.last_reload) {
            (Some(rollout), _) => format!(" · reloading to generation {}", rollout.generation),
            (None, Some(outcome)) if !outcome.ok => match outcome.generation {
                Some(attempt) => format!(" · generation {} · reload to {attempt} failed", self.generation),
                None => format!(" · generation {} · reload refused", self.generation),
            },
            (None, _) if self.generation > 1 => format!(" · generation {}", self.generation),
            _ => String::new(),
        };
        let queued = match self.tally.queued() {
            0 => String::new(),
            queued => format!(" · {queued} queued"),
        };
        let oom = match self.tally.ended(super::tally::Cause::Oom) {
            0 => String::new(),
            1 => " · 1 OOM kill".to_string(),
            n => format!(" · {n} OOM kills"),
        };
        let note = self.note.as_ref().map_or(String::new(), |note| format!(" · {note}"));
        match &self.phase {
            Phase::Running => {
                format!(
                    "{}/{} ready · {} restarts{oom}{generation}{memory}{queued}{note}",
                    self.ready_count(),
                    self.desired,
                    self.history.total
                )
            }
            Phase::ShuttingDown { code: 0, .. } => format!("stopping · {} workers left", self.workers.len()),
            Phase::ShuttingDown { reason, .. } => format!("failed · {} workers left · {reason}", self.workers.len()),
        }
    }

    /// STATUS= when the line changed since the last one: asked once per
    /// pass of the loop, after all its events, so that systemd sees the
    /// whole flock (its memory summed over every measurement of the pass),
    /// not each step on the way.
    pub fn status_update(&mut self) -> Option<Action> {
        let status = self.status_line();
        (status != self.last_status).then(|| {
            self.last_status = status.clone();
            Action::Notify(Upward::Status(status))
        })
    }
}
