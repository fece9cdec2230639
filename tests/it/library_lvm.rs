//! `lvm-extend` (PROCEDURES.md P7, SOP 004 §5.5 and 000).
//!
//! What is real and what is simulated, honestly:
//! - Over real sshd, the disk and LVM tools (lsblk, sgdisk, partprobe, pvcreate,
//!   vgextend, lvextend, vgs/lvs/pvs, pvremove, vgreduce, resize2fs, xfs_growfs, df)
//!   are the simulators in tests/fixtures/lvm: this kernel has no device-mapper, so
//!   real LVs cannot be activated. They keep state in files, print the real tools'
//!   formats, and log every call, so the tests check the runbook's logic and order.
//!   The fleet's sshd puts them first in PATH for the login user (sshd `SetEnv`), so
//!   the runbook is the shipped one, unchanged.
//! - `xfs_grows_a_real_filesystem` grows a real XFS filesystem on a real loop device:
//!   real mkfs.xfs, mount, xfs_growfs and df (from xfsprogs/coreutils, run as root on
//!   a `connection: local` host). Only the LVM layer is simulated there: the simulated
//!   lvextend grows the loop device's backing file and runs `losetup -c`, which is
//!   what a grown LV looks like to the filesystem above it.

use crate::support::{
    cli::Run,
    fleet::{host_entry, ssh_section, FleetOptions, Ssh, SshFleet},
    lab::opsrun,
    sim::{install_lvm, last_run, new_event_log, read_events, run_text, SimEvent, G},
};
use std::fs;

use std::path::{Path, PathBuf};
use std::process::Command;

fn state(root: &Path, file: &str) -> String {
    fs::read_to_string(root.join("state").join(file)).unwrap()
}

struct Lab {
    _fleet: SshFleet,
    dir: tempfile::TempDir,
    events: PathBuf,
    roots: Vec<PathBuf>,
}

/// h1 has an xfs /data, h2 an ext4 one.
fn lab() -> Lab {
    let fleet = SshFleet::start_with(
        2,
        FleetOptions {
            path_prepend: vec!["lvm/bin".into()],
            ..FleetOptions::default()
        },
    );
    let events = new_event_log(fleet.root());
    let roots: Vec<PathBuf> = (0..2).map(|i| fleet.work_dir(i).join("lvm")).collect();
    install_lvm(&roots[0], "h1", &events, "xfs", true);
    install_lvm(&roots[1], "h2", &events, "ext4", true);
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("inventories")).unwrap();
    let inv = format!(
        "name: lab\nconfirm: none\n{ssh}groups:\n  servers:\n    hosts:\n{h1}{h2}",
        ssh = ssh_section(&fleet, false),
        h1 = host_entry(&fleet, 0, fleet.name(0), Ssh::FromInventory, &[]),
        h2 = host_entry(&fleet, 1, fleet.name(1), Ssh::FromInventory, &[]),
    );
    fs::write(dir.path().join("inventories/lab.yaml"), inv).unwrap();
    Lab {
        _fleet: fleet,
        dir,
        events,
        roots,
    }
}

const PARAMS: &[&str] = &[
    "-e",
    "mount=/data",
    "-e",
    "vg=peppa",
    "-e",
    "lv=data",
    "-e",
    "disk=/dev/sdb",
];

fn extend(lab: &Lab, limit: Option<&str>, size: &str) -> Run {
    let size = format!("size={size}");
    let mut args = vec!["lvm-extend", "--env", "lab", "--yes"];
    if let Some(l) = limit {
        args.extend(["--limit", l]);
    }
    args.extend_from_slice(PARAMS);
    args.extend(["-e", &size]);
    opsrun(lab.dir.path(), &args, &[])
}

fn programs(events: &[SimEvent], host: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.host == host)
        .map(|e| format!("{} {}", e.program, e.args))
        .collect()
}

#[test]
fn extends_xfs_and_ext4_in_order_over_ssh() {
    let lab = lab();
    // Two hosts selected: refused before anything runs on them.
    let out = extend(&lab, None, "+10G");
    assert_eq!(out.code, 1, "{}", run_text(&out));
    assert!(
        run_text(&out).contains("--limit HOST"),
        "{}",
        run_text(&out)
    );
    assert!(read_events(&lab.events).is_empty());

    let out = extend(&lab, Some("h1"), "+10G");
    assert_eq!(out.code, 0, "{}", run_text(&out));
    assert_eq!(
        programs(&read_events(&lab.events), "h1"),
        [
            "sgdisk -n 1:0:0 -t 1:8e00 /dev/sdb",
            "partprobe /dev/sdb",
            "pvcreate /dev/sdb1",
            "vgextend peppa /dev/sdb1",
            "lvextend -L +10G /dev/peppa/data",
            "xfs_growfs /data",
        ]
    );
    assert!(programs(&read_events(&lab.events), "h2").is_empty());
    assert!(state(&lab.roots[0], "pvs").contains("/dev/sdb1 peppa"));
    // LV and filesystem both at 85G.
    let g85 = (85 * G).to_string();
    assert_eq!(
        state(&lab.roots[0], "lvs").split_whitespace().nth(2),
        Some(g85.as_str())
    );
    assert_eq!(
        state(&lab.roots[0], "lvs").split_whitespace().nth(5),
        Some(g85.as_str())
    );
    let run = last_run(lab.dir.path());
    let journal = fs::read_to_string(run.join("journal.jsonl")).unwrap();
    assert!(journal.contains("Snapshot ticket"), "manual gate recorded");
    let log = fs::read_to_string(run.join("log.md")).unwrap();
    assert!(log.contains("data blocks changed from"), "{log}");

    fs::write(&lab.events, "").unwrap();
    let out = extend(&lab, Some("h2"), "+100%FREE");
    assert_eq!(out.code, 0, "{}", run_text(&out));
    let h2 = programs(&read_events(&lab.events), "h2");
    assert!(h2.contains(&"lvextend -l +100%FREE /dev/peppa/data".to_string()));
    assert_eq!(h2.last().unwrap(), "resize2fs /dev/peppa/data");
    assert!(!h2.iter().any(|p| p.starts_with("xfs_growfs")));
}

#[test]
fn failed_lvextend_undoes_vgextend_pvcreate_and_the_partition() {
    let lab = lab();
    let before: Vec<String> = ["parts", "pvs", "lvs"]
        .iter()
        .map(|f| state(&lab.roots[0], f))
        .collect();
    // 30G more than the VG's free space with a 20G disk: lvextend refuses.
    let out = extend(&lab, Some("h1"), "+100G");
    assert_eq!(out.code, 1, "{}", run_text(&out));
    assert!(
        run_text(&out).contains("Insufficient free space"),
        "{}",
        run_text(&out)
    );
    assert_eq!(
        programs(&read_events(&lab.events), "h1"),
        [
            "sgdisk -n 1:0:0 -t 1:8e00 /dev/sdb",
            "partprobe /dev/sdb",
            "pvcreate /dev/sdb1",
            "vgextend peppa /dev/sdb1",
            "lvextend -L +100G /dev/peppa/data",
            "vgreduce peppa /dev/sdb1",
            "pvremove /dev/sdb1",
            "sgdisk --zap-all /dev/sdb",
        ]
    );
    let after: Vec<String> = ["parts", "pvs", "lvs"]
        .iter()
        .map(|f| state(&lab.roots[0], f))
        .collect();
    assert_eq!(before, after, "the disk is back as it was");
}

#[test]
fn prechecks_refuse_a_used_disk_and_a_non_lvm_target() {
    let lab = lab();
    // sdb already carries a partition: not a new disk.
    let parts = state(&lab.roots[0], "parts") + &format!("sdb1 sdb {} 8300\n", 20 * G - 2097152);
    fs::write(lab.roots[0].join("state/parts"), parts).unwrap();
    let out = extend(&lab, Some("h1"), "+10G");
    assert_eq!(out.code, 1, "{}", run_text(&out));
    assert!(
        run_text(&out).contains("has partitions"),
        "{}",
        run_text(&out)
    );
    assert!(read_events(&lab.events).is_empty(), "nothing changed");

    // A mount point that is not the LV: wrong target.
    let out = opsrun(
        lab.dir.path(),
        &[
            "lvm-extend",
            "--env",
            "lab",
            "--yes",
            "--limit",
            "h2",
            "-e",
            "mount=/srv",
            "-e",
            "vg=peppa",
            "-e",
            "lv=data",
            "-e",
            "disk=/dev/sdb",
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{}", run_text(&out));
    assert!(run_text(&out).contains("not /srv"), "{}", run_text(&out));
    // An invalid VG name never reaches a host.
    let out = opsrun(
        lab.dir.path(),
        &[
            "lvm-extend",
            "--env",
            "lab",
            "--yes",
            "--limit",
            "h2",
            "-e",
            "mount=/data",
            "-e",
            "vg=peppa;reboot",
            "-e",
            "lv=data",
            "-e",
            "disk=/dev/sdb",
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{}", run_text(&out));
    assert!(
        run_text(&out).contains("invalid VG or LV name"),
        "{}",
        run_text(&out)
    );
    assert!(read_events(&lab.events).is_empty());
}

#[test]
fn dry_run_shows_the_gate_the_steps_and_the_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("inventories")).unwrap();
    fs::write(
        dir.path().join("inventories/prod.yaml"),
        "name: prod\nconfirm: typed\ngroups:\n  app:\n    hosts:\n      oa-main: { address: 192.0.2.5 }\n      oa2: { address: 192.0.2.6 }\n",
    )
    .unwrap();
    let mut args = vec![
        "lvm-extend",
        "--env",
        "prod",
        "--dry-run",
        "--limit",
        "oa-main",
        "-e",
        "size=+10G",
    ];
    args.extend_from_slice(PARAMS);
    let out = opsrun(dir.path(), &args, &[]);
    assert_eq!(out.code, 0, "{}", run_text(&out));
    let s = out.stdout.clone();
    for line in [
        "manual: the operator does this by hand",
        "snapshot ticket",
        "[root@oa-main]# sgdisk -n 1:0:0 -t 1:8e00 /dev/sdb && partprobe /dev/sdb",
        "[root@oa-main]# sgdisk --zap-all /dev/sdb",
        "[root@oa-main]# pvcreate /dev/sdb1",
        "[root@oa-main]# pvremove /dev/sdb1",
        "[root@oa-main]# vgextend peppa /dev/sdb1",
        "[root@oa-main]# vgreduce peppa /dev/sdb1",
        "[root@oa-main]# lvextend -L +10G /dev/peppa/data",
        "runs only if `fstype == 'xfs'` (decided at run time",
        "[root@oa-main]# xfs_growfs /data",
        "[root@oa-main]# resize2fs /dev/peppa/data",
    ] {
        assert!(s.contains(line), "missing `{line}` in:\n{s}");
    }
    assert!(!s.contains("oa2"), "--limit keeps oa2 out:\n{s}");
    assert!(!s.contains("gdisk /dev/sdb\n"), "no interactive gdisk");
}

/// Undoes the real loop mount whatever happens in the test.
struct LoopFs {
    mnt: PathBuf,
    dev: String,
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn df_bytes(mnt: &Path) -> u64 {
    sh(&format!(
        "df -P -B1 {} | awk 'NR == 2 {{ print $2 }}'",
        mnt.display()
    ))
    .parse()
    .unwrap()
}

#[test]
fn xfs_grows_a_real_filesystem() {
    assert!(
        Path::new("/usr/sbin/mkfs.xfs").exists() && Path::new("/usr/sbin/xfs_growfs").exists(),
        "xfsprogs is not installed: the README's test command installs it (apt-get install -y xfsprogs)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("data.img");
    let mnt = tmp.path().join("data");
    fs::create_dir(&mnt).unwrap();
    // XFS needs at least 300 MB.
    let size: u64 = 400 << 20;
    sh(&format!("truncate -s {size} {}", img.display()));
    let dev = sh(&format!("losetup -f --show {}", img.display()));
    let fsys = LoopFs {
        mnt: mnt.clone(),
        dev: dev.clone(),
    };
    sh(&format!(
        "mkfs.xfs -q {dev} && mount {dev} {}",
        fsys.mnt.display()
    ));
    sh(&format!(
        "head -c 50000000 /dev/zero > {}/payload",
        mnt.display()
    ));
    let before = df_bytes(&mnt);

    let root = tmp.path().join("lvm");
    let events = new_event_log(tmp.path());
    install_lvm(&root, "local1", &events, "xfs", false);
    // The simulated LV is this loop device, mounted here.
    fs::write(
        root.join("state/lvs"),
        format!("peppa data {size} {} xfs {size} 0\n", mnt.display()),
    )
    .unwrap();
    fs::write(
        root.join("state/real"),
        format!("peppa data {dev} {}\n", img.display()),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("inventories")).unwrap();
    fs::write(
        dir.path().join("inventories/local.yaml"),
        "name: local\nconfirm: none\ngroups:\n  servers:\n    hosts:\n      local1: { connection: local }\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        root.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mount = format!("mount={}", mnt.display());
    let out = opsrun(
        dir.path(),
        &[
            "lvm-extend",
            "--env",
            "local",
            "--yes",
            "-e",
            &mount,
            "-e",
            "vg=peppa",
            "-e",
            "lv=data",
            "-e",
            "disk=/dev/sdb",
            "-e",
            "size=+200M",
            "-e",
            "min_usage=0",
        ],
        &[("PATH", &path)],
    );
    assert_eq!(out.code, 0, "{}", run_text(&out));
    let after = df_bytes(&mnt);
    assert!(
        after > before + (150 << 20),
        "the real XFS filesystem grew by ~200M: {before} -> {after}"
    );
    let log = fs::read_to_string(last_run(dir.path()).join("log.md")).unwrap();
    assert!(
        log.contains("data blocks changed from"),
        "real xfs_growfs output:\n{log}"
    );
    drop(fsys);
}
