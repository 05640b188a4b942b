//! grubenv read and write on arbitrary bytes: parsing a block, reading the
//! boot state from it, the boot loader's choice, and the changes PID 1 and
//! the updater make (mark good, make unbootable, offer) must never panic;
//! every block written parses back to the same variables, and every state
//! written reads back the same.

#![no_main]

use atoll_common::bootstate::{BootState, MAX_TRIES};
use atoll_common::grubenv::{Grubenv, SIZE};
use atoll_common::layout::Slot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The block as given, and padded or cut to the block size with the
    // header in front, so that the fuzzer reaches the parser's body.
    check_block(data);
    let mut block = atoll_common::grubenv::HEADER.as_bytes().to_vec();
    block.extend_from_slice(data);
    block.resize(SIZE, b'#');
    check_block(&block);
});

fn check_block(bytes: &[u8]) {
    let Ok(env) = Grubenv::parse(bytes) else {
        return;
    };
    if let Ok(written) = env.to_bytes() {
        assert_eq!(written.len(), SIZE);
        let again = Grubenv::parse(&written).expect("a written block parses");
        assert_eq!(again, env, "a written block reads back different");
    }
    let Ok(state) = BootState::from_env(&env) else {
        return;
    };
    assert_eq!(state.order.len(), 2, "ORDER must name both slots once");
    round_trip(&env, &state);
    let (_, next) = state.choose();
    round_trip(&env, &next);
    for slot in Slot::ALL {
        let mut good = state.clone();
        good.mark_good(slot);
        assert_eq!(good.choose().0.slot(), slot);
        round_trip(&env, &good);
        // The updater: unbootable before the write, offered after it.
        let mut offered = state.clone();
        let st = offered.slot_mut(slot);
        st.good = false;
        st.tries = MAX_TRIES;
        offered.order.retain(|s| *s != slot);
        offered.order.insert(0, slot);
        round_trip(&env, &offered);
    }
}

/// `state` written into (a copy of) `env` reads back as `state`, when the
/// variables fit in the block.
fn round_trip(env: &Grubenv, state: &BootState) {
    let mut env = env.clone();
    if state.to_env(&mut env).is_err() {
        return;
    }
    let Ok(bytes) = env.to_bytes() else {
        return;
    };
    let parsed = Grubenv::parse(&bytes).expect("a written block parses");
    let back = BootState::from_env(&parsed).expect("a written state reads back");
    assert_eq!(&back, state, "a written state reads back different");
}
