//! A long link for scripts/bench-wan.sh: every Ethernet frame that arrives on one network
//! interface goes out of the other `DELAY_MS` later, each way, as a link between data
//! centers would hold it. This kernel has no netem; the rate comes from `tc ... tbf` on the
//! ends. Runs until killed.
//!
//!   cargo bench --bench wan -- IF_A IF_B DELAY_MS

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The largest frame taken (a 1500-byte MTU, with segmentation offloads off on the ends).
const FRAME_MAX: usize = 65_536;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(a), Some(b), Some(delay)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: wan IF_A IF_B DELAY_MS");
        std::process::exit(2);
    };
    let Ok(delay) = delay.parse::<u64>().map(Duration::from_millis) else {
        eprintln!("wan: DELAY_MS must be a whole number of milliseconds");
        std::process::exit(2);
    };
    let open = |name: &str| {
        raw_socket(name).unwrap_or_else(|error| {
            eprintln!("wan: interface {name}: {error}");
            std::process::exit(1);
        })
    };
    let (a, b) = (open(a), open(b));
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let there = std::thread::spawn(move || forward(&a, &b, delay));
    let back = std::thread::spawn(move || forward(&b2, &a2, delay));
    for direction in [there, back] {
        if let Ok(Err(error)) = direction.join() {
            eprintln!("wan: {error}");
            std::process::exit(1);
        }
    }
}

/// A raw socket taking every frame that arrives on interface `name` (none it sends).
fn raw_socket(name: &str) -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol.into()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made, owned from here.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let c_name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index as i32;
    // SAFETY: a sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            fd,
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error());
    }
    // Frames this socket's side sends would otherwise come back as input, and loop.
    let on: libc::c_int = 1;
    // SAFETY: an int option of the size given.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Frames from `from` go out of `to`, each `delay` after it arrived, in order.
fn forward(from: &OwnedFd, to: &OwnedFd, delay: Duration) -> io::Result<()> {
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buffer = vec![0u8; FRAME_MAX];
    loop {
        let wait = held.front().map_or(Duration::from_secs(1), |(due, _)| {
            due.saturating_duration_since(Instant::now())
        });
        if readable(from, wait)? {
            loop {
                // SAFETY: a buffer of the length given.
                let n = unsafe {
                    libc::recv(
                        from.as_raw_fd(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    let error = io::Error::last_os_error();
                    if error.kind() == io::ErrorKind::WouldBlock {
                        break;
                    }
                    return Err(error);
                }
                held.push_back((Instant::now() + delay, buffer[..n as usize].to_vec()));
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, frame) = held.pop_front().expect("checked above");
            // SAFETY: a buffer of the length given. A frame the far end refuses (its
            // queue full) is lost, as on a real link.
            unsafe { libc::send(to.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        }
    }
}

/// Whether `fd` has input within `wait`.
fn readable(fd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos().into(),
    };
    // SAFETY: one pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut poll, 1, &timeout, std::ptr::null()) };
    match n {
        n if n < 0 => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            Err(error)
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}
