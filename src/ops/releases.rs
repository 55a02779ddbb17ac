//! `baton releases`: the releases beside current.conf, oldest version
//! first, marking the one that serves and the one current.conf names.

use anyhow::Result;

use super::catalog::{OnDisk, cfg_prefix, is_release, read_current, releases_in, same_place};
use super::wait::running_state;
use super::{EXIT_OK, pid_text};
use crate::paths::AppPaths;
use crate::state;

pub fn run(p: &AppPaths) -> Result<u8> {
    let current = read_current(p);
    let prefix = cfg_prefix(current.as_ref());
    let named = current.as_ref().and_then(|c| c.release.clone());
    let state = if state::is_running(&p.app_dir) {
        running_state(p)?
    } else {
        None
    };
    let serving = state.as_ref().and_then(|s| s.serving.as_ref());
    let on_disk = releases_in(p, &prefix)?;
    let listed: Vec<&OnDisk> = on_disk.iter().filter(|r| r.cfg.is_some()).collect();
    if listed.is_empty() {
        println!(
            "no releases in {} (executable NAME.VERSION with {prefix}.VERSION beside it)",
            p.release_dir.display()
        );
    }
    let width = listed.iter().map(|r| r.bin.len()).max().unwrap_or(0);
    let cfg_width = listed
        .iter()
        .filter_map(|r| r.cfg.as_ref().map(String::len))
        .max()
        .unwrap_or(0);
    for r in &listed {
        let cfg_name = r.cfg.as_deref().unwrap_or_default();
        let (bin, cfg) = (p.release_dir.join(&r.bin), p.release_dir.join(cfg_name));
        let mut marks = Vec::new();
        if let Some(g) = serving.filter(|g| is_release(&g.release, &bin, &cfg)) {
            marks.push(format!(
                "serving (generation {}, pid {})",
                g.generation,
                pid_text(g.pid)
            ));
        }
        if named
            .as_ref()
            .is_some_and(|n| same_place(&n.bin, &bin) && same_place(&n.cfg, &cfg))
        {
            marks.push("named by current.conf".into());
        }
        let star = if marks.is_empty() { ' ' } else { '*' };
        let row = format!(
            "{star} {:<width$}  {:<cfg_width$}  {}",
            r.bin,
            cfg_name,
            marks.join(", ")
        );
        println!("{}", row.trim_end());
    }
    if let Some(n) = named.as_ref().filter(|n| {
        !listed.iter().any(|r| {
            same_place(&n.bin, &p.release_dir.join(&r.bin))
                && r.cfg
                    .as_ref()
                    .is_some_and(|c| same_place(&n.cfg, &p.release_dir.join(c)))
        })
    }) {
        println!(
            "current.conf names {} -c {}, which is not among these",
            n.bin.display(),
            n.cfg.display()
        );
    }
    match (&state, serving) {
        (None, _) => println!("(baton is not running for {})", p.app_dir.display()),
        (Some(_), None) => println!("(nothing serves)"),
        (Some(_), Some(g))
            if !listed.iter().any(|r| {
                is_release(
                    &g.release,
                    &p.release_dir.join(&r.bin),
                    &p.release_dir.join(r.cfg.as_deref().unwrap_or_default()),
                )
            }) =>
        {
            println!(
                "serving {} (generation {}), which is not among these",
                g.release.name, g.generation
            )
        }
        _ => {}
    }
    Ok(EXIT_OK)
}
