//! The `meshcache` command.
//!
//! The networked peer (`node`), certificates and the demo are not built yet;
//! see README.md, "Status". Until then the binary reports its version and
//! protocol, so that scripts can already check what they run.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("version") | Some("--version") | Some("-V") => {
            println!("meshcache {} (protocol {})", env!("CARGO_PKG_VERSION"), meshcache::wire::PROTOCOL_VERSION);
            ExitCode::SUCCESS
        }
        Some("help") | Some("--help") | Some("-h") => {
            println!("usage: meshcache [version]\n\nThe peer (`node`), `certs` and `demo` commands are not built yet.");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("meshcache: unknown command {other:?}; this build only has `version` (see README.md, Status)");
            ExitCode::from(2)
        }
    }
}
