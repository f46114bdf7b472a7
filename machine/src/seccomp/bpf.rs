//! The allow-lists as classic BPF, and the `seccomp()` call that installs one.
//!
//! Replaces `seccompiler` (docs/performance.md, "Start-up, round two"): its programs test the
//! syscall number against every listed syscall in turn, and the kernel pays for that twice,
//! once per syscall the thread makes and once at install, when it runs the filter over every
//! syscall number to build its cache of always-allowed syscalls. Here the syscall number goes
//! down a binary search tree (`JGE` splits, `JEQ` leaves of at most [`LEAF`] numbers), so a
//! syscall costs a few comparisons and the install walks a few instructions per number. The
//! semantics are seccompiler's, as Nimbus used them: a listed syscall without an argument
//! restriction is allowed; one with restrictions is allowed when one of them matches (the low
//! 32 bits of the argument equal the value); a wrong architecture kills the process, every
//! other syscall traps (`SECCOMP_RET_TRAP`, reported by the SIGSYS handler).
//!
//! Building a program takes microseconds and allocates one vector, so it is done at start-up
//! from the same tables (which depend on the devices configured) rather than at build time.
#![allow(unsafe_code)]

use super::lists::Allowed;
use libc::sock_filter;
use std::collections::BTreeMap;

/// The architecture the programs are built for (`AUDIT_ARCH_X86_64`).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// The offsets in `struct seccomp_data`: `nr`, `arch`, `args[0]` (low half on little-endian).
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;
/// How many syscall numbers a leaf of the search tree tests one after the other.
const LEAF: usize = 4;
/// The most argument values one syscall may be allowed with (keeps its body within a jump).
const MAX_PAIRS: usize = 100;
/// The kernel refuses longer programs (`BPF_MAXINSNS`).
const MAX_LEN: usize = 4096;

/// Why a list cannot be turned into a program.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BpfError {
    /// An argument restriction compares a value that does not fit in 32 bits.
    #[error("{name}: argument value {value:#x} does not fit in 32 bits")]
    ValueTooWide {
        /// The syscall.
        name: &'static str,
        /// The value.
        value: u64,
    },
    /// An argument index outside 0..6.
    #[error("{name}: no argument {arg}")]
    NoSuchArgument {
        /// The syscall.
        name: &'static str,
        /// The index.
        arg: u8,
    },
    /// Too many values for one syscall for a BPF jump to skip them.
    #[error("{name}: too many argument values ({count})")]
    TooManyValues {
        /// The syscall.
        name: &'static str,
        /// How many.
        count: usize,
    },
    /// The program is longer than the kernel accepts.
    #[error("the program has {0} instructions, more than the kernel's {MAX_LEN}")]
    TooLong(usize),
}

/// A BPF program ready for [`install`].
pub type Program = Vec<sock_filter>;

/// What one syscall is allowed with: any arguments, or when one `(argument, value)` pair
/// matches.
enum Rule {
    Any,
    Only(Vec<(u8, u32)>),
}

fn stmt(code: u32, k: u32) -> sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        // Every BPF code fits in 16 bits.
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn ret(action: u32) -> sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, action)
}

/// Merges the entries of `list` per syscall as seccompiler did: the restrictions of all the
/// entries of a syscall add up; a syscall with no restriction in any entry takes any arguments.
fn rules(list: &[Allowed]) -> Result<BTreeMap<u32, Rule>, BpfError> {
    let mut rules: BTreeMap<u32, Rule> = BTreeMap::new();
    for allowed in list {
        // Syscall numbers are small and positive.
        let rule = rules.entry(allowed.nr as u32).or_insert(Rule::Any);
        let Some((arg, values)) = &allowed.only else {
            continue;
        };
        if *arg > 5 {
            return Err(BpfError::NoSuchArgument {
                name: allowed.name,
                arg: *arg,
            });
        }
        if let Rule::Any = rule {
            *rule = Rule::Only(Vec::new());
        }
        if let Rule::Only(pairs) = rule {
            for &value in values {
                let narrow = u32::try_from(value).map_err(|_| BpfError::ValueTooWide {
                    name: allowed.name,
                    value,
                })?;
                pairs.push((*arg, narrow));
            }
            if pairs.len() > MAX_PAIRS {
                return Err(BpfError::TooManyValues {
                    name: allowed.name,
                    count: pairs.len(),
                });
            }
        }
    }
    Ok(rules)
}

/// The instructions that decide a syscall already known to be `nr`: allow, or test the
/// argument restrictions, then allow or trap. At most `2 * MAX_PAIRS + 2` instructions, so
/// every jump within it and over it fits in a BPF jump offset (8 bits).
fn body(rule: &Rule) -> Program {
    let Rule::Only(pairs) = rule else {
        return vec![ret(libc::SECCOMP_RET_ALLOW)];
    };
    let mut pairs = pairs.clone();
    // One load per argument; any match allows, so the order does not matter.
    pairs.sort_by_key(|&(arg, _)| arg);
    let mut code = Vec::with_capacity(pairs.len() * 2 + 2);
    let mut loaded = None;
    for &(arg, value) in &pairs {
        if loaded != Some(arg) {
            code.push(stmt(
                libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
                ARGS_OFFSET + 8 * u32::from(arg),
            ));
            loaded = Some(arg);
        }
        // Its true branch is set below, once the body's length is known.
        code.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            value,
            0,
            0,
        ));
    }
    code.push(ret(libc::SECCOMP_RET_TRAP));
    code.push(ret(libc::SECCOMP_RET_ALLOW));
    // Each JEQ's match lands on the final ALLOW.
    let last = code.len() - 1;
    for (at, insn) in code.iter_mut().enumerate().take(last) {
        if u32::from(insn.code) == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
            insn.jt = u8::try_from(last - at - 1).expect("bodies are shorter than 256 (MAX_PAIRS)");
        }
    }
    code
}

/// The search tree over `nrs` (sorted): `JGE` on the middle number, the lower half, then the
/// higher half; leaves test up to [`LEAF`] numbers with `JEQ` and trap when none matches.
fn tree(nrs: &[(u32, Program)]) -> Program {
    if nrs.len() <= LEAF {
        let mut code = Vec::new();
        for (nr, body) in nrs {
            // The body ends in RET; a mismatch skips it.
            let skip = u8::try_from(body.len()).expect("bodies are shorter than 256 (MAX_PAIRS)");
            code.push(jump(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                *nr,
                0,
                skip,
            ));
            code.extend_from_slice(body);
        }
        code.push(ret(libc::SECCOMP_RET_TRAP));
        return code;
    }
    let (low, high) = nrs.split_at(nrs.len() / 2);
    let low = tree(low);
    let high_code = tree(high);
    let mut code = Vec::with_capacity(low.len() + high_code.len() + 2);
    // nr >= high[0]: the next instruction jumps over the lower half; else skip that jump.
    code.push(jump(
        libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
        high[0].0,
        0,
        1,
    ));
    let over_low = u32::try_from(low.len()).expect("programs are shorter than MAX_LEN");
    code.push(stmt(libc::BPF_JMP | libc::BPF_JA, over_low));
    code.extend(low);
    code.extend(high_code);
    code
}

/// Builds the program of `list`: architecture check, then the search tree.
pub fn compile(list: &[Allowed]) -> Result<Program, BpfError> {
    let rules = rules(list)?;
    let bodies: Vec<(u32, Program)> = rules.iter().map(|(nr, rule)| (*nr, body(rule))).collect();
    let mut code = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, ARCH_OFFSET),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            1,
            0,
        ),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET),
    ];
    code.extend(tree(&bodies));
    if code.len() > MAX_LEN {
        return Err(BpfError::TooLong(code.len()));
    }
    Ok(code)
}

/// Installs `program` on the calling thread (after `PR_SET_NO_NEW_PRIVS`, which unprivileged
/// seccomp requires). Other threads keep their own filters.
pub fn install(program: &Program) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `program`'s instructions, alive for the call; the kernel copies
    // them and keeps no pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            std::ptr::addr_of!(prog),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Runs `program` on a syscall the way the kernel does (the subset of classic BPF built
    /// here): the action returned.
    pub(in crate::seccomp) fn run(program: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let word = |offset: u32| -> u32 {
            match offset {
                NR_OFFSET => nr,
                ARCH_OFFSET => arch,
                o if o >= ARGS_OFFSET && (o - ARGS_OFFSET).is_multiple_of(8) => {
                    args[((o - ARGS_OFFSET) / 8) as usize] as u32
                }
                o => panic!("load at {o}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let insn = program[pc];
            let code = u32::from(insn.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => acc = word(insn.k),
                c if c == libc::BPF_RET | libc::BPF_K => return insn.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += insn.k as usize,
                c => {
                    let taken = match c & !(libc::BPF_JMP | libc::BPF_K) {
                        x if x == libc::BPF_JEQ => acc == insn.k,
                        x if x == libc::BPF_JGE => acc >= insn.k,
                        x => panic!("op {x:#x}"),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
            }
        }
    }

    fn allowed(nr: i64, only: Option<(u8, Vec<u64>)>) -> Allowed {
        Allowed {
            nr,
            name: "test",
            only,
            why: "test",
        }
    }

    pub(in crate::seccomp) const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    pub(in crate::seccomp) const TRAP: u32 = libc::SECCOMP_RET_TRAP;
    pub(in crate::seccomp) const ARCH: u32 = AUDIT_ARCH_X86_64;

    #[test]
    fn listed_syscalls_pass_and_all_others_trap() {
        let nrs: Vec<i64> = (0..60).map(|i| i * 7 + 1).collect();
        let list: Vec<Allowed> = nrs.iter().map(|&nr| allowed(nr, None)).collect();
        let program = compile(&list).expect("compiles");
        for nr in 0..1000u32 {
            let expected = if nrs.contains(&i64::from(nr)) {
                ALLOW
            } else {
                TRAP
            };
            assert_eq!(
                run(&program, AUDIT_ARCH_X86_64, nr, [0; 6]),
                expected,
                "{nr}"
            );
        }
        // x32 syscall numbers are never listed.
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, 0x4000_0001, [0; 6]), TRAP);
    }

    #[test]
    fn another_architecture_kills_the_process() {
        let program = compile(&[allowed(1, None)]).expect("compiles");
        assert_eq!(
            run(&program, 0x4000_0003, 1, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn restricted_syscalls_pass_only_with_a_listed_low_32_bit_value() {
        let list = [
            allowed(16, Some((1, vec![0xae80, 0x8090_ae81]))),
            allowed(72, Some((1, vec![1]))),
            // A second entry for the same syscall adds its values (seccompiler's merge).
            allowed(72, Some((1, vec![3]))),
            allowed(44, Some((3, vec![0x4000]))),
            allowed(1, None),
        ];
        let program = compile(&list).expect("compiles");
        let call = |nr, arg, value| {
            let mut args = [0u64; 6];
            args[arg] = value;
            run(&program, AUDIT_ARCH_X86_64, nr, args)
        };
        assert_eq!(call(16, 1, 0xae80), ALLOW);
        assert_eq!(call(16, 1, 0x8090_ae81), ALLOW);
        // Only the low 32 bits are compared (ioctl request numbers are `unsigned int`).
        assert_eq!(call(16, 1, 0xffff_ffff_8090_ae81), ALLOW);
        assert_eq!(call(16, 1, 0xae81), TRAP);
        assert_eq!(call(16, 0, 0xae80), TRAP);
        assert_eq!(call(72, 1, 1), ALLOW);
        assert_eq!(call(72, 1, 3), ALLOW);
        assert_eq!(call(72, 1, 2), TRAP);
        assert_eq!(call(44, 3, 0x4000), ALLOW);
        assert_eq!(call(44, 3, 0), TRAP);
        assert_eq!(call(1, 2, 12345), ALLOW);
        assert_eq!(call(2, 0, 0), TRAP);
    }

    #[test]
    fn values_wider_than_32_bits_and_bad_arguments_are_refused() {
        let wide = [allowed(16, Some((1, vec![1 << 32])))];
        assert!(matches!(compile(&wide), Err(BpfError::ValueTooWide { .. })));
        let bad = [allowed(16, Some((6, vec![1])))];
        assert!(matches!(
            compile(&bad),
            Err(BpfError::NoSuchArgument { .. })
        ));
    }
}
