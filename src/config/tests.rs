use super::*;

#[test]
fn identity_changes_with_any_replacement_and_not_by_itself() {
    let d = std::env::temp_dir().join(format!("baton-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let conf = d.join("current.conf");
    assert_eq!(identity(&conf), None);
    std::fs::write(&conf, "a").unwrap();
    let first = identity(&conf).unwrap();
    assert_eq!(identity(&conf).as_ref(), Some(&first), "stable");
    std::fs::write(d.join("new"), "a").unwrap();
    std::fs::rename(d.join("new"), &conf).unwrap();
    let renamed = identity(&conf).unwrap();
    assert_ne!(renamed, first, "renamed over: same content, other file");
    std::fs::remove_file(&conf).unwrap();
    std::fs::write(d.join("x"), "a").unwrap();
    std::os::unix::fs::symlink("x", &conf).unwrap();
    let linked = identity(&conf).unwrap();
    assert!(linked.contains(" -> "), "{linked}");
    std::fs::remove_file(&conf).unwrap();
    std::fs::write(d.join("y"), "a").unwrap();
    std::os::unix::fs::symlink("y", &conf).unwrap();
    assert_ne!(identity(&conf).unwrap(), linked, "link swapped");
    std::fs::remove_dir_all(&d).unwrap();
}

fn p(s: &str) -> Result<Parsed, String> {
    parse(
        s.as_bytes(),
        Path::new("/srv/app/release"),
        Some(Path::new("/home/web")),
    )
}

#[test]
fn resolves_home_relative_and_absolute() {
    let r = p(r#"{"bin.file": "~/app/release/app.2.0", "cfg.file": "cfg.2.0"}"#).unwrap();
    assert_eq!(r.release.bin, Path::new("/home/web/app/release/app.2.0"));
    assert_eq!(r.release.cfg, Path::new("/srv/app/release/cfg.2.0"));
    assert!(r.warnings.is_empty());
    assert_eq!(r.release.name(), "app.2.0");
    let r = p(r#"{"bin.file": "/opt/x/../bin/app.1.0", "cfg.file": "./sub/../cfg.9"}"#).unwrap();
    assert_eq!(r.release.bin, Path::new("/opt/bin/app.1.0"));
    assert_eq!(r.release.cfg, Path::new("/srv/app/release/cfg.9"));
    assert_eq!(r.release.name(), "app.1.0 (cfg.9)");
    assert!(r.release.opts.is_empty());
}

#[test]
fn errors_say_why() {
    let cases = [
        ("", "empty"),
        ("  \n", "empty"),
        ("{", "invalid JSON"),
        ("[1]", "JSON object"),
        (r#"{"bin.file": "a"}"#, "missing key \"cfg.file\""),
        (r#"{"cfg.file": "a"}"#, "missing key \"bin.file\""),
        (r#"{"bin.file": 3, "cfg.file": "a"}"#, "must be a string"),
        (r#"{"bin.file": "", "cfg.file": "a"}"#, "is empty"),
        (r#"{"bin.file": "a\u0000b", "cfg.file": "a"}"#, "NUL"),
    ];
    for (text, want) in cases {
        let e = p(text).expect_err(text);
        assert!(e.contains(want), "{text:?}: {e}");
    }
    let e = parse(&[b'{', 0xff, 0xfe, b'}'], Path::new("/"), None).unwrap_err();
    assert!(e.contains("invalid JSON"), "{e}");
    let deep = "[".repeat(100_000);
    assert!(p(&deep).unwrap_err().contains("invalid JSON"));
    let e = parse(
        br#"{"bin.file": "~/a", "cfg.file": "b"}"#,
        Path::new("/"),
        None,
    )
    .unwrap_err();
    assert!(e.contains("home"), "{e}");
}

#[test]
fn unknown_keys_warn() {
    let r = p(r#"{"bin.file": "a", "cfg.file": "b", "colour": "blue"}"#).unwrap();
    assert_eq!(r.warnings, vec!["unknown key \"colour\" ignored"]);
    let r = p(
        r#"{"bin.file": "a", "cfg.file": "b", "ready": "exec", "stop.signal": "QUIT", "stop.target": "leader", "env": {}, "stop.timeout": "5s"}"#,
    )
    .unwrap();
    assert_eq!(r.warnings, vec!["unknown key \"stop.timeout\" ignored"]);
}

#[test]
fn per_release_settings() {
    let r = p(r#"{"bin.file": "a", "cfg.file": "b"}"#).unwrap();
    assert!(r.release.opts.is_empty());
    let r = p(
        r#"{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", "ready": "after:2s",
                 "stop.signal": "QUIT", "stop.target": "leader",
                 "env": {"PORT": "8000", "APP_CONFIG": "/srv/app/cfg.2.0", "EMPTY": ""}}"#,
    )
    .unwrap();
    let o = &r.release.opts;
    assert_eq!(
        o.ready,
        Some(readiness::Mode::After(std::time::Duration::from_secs(2)))
    );
    assert_eq!(o.stop_signal, Some(StopSignal::parse("SIGQUIT").unwrap()));
    assert_eq!(o.stop_target, Some(StopTarget::Leader));
    assert_eq!(
        o.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["APP_CONFIG=/srv/app/cfg.2.0", "EMPTY=", "PORT=8000"]
    );
    assert_eq!(r.release.name(), "app.2.0", "the name stays the files'");
    assert!(r.warnings.is_empty());
    // A number is a signal too.
    let r = p(r#"{"bin.file": "a", "cfg.file": "b", "stop.signal": 3}"#).unwrap();
    assert_eq!(r.release.opts.stop_signal.unwrap().to_string(), "SIGQUIT");
    // What a file carrying them says reads back the same.
    let back = parse_opts(&o.to_json()).unwrap();
    assert_eq!(&back, o);
    assert!(Opts::default().to_json().is_empty());
}

#[test]
fn a_change_of_any_setting_is_another_release() {
    let base = r#""bin.file": "app.2.0", "cfg.file": "cfg.2.0""#;
    let plain = p(&format!("{{{base}}}")).unwrap().release;
    let variants = [
        r#""ready": "exec""#,
        r#""ready": "notify""#,
        r#""stop.signal": "TERM""#,
        r#""stop.target": "group""#,
        r#""env": {"A": "1"}"#,
    ];
    let mut seen = vec![plain.clone()];
    for v in variants {
        let r = p(&format!("{{{base}, {v}}}")).unwrap().release;
        assert_eq!(r.name(), "app.2.0");
        assert!(!seen.contains(&r), "{v} is another release");
        seen.push(r);
    }
    // Key order in the file does not matter.
    let a = p(r#"{"bin.file": "a", "cfg.file": "b", "env": {"A": "1", "B": "2"}}"#).unwrap();
    let b = p(r#"{"env": {"B": "2", "A": "1"}, "cfg.file": "b", "bin.file": "a"}"#).unwrap();
    assert_eq!(a.release, b.release);
}

#[test]
fn bad_settings_say_which_key_and_why() {
    let cases = [
        (
            r#""ready": "sometimes""#,
            "\"ready\": 'sometimes' is not a readiness mode",
        ),
        (
            r#""ready": "after:0""#,
            "\"ready\": after:0: the span must be greater than zero",
        ),
        (r#""ready": "check:""#, "\"ready\": check: needs a command"),
        (r#""ready": 2"#, "\"ready\" must be a string"),
        (
            r#""stop.signal": "KILL""#,
            "\"stop.signal\": SIGKILL cannot be a stop signal",
        ),
        (
            r#""stop.signal": "TERMINATE""#,
            "\"stop.signal\": 'TERMINATE' is not a signal name",
        ),
        (
            r#""stop.signal": 99"#,
            "\"stop.signal\": 99 is not a signal number",
        ),
        (
            r#""stop.signal": true"#,
            "\"stop.signal\" must be a signal name or number",
        ),
        (
            r#""stop.target": "master""#,
            "\"stop.target\": 'master' is neither group nor leader",
        ),
        (r#""env": ["A=1"]"#, "\"env\" must be an object of strings"),
        (
            r#""env": {"A": 1}"#,
            "\"env\": the value of \"A\" must be a string",
        ),
        (
            r#""env": {"A": null}"#,
            "\"env\": the value of \"A\" must be a string",
        ),
        (
            r#""env": {"A": "x\u0000y"}"#,
            "\"env\": the value of \"A\" contains a NUL byte",
        ),
        (r#""env": {"": "1"}"#, "\"env\": a variable name is empty"),
        (
            r#""env": {"A=B": "1"}"#,
            "\"env\": \"A=B\" is not a variable name",
        ),
        (r#""env": {"A\u0000": "1"}"#, "is not a variable name"),
        (
            r#""env": {"NOTIFY_SOCKET": "/x"}"#,
            "\"env\": \"NOTIFY_SOCKET\" is baton's to set",
        ),
        (
            r#""env": {"LISTEN_FDS": "2"}"#,
            "\"env\": \"LISTEN_FDS\" is baton's to set",
        ),
        (
            r#""env": {"LISTEN_PID": "2"}"#,
            "\"LISTEN_PID\" is baton's to set",
        ),
        (
            r#""env": {"LISTEN_FDNAMES": "x"}"#,
            "\"LISTEN_FDNAMES\" is baton's to set",
        ),
        (
            r#""env": {"LISTEN_ANYTHING": "x"}"#,
            "\"LISTEN_ANYTHING\" is baton's to set",
        ),
    ];
    for (extra, want) in cases {
        let text = format!(r#"{{"bin.file": "a", "cfg.file": "b", {extra}}}"#);
        let e = p(&text).expect_err(&text);
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn names() {
    assert!(same_name(
        OsStr::new("current.conf"),
        Path::new("/a/current.conf")
    ));
    assert!(!same_name(
        OsStr::new("current.conf.tmp"),
        Path::new("/a/current.conf")
    ));
}
