//! Property tests for the two parsers that read untrusted bytes,
//! `config::parse` (current.conf) and `notify::parse` (datagrams): the same
//! invariants as the cargo-fuzz targets in fuzz/, on deterministic
//! pseudo-random inputs (mutations of valid ones and generated ones), so
//! that they run in every `cargo test`. Set BATON_PROPERTY_CASES to run more.

use std::path::{Component, Path, PathBuf};

use baton::config;
use baton::notify;

use crate::util::Rng;

fn cases() -> usize {
    std::env::var("BATON_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// 1 to 4 random edits of `seed`: flip, insert (a random byte or a token
/// that matters to the parser), delete a range, duplicate a range,
/// truncate.
fn mutate(rng: &mut Rng, seed: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next() as u8),
            2 => {
                let t = rng.pick(tokens);
                v.splice(at..at, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let end = (at + rng.below(8)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 if !v.is_empty() => {
                let end = (at + rng.below(16)).min(v.len());
                let piece = v[at.min(end)..end].to_vec();
                v.splice(at..at, piece);
            }
            _ => v.truncate(at),
        }
    }
    v
}

// ---- current.conf ----

const CONF_SEEDS: &[&str] = &[
    r#"{"bin.file": "~/app/release/app.2.0", "cfg.file": "cfg.2.0"}"#,
    r#"{"bin.file": "/opt/x/../bin/app.1.0", "cfg.file": "./sub/../cfg.9", "colour": "blue"}"#,
    r#"{"bin.file": "../../../../x", "cfg.file": "~"}"#,
    r#"{"cfg.file": "a\u0000b", "bin.file": "\u00e9/\ud83d\ude00"}"#,
    r#"[{"bin.file": 1}]"#,
];

const CONF_TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"~/",
    b"~",
    b"/",
    b"..",
    b"../",
    b"./",
    b"\"bin.file\": ",
    b"\"cfg.file\": ",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xae",
    b"\n",
    b"1e999",
    b"null",
    b"[[[[[[[[[[[[[[[[[[[[",
];

/// Checks what `config::parse` promises for any bytes.
fn check_conf(bytes: &[u8]) {
    let base = Path::new("/srv/app/release");
    let home = Path::new("/home/web");
    for home in [Some(home), None] {
        match config::parse(bytes, base, home) {
            Err(e) => {
                assert!(!e.is_empty() && !e.contains('\n'), "{bytes:?}: {e:?}");
            }
            Ok(p) => {
                for path in [&p.release.bin, &p.release.cfg] {
                    assert!(path.is_absolute(), "{bytes:?}: {path:?}");
                    assert!(
                        path.components()
                            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                        "not normalized: {path:?} from {bytes:?}"
                    );
                }
                assert!(!p.release.name().is_empty());
                assert!(p.warnings.iter().all(|w| !w.contains('\n')), "{p:?}");
            }
        }
    }
}

#[test]
fn current_conf_parser_survives_mutated_input() {
    let mut rng = Rng(0x5eed_0001);
    for i in 0..cases() {
        let seed = rng.pick(CONF_SEEDS).as_bytes();
        let input = mutate(&mut rng, seed, CONF_TOKENS);
        let r = std::panic::catch_unwind(|| check_conf(&input));
        assert!(r.is_ok(), "case {i} panicked on {input:?}");
    }
}

#[test]
fn current_conf_parser_survives_random_bytes_and_depth() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..cases() / 4 {
        let len = rng.below(64);
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check_conf(&input);
    }
    for depth in [127, 128, 129, 1_000, 100_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let doc = format!("{}{}", open.repeat(depth), close.repeat(depth));
            check_conf(doc.as_bytes());
            check_conf(open.repeat(depth).as_bytes());
        }
    }
}

/// The model of path resolution: `~/` is home, relative is under base,
/// `.` dropped, `..` pops (never above /).
fn model_resolve(s: &str, base: &Path, home: &Path) -> PathBuf {
    let full = if s == "~" || s.starts_with("~/") {
        format!("{}/{}", home.display(), &s[1..])
    } else if s.starts_with('/') {
        s.to_owned()
    } else {
        format!("{}/{s}", base.display())
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in full.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    PathBuf::from(format!("/{}", parts.join("/")))
}

#[test]
fn current_conf_paths_resolve_as_the_model_says() {
    let mut rng = Rng(0x5eed_0003);
    let pieces = ["a", "b.2.0", "..", ".", "~", "", "é", " ", "app.1.0", "x y"];
    let base = Path::new("/srv/app/release");
    let home = Path::new("/home/web");
    for _ in 0..cases() / 4 {
        let path = |rng: &mut Rng| {
            let mut s = match rng.below(3) {
                0 => "/".to_owned(),
                1 => "~/".to_owned(),
                _ => String::new(),
            };
            let n = 1 + rng.below(5);
            let parts: Vec<&str> = (0..n).map(|_| *rng.pick(&pieces)).collect();
            s.push_str(&parts.join("/"));
            s
        };
        let (bin, cfg) = (path(&mut rng), path(&mut rng));
        let doc = serde_json::json!({"bin.file": bin, "cfg.file": cfg}).to_string();
        match config::parse(doc.as_bytes(), base, Some(home)) {
            Ok(p) => {
                assert_eq!(p.release.bin, model_resolve(&bin, base, home), "{doc}");
                assert_eq!(p.release.cfg, model_resolve(&cfg, base, home), "{doc}");
            }
            Err(e) => assert!(
                (bin.is_empty() || cfg.is_empty()) && e.contains("is empty"),
                "{doc}: {e}"
            ),
        }
    }
}

// ---- notify datagrams ----

const NOTE_SEEDS: &[&[u8]] = &[
    b"READY=1\n",
    b"READY=1\nSTATUS=serving 2.0\nMAINPID=4\nX-CUSTOM=y",
    b"STATUS=\xc3\xa9\xc3\xa9\nRELOADING=1\nSTOPPING=1\n",
    b"WATCHDOG=1\nMONOTONIC_USEC=123\n",
];

const NOTE_TOKENS: &[&[u8]] = &[
    b"=",
    b"\n",
    b"\0",
    b"READY=1",
    b"STATUS=",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xae",
    b"\r",
];

fn check_note(bytes: &[u8]) {
    match notify::parse(bytes) {
        Err(e) => assert!(!e.is_empty() && !e.contains('\n'), "{bytes:?}: {e:?}"),
        Ok(m) => {
            if let Some(s) = &m.status {
                assert!(s.chars().count() <= 200 && !s.contains('\n'), "{s:?}");
            }
            // Ready when the last READY= line is exactly READY=1.
            let text = std::str::from_utf8(bytes).unwrap();
            let last = text.split('\n').rfind(|l| l.starts_with("READY="));
            assert_eq!(m.ready, last == Some("READY=1"), "{text:?}");
        }
    }
}

#[test]
fn notify_parser_survives_mutated_and_random_input() {
    let mut rng = Rng(0x5eed_0004);
    for i in 0..cases() {
        let input = if i % 4 == 0 {
            let len = rng.below(300);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let seed = rng.pick(NOTE_SEEDS);
            mutate(&mut rng, seed, NOTE_TOKENS)
        };
        let r = std::panic::catch_unwind(|| check_note(&input));
        assert!(r.is_ok(), "case {i} panicked on {input:?}");
    }
    check_note(&vec![b'x'; notify::MAX_MESSAGE]);
    check_note(format!("STATUS={}", "é".repeat(3000)).as_bytes());
}
