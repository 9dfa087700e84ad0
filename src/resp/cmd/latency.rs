//! LATENCY LATEST, HISTORY, RESET, GRAPH, DOCTOR, HISTOGRAM and HELP, over
//! `resp::latency`.

use bytes::Bytes;

use super::{eq, help_ending, lossy, unknown_subcommand, wrong_args, Cx};
use crate::resp::reply::Out;

pub(super) fn latency(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let sh = cx.sh;
    let monitor = &sh.latency;
    let now_secs = || sh.mesh.now_ms() / 1000;
    let sub = &args[1];
    // Each subcommand's arity, as Redis's table has it.
    let arity: i64 = match () {
        _ if ["latest", "doctor", "help"].iter().any(|s| eq(sub, s)) => 2,
        _ if ["history", "graph"].iter().any(|s| eq(sub, s)) => 3,
        _ if ["reset", "histogram"].iter().any(|s| eq(sub, s)) => -2,
        _ => return unknown_subcommand(out, sub, "LATENCY"),
    };
    let n = args.len() as i64;
    if (arity > 0 && n != arity) || n < -arity {
        return wrong_args(out, &format!("latency|{}", lossy(sub).to_ascii_lowercase()));
    }
    if eq(sub, "latest") {
        let latest = monitor.latest();
        out.array(latest.len());
        for l in latest {
            out.array(4);
            out.bulk(l.event.name().as_bytes());
            out.int(l.last.unix_secs as i64);
            out.int(l.last.ms as i64);
            out.int(l.max_ms as i64);
        }
    } else if eq(sub, "history") {
        let samples = monitor.history(&args[2]);
        out.array(samples.len());
        for s in samples {
            out.array(2);
            out.int(s.unix_secs as i64);
            out.int(s.ms as i64);
        }
    } else if eq(sub, "reset") {
        let n =
            if args.len() == 2 { monitor.reset(None) } else { args[2..].iter().map(|e| monitor.reset(Some(e))).sum() };
        out.int(n as i64);
    } else if eq(sub, "graph") {
        match monitor.graph(&args[2], now_secs()) {
            Some(text) => out.verbatim(&text),
            None => out.error(&format!("ERR No samples available for event '{}'", lossy(&args[2]))),
        }
    } else if eq(sub, "doctor") {
        out.verbatim(&monitor.doctor(now_secs(), sh.slowlog.slower_than_us()));
    } else if eq(sub, "histogram") {
        // Commands are not timed one by one (`latency-tracking` is `no`),
        // so no command has a histogram: Redis's answer with tracking off.
        out.map(0);
    } else {
        help_ending(
            out,
            "LATENCY",
            &[
                "DOCTOR",
                "    Return a human readable latency analysis report.",
                "GRAPH <event>",
                "    Return an ASCII latency graph for the <event> class.",
                "HISTORY <event>",
                "    Return time-latency samples for the <event> class.",
                "LATEST",
                "    Return the latest latency samples for all events.",
                "RESET [<event> ...]",
                "    Reset latency data of one or more <event> classes.",
                "    (default: reset all data for all event classes)",
                "HISTOGRAM [COMMAND ...]",
                "    Return a cumulative distribution of latencies in the format of a histogram for the specified \
                 command names.",
                "    If no commands are specified then all histograms are replied.",
            ],
            "    Prints this help.",
        );
    }
}
