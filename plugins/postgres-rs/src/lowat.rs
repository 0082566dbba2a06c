//! Fewer wake-ups while a COPY streams: the socket's `SO_RCVLOWAT`.
//!
//! The reader decodes faster than one server backend produces, so it used to wake for every few
//! KiB the kernel received (~75K `epoll_wait`s and context switches for the 1M-row benchmark
//! table, each with tokio-postgres's codec and channel hop behind it). While a COPY runs, the
//! socket's receive low-water mark is raised to [`COPY_LOWAT`]: the kernel wakes the reader only
//! once that much has arrived (or the connection closes). The last bytes of a COPY (or an error
//! the server sends) can be fewer than that: when a wait has lasted [`FALLBACK`], the mark is
//! dropped to 1, which wakes the reader at once if anything is there (Linux's `tcp_set_rcvlowat`
//! re-checks readiness), and raised again when data arrives. The mark is back at 1 when the COPY
//! ends, before any other statement runs.
//!
//! tokio-postgres does not expose its socket, so the descriptor is found once per connection:
//! the server tells the connection's client and server ports (`inet_client_port()`,
//! `inet_server_port()`), and the process's one TCP socket with that local and peer port is it.
//! When that cannot be decided (a Unix socket, a proxy in between, a server without those
//! functions) nothing is changed.

use std::os::fd::RawFd;
use std::time::Duration;

/// Bytes the kernel gathers before it wakes the reader during a COPY (~90 tuples of a 50-column row).
pub const COPY_LOWAT: i32 = 64 * 1024;
/// How long a wait may last before the mark is dropped (a slow query, the COPY's last bytes).
pub const FALLBACK: Duration = Duration::from_micros(500);

/// Set the socket's receive low-water mark; false when the kernel refuses it.
pub fn set(fd: RawFd, bytes: i32) -> bool {
    let value: libc::c_int = bytes;
    // SAFETY: `value` outlives the call and its size is passed; `fd` is the session's socket,
    // open as long as the session (the caller holds it).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// The TCP port of an IPv4 or IPv6 socket address (network order in the struct).
fn port_of(addr: &libc::sockaddr_storage) -> Option<u16> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in (sockaddr_storage is large and aligned enough).
            let v4 = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

fn name(fd: RawFd, peer: bool) -> Option<u16> {
    // SAFETY: an all-zero sockaddr_storage is a valid value; the kernel writes at most `len` bytes into it.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: `ptr` and `len` describe `addr`; on a descriptor that is no socket the call fails (ENOTSOCK).
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut len)
        } else {
            libc::getsockname(fd, ptr, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    port_of(&addr)
}

/// The one descriptor of this process that is a TCP socket from `local` to `peer` port; None if
/// there is none or more than one (then the caller leaves every socket alone).
pub fn find_socket(local: u16, peer: u16) -> Option<RawFd> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else { continue };
        if name(fd, false) == Some(local) && name(fd, true) == Some(peer) {
            if found.is_some() {
                return None;
            }
            found = Some(fd);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn finds_the_socket_by_its_ports_and_sets_the_mark() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap().port();
        let peer = listener.local_addr().unwrap().port();
        assert_eq!(find_socket(local, peer), Some(client.as_raw_fd()));
        assert_eq!(find_socket(local, peer.wrapping_add(1)), None);
        assert!(set(client.as_raw_fd(), COPY_LOWAT));
        assert!(set(client.as_raw_fd(), 1));
        assert!(!set(-1, 1));
    }
}
