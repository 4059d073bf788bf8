//! Workers started by a real Slurm: a single-node cluster (munged, slurmctld, slurmd on
//! 127.0.0.1, all state in a temp dir) and a pipeline with `[executor] kind = "slurm"`.

use crate::common::Sandbox;
use crate::common::slurm::{Cluster, unavailable};

/// Skips (saying why) where Slurm cannot run, except where MVC_REQUIRE_SLURM is set (CI).
fn cluster() -> Option<Cluster> {
    cluster_with("")
}

/// The same, with `extra` lines in its slurm.conf.
fn cluster_with(extra: &str) -> Option<Cluster> {
    if let Some(why) = unavailable() {
        assert!(
            std::env::var_os("MVC_REQUIRE_SLURM").is_none(),
            "MVC_REQUIRE_SLURM is set but {why}"
        );
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Cluster::start_with(extra))
}

/// The executor table of the pipelines run on the test cluster: two workers at most.
const SLURM_EXECUTOR: &str = r#"[executor]
kind = "slurm"
partition = "debug"
time = "00:10:00"
cpus_per_worker = 1
max_workers = 2
exit_when_idle = 20
"#;

/// The workers reach the coordinator as a cluster's would, off loopback: over TLS with the
/// coordinator's self-signed certificate, whose fingerprint (like the token) travels in the
/// job's environment.
#[test]
fn slurm_started_workers_do_the_work_and_leave_nothing_queued() {
    let Some(cluster) = cluster() else { return };
    let sb = Sandbox::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sb.write("token", "slurm-test-token-0123456789\n");
    std::fs::set_permissions(
        sb.path().join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    sb.write(
        "p.toml",
        &(SLURM_EXECUTOR.to_string()
            + &format!("connect = \"https://127.0.0.1:{port}\"\n")
            + r#"
[stage.make]
kind = "command"
items = ["a", "b", "c", "d", "e", "f"]
cmd = "sleep 0.3; echo $MVC_ITEM > $MVC_OUT/item.txt; echo ${SLURM_JOB_ID:-none} > $MVC_OUT/job.txt"

[stage.sum]
kind = "command"
inputs = ["make"]
per_item = false
cmd = "cat $MVC_IN_MAKE/*/item.txt | tr -d '\n' > $MVC_OUT/all.txt"
"#),
    );
    let conf = cluster.conf.display().to_string();
    let env = [("SLURM_CONF", conf.as_str())];
    let listen = format!("0.0.0.0:{port}");
    let ran = sb.mvc_env(
        &[
            "run",
            "p.toml",
            "--json",
            "--listen",
            &listen,
            "--token-file",
            "token",
        ],
        &env,
    );
    ran.assert_ok();
    assert_eq!(ran.count("make", "ran"), 6);
    assert_eq!(ran.count("sum", "ran"), 1);
    assert!(ran.stderr.contains("slurm: submitted"), "{}", ran.stderr);
    assert!(ran.stderr.contains("over TLS"), "{}", ran.stderr);
    // Every task ran inside a Slurm job: no local slots under Slurm.
    sb.mvc(&["export", "p.toml", "make", "out"]).assert_ok();
    for item in ["a", "b", "c", "d", "e", "f"] {
        let job = sb.read(&format!("out/{item}/job.txt"));
        assert!(
            job.trim().parse::<u64>().is_ok(),
            "{item} ran outside Slurm (SLURM_JOB_ID = {job:?})"
        );
    }
    sb.mvc(&["export", "p.toml", "sum", "sum"]).assert_ok();
    assert_eq!(sb.read("sum/all/all.txt"), "abcdef");
    assert!(
        cluster.queue().is_empty(),
        "jobs left in the queue: {:?}",
        cluster.queue()
    );

    // All cached: no job is submitted.
    let known = cluster.jobs_known();
    let again = sb.mvc_env(
        &["run", "p.toml", "--json", "--listen", "127.0.0.1:0"],
        &env,
    );
    again.assert_ok();
    assert_eq!(again.count("make", "cached"), 6);
    assert!(!again.stderr.contains("submitted"), "{}", again.stderr);
    assert_eq!(
        cluster.jobs_known(),
        known,
        "the second run submitted a job"
    );
    assert!(cluster.queue().is_empty());
}

#[test]
fn slurm_settings_are_checked_with_their_position() {
    let sb = Sandbox::new();
    let stage = "\n[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"true\"\n";
    let cases = [
        (
            "[executor]\nkind = \"pbs\"\n",
            "p.toml:2:8: [executor]: kind `pbs` is not known",
        ),
        (
            "[executor]\nkind = \"slurm\"\nmax_workers = 0\n",
            "p.toml:3:15: [executor]: `max_workers` must be at least 1",
        ),
        (
            "[executor]\nkind = \"slurm\"\n[executor.gres]\nembedding = \"gpu:1\"\n",
            "p.toml:4:13: [executor.gres]: `embedding` is not a stage kind",
        ),
        (
            "[executor]\npartition = \"gpu\"\n",
            "`partition` is a Slurm setting; add `kind = \"slurm\"`",
        ),
    ];
    for (executor, expected) in cases {
        sb.write("p.toml", &format!("{executor}{stage}"));
        let ran = sb.mvc(&["plan", "p.toml"]);
        assert_eq!(ran.code, Some(1), "{executor}");
        assert!(ran.stderr.contains(expected), "{executor}: {}", ran.stderr);
    }
    // A GPU stage without a gres for its kind: said before anything is submitted.
    sb.write(
        "p.toml",
        "[executor]\nkind = \"slurm\"\n\n[stage.g]\nkind = \"command\"\nitems = [\"x\"]\n\
         cmd = \"true\"\nresources = { gpu = 1 }\n",
    );
    let ran = sb.mvc_env(
        &["run", "p.toml", "--listen", "127.0.0.1:0"],
        &[("PATH", "/usr/bin:/bin")],
    );
    assert_eq!(ran.code, Some(1));
    // The gres check comes before anything about Slurm's commands is asked.
    assert!(
        ran.stderr
            .contains("give [executor.gres] command = \"gpu:1\""),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_cancelled_worker_job_is_replaced_while_work_remains() {
    let Some(cluster) = cluster() else { return };
    let sb = Sandbox::new();
    let started = sb.path().join("started");
    std::fs::create_dir(&started).unwrap();
    sb.write(
        "p.toml",
        &format!(
            r#"
[executor]
kind = "slurm"
max_workers = 1
exit_when_idle = 20

[stage.slow]
kind = "command"
items = ["a", "b", "c"]
cmd = "touch {}/$MVC_ITEM.$SLURM_JOB_ID; sleep 1.5; echo $SLURM_JOB_ID > $MVC_OUT/job.txt"
"#,
            started.display()
        ),
    );
    let conf = cluster.conf.display().to_string();
    let mut cmd = sb.command(&["run", "p.toml", "--json", "--listen", "127.0.0.1:0"]);
    cmd.env("SLURM_CONF", &conf)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = cmd.spawn().unwrap();
    // The first worker job starts a unit; cancel the job under it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let first_job = loop {
        let marker = std::fs::read_dir(&started)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .next();
        if let Some(m) = marker {
            break m.split('.').nth(1).unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no unit started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = cluster.client("scancel").arg(&first_job).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.matches("slurm: submitted").count() >= 2,
        "a new worker job replaces the cancelled one:\n{stderr}"
    );
    sb.mvc(&["export", "p.toml", "slow", "out"]).assert_ok();
    let jobs: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|i| sb.read(&format!("out/{i}/job.txt")).trim().to_string())
        .collect();
    assert!(
        jobs.iter().any(|j| *j != first_job),
        "the work was finished by another job than {first_job}: {jobs:?}"
    );
    assert!(cluster.queue().is_empty(), "{:?}", cluster.queue());
}

/// A pipeline whose name holds `,` and `|` (which `squeue --name` and the launcher's reading
/// of squeue split on) still sees its running workers, so it submits no more workers than
/// `max_workers`.
#[test]
fn a_pipeline_named_with_commas_and_bars_submits_no_more_than_max_workers() {
    let Some(cluster) = cluster() else { return };
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"a,b|c\"\n\n{SLURM_EXECUTOR}{}",
            r#"
[stage.make]
kind = "command"
items = ["a", "b", "c", "d", "e", "f", "g", "h"]
cmd = "sleep 1; echo $MVC_ITEM > $MVC_OUT/item.txt"
"#
        ),
    );
    let conf = cluster.conf.display().to_string();
    let ran = sb.mvc_env(
        &["run", "p.toml", "--json", "--listen", "127.0.0.1:0"],
        &[("SLURM_CONF", conf.as_str())],
    );
    ran.assert_ok();
    assert_eq!(ran.count("make", "ran"), 8);
    let submitted: u64 = ran
        .stderr
        .lines()
        .find_map(|l| {
            let (n, _) = l
                .strip_prefix("slurm: ")?
                .split_once(" worker job(s) submitted in this run")?;
            n.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no submission summary:\n{}", ran.stderr));
    assert!(
        (1..=2).contains(&submitted),
        "{submitted} worker jobs for max_workers = 2:\n{}",
        ran.stderr
    );
    assert!(cluster.queue().is_empty(), "{:?}", cluster.queue());
}

/// Worker jobs that die before their worker registers (here a job script whose `mvc` is
/// not there, as with a wrong MVC_BIN or a node without the shared file system) stop the
/// run after a few, with their logs named, instead of being submitted again and again.
#[test]
fn worker_jobs_that_never_register_stop_the_run_with_their_logs_named() {
    let Some(cluster) = cluster() else { return };
    let sb = Sandbox::new();
    sb.write(
        "broken.sbatch",
        "#!/bin/sh\necho starting the worker\nexec \"$MVC_BIN.missing\" worker --connect \"$MVC_CONNECT\"\n",
    );
    sb.write(
        "p.toml",
        &(SLURM_EXECUTOR.to_string()
            + "script = \"broken.sbatch\"\n"
            + r#"
[stage.make]
kind = "command"
items = ["a", "b", "c", "d", "e", "f", "g", "h"]
cmd = "echo $MVC_ITEM > $MVC_OUT/item.txt"
"#),
    );
    let conf = cluster.conf.display().to_string();
    let mut cmd = sb.command(&["run", "p.toml", "--json", "--listen", "127.0.0.1:0"]);
    cmd.env("SLURM_CONF", &conf);
    let mut run = crate::common::Background::start(&mut cmd, false);
    let ran = run.finish(std::time::Duration::from_secs(120));
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("worker jobs in a row ended without their worker registering"),
        "{}",
        ran.stderr
    );
    // The logs are named, exist, and say what went wrong.
    let logs: Vec<&str> = ran
        .stderr
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| w.ends_with(".log") && w.contains("slurm/logs/"))
        .collect();
    assert!(!logs.is_empty(), "{}", ran.stderr);
    let first = std::fs::read_to_string(logs[0]).unwrap();
    assert!(first.contains("starting the worker"), "{first}");
    assert!(ran.stderr.contains("missing"), "{}", ran.stderr);
    let submitted: u64 = ran
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("slurm: submitted "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        submitted <= mvc::remote::slurm::DEAD_JOBS_LIMIT as u64 + 2,
        "{submitted} jobs submitted:\n{}",
        ran.stderr
    );
    assert!(cluster.queue().is_empty(), "{:?}", cluster.queue());
}

/// Slurm refuses an array larger than its MaxArraySize: asked for 12 workers on a cluster that
/// allows arrays of 5, the launcher reads the limit and submits arrays of 5, 5 and 2.
#[test]
fn worker_arrays_are_split_to_the_clusters_max_array_size() {
    let Some(cluster) = cluster_with("MaxArraySize=5\n") else {
        return;
    };
    let sb = Sandbox::new();
    let items: Vec<String> = (0..24).map(|i| format!("\"i{i:02}\"")).collect();
    sb.write(
        "p.toml",
        &format!(
            "{}\n[stage.make]\nkind = \"command\"\nitems = [{}]\n\
             cmd = \"sleep 0.2; echo $MVC_ITEM > $MVC_OUT/item.txt\"\n",
            SLURM_EXECUTOR.replace("max_workers = 2", "max_workers = 12"),
            items.join(", ")
        ),
    );
    let mut cmd = sb.command(&["run", "p.toml", "--json", "--listen", "127.0.0.1:0"]);
    cmd.env("SLURM_CONF", &cluster.conf);
    // Bounded: a launcher whose arrays Slurm refused would wait for workers for ever.
    let ran = crate::common::Background::start(&mut cmd, false)
        .finish(std::time::Duration::from_secs(180));
    ran.assert_ok();
    assert_eq!(ran.count("make", "ran"), 24);
    let arrays: Vec<u64> = ran
        .stderr
        .lines()
        .filter_map(|l| {
            let (n, _) = l
                .strip_prefix("slurm: submitted ")?
                .split_once(" worker job(s) as array")?;
            n.parse().ok()
        })
        .collect();
    assert!(!arrays.is_empty(), "no submission:\n{}", ran.stderr);
    assert!(
        arrays.iter().all(|n| *n <= 5),
        "arrays larger than MaxArraySize = 5: {arrays:?}\n{}",
        ran.stderr
    );
    assert_eq!(arrays[..3], [5, 5, 2], "{}", ran.stderr);
    assert!(!ran.stderr.contains("sbatch refused"), "{}", ran.stderr);
    assert!(cluster.queue().is_empty(), "{:?}", cluster.queue());
}
