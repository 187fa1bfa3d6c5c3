//! Static checks of `seccomp/<arch>/<role>.json`, and proof that the binary installs exactly
//! what the files say (`--print-seccomp-policy` against a fresh compile of each file).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::Command,
};

use seccompiler::{compile_from_json, TargetArch};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-scsi");
const ARCHES: &[(&str, TargetArch)] = &[
    ("x86_64", TargetArch::x86_64),
    ("aarch64", TargetArch::aarch64),
];
const WORKER_ROLES: &[&str] = &[
    "worker-main",
    "worker-aio",
    "worker-broker",
    "worker-iscsi",
    "worker-protocol",
    "worker-signals",
    "worker-vring",
];

/// Syscalls no worker role may allow, conditioned or not.
const NEVER_IN_WORKER: &[&str] = &[
    "execve",
    "execveat",
    "open",
    "openat",
    "openat2",
    "creat",
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "fork",
    "vfork",
    "kill",
    "tkill",
    "tgkill",
    "setuid",
    "setgid",
    "setresuid",
    "setresgid",
    "setgroups",
    "capset",
    "memfd_create",
    "landlock_create_ruleset",
    "mknod",
    "mknodat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat2",
    // Rings are made before the filters: a fresh ring would run any operation unseen.
    "io_uring_setup",
];
/// Syscalls that may appear only with an argument condition.
const CONDITIONED: &[&str] = &[
    "ioctl",
    "prctl",
    "clone",
    "mmap",
    "mprotect",
    "fcntl",
    "seccomp",
    "rt_sigaction",
    "io_uring_register",
    "fallocate",
];
/// `io_uring_register` opcodes a worker role may allow (arg 1): IORING_REGISTER_BUFFERS,
/// IORING_UNREGISTER_BUFFERS, IORING_REGISTER_FILES_UPDATE.
const REGISTER_OPS: &[u64] = &[0, 1, 6];
/// `fallocate` modes a worker role may allow (arg 1): PUNCH_HOLE | KEEP_SIZE and
/// ZERO_RANGE | KEEP_SIZE (never a mode that grows a file).
const FALLOCATE_MODES: &[u64] = &[3, 17];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seccomp")
}

fn roles(arch: &str) -> BTreeMap<String, Value> {
    fs::read_dir(dir().join(arch))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
            let v: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
            (stem, v)
        })
        .collect()
}

fn rules<'a>(policy: &'a Value, role: &str) -> &'a Vec<Value> {
    policy[role]["filter"].as_array().unwrap()
}

#[test]
fn files_are_well_formed_sorted_and_commented() {
    let x86: Vec<String> = roles("x86_64").into_keys().collect();
    for &(arch, _) in ARCHES {
        let roles = roles(arch);
        assert_eq!(
            roles.keys().cloned().collect::<Vec<_>>(),
            x86,
            "{arch}: same roles everywhere"
        );
        for (role, policy) in &roles {
            let obj = policy.as_object().unwrap();
            assert_eq!(
                obj.keys().collect::<Vec<_>>(),
                vec![role],
                "{arch}/{role}: key = file stem"
            );
            let names: Vec<&str> = rules(policy, role)
                .iter()
                .map(|r| r["syscall"].as_str().unwrap())
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "{arch}/{role}: rules sorted by syscall");
            for rule in rules(policy, role) {
                assert!(
                    rule["comment"].is_string(),
                    "{arch}/{role}: {rule} has no comment"
                );
                for arg in rule["args"].as_array().into_iter().flatten() {
                    assert!(
                        arg["comment"].is_string(),
                        "{arch}/{role}: {rule}: condition without comment"
                    );
                }
            }
        }
    }
}

#[test]
fn worker_roles_deny_the_dangerous_syscalls() {
    for &(arch, _) in ARCHES {
        let roles = roles(arch);
        for &role in WORKER_ROLES {
            for rule in rules(&roles[role], role) {
                let name = rule["syscall"].as_str().unwrap();
                assert!(
                    !NEVER_IN_WORKER.contains(&name),
                    "{arch}/{role} allows {name}"
                );
                if CONDITIONED.contains(&name) {
                    assert!(
                        rule["args"].as_array().is_some_and(|a| !a.is_empty()),
                        "{arch}/{role}: unconditioned {name}"
                    );
                }
                if name == "mmap" || name == "mprotect" {
                    let a = &rule["args"][0];
                    assert_eq!(
                        (
                            a["index"].as_u64(),
                            &a["op"]["masked_eq"],
                            a["val"].as_u64()
                        ),
                        (Some(2), &Value::from(4), Some(0)),
                        "{arch}/{role}: {name} must exclude PROT_EXEC"
                    );
                }
                for (syscall, allowed) in [
                    ("io_uring_register", REGISTER_OPS),
                    ("fallocate", FALLOCATE_MODES),
                ] {
                    if name != syscall {
                        continue;
                    }
                    let args = rule["args"].as_array().unwrap();
                    assert_eq!(args.len(), 1, "{arch}/{role}: {rule}");
                    let a = &args[0];
                    assert_eq!(
                        (a["index"].as_u64(), a["op"].as_str()),
                        (Some(1), Some("eq")),
                        "{arch}/{role}: {rule}"
                    );
                    assert!(
                        a["val"].as_u64().is_some_and(|v| allowed.contains(&v)),
                        "{arch}/{role}: {syscall} with {}",
                        a["val"]
                    );
                }
                if name == "seccomp" {
                    assert_eq!(
                        role, "worker-main",
                        "{arch}: only worker-main may stack filters"
                    );
                    assert_eq!(rule["args"][0]["val"], 1, "SECCOMP_SET_MODE_FILTER only");
                }
                if name == "clone3" {
                    // All sit on worker-enosys, which turns clone3 into ENOSYS; worker-protocol
                    // starts the protocol thread (worker::serve::accept_confined), worker-vring
                    // the thread of a SANITIZE with IMMED (scsi::extra).
                    assert!(
                        ["worker-main", "worker-protocol", "worker-vring"].contains(&role),
                        "{arch}/{role}: clone3 only where worker-enosys turns it into ENOSYS"
                    );
                }
            }
        }
        // worker-enosys makes clone3 fail; it allows nothing.
        let enosys = &roles["worker-enosys"]["worker-enosys"];
        assert_eq!(enosys["default_action"], "allow");
        assert_eq!(enosys["filter_action"]["errno"], 38);
        assert_eq!(rules(&roles["worker-enosys"], "worker-enosys").len(), 1);
        // The on-failure supervisor's deny list (inherited by every worker it creates): an
        // errno adapter that refuses at least running programs, tracing and signalling.
        let restart = &roles["supervisor-restart"]["supervisor-restart"];
        assert_eq!(restart["default_action"], "allow");
        assert_eq!(restart["filter_action"]["errno"], 1, "EPERM");
        let denied: Vec<&str> = rules(&roles["supervisor-restart"], "supervisor-restart")
            .iter()
            .map(|r| r["syscall"].as_str().unwrap())
            .collect();
        for must in [
            "execve",
            "execveat",
            "ptrace",
            "kill",
            "tkill",
            "tgkill",
            "setns",
            "unshare",
            "bpf",
            "pidfd_getfd",
            "process_vm_writev",
            "init_module",
            "finit_module",
            "socket",
        ] {
            assert!(
                denied.contains(&must),
                "{arch}/supervisor-restart lets {must} through"
            );
        }
        // Nothing a worker role allows may be on it (every worker inherits it).
        for &role in WORKER_ROLES {
            for rule in rules(&roles[role], role) {
                let name = rule["syscall"].as_str().unwrap();
                assert!(
                    !denied.contains(&name),
                    "{arch}: supervisor-restart denies {role}'s {name}"
                );
            }
        }
        // The supervisor with a management socket: everything the supervisor may, plus
        // accepting clients and opening the LUNs add-lun names (openat, under Landlock's
        // --image-dir rules); still no new sockets, programs, processes or signals.
        let sup: Vec<&Value> = rules(&roles["supervisor"], "supervisor").iter().collect();
        let mgmt = rules(&roles["supervisor-management"], "supervisor-management");
        for rule in &sup {
            assert!(
                mgmt.contains(rule),
                "{arch}/supervisor-management lacks the supervisor's {rule}"
            );
        }
        for rule in mgmt {
            let name = rule["syscall"].as_str().unwrap();
            for forbidden in [
                "execve",
                "socket",
                "connect",
                "bind",
                "listen",
                "clone",
                "clone3",
                "fork",
                "ptrace",
                "kill",
                "tkill",
                "tgkill",
                "pidfd_open",
                "setuid",
                "setresuid",
                "unshare",
                "setns",
                "mount",
            ] {
                assert_ne!(
                    name, forbidden,
                    "{arch}/supervisor-management allows {name}"
                );
            }
        }
        // A daemon with both a management socket and iSCSI LUNs: exactly the union of the two
        // roles (filters only narrow when stacked, so the union is a file of its own).
        let strip = |r: &Value| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("comment");
            r.to_string()
        };
        let union: BTreeSet<String> = ["supervisor-management", "supervisor-iscsi"]
            .iter()
            .flat_map(|role| rules(&roles[*role], role).iter().map(strip))
            .collect();
        let both: BTreeSet<String> = rules(
            &roles["supervisor-management-iscsi"],
            "supervisor-management-iscsi",
        )
        .iter()
        .map(strip)
        .collect();
        assert_eq!(
            both, union,
            "{arch}/supervisor-management-iscsi is not the union of supervisor-management and \
             supervisor-iscsi"
        );
        // The supervisor never creates anything.
        for rule in rules(&roles["supervisor"], "supervisor") {
            let name = rule["syscall"].as_str().unwrap();
            for forbidden in [
                "execve",
                "socket",
                "connect",
                "openat",
                "open",
                "clone",
                "clone3",
                "fork",
                "ptrace",
                "kill",
                "tkill",
                "tgkill",
                "pidfd_open",
            ] {
                assert_ne!(name, forbidden, "{arch}/supervisor allows {name}");
            }
        }
    }
}

/// A request-queue thread reads and writes an iSCSI LUN's socket (its own command, the answer to
/// a lone one) but may never close a file (the LUN thread and the main thread do; a close on a
/// queue thread could pull an fd from under an engine) or change a socket's options
/// (docs/security.md, "A request-queue thread that waits for the answer..."). `socket` and
/// `connect` are in NEVER_IN_WORKER.
#[test]
fn request_queue_threads_cannot_close_or_reconfigure_sockets() {
    for &(arch, _) in ARCHES {
        let roles = roles(arch);
        for rule in rules(&roles["worker-vring"], "worker-vring") {
            let name = rule["syscall"].as_str().unwrap();
            assert!(
                !["close", "close_range", "setsockopt", "shutdown"].contains(&name),
                "{arch}/worker-vring allows {name}"
            );
        }
    }
}

#[test]
fn narrower_roles_are_subsets_of_worker_main() {
    // Stacked filters intersect: a rule a thread role has but worker-main lacks is dead.
    for &(arch, _) in ARCHES {
        let roles = roles(arch);
        let main: Vec<&Value> = rules(&roles["worker-main"], "worker-main").iter().collect();
        for &role in &WORKER_ROLES[1..] {
            for rule in rules(&roles[role], role) {
                let covered = main.iter().any(|m| {
                    m["syscall"] == rule["syscall"]
                        && (m.get("args").is_none() || m["args"] == rule["args"])
                });
                assert!(
                    covered,
                    "{arch}/{role}: {rule} is not allowed by worker-main (dead rule)"
                );
            }
        }
    }
}

/// The instructions `--print-seccomp-policy` prints: `code jt jf k` per line.
fn printed(role: &str, mode: &str) -> Vec<(u16, u8, u8, u32)> {
    let out = Command::new(BIN)
        .args(["--print-seccomp-policy", role, &format!("--seccomp={mode}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (
                hex(f[0]) as u16,
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                hex(f[3]),
            )
        })
        .collect()
}

#[test]
#[cfg(target_arch = "x86_64")]
fn the_binary_installs_exactly_the_policy_files() {
    for (role, policy) in roles("x86_64") {
        for (mode, action) in [("kill", "kill_process"), ("trap", "trap"), ("log", "log")] {
            let mut v = policy.clone();
            if v[&role]["filter_action"] == "allow" {
                v[&role]["default_action"] = Value::from(action);
            }
            let fresh = compile_from_json(
                serde_json::to_vec(&v).unwrap().as_slice(),
                TargetArch::x86_64,
            )
            .unwrap()
            .remove(&role)
            .unwrap();
            let fresh: Vec<(u16, u8, u8, u32)> =
                fresh.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
            assert_eq!(printed(&role, mode), fresh, "{role} --seccomp={mode}");
        }
    }
}
