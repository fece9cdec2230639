//! Planning benchmark: a 200-step runbook over 500 hosts (issue 2 target: < 200 ms).
//!
//! `cargo bench --bench plan` prints min/median/max of load+plan over several rounds.

use opsrun::diagnostic::SourceFile;
use opsrun::load::{inventory_from_source, runbook_from_source};
use opsrun::plan::{Options, Planner};
use std::fmt::Write as _;
use std::time::Instant;

fn inventory(hosts: usize) -> String {
    let mut s = String::from(
        "ssh: { user: root, port: 22 }\nvars: { weaver_home: /data/WEAVER }\ngroups:\n",
    );
    for g in 0..5 {
        let _ = writeln!(
            s,
            "  g{g}:\n    vars: {{ http_port: {} }}\n    hosts:",
            6000 + g
        );
        for h in 0..hosts / 5 {
            let _ = writeln!(
                s,
                "      h{g}x{h}: {{ address: 10.{g}.{}.{}, vars: {{ idx: {h} }} }}",
                h / 250,
                h % 250
            );
        }
    }
    s
}

fn runbook(steps: usize) -> String {
    let mut s = String::from(
        "name: bench\nhosts: all\nparams:\n  package: { default: /tmp/pkg.zip }\nvars:\n  backup: \"{{ weaver_home }}/bak-{{ run.stamp }}.tar.gz\"\nsteps:\n",
    );
    for i in 0..steps {
        let _ = match i % 4 {
            0 => writeln!(s, "  - name: step {i}\n    run: tar czf {{{{ backup | quote }}}} --exclude=ecology/log ecology\n    cwd: \"{{{{ weaver_home }}}}\"\n    rollback: rm -f {{{{ backup | quote }}}}"),
            1 => writeln!(s, "  - name: step {i}\n    run: curl -fsS http://127.0.0.1:{{{{ http_port }}}}/ -o /dev/null\n    timeout: 30s"),
            2 => writeln!(s, "  - name: step {i}\n    run: unzip -o {{{{ package | basename | quote }}}}\n    as: dmdba\n    env: {{ LANG: C }}"),
            _ => writeln!(s, "  - name: step {i}\n    when: idx > 3\n    check: test -f {{{{ backup | quote }}}}"),
        };
    }
    s
}

/// CPU time of this process (all threads): on a shared 2-core machine wall time mostly measures the neighbours.
fn cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    // `cargo test --all-targets` runs this too (without `--bench`): keep that a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (hosts, steps, rounds) = if full { (500, 200, 7) } else { (10, 8, 1) };
    let inv_text = inventory(hosts);
    let rb_text = runbook(steps);
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut load_times = Vec::new();
    let mut targets = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let cpu_start = cpu_time();
        let rb =
            runbook_from_source(SourceFile::new("bench.yaml", rb_text.clone())).expect("runbook");
        let inv = inventory_from_source(SourceFile::new("inv.yaml", inv_text.clone()))
            .expect("inventory");
        let opts = Options {
            operator: "bench".into(),
            local_user: "bench".into(),
            now: chrono::NaiveDate::from_ymd_opt(2026, 11, 22)
                .and_then(|d| d.and_hms_opt(1, 30, 5))
                .expect("date")
                .and_utc()
                .fixed_offset(),
            ..Options::default()
        };
        let loaded = start.elapsed();
        let planner = Planner::new(rb, inv, opts).expect("planner");
        let plan = planner.plan().expect("plan");
        times.push(start.elapsed());
        load_times.push(loaded);
        cpu.push(cpu_time() - cpu_start);
        targets = plan.steps.iter().map(|s| s.targets.len()).sum::<usize>();
    }
    times.sort();
    cpu.sort();
    load_times.sort();
    println!(
        "load (parse + decode) part: median {:.1} ms",
        load_times[load_times.len() / 2].as_secs_f64() * 1e3
    );
    println!(
        "plan: cpu time: min {:.1} ms, median {:.1} ms",
        cpu[0].as_secs_f64() * 1e3,
        cpu[cpu.len() / 2].as_secs_f64() * 1e3
    );
    println!(
        "plan: {steps} steps x {hosts} hosts ({targets} rendered targets): wall: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}
