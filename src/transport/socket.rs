//! The UDP socket a peer's QUIC endpoint runs on.
//!
//! A peer receives every other peer's pushes, acknowledgements and
//! anti-entropy sessions on one socket. The kernel's default receive
//! buffer (208 KiB on Linux) holds about 150 full datagrams; a burst from
//! two writing peers while this peer's threads are busy overflows it, and
//! the kernel drops what does not fit. QUIC recovers a dropped packet, but
//! only after it notices the gap: the stream behind it waits, and the
//! sender resends. So the socket asks for buffers of [`BUFFER_BYTES`]. The
//! kernel caps what it grants at `net.core.rmem_max` and `wmem_max`; an
//! operator who sees `RcvbufErrors` grow in `/proc/net/snmp` raises those
//! (README, "Running across machines").

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// The receive and send buffer each socket asks for.
pub const BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket at `addr` (port 0 picks a free one) with buffers as
/// large as the kernel allows up to [`BUFFER_BYTES`]. A kernel that
/// refuses the size leaves its default, which works, with more drops under
/// load.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let s = socket2::SockRef::from(&socket);
    if let Err(e) = s.set_recv_buffer_size(BUFFER_BYTES) {
        tracing::debug!(%addr, error = %e, "the kernel kept its default UDP receive buffer");
    }
    if let Err(e) = s.set_send_buffer_size(BUFFER_BYTES) {
        tracing::debug!(%addr, error = %e, "the kernel kept its default UDP send buffer");
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel lets a process ask for, from `/proc` (Linux).
    fn kernel_max(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).ok()?.trim().parse().ok()
    }

    #[test]
    fn a_bound_socket_has_the_buffers_the_kernel_allows() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(socket.local_addr().unwrap().port(), 0);
        let s = socket2::SockRef::from(&socket);
        let (Some(rmem), Some(wmem)) = (kernel_max("rmem_max"), kernel_max("wmem_max")) else {
            eprintln!("no /proc/sys/net/core here: only the bind is checked");
            return;
        };
        // Linux reports twice what was set (it counts its own overhead).
        let (recv, send) = (s.recv_buffer_size().unwrap(), s.send_buffer_size().unwrap());
        assert!(recv >= BUFFER_BYTES.min(rmem), "receive buffer {recv} B, rmem_max {rmem} B");
        assert!(send >= BUFFER_BYTES.min(wmem), "send buffer {send} B, wmem_max {wmem} B");
    }
}
