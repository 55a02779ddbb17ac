//! `baton history`: what served when. The rollouts the history file keeps
//! (this baton's and those of the batons before it on the app dir), oldest
//! first, in a table or as JSON. It reads the files whether or not baton
//! runs: the history outlives the baton that wrote it.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{EXIT_FAILED, EXIT_OK, not_running, report_failure};
use crate::clock::utc;
use crate::paths::AppPaths;
use crate::span::format_span;
use crate::state::{self, Carried, RolloutInfo, RolloutResult};

pub fn run(p: &AppPaths, json: bool) -> Result<u8> {
    let carried = match Carried::read(&p.app_dir) {
        Ok(c) => c,
        Err(e) => {
            report_failure(&format!(
                "no history: {e:#} (has baton run for {}?)",
                p.app_dir.display()
            ));
            return Ok(EXIT_FAILED);
        }
    };
    if !state::is_running(&p.app_dir) {
        eprintln!(
            "{}; its history as of its last state (baton pid {})",
            not_running(p),
            carried.pid
        );
    }
    if json {
        let text =
            serde_json::to_string_pretty(&carried.history).context("formatting the history")?;
        println!("{text}");
    } else {
        print!("{}", table(&carried.history));
    }
    Ok(EXIT_OK)
}

/// The history as a table, one line per rollout (ending with the reason it
/// failed, if it did), a heading per baton.
fn table(history: &[RolloutInfo]) -> String {
    if history.is_empty() {
        return "no rollouts yet\n".into();
    }
    let rows: Vec<[String; 8]> = history
        .iter()
        .map(|r| {
            [
                format!("#{}", r.seq),
                utc(r.started_at),
                r.release
                    .as_ref()
                    .map(|rel| rel.name.clone())
                    .unwrap_or_else(|| "(unreadable current.conf)".into()),
                r.trigger.as_str().to_owned(),
                outcome(r),
                r.finished_at
                    .map(|f| format_span(Duration::from_secs_f64((f - r.started_at).max(0.0))))
                    .unwrap_or_else(|| "-".into()),
                r.generation
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.replaced
                    .as_ref()
                    .map(|p| format!("{} (generation {})", p.release, p.generation))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = [
        "#",
        "started",
        "release",
        "trigger",
        "outcome",
        "took",
        "generation",
        "replaced",
    ];
    let mut width = head.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}", text.join("  ").trim_end())
    };
    let mut out = String::new();
    let mut baton = None;
    for (r, row) in history.iter().zip(&rows) {
        if baton != Some(r.baton_pid) {
            baton = Some(r.baton_pid);
            out.push_str(&format!("baton pid {}:\n", r.baton_pid));
            out.push_str(&line(&head));
            out.push('\n');
        }
        out.push_str(&line(&row.each_ref().map(String::as_str)));
        if let Some(why) = &r.reason {
            out.push_str(&format!("  {why}"));
        }
        out.push('\n');
    }
    out
}

fn outcome(r: &RolloutInfo) -> String {
    let word = r.result.as_str();
    match (r.result, r.attempts) {
        (RolloutResult::InProgress, _) | (_, 0 | 1) => word.to_owned(),
        (_, n) => format!("{word} ({n} attempts)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ReleaseInfo, ReplacedInfo, Trigger};

    fn entry(seq: u64, v: &str, trigger: Trigger, result: RolloutResult) -> RolloutInfo {
        RolloutInfo {
            seq,
            release: Some(ReleaseInfo {
                name: format!("app.{v}"),
                bin: format!("/srv/app/release/app.{v}").into(),
                cfg: format!("/srv/app/release/cfg.{v}").into(),
            }),
            generation: Some(seq),
            trigger,
            result,
            reason: None,
            started_at: 1_700_000_000.0 + seq as f64,
            finished_at: Some(1_700_000_000.25 + seq as f64),
            replaced: None,
            attempts: 1,
            baton_pid: 40,
        }
    }

    #[test]
    fn one_line_per_rollout_and_a_heading_per_baton() {
        let mut failed = entry(2, "2.0", Trigger::Edit, RolloutResult::Failed);
        failed.reason = Some("release app.2.0 crashed 1 s after going live".into());
        failed.replaced = Some(ReplacedInfo {
            release: "app.1.0".into(),
            generation: 1,
        });
        let mut restart = entry(3, "1.0", Trigger::Restart, RolloutResult::Succeeded);
        restart.attempts = 3;
        restart.baton_pid = 41;
        let mut running = entry(4, "3.0", Trigger::Edit, RolloutResult::InProgress);
        running.finished_at = None;
        running.baton_pid = 41;
        let text = table(&[
            entry(1, "1.0", Trigger::Startup, RolloutResult::Succeeded),
            failed,
            restart,
            running,
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert_eq!(lines[0], "baton pid 40:");
        assert!(lines[1].starts_with("  #   started"), "{text}");
        assert!(
            lines[2].starts_with("  #1  2023-11-14 22:13:21 UTC  app.1.0  startup  succeeded"),
            "{text}"
        );
        assert!(
            lines[3]
                .ends_with("app.1.0 (generation 1)  release app.2.0 crashed 1 s after going live"),
            "{text}"
        );
        assert_eq!(lines[4], "baton pid 41:");
        assert!(lines[6].contains("succeeded (3 attempts)"), "{text}");
        assert!(lines[7].contains("in-progress"), "{text}");
        assert_eq!(table(&[]), "no rollouts yet\n");
    }
}
