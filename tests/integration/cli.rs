//! The command line: help, usage errors (one line, exit 2).

use crate::util::*;

#[test]
fn help_explains_every_flag_with_an_example() {
    let (code, out, _) = baton_cmd(&["run", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--app-dir",
        "--listen",
        "--ready-timeout",
        "--stop-timeout",
        "--soak",
        "--probation",
        "--insecure-permissions",
    ] {
        let line = out
            .lines()
            .position(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} in:\n{out}"));
        let block: String = out
            .lines()
            .skip(line)
            .take(6)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            block.contains("e.g.") || flag == "--insecure-permissions",
            "{flag} has an example:\n{block}"
        );
    }
    let (code, out, _) = baton_cmd(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["run", "reload", "status", "switch", "releases"] {
        assert!(out.contains(&format!("  {cmd} ")), "{cmd} in:\n{out}");
    }
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    for args in [
        vec!["run", "--config", "/x", "--bogus"],
        vec!["run", "--config", "/x", "--ready-timeout", "soon"],
        vec!["run", "--config", "/x", "--stop-timeout", "-1"],
        vec!["run", "--config", "/x", "--listen", "nowhere"],
        vec!["run"],
        vec!["frob"],
        vec![],
    ] {
        let (code, out, err) = baton_cmd(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("baton: "), "{err}");
    }
}

#[test]
fn no_socket_at_all_is_a_usage_error() {
    let tmp = TempDir::new("nosock");
    let conf = tmp.0.join("release/current.conf");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    let (code, _, err) = baton_cmd(&["run", "--config", path_str(&conf)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no listening socket") && err.contains("--listen"),
        "{err}"
    );
}
