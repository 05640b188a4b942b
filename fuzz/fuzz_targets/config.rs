//! The host config parser on arbitrary bytes: it must never panic, and a
//! config it accepts must read back the same from its own TOML.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = atoll_common::config::parse(data, "fuzz") else {
        return;
    };
    let text = config.to_toml();
    match atoll_common::config::parse(text.as_bytes(), "fuzz round trip") {
        Ok(back) => assert_eq!(back, config, "round trip changed the config:\n{text}"),
        Err(e) => panic!("the effective config does not parse:\n{e}\n{text}"),
    }
});
