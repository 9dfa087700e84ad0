//! Hostile bytes from a peer: decoding must never panic, and whatever it
//! accepts must survive a re-encode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcache::wire::{decode_payload, FrameCodec, Message};

fn assert_reencodes(codec: &FrameCodec, msg: &Message) {
    let frame = codec.encode_to_bytes(msg).expect("a decoded message fits the frame it came from");
    let again = codec.decode_all(&frame).expect("a re-encoded message decodes");
    assert_eq!(again.as_slice(), std::slice::from_ref(msg));
}

fuzz_target!(|data: &[u8]| {
    let codec = FrameCodec::new(1 << 20);
    if let Ok(msgs) = codec.decode_all(data) {
        for m in &msgs {
            assert_reencodes(&codec, m);
        }
    }
    // The input as a bare payload reaches the message decoder without
    // first having to guess a matching length prefix.
    if let Ok(m) = decode_payload(data) {
        assert_reencodes(&codec, &m);
    }
});
