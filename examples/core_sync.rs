//! Two replicas of the core, a partition, concurrent writes, a delete and
//! one anti-entropy session: the smallest demonstration of how meshcache
//! converges. No network: messages are handed across in memory.
//!
//! `cargo run --example core_sync`

use bytes::Bytes;
use meshcache::hlc::NodeId;
use meshcache::membership::{Incarnation, MemberId};
use meshcache::replica::Replica;
use meshcache::store::StoreConfig;
use meshcache::sync::Session;

fn replica(name: &str, node: u64) -> Replica {
    let me = MemberId { name: name.into(), incarnation: Incarnation { started_ms: 0, node: NodeId(node) } };
    Replica::new(me, StoreConfig::default(), true).expect("default config is valid")
}

fn main() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis()
        as u64;
    let a = replica("a", 1);
    let b = replica("b", 2);

    // While the two cannot talk, both write the same key in the same
    // millisecond, a deletes another key that b still has, and b writes
    // 10,000 keys of its own.
    for r in [&a, &b] {
        r.put(Bytes::from("shared"), Bytes::from("old"), None, now).unwrap();
    }
    a.put(Bytes::from("race"), Bytes::from("from a"), None, now).unwrap();
    b.put(Bytes::from("race"), Bytes::from("from b"), None, now).unwrap();
    a.delete(Bytes::from("shared"), now).unwrap();
    for i in 0..10_000 {
        b.put(Bytes::from(format!("key:{i}")), Bytes::from(vec![b'x'; 100]), None, now).unwrap();
    }
    println!("before: a holds {} registers, b holds {}", a.store().len(), b.store().len());

    // The link heals: one anti-entropy session.
    let mut s = Session::initiate(&a, now);
    let mut r = Session::respond(now);
    while !(s.is_finished() && r.is_finished()) {
        while let Some(m) = s.poll_transmit(&a) {
            r.handle_message(&b, m, now).unwrap();
        }
        while let Some(m) = r.poll_transmit(&b) {
            s.handle_message(&a, m, now).unwrap();
        }
    }
    let (sa, sb) = (s.stats(), r.stats());
    println!(
        "session ({:?}): a sent {} bytes in {} messages, b sent {} bytes in {} messages",
        sa.mode, sa.bytes_sent, sa.messages_sent, sb.bytes_sent, sb.messages_sent
    );
    println!("after:  a holds {} registers, b holds {}", a.store().len(), b.store().len());
    for key in ["race", "shared"] {
        let (va, vb) = (a.get(key.as_bytes(), now), b.get(key.as_bytes(), now));
        println!("{key:>7}: a reads {va:?}, b reads {vb:?}");
        assert_eq!(va, vb, "replicas agree");
    }
    assert_eq!(a.store().root(), b.store().root(), "digests are equal");
    println!("digests equal: {:016x}", a.store().root().0);
}
