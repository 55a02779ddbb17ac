//! A notify datagram -> Message: never panics; an error is one line; a
//! STATUS is at most 200 characters and one line.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match baton::notify::parse(data) {
        Err(e) => assert!(!e.contains('\n'), "multi-line error: {e:?}"),
        Ok(m) => {
            if let Some(s) = m.status {
                assert!(s.chars().count() <= 200 && !s.contains('\n'), "{s:?}");
            }
        }
    }
});
