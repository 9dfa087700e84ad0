//! The smallest application that embeds a meshcache peer and keeps a near
//! cache honest by subscribing to invalidations.
//!
//! Two peers run in this process (standing in for two application
//! instances) with an in-memory CA; one writes, the other watches.
//!
//! `cargo run --example embedded`

use std::collections::HashMap;
use std::time::Duration;

use meshcache::store::ChangeKind;
use meshcache::transport::certs::EphemeralCa;
use meshcache::wait::Wait;
use meshcache::Mesh;
use tokio_stream::StreamExt;

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
    b.wait_ready(Duration::from_secs(10)).await;

    // app-b's own near cache: decoded objects it does not want to rebuild
    // on every read, dropped whenever the mesh says the key changed.
    let mut near: HashMap<Vec<u8>, String> = HashMap::new();
    a.put("user:42", "Ada")?;
    Wait::new(Duration::from_secs(30)).until("user:42 reaches app-b", || b.get(b"user:42").is_some()).await?;
    near.insert(b"user:42".to_vec(), format!("<decoded {:?}>", b.get(b"user:42").unwrap()));
    println!("app-b cached user:42 -> {}", near[&b"user:42"[..]]);

    let mut changes = b.subscribe();
    a.delete("session:9")?;
    a.put("user:42", "Ada Lovelace")?;
    // Drain invalidations until the rewrite of user:42 shows up.
    while let Ok(Some(Ok(c))) = tokio::time::timeout(Duration::from_secs(5), changes.next()).await {
        println!("invalidation on app-b: {:?} {:?} from {:?}", c.kind, String::from_utf8_lossy(&c.key), c.origin);
        if near.remove(c.key.as_ref()).is_some() {
            println!("  dropped stale near-cache entry for {}", String::from_utf8_lossy(&c.key));
        }
        if c.key.as_ref() == b"user:42" && c.kind == ChangeKind::Put {
            break;
        }
    }
    println!("app-b now reads user:42 = {:?}", b.get(b"user:42"));
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
