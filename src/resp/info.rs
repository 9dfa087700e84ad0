//! INFO: Redis's sections, plus `# Meshcache` for the mesh's own state.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Shared;
use crate::membership::Status;

/// The Redis version whose commands and replies this server follows
/// (reported by HELLO and INFO, as other Redis-compatible servers do).
/// 7.4 changed none of the commands meshcache has but CLIENT KILL (its
/// MAXAGE filter, which meshcache has too); redis-py turns client-side
/// caching on only for 7.4 or later.
pub(crate) const REDIS_VERSION: &str = "7.4.0";

/// Every section, in the order INFO writes them (Redis's order, then the
/// mesh's own).
const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "commandstats",
    "errorstats",
    "latencystats",
    "cluster",
    "keyspace",
    "meshcache",
];

/// Sections that `INFO`, `INFO default` leave out, as Redis leaves out its
/// per-command statistics; `all` and `everything` include them.
const NOT_DEFAULT: &[&str] = &["commandstats", "latencystats"];

/// The INFO text for the requested sections, each once and in the order of
/// [`SECTIONS`] whatever the order asked, as Redis writes them. An unknown
/// name adds nothing (so `INFO nosuch` is empty).
pub(crate) fn info(sh: &Shared, args: &[Bytes]) -> String {
    let asked = |name: &str| args.iter().any(|a| a.eq_ignore_ascii_case(name.as_bytes()));
    let every = asked("all") || asked("everything");
    let default = args.is_empty() || asked("default");
    // `mesh` is another name for `meshcache`, which already shows the
    // peers connected (`connected`, and `peerN:...connected=`), the
    // anti-entropy counters (`ae_*`) and how far behind each member this
    // peer can be (`synced_ago_ms`, the bound on push lag: pushes usually
    // arrive sooner, anti-entropy at the latest).
    let wanted = |name: &str| {
        every || (default && !NOT_DEFAULT.contains(&name)) || asked(name) || (name == "meshcache" && asked("mesh"))
    };
    let mut s = String::with_capacity(2048);
    for sec in SECTIONS.iter().copied().filter(|n| wanted(n)) {
        if !s.is_empty() {
            s.push_str("\r\n");
        }
        section(sh, sec, &mut s);
    }
    s
}

fn human(bytes: usize) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes}B"),
        1024..1_048_576 => format!("{:.2}K", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.2}M", b / 1_048_576.0),
        _ => format!("{:.2}G", b / 1_073_741_824.0),
    }
}

/// Memory in use as INFO reports it (`used_memory`): the allocator's count
/// when the process has one (the `meshcache` command), which is what the
/// bound applies to, as in Redis; for an embedded peer without a probe,
/// the store's own accounting.
pub(super) fn used_memory(sh: &Shared) -> usize {
    sh.mesh.allocated_bytes().unwrap_or_else(|| sh.mesh.replica().store().stats().bytes)
}

/// INFO's `run_id`, 40 hex digits as Redis's: a digest of the peer's name
/// and incarnation, so that it changes at every start, as Redis's random
/// one does, and a simulated peer's is the same at every replay.
pub(super) fn run_id(id: &crate::membership::MemberId) -> String {
    let mut seed = id.name.as_bytes().to_vec();
    seed.extend_from_slice(&id.incarnation.node.0.to_le_bytes());
    seed.extend_from_slice(&id.incarnation.started_ms.to_le_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &seed);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn section(sh: &Shared, name: &str, s: &mut String) {
    let st = &sh.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    // Writing to a String cannot fail.
    let _ = match name {
        "server" => {
            let up = sh.started.elapsed().as_secs();
            writeln!(
                s,
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nserver_name:meshcache\r\nmeshcache_version:{}\r\n\
                 redis_mode:standalone\r\nos:{} {}\r\narch_bits:{}\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\n\
                 uptime_in_seconds:{up}\r\nuptime_in_days:{}\r\nexecutable:{}\r",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
                usize::BITS,
                std::process::id(),
                sh.run_id,
                sh.local_addr.port(),
                up / 86_400,
                std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default(),
            )
        }
        "clients" => {
            let (tracking, ..) = sh.tracking.counts();
            writeln!(
                s,
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\ntracking_clients:{tracking}\r",
                sh.clients.load(Ordering::Relaxed),
                sh.config.max_clients,
            )
        }
        "memory" => {
            let store = sh.mesh.replica().store();
            let used = used_memory(sh);
            let peak = sh.rates.peak(used);
            let rss = rss_bytes().unwrap_or(0);
            let system = system_memory().unwrap_or(0);
            let max = store.max_bytes().map_or(0, |b| b.get());
            let fragmentation = if used == 0 { 0.0 } else { rss as f64 / used as f64 };
            writeln!(
                s,
                "# Memory\r\nused_memory:{used}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\n\
                 used_memory_rss_human:{}\r\nused_memory_peak:{peak}\r\nused_memory_peak_human:{}\r\n\
                 used_memory_dataset:{}\r\ntotal_system_memory:{system}\r\ntotal_system_memory_human:{}\r\n\
                 maxmemory:{max}\r\nmaxmemory_human:{}\r\nmaxmemory_policy:{}\r\n\
                 mem_fragmentation_ratio:{fragmentation:.2}\r\nmem_values_limit:{}\r",
                human(used),
                human(rss),
                human(peak),
                store.stats().bytes,
                human(system),
                human(max),
                store.policy(),
                store.value_limit(),
            )
        }
        "persistence" => {
            // Nothing is saved or loaded: a peer starts empty and fills from
            // its peers. Only what is true of that is reported, so that no
            // save time or status alarms anyone.
            writeln!(
                s,
                "# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_bgsave_in_progress:0\r\naof_enabled:0\r\n\
                 aof_rewrite_in_progress:0\r"
            )
        }
        "stats" => {
            let store = sh.mesh.replica().store().stats();
            let (_, keys, items, prefixes) = sh.tracking.counts();
            let rate = sh.rates.per_sec();
            let (channels, patterns) = sh.hub.counts();
            let kbps = |bytes_per_sec: u64| bytes_per_sec as f64 / 1024.0;
            writeln!(
                s,
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 instantaneous_ops_per_sec:{}\r\ntotal_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\n\
                 instantaneous_input_kbps:{:.2}\r\ninstantaneous_output_kbps:{:.2}\r\nrejected_connections:{}\r\n\
                 expired_keys:{}\r\nevicted_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\n\
                 pubsub_channels:{channels}\r\npubsub_patterns:{patterns}\r\n\
                 total_error_replies:{}\r\nprotocol_errors:{}\r\nclient_output_buffer_limit_disconnections:{}\r\n\
                 keyspace_notifications_delivered:{}\r\n\
                 tracking_total_keys:{keys}\r\ntracking_total_items:{items}\r\ntracking_total_prefixes:{prefixes}\r\n\
                 tracking_keys_invalidated_early:{}\r",
                l(&st.connections),
                l(&st.commands),
                rate.commands,
                l(&st.net_in),
                l(&st.net_out),
                kbps(rate.net_in),
                kbps(rate.net_out),
                l(&st.rejected),
                store.collected_expired.saturating_sub(l(&st.expired_base)),
                store.evictions.saturating_sub(l(&st.evicted_base)),
                l(&st.hits),
                l(&st.misses),
                l(&st.errors),
                l(&st.protocol_errors),
                l(&st.output_limit_closes),
                sh.hub.delivered.load(Ordering::Relaxed),
                sh.tracking.early.load(Ordering::Relaxed),
            )
        }
        "replication" => {
            // Every peer takes writes: each is a "master" to its clients.
            // The other peers are not its replicas: they are masters too,
            // merging each other's writes (pushes and anti-entropy, shown
            // in the meshcache section), so none is counted as a slave.
            writeln!(s, "# Replication\r\nrole:master\r\nconnected_slaves:0\r")
        }
        "cpu" => cpu(s),
        "modules" => writeln!(s, "# Modules\r"),
        "commandstats" => commandstats(sh, s),
        "errorstats" => {
            s.push_str("# Errorstats\r\n");
            sh.errorstats.write(s);
            Ok(())
        }
        // Empty, as Redis writes it with `latency-tracking no`: commands
        // are not timed one by one, so there are no percentiles.
        "latencystats" => writeln!(s, "# Latencystats\r"),
        "cluster" => writeln!(s, "# Cluster\r\ncluster_enabled:0\r"),
        "keyspace" => {
            let store = sh.mesh.replica().store();
            let st = store.stats();
            let keys = st.entries.saturating_sub(st.tombstones + st.stubs);
            s.push_str("# Keyspace\r\n");
            if keys > 0 {
                // Redis 7.4's line; `subexpiry` counts hash fields with a
                // TTL, which a string-only cache has none of.
                let e = store.expiring(sh.mesh.now_ms());
                writeln!(s, "db0:keys={keys},expires={},avg_ttl={},subexpiry=0\r", e.values, e.avg_ttl_ms)
            } else {
                Ok(())
            }
        }
        "meshcache" => meshcache(sh, s),
        _ => Ok(()),
    };
}

/// One line per command that was called or refused, as Redis's
/// `cmdstat_<name>` lines.
fn commandstats(sh: &Shared, s: &mut String) -> std::fmt::Result {
    s.push_str("# Commandstats\r\n");
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (i, st) in sh.commands.iter().enumerate() {
        let (calls, usec, rejected, failed) = (l(&st.calls), l(&st.nanos) / 1000, l(&st.rejected), l(&st.failed));
        if calls == 0 && rejected == 0 && failed == 0 {
            continue;
        }
        let name = crate::resp::cmd::name_at(i).unwrap_or("unknown");
        let per_call = if calls == 0 { 0.0 } else { usec as f64 / calls as f64 };
        writeln!(
            s,
            "cmdstat_{name}:calls={calls},usec={usec},usec_per_call={per_call:.2},rejected_calls={rejected},\
             failed_calls={failed}\r"
        )?;
    }
    Ok(())
}

fn meshcache(sh: &Shared, s: &mut String) -> std::fmt::Result {
    let m = &sh.mesh;
    let id = m.id();
    let st = m.stats();
    let now = m.now_ms();
    writeln!(
        s,
        "# Meshcache\r\nname:{}\r\nnode:{}\r\nincarnation_started_ms:{}\r\nbooted:{}\r\nmembers:{}\r\nconnected:{}\r\ndials:{}\r\n\
         entries:{}\r\nvalues:{}\r\ntombstones:{}\r\nstubs:{}\r\nbytes:{}\r\ndeltas_sent:{}\r\ndeltas_received:{}\r\n\
         push_batches_sent:{}\r\npush_bytes_sent:{}\r\nqueue_overflows:{}\r\nae_rounds:{}\r\nae_failed:{}\r\nae_declined:{}\r\n\
         ae_summaries_deferred:{}\r\nae_summary_window_waits:{}\r\nae_bytes_sent:{}\r\nae_bytes_received:{}\r\nae_entries_sent:{}\r\nae_entries_received:{}\r\n\
         messages_published:{}\r\nmessages_received:{}\r\nrefused_peers:{}\r\npeer_protocol_errors:{}\r\n\
         clock_refused:{}\r\nmembers_invalid:{}\r\nmembers_over_cap:{}\r\nseed_lookups_failed:{}\r\n\
         tls_refused:{}\r\nlinks_made:{}\r\nversion_refusals:{}\r\ncollected_tombstones:{}\r\ncompactions:{}\r\n\
         clear_below:{}\r\ngc_floor:{}\r\nruntime_workers:{}\r",
        id.name,
        id.incarnation.node,
        id.incarnation.started_ms,
        st.booted as u8,
        st.members,
        st.connected,
        st.dials,
        st.store.entries,
        st.store.entries.saturating_sub(st.store.tombstones + st.store.stubs),
        st.store.tombstones,
        st.store.stubs,
        st.store.bytes,
        st.deltas_sent,
        st.deltas_received,
        st.push_batches_sent,
        st.push_bytes_sent,
        st.queue_overflows,
        st.ae_rounds,
        st.ae_failed,
        st.ae_declined,
        st.ae_summaries_deferred,
        st.ae_summary_window_waits,
        st.ae_bytes_sent,
        st.ae_bytes_received,
        st.ae_entries_sent,
        st.ae_entries_received,
        st.messages_published,
        st.messages_received,
        st.refused_peers,
        st.protocol_errors,
        st.clock_refused,
        st.members_invalid,
        st.members_over_cap,
        st.seed_lookups_failed,
        st.tls_refused,
        st.links_made,
        st.version_refusals,
        st.store.collected_tombstones,
        st.store.compactions,
        st.store.floors.clear_below,
        st.store.floors.gc_floor,
        // The runtime serving this connection (`--threads`); 0 outside one.
        tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers()),
    )?;
    // One line per known member. `synced_ago_ms` is the age of the start of
    // the last complete anti-entropy round with it: an upper bound on how
    // stale this peer can be about that member's writes (pushes usually
    // deliver them much sooner); -1 if never synced.
    for (i, p) in m.members().iter().enumerate() {
        let status = match p.status {
            Status::Active => "active",
            Status::Left => "left",
            Status::Forgotten => "forgotten",
        };
        writeln!(
            s,
            "peer{i}:name={},node={},status={status},connected={},addr={},synced_ago_ms={}\r",
            p.id.name,
            p.id.incarnation.node,
            p.connected as u8,
            p.addr.map(|a| a.to_string()).unwrap_or_default(),
            p.synced_ms.map_or(-1, |t| now.saturating_sub(t) as i64),
        )?;
    }
    Ok(())
}

/// The process's CPU time, user and system, its own and its waited-for
/// children's, in seconds with microseconds, as Redis writes them.
fn cpu(s: &mut String) -> std::fmt::Result {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let secs = |t: nix::sys::time::TimeVal| t.num_microseconds() as f64 / 1e6;
    let (own, children) = (getrusage(UsageWho::RUSAGE_SELF), getrusage(UsageWho::RUSAGE_CHILDREN));
    s.push_str("# CPU\r\n");
    // getrusage fails only on a bad argument; a failure leaves the lines
    // out rather than reporting zeros.
    if let (Ok(own), Ok(children)) = (own, children) {
        writeln!(
            s,
            "used_cpu_sys:{:.6}\r\nused_cpu_user:{:.6}\r\nused_cpu_sys_children:{:.6}\r\nused_cpu_user_children:{:.6}\r",
            secs(own.system_time()),
            secs(own.user_time()),
            secs(children.system_time()),
            secs(children.user_time()),
        )?;
    }
    Ok(())
}

/// The machine's memory, from /proc (None where there is none).
fn system_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's resident set, from /proc (None where there is none).
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
