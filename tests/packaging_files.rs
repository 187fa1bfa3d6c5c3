//! Consistency of the packaging files with each other and with the daemon, without building a
//! package (that is `tests/packaging.sh`): the vhost-user descriptor against
//! `--print-capabilities`, the installed path in the descriptor, the units, both package
//! recipes and the policies, and the version everywhere.

use std::{fs, path::Path, process::Command};

const BINARY: &str = "/usr/libexec/vhost-user-scsi";
const RUN_DIR: &str = "/run/vhost-user-scsi";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of the first `key=` line of a unit file.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}="))
        .to_owned()
}

#[test]
fn descriptor_matches_print_capabilities() {
    let desc: serde_json::Value =
        serde_json::from_str(&read("packaging/qemu/50-vhost-user-scsi.json")).unwrap();
    let obj = desc.as_object().unwrap();
    // QEMU's docs/interop/vhost-user.json: description, type, binary; no features member.
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["binary", "description", "type"]);
    assert!(!desc["description"].as_str().unwrap().is_empty());
    assert_eq!(desc["binary"], BINARY);

    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(caps["type"], desc["type"]);
    assert_eq!(desc["type"], "scsi");
    // VHostUserBackendType of QEMU's schema: libvirt rejects a descriptor directory holding a
    // file with any other type, so a typo here would break virtiofs domains on the host.
    const BACKEND_TYPES: &[&str] = &[
        "9p",
        "balloon",
        "block",
        "caif",
        "console",
        "crypto",
        "gpu",
        "input",
        "net",
        "rng",
        "rpmsg",
        "rproc-serial",
        "scsi",
        "vsock",
        "fs",
    ];
    assert!(BACKEND_TYPES.contains(&desc["type"].as_str().unwrap()));
}

#[test]
fn units_run_the_installed_binary_on_their_instance() {
    let service = read("packaging/systemd/vhost-user-scsi@.service");
    let socket = read("packaging/systemd/vhost-user-scsi@.socket");
    let exec = unit_value(&service, "ExecStart");
    assert_eq!(
        exec,
        format!("{BINARY} --config /etc/vhost-user-scsi/%i.toml")
    );
    for unit in [&service, &socket] {
        assert_eq!(
            unit_value(unit, "ConditionPathExists"),
            "/etc/vhost-user-scsi/%i.toml"
        );
    }
    assert_eq!(
        unit_value(&socket, "ListenStream"),
        format!("{RUN_DIR}/%i.sock")
    );
    assert_eq!(unit_value(&socket, "SocketMode"), "0660");
    assert_eq!(
        unit_value(&service, "Requires"),
        "vhost-user-scsi@%i.socket"
    );
    // The daemon takes the socket from systemd only when the configuration names none.
    let example = read("packaging/config/example.toml");
    for key in ["socket-path", "fd"] {
        assert!(
            !example
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
            "example.toml sets {key}, which would override socket activation"
        );
    }
    let parsed: toml::Value = toml::from_str(&example).unwrap();
    assert!(!parsed["lun"].as_array().unwrap().is_empty());
}

#[test]
fn recipes_and_policies_name_the_same_paths() {
    let rules = read("packaging/debian/rules");
    let spec = read("packaging/rpm/vhost-user-scsi.spec");
    assert!(rules.contains("$(PKG)/usr/libexec/vhost-user-scsi"));
    assert!(spec.contains("%{buildroot}%{_libexecdir}/vhost-user-scsi"));
    for recipe in [&rules, &spec] {
        assert!(recipe.contains("/qemu/vhost-user/50-vhost-user-scsi.json"));
        assert!(recipe.contains("--features gen-docs"));
    }
    assert!(spec
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["Provides:", "vhostuser-backend(scsi)"]));

    let profile = read("policy/apparmor/usr.libexec.vhost-user-scsi");
    assert!(profile.contains(&format!("profile vhost-user-scsi {BINARY} ")));
    assert!(profile.contains(&format!("{RUN_DIR}/** rw,")));
    assert!(profile.contains("include if exists <local/usr.libexec.vhost-user-scsi>"));
    let snippet = read("policy/apparmor/libvirt-qemu.d-vhost-user-scsi");
    assert!(snippet.contains(&format!("{RUN_DIR}/*.sock rw,")));
    assert!(snippet.contains("peer=(label=vhost-user-scsi)"));

    let fc = read("policy/selinux/vhost_user_scsi.fc");
    assert!(fc.contains(&format!("{BINARY}\t--\t")));
    assert!(fc.contains(&format!("{RUN_DIR}(/.*)?")));
}

#[test]
fn version_is_the_same_everywhere() {
    let version = env!("CARGO_PKG_VERSION");
    let changelog = read("packaging/debian/changelog");
    let first = changelog.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("vhost-user-scsi ({version})"))
            || first.starts_with(&format!("vhost-user-scsi ({version}-")),
        "debian/changelog: {first}"
    );
    let spec = read("packaging/rpm/vhost-user-scsi.spec");
    assert!(spec
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Version:", version]));
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("vhost-user-scsi {version}")
    );
}

/// The README's quick start is `cargo run --release -- ...`: with the documentation generator as
/// a second binary, cargo can only pick the daemon if the manifest names it (it refused before).
#[test]
fn cargo_run_runs_the_daemon() {
    let manifest = read("Cargo.toml");
    let package = manifest.split("\n[").next().unwrap_or_default();
    assert!(
        package
            .lines()
            .any(|l| l.replace(' ', "") == "default-run=\"vhost-user-scsi\""),
        "[package] must say default-run = \"vhost-user-scsi\""
    );
    let readme = read("README.md");
    assert!(
        readme.contains("cargo run --release -- --socket-path"),
        "the quick start command changed: update this test"
    );
}
