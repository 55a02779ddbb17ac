//! current.conf's bytes -> Release: never panics; an error is one line; a
//! release names absolute, normalized paths.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let home = Path::new("/home/web");
    match baton::config::parse(data, Path::new("/srv/app/release"), Some(home)) {
        Err(e) => assert!(!e.contains('\n'), "multi-line error: {e:?}"),
        Ok(p) => {
            for path in [&p.release.bin, &p.release.cfg] {
                assert!(path.is_absolute(), "{path:?}");
                assert!(
                    path.components()
                        .all(|c| !matches!(c, Component::ParentDir | Component::CurDir)),
                    "{path:?}"
                );
            }
            let _ = p.release.name();
            assert!(p.warnings.iter().all(|w| !w.contains('\n')));
        }
    }
    // Without a home, `~` is an error, never a panic.
    let _ = baton::config::parse(data, Path::new("/"), None);
});
