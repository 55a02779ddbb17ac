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
        "--ready",
        "--ready-timeout",
        "--stop-signal",
        "--stop-target",
        "--stop-timeout",
        "--soak",
        "--probation",
        "--insecure-permissions",
    ] {
        let line = out
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} in:\n{out}"));
        let block: String = out
            .lines()
            .skip(line)
            .take(9)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            block.contains("e.g.") || flag == "--insecure-permissions",
            "{flag} has an example:\n{block}"
        );
    }
    let (code, out, _) = baton_cmd(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["run", "reload", "status", "switch", "releases", "history"] {
        assert!(out.contains(&format!("  {cmd} ")), "{cmd} in:\n{out}");
        if cmd != "run" {
            let (code, help, _) = baton_cmd(&[cmd, "--help"]);
            assert_eq!(code, 0);
            assert!(
                help.contains("Example:\n  baton ") && help.contains("--config PATH"),
                "{cmd} --help:\n{help}"
            );
        }
    }
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    for args in [
        vec!["run", "--config", "/x", "--bogus"],
        vec!["run", "--config", "/x", "--ready-timeout", "soon"],
        vec!["run", "--config", "/x", "--stop-timeout", "-1"],
        vec!["run", "--config", "/x", "--listen", "nowhere"],
        vec!["run", "--config", "/x", "--ready", "sometimes"],
        vec!["run", "--config", "/x", "--ready", "after:0"],
        vec!["run", "--config", "/x", "--ready", "check:"],
        vec!["run", "--config", "/x", "--ready", "after:2min"],
        vec!["run", "--config", "/x", "--stop-signal", "KILL"],
        vec!["run", "--config", "/x", "--stop-signal", "99"],
        vec!["run", "--config", "/x", "--stop-target", "master"],
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

/// `~/` in current.conf means one home for the daemon and the operator
/// commands alike: the passwd entry of the user they run as, whatever
/// $HOME says. Here $HOME points elsewhere for the commands; `releases`
/// must still see what current.conf names, and `switch` must keep the
/// `~/` style (which the daemon then resolves to the same files).
#[test]
fn home_in_current_conf_means_the_same_to_the_daemon_and_the_commands() {
    let home = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("a passwd entry for the test's user")
        .dir;
    let mut rig = Rig::new("home");
    rig.release("1.0", "");
    rig.release("2.0", "");
    // A name under the passwd home that leads to the rig's release dir.
    let name = format!(".baton-test-home-{}", std::process::id());
    let link = home.join(&name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&rig.release_dir, &link).unwrap();
    struct Unlink(std::path::PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlink = Unlink(link);
    rig.write_conf(&format!(
        "{{\"bin.file\": \"~/{name}/app.1.0\", \"cfg.file\": \"~/{name}/cfg.1.0\"}}\n"
    ));
    rig.start(&[]);
    rig.wait_live("1.0");

    let elsewhere = rig.tmp.0.join("not-home");
    let command = |args: &[&str]| {
        let out = std::process::Command::new(BATON)
            .args(args)
            .arg("--config")
            .arg(&rig.conf)
            .env("HOME", &elsewhere)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = command(&["releases"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("app.1.0"))
        .unwrap_or_else(|| panic!("app.1.0 listed:\n{out}"));
    assert!(
        line.contains("serving") && line.contains("named by current.conf"),
        "{out}"
    );
    assert!(!out.contains("not among these"), "{out}");

    let (code, out, err) = command(&["switch", "2.0", "--wait=20s"]);
    assert_eq!(code, Some(0), "{out}{err}\n{}", rig.log());
    let text = std::fs::read_to_string(&rig.conf).unwrap();
    assert!(
        text.contains(&format!("\"~/{name}/app.2.0\""))
            && text.contains(&format!("\"~/{name}/cfg.2.0\"")),
        "the ~/ style is kept: {text}"
    );
    rig.wait_serving("2.0");
}
