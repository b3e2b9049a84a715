//! The programs that pick a queue for each new connection, run by the kernel
//! when a SYN reaches a `SO_REUSEPORT` group: the value a program returns is
//! an index into the group (the order its sockets called listen(2)); any
//! other value leaves the choice to the kernel's hash.
//!
//! - Round robin (eBPF, needs `CAP_BPF` to load): a counter and the list of
//!   open queues live in one array map that sheepdog maps into its memory,
//!   so opening and closing a queue is a plain write, no syscall and no
//!   privilege, for as long as sheepdog runs.
//! - Random (classic BPF, no privilege): the open queues are compiled into
//!   the program, which is attached again whenever they change.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The most queues a group steers over (as many as workers a sheepdog runs).
pub const MAX_QUEUES: usize = 4096;

/// A value no group index reaches: "the kernel's hash decides".
const NO_CHOICE: u32 = u32::MAX;

const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

// The map's one value: the round-robin ticket, which of the two lists is
// current, the connections steered to each queue, and the two lists (one is
// written while the program reads the other).
const TICKET: usize = 0;
const CURRENT: usize = 8;
const STEERED: usize = 16;
const LISTS: usize = STEERED + 8 * MAX_QUEUES;
/// One list: its length, then the group indices of the open queues.
const LIST_SIZE: usize = 4 + 4 * MAX_QUEUES;
const VALUE_SIZE: usize = LISTS + 2 * LIST_SIZE;

/// The layout's version, handed over with the map: a sheepdog that reads a
/// layout it does not know leaves the map alone.
pub const LAYOUT: u32 = 1;

/// Round robin over the open queues of one group, steered by eBPF.
#[derive(Debug)]
pub struct RoundRobin {
    map: OwnedFd,
    /// The program: kept so it can be handed over (the group holds it too).
    program: OwnedFd,
    value: NonNull<u8>,
    mapped: usize,
}

// SAFETY: the mapping is shared memory owned by this value; its words are
// read and written only through atomics.
unsafe impl Send for RoundRobin {}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, of this length, and used nowhere else.
        unsafe { libc::munmap(self.value.as_ptr().cast(), self.mapped) };
    }
}

impl RoundRobin {
    /// Loads the program and its map (`CAP_BPF`, or root) and attaches it to
    /// the group `member` belongs to. No queue is open until `publish`:
    /// meanwhile the kernel's hash decides.
    pub fn attach(member: BorrowedFd) -> io::Result<RoundRobin> {
        let map = create_map()?;
        let program = load_program(&map)?;
        let value = map_value(map.as_raw_fd())?;
        let steering = RoundRobin {
            map,
            program,
            value,
            mapped: mapped_length(),
        };
        set_program(member, SO_ATTACH_REUSEPORT_EBPF, &steering.program.as_raw_fd())?;
        Ok(steering)
    }

    /// The steering a previous sheepdog attached, from its map and program
    /// fds, which are taken only if this works (else left open, for a
    /// hand-back).
    pub fn adopt(map: RawFd, program: RawFd) -> io::Result<RoundRobin> {
        let value = map_value(map)?;
        // SAFETY: handed over for this, checked open, and taken here once.
        let (map, program) = unsafe { (OwnedFd::from_raw_fd(map), OwnedFd::from_raw_fd(program)) };
        Ok(RoundRobin {
            map,
            program,
            value,
            mapped: mapped_length(),
        })
    }
}

fn mapped_length() -> usize {
    VALUE_SIZE.next_multiple_of(page_size())
}

/// The map's value, mapped into this process.
fn map_value(map: RawFd) -> io::Result<NonNull<u8>> {
    let mapped = mapped_length();
    // SAFETY: a new shared mapping of the map's values; the kernel checks
    // the length against the map.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mapped,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(address.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl RoundRobin {
    pub fn map_fd(&self) -> RawFd {
        self.map.as_raw_fd()
    }

    pub fn program_fd(&self) -> RawFd {
        self.program.as_raw_fd()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= VALUE_SIZE && offset.is_multiple_of(4));
        // SAFETY: in the mapping, aligned, and shared only through atomics.
        unsafe { AtomicU32::from_ptr(self.value.as_ptr().add(offset).cast()) }
    }

    fn counter(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset + 8 <= VALUE_SIZE && offset.is_multiple_of(8));
        // SAFETY: as for `word`; the mapping is page aligned.
        unsafe { AtomicU64::from_ptr(self.value.as_ptr().add(offset).cast()) }
    }

    /// New connections go, in turn, to these group indices from now on
    /// (none: the kernel's hash). The list not in use is written, then
    /// made current, so the program never reads a list half written.
    pub fn publish(&self, open: &[u32]) {
        let open = &open[..open.len().min(MAX_QUEUES)];
        let next = 1 - (self.word(CURRENT).load(Ordering::Acquire) & 1);
        let list = LISTS + next as usize * LIST_SIZE;
        for (i, index) in open.iter().enumerate() {
            self.word(list + 4 + 4 * i).store(*index, Ordering::Relaxed);
        }
        self.word(list).store(open.len() as u32, Ordering::Relaxed);
        self.word(CURRENT).store(next, Ordering::Release);
    }

    /// The connections steered to the queue at `index` since the program
    /// was attached.
    pub fn steered(&self, index: usize) -> u64 {
        if index >= MAX_QUEUES {
            return 0;
        }
        self.counter(STEERED + 8 * index).load(Ordering::Relaxed)
    }
}

/// Attaches a classic BPF program that sends each new connection to one of
/// `open` (group indices) at random; none open: the kernel's hash. Needs no
/// privilege: a process may steer a group it holds a socket of.
pub fn attach_random(member: BorrowedFd, open: &[u32]) -> io::Result<()> {
    let program = random_program(open);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    set_program(member, SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// `ld rand; A %= n; A == 0 → ret open[0]; A == 1 → ret open[1]; …`
fn random_program(open: &[u32]) -> Vec<libc::sock_filter> {
    // Two instructions per queue, in classic BPF's 4096.
    let open = &open[..open.len().min(2000)];
    let statement = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = Vec::with_capacity(3 + 2 * open.len());
    if !open.is_empty() {
        // SKF_AD_OFF + SKF_AD_RANDOM: a random u32.
        program.push(statement(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (-0x1000i32 + 56) as u32,
        ));
        program.push(statement(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            open.len() as u32,
        ));
        for (i, index) in open.iter().enumerate() {
            program.push(libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: i as u32,
            });
            program.push(statement(libc::BPF_RET | libc::BPF_K, *index));
        }
    }
    program.push(statement(libc::BPF_RET | libc::BPF_K, NO_CHOICE));
    program
}

fn set_program<T>(member: BorrowedFd, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is what the option takes, alive for the call.
    let done = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `union bpf_attr`, as bytes: the fields each command reads are set by offset.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(mut self, offset: usize, value: u32) -> Attr {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(mut self, offset: usize, value: u64) -> Attr {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn name(mut self, offset: usize, name: &str) -> Attr {
        let bytes = &name.as_bytes()[..name.len().min(15)];
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn call(&self, command: libc::c_int) -> io::Result<OwnedFd> {
        // SAFETY: bpf(2) with an attribute buffer of the size given; the
        // bytes past what the command reads are zero, as it requires.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, command, self.0.as_ptr(), self.0.len()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd, ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

fn create_map() -> io::Result<OwnedFd> {
    Attr::new()
        .u32(0, BPF_MAP_TYPE_ARRAY)
        .u32(4, 4) // key size
        .u32(8, VALUE_SIZE as u32)
        .u32(12, 1) // entries
        .u32(16, BPF_F_MMAPABLE)
        .name(28, "sheepdog_queues")
        .call(BPF_MAP_CREATE)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create the steering map: {e}")))
}

fn load_program(map: &OwnedFd) -> io::Result<OwnedFd> {
    let code = round_robin_program(map.as_raw_fd());
    let license = c"GPL";
    let mut log = vec![0u8; 16 * 1024];
    let attr = Attr::new()
        .u32(0, BPF_PROG_TYPE_SOCKET_FILTER)
        .u32(4, code.len() as u32)
        .u64(8, code.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1) // log level
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .name(48, "sheepdog_rr");
    attr.call(BPF_PROG_LOAD).map_err(|e| {
        let said = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
        let said = said.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        io::Error::new(e.kind(), format!("cannot load the steering program: {e} {said}"))
    })
}

/// One eBPF instruction: opcode, registers (dst in the low nibble), offset, immediate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    registers: u8,
    offset: i16,
    immediate: i32,
}

fn insn(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Insn {
    Insn {
        code,
        registers: dst | (src << 4),
        offset,
        immediate,
    }
}

/// The round robin, in eBPF (r7: the map value; r8: the current list):
///
/// ```text
///   value = lookup(map, 0)                   ; none: hash
///   list  = value + LISTS + (current & 1) * LIST_SIZE
///   n     = list.length                      ; 0 or too many: hash
///   i     = fetch_add(value.ticket, 1) % n
///   index = list.indices[i]
///   value.steered[index] += 1 (atomic)
///   return index
/// ```
fn round_robin_program(map: RawFd) -> Vec<Insn> {
    // Opcodes: class | size/op | source.
    const LDX_W: u8 = 0x61;
    const ST_W: u8 = 0x62;
    const LD_DW_IMM: u8 = 0x18;
    const ATOMIC_DW: u8 = 0xdb;
    const MOV_K: u8 = 0xb7;
    const MOV_X: u8 = 0xbf;
    const MOV32_K: u8 = 0xb4;
    const ADD_K: u8 = 0x07;
    const ADD_X: u8 = 0x0f;
    const AND_K: u8 = 0x57;
    const MUL_K: u8 = 0x27;
    const MOD_X: u8 = 0x9f;
    const LSH_K: u8 = 0x67;
    const JEQ_K: u8 = 0x15;
    const JGT_K: u8 = 0x25;
    const JGE_K: u8 = 0x35;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const PSEUDO_MAP_FD: u8 = 1;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const ADD: i32 = 0x00;
    const FETCH_ADD: i32 = 0x01;
    let max = MAX_QUEUES as i32;
    // Jumps to `hash` are patched once its place is known.
    let mut code = vec![
        insn(ST_W, 10, 0, -4, 0), // key = 0
        insn(LD_DW_IMM, 1, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, -4),
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
        insn(JEQ_K, 0, 0, i16::MAX, 0), // no value
        insn(MOV_X, 7, 0, 0, 0),
        insn(LDX_W, 1, 7, CURRENT as i16, 0),
        insn(AND_K, 1, 0, 0, 1),
        insn(MUL_K, 1, 0, 0, LIST_SIZE as i32),
        insn(MOV_X, 8, 7, 0, 0),
        insn(ADD_K, 8, 0, 0, LISTS as i32),
        insn(ADD_X, 8, 1, 0, 0),
        insn(LDX_W, 2, 8, 0, 0),          // n
        insn(JEQ_K, 2, 0, i16::MAX, 0),   // none open
        insn(JGT_K, 2, 0, i16::MAX, max), // cannot be
        insn(MOV_K, 3, 0, 0, 1),
        insn(ATOMIC_DW, 7, 3, TICKET as i16, FETCH_ADD),
        insn(MOD_X, 3, 2, 0, 0),
        insn(JGE_K, 3, 0, i16::MAX, max),
        insn(LSH_K, 3, 0, 0, 2),
        insn(ADD_X, 8, 3, 0, 0),
        insn(LDX_W, 0, 8, 4, 0), // the index
        insn(JGE_K, 0, 0, i16::MAX, max),
        insn(MOV_X, 4, 0, 0, 0),
        insn(LSH_K, 4, 0, 0, 3),
        insn(ADD_X, 4, 7, 0, 0),
        insn(ADD_K, 4, 0, 0, STEERED as i32),
        insn(MOV_K, 5, 0, 0, 1),
        insn(ATOMIC_DW, 4, 5, 0, ADD),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let hash = code.len();
    for (at, instruction) in code.iter_mut().enumerate() {
        if instruction.offset == i16::MAX {
            instruction.offset = (hash - at - 1) as i16;
        }
    }
    code.push(insn(MOV32_K, 0, 0, 0, NO_CHOICE as i32));
    code.push(insn(EXIT, 0, 0, 0, 0));
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsFd, IntoRawFd};

    /// `count` listening sockets of one reuseport group on a free port, in
    /// group order.
    fn group(count: usize) -> Vec<TcpListener> {
        use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, sockopt};
        let mut port = 0;
        (0..count)
            .map(|_| {
                let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
                socket::setsockopt(&fd, sockopt::ReusePort, &true).unwrap();
                socket::bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).unwrap();
                socket::listen(&fd, Backlog::new(128).unwrap()).unwrap();
                let listener = TcpListener::from(fd);
                port = listener.local_addr().unwrap().port();
                listener
            })
            .collect()
    }

    /// Opens `connections` connections and counts, per queue, those that landed there.
    fn landed(queues: &[TcpListener], connections: usize) -> Vec<usize> {
        let address = queues[0].local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..connections).map(|_| TcpStream::connect(address).unwrap()).collect();
        let counts = queues
            .iter()
            .map(|q| {
                q.set_nonblocking(true).unwrap();
                std::iter::from_fn(|| q.accept().ok()).count()
            })
            .collect();
        drop(clients);
        counts
    }

    #[test]
    fn round_robin_gives_each_open_queue_its_turn_and_none_to_the_closed() {
        let queues = group(4);
        let steering = RoundRobin::attach(queues[0].as_fd()).expect("CAP_BPF: the tests run as root");
        steering.publish(&[0, 1, 2, 3]);
        assert_eq!(landed(&queues, 16), vec![4, 4, 4, 4]);
        steering.publish(&[3, 1]);
        assert_eq!(landed(&queues, 6), vec![0, 3, 0, 3]);
        assert_eq!(
            (0..4).map(|i| steering.steered(i)).collect::<Vec<_>>(),
            vec![4, 7, 4, 7]
        );
        // None open: the kernel's hash, over all of them.
        steering.publish(&[]);
        assert_eq!(landed(&queues, 8).iter().sum::<usize>(), 8);
    }

    #[test]
    fn a_socket_joining_later_is_steered_to_by_its_index() {
        let mut queues = group(2);
        let steering = RoundRobin::attach(queues[1].as_fd()).unwrap();
        let port = queues[0].local_addr().unwrap().port();
        let late = {
            use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, sockopt};
            let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
            socket::setsockopt(&fd, sockopt::ReusePort, &true).unwrap();
            socket::bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).unwrap();
            socket::listen(&fd, Backlog::new(128).unwrap()).unwrap();
            TcpListener::from(fd)
        };
        queues.push(late);
        steering.publish(&[2]);
        assert_eq!(landed(&queues, 3), vec![0, 0, 3]);
    }

    #[test]
    fn a_second_mapping_of_the_map_sees_and_steers_the_same() {
        let queues = group(2);
        let first = RoundRobin::attach(queues[0].as_fd()).unwrap();
        let map = first.map.try_clone().unwrap();
        let program = first.program.try_clone().unwrap();
        drop(first);
        let adopted = RoundRobin::adopt(map.into_raw_fd(), program.into_raw_fd()).unwrap();
        adopted.publish(&[1]);
        assert_eq!(landed(&queues, 2), vec![0, 2]);
        assert_eq!(adopted.steered(1), 2);
    }

    #[test]
    fn random_steering_reaches_only_the_open_queues() {
        let queues = group(4);
        attach_random(queues[0].as_fd(), &[0, 2]).unwrap();
        let counts = landed(&queues, 40);
        assert_eq!(counts[1] + counts[3], 0, "{counts:?}");
        assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
        attach_random(queues[0].as_fd(), &[3]).unwrap();
        assert_eq!(landed(&queues, 5), vec![0, 0, 0, 5]);
    }
}
