//! The smallest application that embeds a meshcache peer and keeps a near
//! cache honest by subscribing to invalidations.
//!
//! Two peers run in this process (standing in for two application
//! instances) with an in-memory CA; one writes, the other keeps decoded
//! objects in a near cache of its own and drops them when the mesh says:
//! a key at a time for a write or delete, all of them for a FLUSHALL or
//! when it fell behind and missed changes.
//!
//! `cargo run --example embedded`

use std::collections::HashMap;
use std::time::Duration;

use meshcache::{ChangeKind, EphemeralCa, Event, Mesh, Why};

/// Decoded objects the application does not want to rebuild on every read.
#[derive(Default)]
struct NearCache {
    objects: HashMap<Vec<u8>, String>,
}

impl NearCache {
    /// Reads through: the near copy, or the mesh's value decoded and kept.
    fn get(&mut self, mesh: &Mesh, key: &str) -> Option<String> {
        if let Some(o) = self.objects.get(key.as_bytes()) {
            return Some(o.clone());
        }
        let decoded = mesh.get_with(key, |v| format!("<decoded {}>", String::from_utf8_lossy(v)))?;
        self.objects.insert(key.as_bytes().to_vec(), decoded.clone());
        Some(decoded)
    }

    /// What the mesh says changed. Every event is handled: matching on
    /// `Event` leaves no way to skip a flush or a lag.
    fn apply(&mut self, event: &Event) {
        match event {
            Event::Changed(c) => {
                if self.objects.remove(c.key.as_ref()).is_some() {
                    println!("  dropped near copy of {} ({:?})", String::from_utf8_lossy(&c.key), c.kind);
                }
            }
            Event::InvalidateAll(why) => {
                println!("  dropped all {} near copies ({why:?})", self.objects.len());
                self.objects.clear();
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = EphemeralCa::new()?;
    let a = Mesh::builder().name("app-a").listen("127.0.0.1:0".parse()?).tls(ca.issue("app-a")?).start().await?;
    let b = Mesh::builder()
        .name("app-b")
        .listen("127.0.0.1:0".parse()?)
        .seeds([a.local_addr()])
        .tls(ca.issue("app-b")?)
        .start()
        .await?;
    // A peer started with seeds first loads the mesh's data; until then
    // its writes are refused (LOADING).
    if !b.wait_ready(Duration::from_secs(10)).await {
        return Err("app-b did not finish loading".into());
    }
    let mut changes = b.subscribe();
    let mut near = NearCache::default();

    a.insert("user:42", "Ada")?;
    a.insert("user:7", "Grace")?;
    // Wait for the writes as app-b learns of them.
    let mut seen = 0;
    while seen < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await?.ok_or("app-b stopped")?;
        near.apply(&event);
        seen += matches!(event, Event::Changed(_)) as usize;
    }
    println!("app-b reads user:42 = {:?}", near.get(&b, "user:42"));
    println!("app-b reads user:7 = {:?}", near.get(&b, "user:7"));

    // A rewrite on app-a drops app-b's near copy of that key alone.
    a.insert("user:42", "Ada Lovelace")?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await?.ok_or("app-b stopped")?;
        near.apply(&event);
        if matches!(&event, Event::Changed(c) if c.key == "user:42" && c.kind == ChangeKind::Put) {
            break;
        }
    }
    println!("app-b reads user:42 = {:?}", near.get(&b, "user:42"));

    // A FLUSHALL on app-a drops everything app-b kept.
    a.invalidate_all()?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await?.ok_or("app-b stopped")?;
        near.apply(&event);
        if matches!(event, Event::InvalidateAll(Why::Flushed { .. })) {
            break;
        }
    }
    println!("app-b reads user:7 = {:?}", near.get(&b, "user:7"));
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
