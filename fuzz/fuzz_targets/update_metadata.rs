//! The update metadata parser on arbitrary bytes: parsing any role, the
//! root's key and threshold checks, and starting a client from it must
//! never panic; a document that parses must give the same canonical bytes
//! when its `signed` value is parsed again.

#![no_main]

use atoll_updater::metadata::{canonical, role, Root, Snapshot, Targets, Timestamp, Trusted};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = role::parse::<Root>("root.json", data) {
        let _ = root.signed.check("root.json");
        let _ = root.signed.verify(role::RoleName::Root, &root);
        canonical_is_stable(&root.canonical);
    }
    if let Ok(doc) = role::parse::<Targets>("targets.json", data) {
        canonical_is_stable(&doc.canonical);
    }
    let _ = role::parse::<Snapshot>("snapshot.json", data);
    let _ = role::parse::<Timestamp>("timestamp.json", data);
    let _ = Trusted::new(data, "root.json");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = atoll_updater::metadata::Time::parse(text);
        let _ = text.parse::<atoll_updater::metadata::Version>();
        let _ = atoll_updater::metadata::time::parse_span(text);
    }
});

fn canonical_is_stable(bytes: &[u8]) {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => panic!("canonical bytes do not parse: {e}"),
    };
    match canonical::to_vec(&value) {
        Ok(again) => assert_eq!(again, bytes, "canonical form is not stable"),
        Err(e) => panic!("canonical bytes are not canonical: {e}"),
    }
}
