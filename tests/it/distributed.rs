//! Distribution: a real coordinator (`mvc run --listen`) and real `mvc worker` processes on
//! 127.0.0.1, and the faults a cluster brings (a killed worker, a killed coordinator, a bad
//! upload, a wrong token).

use crate::common::{Background, Ran, Sandbox};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asserts that a coordinator refused a call with `status`, saying `says`.
fn refused<T: std::fmt::Debug>(
    result: Result<T, mvc::remote::client::CallError>,
    status: u16,
    says: &str,
) {
    match result {
        Err(mvc::remote::client::CallError::Refused(got, message)) => {
            assert_eq!(got.as_u16(), status, "{message}");
            assert!(message.contains(says), "{message}");
        }
        other => panic!("not refused with {status} ({says}): {other:?}"),
    }
}

/// Starts `mvc ARGS` in the background; returns it and the URL it serves, when it listens.
fn spawn(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> (Background, Option<String>) {
    let mut cmd = sb.command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Background::start(&mut cmd, args.contains(&"--listen"));
    let url = p.url.clone();
    (p, url)
}

fn coordinator(sb: &Sandbox, extra: &[&str]) -> (Background, String) {
    let mut args = vec!["run", "p.toml", "--json", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (p, url) = spawn(sb, &args, &[]);
    (p, url.unwrap())
}

/// `mvc run p.toml --json --listen ADDR` again, with `flags`, on the address of `url`, whose
/// coordinator was killed: the same cache and port, for its workers to find.
fn coordinator_again(sb: &Sandbox, url: &str, flags: &[&str]) -> Background {
    let listen = url.trim_start_matches("http://");
    let mut args = vec!["run", "p.toml", "--json", "--listen", listen];
    args.extend_from_slice(flags);
    spawn(sb, &args, &[]).0
}

/// A coordinator with `flags` and one worker of `slots`; once `started` holds, the
/// coordinator is killed (SIGKILL) and another starts on the same cache and address. Its run,
/// ended within `limit` and ok, and the worker.
fn restarted_once(
    sb: &Sandbox,
    flags: &[&str],
    slots: &str,
    (what, started): (&str, &dyn Fn() -> bool),
    limit: Duration,
) -> (Ran, Background) {
    let (mut first, url) = coordinator(sb, flags);
    let worker = worker(sb, &url, slots, "w", &[]);
    wait_for(what, Duration::from_secs(30), started);
    // A unit leaves only once its lease is on disk: the kill may come at once.
    first.kill9();
    let ran = coordinator_again(sb, &url, flags).finish(limit);
    ran.assert_ok();
    (ran, worker)
}

/// A folder in which a pipeline's commands note each start (`touch DIR/NAME.$$`).
fn starts_folder(sb: &Sandbox) -> std::path::PathBuf {
    let started = sb.path().join("started");
    std::fs::create_dir(&started).unwrap();
    started
}

/// `mvc worker` with its own cache directory; `tag` reaches its tasks as $WORKER_TAG.
fn worker(sb: &Sandbox, url: &str, slots: &str, tag: &str, extra: &[&str]) -> Background {
    let cache = sb.path().join(format!("worker-{tag}"));
    let cache = cache.to_str().unwrap();
    let mut args = vec![
        "--cache",
        cache,
        "worker",
        "--connect",
        url,
        "--slots",
        slots,
    ];
    args.extend_from_slice(extra);
    spawn(sb, &args, &[("WORKER_TAG", tag)]).0
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files in `dir` whose names start with `prefix`.
fn count_files(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn gpu_units_run_only_on_the_worker_that_has_a_gpu() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        r#"
[stage.make]
kind = "command"
items = ["a", "b", "c", "d", "e", "f", "g", "h"]
cmd = "sleep 0.5; echo $MVC_ITEM > $MVC_OUT/item.txt; head -c 20000 /dev/zero > $MVC_OUT/big.bin; echo $WORKER_TAG > $MVC_OUT/ran-on.txt"

[stage.gpu]
kind = "command"
inputs = ["make"]
resources = { gpu = 1 }
cmd = "cat $MVC_IN_MAKE/item.txt > $MVC_OUT/out.txt; wc -c < $MVC_IN_MAKE/big.bin >> $MVC_OUT/out.txt; echo $WORKER_TAG > $MVC_OUT/ran-on.txt"
"#,
    );
    let (mut coord, url) = coordinator(&sb, &["--no-local"]);
    let _gpu = worker(&sb, &url, "cpu=1,gpu=1", "gpu-worker", &[]);
    let _cpu = worker(&sb, &url, "cpu=2,gpu=0", "cpu-worker", &[]);

    // While it runs, the coordinator names both workers and what they run.
    let mut seen_running = false;
    wait_for(
        "both workers in mvc status",
        Duration::from_secs(30),
        || {
            let status = sb.mvc(&["status", "--connect", &url, "--json"]);
            let Ok(json) = serde_json::from_str::<serde_json::Value>(status.stdout.trim()) else {
                return false;
            };
            let workers = json["workers"].as_array().cloned().unwrap_or_default();
            // What a worker runs is named `stage/item`.
            seen_running |= workers.iter().any(|w| {
                w["running"].as_array().unwrap().iter().any(|r| {
                    r.as_str()
                        .is_some_and(|r| r.starts_with("make/") || r.starts_with("gpu/"))
                })
            });
            workers.len() == 2 && seen_running
        },
    );
    let text = sb.mvc(&["status", "--connect", &url]);
    assert!(text.stdout.contains("2 worker(s)"), "{}", text.stdout);
    assert!(text.stdout.contains("gpu=1"), "{}", text.stdout);
    // The coordinator's own address serves the run's page, whose Workers section lists both
    // workers with their slots.
    let page = crate::common::raw_http(&url, "GET", "/workers").1;
    assert!(page.contains("200 OK"), "{page}");
    assert!(page.contains("2 registered"), "{page}");
    assert!(page.contains("gpu=1") && page.contains("cpu=2"), "{page}");

    let ran = coord.finish(Duration::from_secs(120));
    ran.assert_ok();
    assert_eq!(ran.count("make", "ran"), 8);
    assert_eq!(ran.count("gpu", "ran"), 8);

    sb.mvc(&["export", "p.toml", "gpu", "out-gpu"]).assert_ok();
    sb.mvc(&["export", "p.toml", "make", "out-make"])
        .assert_ok();
    let mut hosts = std::collections::BTreeSet::new();
    for item in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        let gpu_dir = sb.path().join("out-gpu").join(item);
        assert_eq!(
            std::fs::read_to_string(gpu_dir.join("ran-on.txt"))
                .unwrap()
                .trim(),
            "gpu-worker",
            "gpu unit {item} ran elsewhere"
        );
        // Inputs travelled: the item's name and its 20,000-byte blob.
        assert_eq!(
            std::fs::read_to_string(gpu_dir.join("out.txt")).unwrap(),
            format!("{item}\n20000\n")
        );
        hosts.insert(
            std::fs::read_to_string(sb.path().join("out-make").join(item).join("ran-on.txt"))
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    assert!(hosts.iter().all(|h| h.ends_with("-worker")), "{hosts:?}");
    // Every blob the coordinator holds verifies, and a second run runs nothing.
    sb.mvc(&["status", "--verify"]).assert_ok();
    let again = sb.mvc(&["run", "p.toml", "--json", "--slots", "gpu=1"]);
    again.assert_ok();
    assert_eq!(again.count("make", "ran") + again.count("gpu", "ran"), 0);
}

#[test]
fn a_killed_workers_unit_completes_on_another_worker() {
    let sb = Sandbox::new();
    let started = starts_folder(&sb);
    sb.write(
        "p.toml",
        &format!(
            r#"
[stage.slow]
kind = "command"
items = ["x", "y"]
cmd = "touch {}/$MVC_ITEM.$WORKER_TAG; sleep 1; echo $MVC_ITEM-$WORKER_TAG > $MVC_OUT/done.txt"
"#,
            started.display()
        ),
    );
    let (mut coord, url) = coordinator(&sb, &["--no-local", "--lease-timeout", "2"]);
    let mut doomed = worker(&sb, &url, "cpu=2", "doomed", &[]);
    wait_for(
        "both units to start on the first worker",
        Duration::from_secs(30),
        || count_files(&started, "") == 2,
    );
    doomed.kill9();
    let _rescuer = worker(&sb, &url, "cpu=2", "rescuer", &[]);
    let ran = coord.finish(Duration::from_secs(60));
    ran.assert_ok();
    assert_eq!(ran.count("slow", "ran"), 2);
    assert!(
        ran.stderr.contains("stopped answering"),
        "the coordinator says why the units moved:\n{}",
        ran.stderr
    );
    sb.mvc(&["export", "p.toml", "slow", "out"]).assert_ok();
    for item in ["x", "y"] {
        assert_eq!(
            sb.read(&format!("out/{item}/done.txt")).trim(),
            format!("{item}-rescuer")
        );
    }
    sb.mvc(&["status", "--verify"]).assert_ok();
}

/// A variant runs on workers as on the coordinator: they build their stages from the
/// pipeline as it runs (the file with its overlay and override merged), sweeps included.
#[test]
fn workers_run_the_variants_the_coordinator_was_given() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        r#"
[stage.say]
kind = "command"
items = ["x"]
params = { word = "file" }
cmd = 'echo "$MVC_PARAM_WORD $MVC_PARAM_TIMES-$WORKER_TAG" > "$MVC_OUT/said.txt"'
outputs = ["said.txt"]
"#,
    );
    sb.write("more.toml", "[stage.say]\nparams = { times = 2 }\n");
    let sweep =
        "say.params={ sweep = [{ word = \"one\", times = 2 }, { word = \"two\", times = 3 }] }";
    let (coord, url) = coordinator(&sb, &["--no-local", "--with", "more.toml", "--set", sweep]);
    let _worker = worker(&sb, &url, "cpu=2", "far", &[]);
    let mut coord = coord;
    let ran = coord.finish(Duration::from_secs(60));
    ran.assert_ok();
    assert_eq!(ran.count("say[params={word=one,times=2}]", "ran"), 1);
    assert_eq!(ran.count("say[params={word=two,times=3}]", "ran"), 1);
    for (stage, said) in [
        ("say[params={word=one,times=2}]", "one 2-far"),
        ("say[params={word=two,times=3}]", "two 3-far"),
    ] {
        let out = format!("out-{}", &said[..3]);
        sb.mvc(&[
            "export",
            "p.toml",
            stage,
            &out,
            "--with",
            "more.toml",
            "--set",
            sweep,
        ])
        .assert_ok();
        assert_eq!(sb.read(&format!("{out}/x/said.txt")).trim(), said);
    }
}

#[test]
fn a_restarted_coordinator_takes_the_results_of_units_leased_before() {
    let sb = Sandbox::new();
    let started = starts_folder(&sb);
    sb.write(
        "p.toml",
        &format!(
            r#"
[stage.first]
kind = "command"
items = ["p", "q"]
cmd = "touch {s}/first-$MVC_ITEM.$$; echo $MVC_ITEM > $MVC_OUT/first.txt"

[stage.slow]
kind = "command"
inputs = ["first"]
cmd = "touch {s}/slow-$MVC_ITEM.$$; sleep 2; cat $MVC_IN_FIRST/first.txt > $MVC_OUT/slow.txt"

[stage.last]
kind = "command"
inputs = ["slow"]
cmd = "touch {s}/last-$MVC_ITEM.$$; cat $MVC_IN_SLOW/slow.txt > $MVC_OUT/last.txt"
"#,
            s = started.display()
        ),
    );
    let (ran, _worker) = restarted_once(
        &sb,
        &["--no-local", "--lease-timeout", "10"],
        "cpu=2",
        ("both slow units to start", &|| {
            count_files(&started, "slow-") == 2
        }),
        Duration::from_secs(90),
    );
    assert_eq!(ran.count("first", "cached"), 2, "{}", ran.stderr);
    // The worker's two results are taken: as they arrive before the new coordinator reaches
    // those tasks (then they are cache hits) or after (then they count as run).
    assert_eq!(
        ran.count("slow", "ran") + ran.count("slow", "cached"),
        2,
        "{}",
        ran.stderr
    );
    assert_eq!(ran.count("last", "ran"), 2);
    // Nothing completed was done again: every task started exactly once.
    for prefix in ["first-p", "first-q", "slow-p", "slow-q", "last-p", "last-q"] {
        assert_eq!(
            count_files(&started, prefix),
            1,
            "{prefix} started more than once"
        );
    }
    sb.mvc(&["export", "p.toml", "last", "out"]).assert_ok();
    assert_eq!(sb.read("out/q/last.txt"), "q\n");
}

/// A unit that runs on across a coordinator's restart, for longer than a heartbeat, is left
/// to finish: the new coordinator holds it for the worker's report and does not tell the
/// worker to stop it (it did: the unit was not among its own leases, so the first heartbeat
/// said "no longer this worker's", and the worker killed it and ran it again).
#[test]
fn a_unit_running_across_a_restart_is_not_stopped_by_the_new_coordinator() {
    let sb = Sandbox::new();
    let started = starts_folder(&sb);
    sb.write(
        "p.toml",
        &format!(
            "[stage.slow]\nkind = \"command\"\nitems = [\"x\"]\n\
             cmd = \"touch {}/slow.$$; sleep 5; echo done > $MVC_OUT/o.txt\"\n",
            started.display()
        ),
    );
    // Heartbeats every second (a quarter of the lease timeout).
    let (ran, w) = restarted_once(
        &sb,
        &["--no-local", "--lease-timeout", "4"],
        "cpu=1",
        ("the unit to start", &|| count_files(&started, "slow.") == 1),
        Duration::from_secs(60),
    );
    assert_eq!(
        count_files(&started, "slow."),
        1,
        "the unit was started again: {}\nthe worker said:\n{}",
        ran.stderr,
        w.stderr.lock().unwrap()
    );
}

/// A result the coordinator answered "recorded" for survives a SIGKILL that comes at once:
/// the answer waits until the result is on disk (sled writes its buffers out only every
/// 100 ms, and before the answer waited, a kill in between lost the result, and its task
/// ran again).
#[test]
fn a_result_answered_recorded_survives_a_kill_at_once() {
    use mvc::remote::client::Client;

    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\", \"y\"]\ncmd = \"true\"\n",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for round in 0..3 {
        let cache = format!("cache-{round}");
        let (mut coord, url) = coordinator(&sb, &["--no-local", "--cache", &cache]);
        let recorded = runtime.block_on(async {
            let client = Client::new(&url, None).unwrap();
            let me = client.register(&worker_named("w")).await.unwrap().worker;
            let unit = client
                .lease(&lease_for(me))
                .await
                .unwrap()
                .unit
                .expect("a unit");
            client
                .complete(unit.id, &completed(me, "w", &unit, "made"))
                .await
                .unwrap();
            unit.tasks[0].item.clone()
        });
        coord.kill9();
        let plan = sb.mvc(&["plan", "p.toml", "--json", "--cache", &cache]);
        let json = plan.assert_ok().json();
        assert_eq!(
            json["stages"]["a"]["cached"], 1,
            "round {round}: the result for `{recorded}` was answered \"recorded\" and then \
             lost: {json}"
        );
    }
}

/// A unit the killed coordinator leased to a worker that no longer runs it (the answer with
/// the unit never arrived, or the worker dropped it) goes back to the queue once that worker,
/// registered again with the restarted coordinator, sends a heartbeat without it: not after a
/// whole lease timeout, waiting for a report that will not come.
#[test]
fn a_unit_its_worker_no_longer_runs_is_not_held_for_a_lease_timeout_after_a_restart() {
    use mvc::remote::client::Client;
    use mvc::remote::protocol::Heartbeat;

    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"true\"\n",
    );
    let flags = ["--no-local", "--lease-timeout", "60"];
    let (mut first, url) = coordinator(&sb, &flags);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // One client is one worker process: one session, kept across the restart.
    let client = Client::new(&url, None).unwrap();
    let leased = runtime.block_on(async {
        let me = client.register(&worker_named("w")).await.unwrap().worker;
        let unit = client.lease(&lease_for(me)).await.unwrap().unit;
        unit.expect("a unit")
    });
    first.kill9();
    let mut second = coordinator_again(&sb, &url, &flags);
    let again = runtime.block_on(async {
        let me = loop {
            match client.register(&worker_named("w")).await {
                Ok(registered) => break registered.worker,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        // The worker runs nothing: the unit it was leased is not among its units.
        let beat = Heartbeat {
            worker: me,
            running: vec![],
        };
        client.heartbeat(&beat).await.unwrap();
        let asked = Instant::now();
        let unit = client.lease(&lease_for(me)).await.unwrap().unit;
        let unit = unit.unwrap_or_else(|| {
            panic!(
                "unit {} is still held after {:?} (the lease timeout is 60 s)",
                leased.id,
                asked.elapsed()
            )
        });
        client
            .complete(unit.id, &completed(me, "w", &unit, "made"))
            .await
            .unwrap();
        unit
    });
    assert_eq!(again.tasks[0].key, leased.tasks[0].key, "the same task");
    assert_ne!(again.id, leased.id, "leased anew");
    let ran = second.finish(Duration::from_secs(30));
    ran.assert_ok();
    assert_eq!(ran.count("a", "ran"), 1, "{}", ran.stderr);
}

#[test]
fn a_wrong_token_is_refused_and_the_worker_exits_non_zero() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"true\"\n",
    );
    sb.write("token", "correct-horse-battery-staple\n");
    sb.write("wrong", "not-the-right-token-at-all\n");
    let (_coord, url) = coordinator(&sb, &["--no-local", "--token-file", "token"]);
    let (mut w, _) = spawn(
        &sb,
        &[
            "worker",
            "--connect",
            &url,
            "--token-file",
            "wrong",
            "--slots",
            "cpu=1",
        ],
        &[],
    );
    let ran = w.finish(Duration::from_secs(30));
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains("refused the token (401)"),
        "the worker says why:\n{}",
        ran.stderr
    );
    // No token at all: 401 too, for every path.
    let status = sb.mvc(&["status", "--connect", &url]);
    assert_ne!(status.code, Some(0));
    assert!(status.stderr.contains("401"), "{}", status.stderr);
    let with = sb.mvc(&["status", "--connect", &url, "--token-file", "token"]);
    with.assert_ok();
    assert!(
        with.stdout.contains("no workers connected"),
        "{}",
        with.stdout
    );
}

/// Off loopback the coordinator serves HTTPS with a self-signed certificate kept in its
/// cache and prints its fingerprint: a worker that pins it completes units; one given
/// another fingerprint, or none, is refused at once and exits non-zero; a plain-HTTP client
/// gets nothing. Given certificate files that are not PEM are named in the error.
#[test]
fn off_loopback_workers_pin_the_coordinators_self_signed_certificate() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        r#"
[stage.a]
kind = "command"
items = ["x", "y", "z"]
resources = { gpu = 1 }
cmd = "head -c 20000 /dev/urandom > $MVC_OUT/o.bin"
"#,
    );
    sb.write("token", "correct-horse-battery-staple\n");
    std::fs::set_permissions(
        sb.path().join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (mut coord, _) = spawn(
        &sb,
        &[
            "run",
            "p.toml",
            "--json",
            "--listen",
            "0.0.0.0:0",
            "--token-file",
            "token",
            "--slots",
            "cpu=1,gpu=0",
        ],
        &[],
    );
    let url = coord.url.clone().unwrap();
    assert!(url.starts_with("https://"), "{url}");
    let fingerprint = coord.fingerprint.clone().expect("a fingerprint is printed");
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    let url = url.replace("0.0.0.0", "127.0.0.1");
    let cert = std::fs::read(sb.cache().join("tls/coordinator-cert.pem")).unwrap();
    assert!(String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE"));

    refused_without_the_right_fingerprint(&sb, &url);
    // Plain HTTP to the TLS port: no answer.
    let plain = sb.mvc(&[
        "status",
        "--connect",
        &url.replace("https://", "http://"),
        "--token-file",
        "token",
    ]);
    assert_ne!(plain.code, Some(0), "{}", plain.stdout);

    // The fingerprint may come from the environment, as Slurm's workers get it.
    let cache = sb.path().join("worker-tls");
    let mut good = sb.command(&[
        "--cache",
        cache.to_str().unwrap(),
        "worker",
        "--connect",
        &url,
        "--token-file",
        "token",
        "--slots",
        "cpu=0,gpu=1",
        "--exit-when-idle",
        "3",
    ]);
    good.env("MVC_FINGERPRINT", &fingerprint);
    let mut good = Background::start(&mut good, false);
    let ran = coord.finish(Duration::from_secs(60));
    ran.assert_ok();
    assert_eq!(ran.count("a", "ran"), 3, "{}", ran.stdout);
    let worker_ran = good.finish(Duration::from_secs(30));
    worker_ran.assert_ok();
    assert!(
        worker_ran.stderr.contains("(3 unit(s) run)"),
        "{}",
        worker_ran.stderr
    );

    // The same certificate next time: the fingerprint workers were given still holds.
    let (again, _) = spawn(
        &sb,
        &[
            "run",
            "p.toml",
            "--listen",
            "0.0.0.0:0",
            "--token-file",
            "token",
            "--no-local",
        ],
        &[],
    );
    assert_eq!(again.fingerprint.as_deref(), Some(fingerprint.as_str()));
    drop(again);

    certificate_files_that_are_not_pem_are_named(&sb);
}

/// A worker given another fingerprint, or none, is refused at once and says why.
fn refused_without_the_right_fingerprint(sb: &Sandbox, url: &str) {
    let wrong = "ab".repeat(32);
    for (fingerprint, says) in [
        (Some(wrong.as_str()), "not the abab"),
        (None, "give --fingerprint"),
    ] {
        let mut args = vec![
            "worker",
            "--connect",
            url,
            "--token-file",
            "token",
            "--slots",
            "cpu=0,gpu=1",
        ];
        if let Some(f) = fingerprint {
            args.extend(["--fingerprint", f]);
        }
        let started = Instant::now();
        let refused = sb.mvc(&args);
        assert_ne!(refused.code, Some(0), "{}", refused.stderr);
        assert!(
            refused
                .stderr
                .contains("not the coordinator this worker trusts")
                && refused.stderr.contains(says),
            "{}",
            refused.stderr
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "refused at once"
        );
    }
}

/// Certificate files that are not PEM, and a key without its certificate, are named.
fn certificate_files_that_are_not_pem_are_named(sb: &Sandbox) {
    sb.write("cert.pem", "not a certificate\n");
    sb.write("key.pem", "not a key\n");
    let bad = sb.mvc(&[
        "run",
        "p.toml",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "cert.pem",
        "--tls-key",
        "key.pem",
    ]);
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr
            .contains("--tls-cert cert.pem: no certificate in it"),
        "{}",
        bad.stderr
    );
    let alone = sb.mvc(&[
        "run",
        "p.toml",
        "--listen",
        "127.0.0.1:0",
        "--tls-key",
        "key.pem",
    ]);
    assert_ne!(alone.code, Some(0));
    assert!(alone.stderr.contains("--tls-cert"), "{}", alone.stderr);
}

/// By default a coordinator admits the connections of 1,000 workers, three each (a lease
/// request that waits, heartbeats, a report): with 1,024 at most, the reports of some workers
/// were closed as they were accepted until the run ended. It raises its own limit on open
/// files to hold them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_admits_the_connections_of_a_thousand_workers() {
    use mvc::remote::client::Client;
    use mvc::remote::coordinator::{Coordinator, CoordinatorConfig};
    use mvc::remote::protocol::PipelineText;
    use mvc::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
    let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), None);
    let text = PipelineText {
        path: "p.toml".into(),
        text: String::new(),
    };
    // The coordinator shares this process: its server and these connections both count
    // against the process's limit on open files, which the server raises as it starts.
    let (coord, _rx) = Coordinator::start(config, store, "p", text).await.unwrap();
    let mut open = Vec::new();
    for n in 0..3_000 {
        let connected = tokio::net::TcpStream::connect(coord.addr).await;
        open.push(connected.unwrap_or_else(|e| panic!("connection {n}: {e}")));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Client::new(&coord.url(), None).unwrap();
    let status = client.status().await;
    assert!(
        status.is_ok(),
        "with {} connections open: {:?}",
        open.len(),
        status.err()
    );
}

/// The coordinator's server closes a connection that says nothing (after its limit for a
/// request head) and any connection beyond its bound; a client whose transfer stalls, or
/// whose answer grows past the bound on JSON, gets an error instead of waiting or filling
/// memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_end_and_bodies_are_bounded() {
    use mvc::remote::client::{CallError, Client, ClientOptions};
    use mvc::remote::coordinator::{Coordinator, CoordinatorConfig};
    use mvc::remote::protocol::PipelineText;
    use mvc::store::Store;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
    let mut config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), None);
    config.limits.max_connections = 2;
    config.limits.idle = Duration::from_secs(1);
    config.limits.handshake = Duration::from_secs(1);
    let text = PipelineText {
        path: "p.toml".into(),
        text: String::new(),
    };
    let (coord, _rx) = Coordinator::start(config, store, "p", text).await.unwrap();

    // A connection that sends nothing is closed within its limits.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(coord.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the server closed a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Two connections are open; a third is closed as soon as it is accepted.
    let _one = tokio::net::TcpStream::connect(coord.addr).await.unwrap();
    let _two = tokio::net::TcpStream::connect(coord.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(coord.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let read = tokio::time::timeout(Duration::from_millis(900), third.read(&mut buf))
        .await
        .expect("the third connection was closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // A server that sends a blob's head and a few bytes, then nothing.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr = stall.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = stall.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = if String::from_utf8_lossy(&request).contains("/v1/status") {
                    // An answer without end: 100 MB of JSON, more than any reply may be.
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n[")
                        .await;
                    let zeros = vec![b'0'; 1 << 20];
                    for _ in 0..100 {
                        if conn.write_all(&zeros).await.is_err() {
                            return;
                        }
                    }
                    return;
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nabc".as_slice()
                };
                let _ = conn.write_all(head).await;
                tokio::time::sleep(Duration::from_secs(600)).await;
            });
        }
    });
    let options = ClientOptions {
        idle: Duration::from_secs(1),
        ..Default::default()
    };
    let client = Client::with_options(&format!("http://{stall_addr}"), None, &options).unwrap();
    let blobs = mvc::store::blobs::BlobStore::new(dir.path().join("w"));
    let started = Instant::now();
    match client.get_blob(&mvc::task::Digest::of(b"x"), &blobs).await {
        Err(CallError::Network(message)) => assert!(message.contains("timed out"), "{message}"),
        other => panic!("a stalled transfer did not fail: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    match client.status().await {
        Err(CallError::Refused(_, message)) => {
            assert!(message.contains("larger than"), "{message}")
        }
        other => panic!("an answer without bound was read: {other:?}"),
    }
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\ncmd = \"true\"\n",
    );
    let ran = sb.mvc(&["run", "p.toml", "--listen", "0.0.0.0:0"]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr.contains("needs a token") && ran.stderr.contains("--token-file"),
        "{}",
        ran.stderr
    );
    sb.write("short", "abc\n");
    let ran = sb.mvc(&[
        "run",
        "p.toml",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        "short",
    ]);
    assert_eq!(ran.code, Some(1));
    assert!(ran.stderr.contains("at least 16"), "{}", ran.stderr);
    let ran = sb.mvc(&["run", "p.toml", "--no-local"]);
    assert!(
        ran.stderr.contains("--no-local needs --listen"),
        "{}",
        ran.stderr
    );
}

/// The blob endpoints, in process: uploads are verified while they arrive, refused when the
/// bytes do not match their name or exceed the limit; downloads honour ranges; names that
/// are not digests never reach the file system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_verified_on_upload_and_served_with_ranges() {
    use mvc::remote::client::{CallError, Client};
    use mvc::remote::coordinator::{Coordinator, CoordinatorConfig};
    use mvc::remote::protocol::PipelineText;
    use mvc::store::Store;
    use mvc::task::Digest;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
    let mut config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), None);
    config.blob_limit = 1 << 20;
    let text = PipelineText {
        path: "p.toml".into(),
        text: String::new(),
    };
    let (coord, _rx) = Coordinator::start(config, store.clone(), "p", text)
        .await
        .unwrap();
    let client = Client::new(&coord.url(), None).unwrap();

    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &bytes).unwrap();
    let digest = Digest::of(&bytes);

    // A worker claiming other bytes under this digest is refused; nothing is stored.
    let liar = dir.path().join("liar.bin");
    std::fs::write(&liar, b"not those bytes").unwrap();
    match client.put_blob(&digest, &liar).await {
        Err(CallError::Refused(status, message)) => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("hash to"), "{message}");
        }
        other => panic!("a mismatching upload was not refused: {other:?}"),
    }
    assert!(!client.has_blob(&digest).await.unwrap());
    assert!(store.blobs().list().unwrap().temp_files.is_empty());

    // The honest upload is stored, and a second one is acknowledged (idempotent).
    client.put_blob(&digest, &file).await.unwrap();
    client.put_blob(&digest, &file).await.unwrap();
    assert_eq!(store.blobs().read(&digest).unwrap(), bytes);

    // Downloads verify into another store.
    let other = mvc::store::blobs::BlobStore::new(dir.path().join("other"));
    assert_eq!(client.get_blob(&digest, &other).await.unwrap(), 300_000);

    rotten_blobs_are_found_and_replaced(&client, &store, dir.path(), &bytes).await;

    let http = reqwest::Client::new();
    let url = format!("{}/v1/blobs/{digest}", coord.url());
    let part = http
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        "bytes 1000-1999/300000"
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[1000..2000]);
    let beyond = http
        .get(&url)
        .header("Range", "bytes=400000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status().as_u16(), 416);

    // Names that are not digests are refused before any path is built.
    for bad in ["abc", "..%2F..%2Fetc%2Fpasswd", &"g".repeat(64)] {
        let r = http
            .get(format!("{}/v1/blobs/{bad}", coord.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }

    // Larger than the limit: 413, nothing kept.
    let big: Vec<u8> = vec![1; (1 << 20) + 10];
    let big_file = dir.path().join("big.bin");
    std::fs::write(&big_file, &big).unwrap();
    match client.put_blob(&Digest::of(&big), &big_file).await {
        Err(CallError::Refused(status, _)) => assert_eq!(status.as_u16(), 413),
        Err(CallError::Network(_)) => {} // the server may close the connection mid-body
        other => panic!("an oversized upload was not refused: {other:?}"),
    }
    assert!(!client.has_blob(&Digest::of(&big)).await.unwrap());
}

/// The stored copy of a blob rots (same size, one byte changed). A download breaks off
/// before its end and the blob is removed; asked again, the coordinator has none; an upload
/// of the right bytes then stores it whole again. HEAD (an uploader's check) and PUT (an
/// upload of a blob that seems here) find the rot too.
async fn rotten_blobs_are_found_and_replaced(
    client: &mvc::remote::client::Client,
    store: &mvc::store::Store,
    dir: &Path,
    bytes: &[u8],
) {
    use mvc::remote::client::CallError;
    let digest = mvc::task::Digest::of(bytes);
    let file = dir.join("blob.bin");
    let stored = store.blobs().path(&digest);
    let mut rotten = bytes.to_vec();
    rotten[299_999] ^= 1;
    std::fs::set_permissions(&stored, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&stored, &rotten).unwrap();
    let fresh = mvc::store::blobs::BlobStore::new(dir.join("fresh"));
    match client.get_blob(&digest, &fresh).await {
        Err(CallError::Network(_)) => {}
        other => panic!("a damaged blob was served as whole: {other:?}"),
    }
    assert!(fresh.size(&digest).is_none());
    assert!(!stored.exists(), "the damaged copy is removed");
    match client.get_blob(&digest, &fresh).await {
        Err(CallError::BlobMissing(message)) => assert!(message.contains("no blob"), "{message}"),
        other => panic!("a removed blob was not missing: {other:?}"),
    }
    // Rot found by HEAD (an uploader's check) and by PUT (an upload of a blob that seems here).
    std::fs::write(&stored, &rotten).unwrap();
    assert!(
        !client.has_blob(&digest).await.unwrap(),
        "HEAD of a damaged blob"
    );
    std::fs::write(&stored, &rotten).unwrap();
    client.put_blob(&digest, &file).await.unwrap();
    assert_eq!(
        store.blobs().read(&digest).unwrap(),
        bytes,
        "the upload replaced it"
    );
}

#[test]
fn worker_arguments_are_checked_and_an_unreachable_coordinator_ends_an_idle_worker() {
    let sb = Sandbox::new();
    let ran = sb.mvc(&["worker", "--connect", "ftp://127.0.0.1:1"]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr.contains("give an http:// or https:// URL"),
        "{}",
        ran.stderr
    );
    // Flags are checked when they are parsed (clap's usage error, status 2), naming the flag.
    for (flag, value, says) in [
        ("--slots", "gpus=1", "unknown slot `gpus`"),
        ("--slots", "cpu=9999999", "more than any machine has"),
        ("--grace", "inf", "not a finite number of seconds"),
        ("--grace", "-1", "at least 0 seconds"),
        ("--exit-when-idle", "nan", "not a finite number of seconds"),
        ("--exit-when-idle", "1e12", "more than a week"),
    ] {
        let ran = sb.mvc(&["worker", "--connect", "http://127.0.0.1:1", flag, value]);
        assert_eq!(ran.code, Some(2), "{flag} {value}: {}", ran.stderr);
        assert!(
            ran.stderr.contains(&format!("for '{flag} ")) && ran.stderr.contains(says),
            "{flag} {value}: {}",
            ran.stderr
        );
    }
    let ran = sb.mvc(&[
        "worker",
        "--connect",
        "http://127.0.0.1:1",
        "--slots",
        "cpu=0,gpu=0,blender=0,net=0",
    ]);
    assert_eq!(ran.code, Some(1));
    assert!(ran.stderr.contains("offers no slot"), "{}", ran.stderr);
    // Nobody listens on port 1: the worker keeps trying until its idle limit, then exits.
    let started = Instant::now();
    let ran = sb.mvc(&[
        "worker",
        "--connect",
        "http://127.0.0.1:1",
        "--slots",
        "cpu=1",
        "--exit-when-idle",
        "1",
    ]);
    ran.assert_ok();
    assert!(ran.stderr.contains("idle for"), "{}", ran.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A port nobody listens on: a worker says so at the default verbosity (what it tried, what
/// answered, what to check), keeps trying, and ends within its grace on SIGINT and on
/// SIGTERM, whatever it is waiting for.
#[test]
fn a_worker_that_cannot_reach_its_coordinator_says_so_and_stops_on_a_signal() {
    let sb = Sandbox::new();
    // A port that was just free: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for (signal, status) in [(libc::SIGINT, 130), (libc::SIGTERM, 0)] {
        let mut w = Background::start(
            &mut sb.command(&[
                "worker",
                "--connect",
                &url,
                "--slots",
                "cpu=1",
                "--grace",
                "2",
            ]),
            false,
        );
        wait_for(
            "the worker's first complaint",
            Duration::from_secs(20),
            || w.stderr.lock().unwrap().contains("cannot register"),
        );
        // Let it get into its backoff between tries.
        std::thread::sleep(Duration::from_millis(1500));
        crate::common::signal(w.child.as_ref().unwrap(), signal);
        let started = Instant::now();
        let ran = w.finish(Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(ran.code, Some(status), "{}", ran.stderr);
        assert!(
            ran.stderr.contains(&format!("cannot register with {url}"))
                && ran.stderr.contains("Connection refused")
                && ran
                    .stderr
                    .contains(&format!("nothing listens on 127.0.0.1:{port}")),
            "{}",
            ran.stderr
        );
        // One line, not one per try.
        assert_eq!(
            ran.stderr.matches("cannot register").count(),
            1,
            "{}",
            ran.stderr
        );
    }
}

/// `http://` for a coordinator that serves TLS, and `https://` for one that does not: the
/// worker and `mvc status --connect` name the URL to use (and are not killed by the
/// peer's closed socket on the way).
#[test]
fn the_wrong_scheme_for_a_coordinator_is_named() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        "[stage.a]\nkind = \"command\"\nitems = [\"x\"]\nresources = { gpu = 1 }\n\
         cmd = \"echo > $MVC_OUT/o\"\n",
    );
    // A certificate for 127.0.0.1, made with rcgen as mvc makes its own.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    sb.write("cert.pem", &cert.cert.pem());
    sb.write("key.pem", &cert.signing_key.serialize_pem());
    let (_tls, tls_url) = coordinator(
        &sb,
        &[
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
            "--slots",
            "cpu=1,gpu=0",
        ],
    );
    assert!(tls_url.starts_with("https://"), "{tls_url}");
    let plain_url = tls_url.replace("https://", "http://");
    let mut w = Background::start(&mut sb.command(&["worker", "--connect", &plain_url]), false);
    wait_for("the worker's complaint", Duration::from_secs(20), || {
        w.stderr.lock().unwrap().contains("cannot register")
    });
    crate::common::signal(w.child.as_ref().unwrap(), libc::SIGINT);
    let ran = w.finish(Duration::from_secs(10));
    let port = tls_url.rsplit(':').next().unwrap();
    assert!(
        ran.stderr.contains(&format!(
            "127.0.0.1:{port} speaks TLS: connect to https://127.0.0.1:{port}"
        )),
        "{}",
        ran.stderr
    );
    let status = sb.mvc(&["status", "--connect", &plain_url]);
    assert_ne!(status.code, Some(0));
    assert!(status.stderr.contains("speaks TLS"), "{}", status.stderr);

    let other = Sandbox::new();
    other.write("p.toml", &sb.read("p.toml"));
    let (_plain, url) = coordinator(&other, &["--slots", "cpu=1,gpu=0"]);
    let tls_to_plain = url.replace("http://", "https://");
    let mut w = Background::start(
        &mut other.command(&["worker", "--connect", &tls_to_plain]),
        false,
    );
    wait_for("the worker's complaint", Duration::from_secs(20), || {
        w.stderr.lock().unwrap().contains("cannot register")
    });
    crate::common::signal(w.child.as_ref().unwrap(), libc::SIGTERM);
    let ran = w.finish(Duration::from_secs(10));
    assert_eq!(ran.code, Some(0), "not killed by SIGPIPE: {}", ran.stderr);
    assert!(
        ran.stderr
            .contains("speaks plain HTTP, not TLS: connect to http://"),
        "{}",
        ran.stderr
    );
}

/// The coordinator's bookkeeping, driven in process by a hand-written worker: a result sent
/// twice is recorded once; a unit whose lease expired goes to another worker, and the first
/// worker's late result is refused; the run finishes with the second worker's result. A
/// unit is bound to the session it was leased to, not to a worker's listed id or name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_recorded_once_and_late_ones_are_refused() {
    use mvc::remote::client::Client;

    let dir = tempfile::tempdir().unwrap();
    let (url, store, run) = listening_run(dir.path(), 1).await;

    // Each client is one session (one worker process).
    let client = Client::new(&url, None).unwrap();
    let client_b = Client::new(&url, None).unwrap();
    let impostor = Client::new(&url, None).unwrap();
    let (register, lease, done) = (worker_named, lease_for, completed);
    let a = client.register(&register("a")).await.unwrap().worker;
    let first = client.lease(&lease(a)).await.unwrap().unit.expect("a unit");
    client
        .complete(first.id, &done(a, "a", &first, "from a"))
        .await
        .unwrap();
    // The same result again: acknowledged, not recorded again.
    client
        .complete(first.id, &done(a, "a", &first, "from a"))
        .await
        .unwrap();

    // The second unit: `a` takes it.
    let second = client.lease(&lease(a)).await.unwrap().unit.expect("a unit");
    // Another session that learnt a's id (from /v1/status) and name can neither speak for
    // a nor report a's unit, even registered under a's name.
    let status = impostor.status().await.unwrap();
    assert_eq!(status.workers[0].id, a);
    impostor.register(&register("a")).await.unwrap();
    let beat = mvc::remote::protocol::Heartbeat {
        worker: a,
        running: vec![second.id],
    };
    refused(impostor.heartbeat(&beat).await, 403, "another session");
    refused(impostor.lease(&lease(a)).await, 403, "another session");
    refused(
        impostor
            .complete(second.id, &done(a, "a", &second, "forged"))
            .await,
        409,
        "held by another worker",
    );
    // a goes silent past the lease timeout.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let b = client_b.register(&register("b")).await.unwrap().worker;
    let again = client_b
        .lease(&lease(b))
        .await
        .unwrap()
        .unit
        .expect("the unit again");
    assert_eq!(
        again.tasks[0].key, second.tasks[0].key,
        "the same task, leased again"
    );
    assert_ne!(again.id, second.id);
    refused(
        client
            .complete(second.id, &done(a, "a", &second, "late from a"))
            .await,
        409,
        "not leased to this worker",
    );
    // A completion for a unit nobody leased is refused by the running scheduler, and
    // nothing is recorded (b's own result for the task is still taken below).
    let nobody = again.id.wrapping_add(1);
    refused(
        client_b
            .complete(nobody, &done(b, "b", &again, "from nobody"))
            .await,
        409,
        &format!("unit {nobody} is not leased"),
    );
    client_b
        .complete(again.id, &done(b, "b", &again, "from b"))
        .await
        .unwrap();

    let report = run.await.unwrap();
    assert!(report.ok(), "{}", report.to_text());
    assert_eq!(report.stages["a"].ran, 2);
    let second_result = store.result(&second.tasks[0].key).unwrap().unwrap();
    assert_eq!(second_result.host, "b");
    assert_eq!(
        second_result.outputs[0].inline.as_deref(),
        Some(&b"from b"[..])
    );
    let first_result = store.result(&first.tasks[0].key).unwrap().unwrap();
    assert_eq!(first_result.host, "a");
}

/// A run of two command tasks that only workers can run, listening on loopback with leases
/// of `lease_timeout_s`: its coordinator's URL, its store, and the run itself.
async fn listening_run(
    dir: &Path,
    lease_timeout_s: u64,
) -> (
    String,
    Arc<mvc::store::Store>,
    tokio::task::JoinHandle<mvc::exec::run::RunReport>,
) {
    let text = "[stage.a]\nkind = \"command\"\nitems = [\"x\", \"y\"]\ncmd = \"true\"\n";
    listening_run_of(dir, lease_timeout_s, text).await
}

/// [`listening_run`] of the pipeline `text`.
async fn listening_run_of(
    dir: &Path,
    lease_timeout_s: u64,
    text: &str,
) -> (
    String,
    Arc<mvc::store::Store>,
    tokio::task::JoinHandle<mvc::exec::run::RunReport>,
) {
    use mvc::exec::run::{Listener, RunOptions, run_with};
    use mvc::remote::coordinator::{Coordinator, CoordinatorConfig};
    use mvc::remote::protocol::PipelineText;
    use mvc::store::Store;
    let path = dir.join("p.toml");
    std::fs::write(&path, text).unwrap();
    let pipeline = mvc::pipeline::Pipeline::parse(&path, text).unwrap();
    let store = Arc::new(Store::open(&dir.join("cache")).unwrap());
    let mut config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), None);
    config.lease_timeout = Duration::from_secs(lease_timeout_s);
    let source = PipelineText {
        path: path.display().to_string(),
        text: text.to_string(),
    };
    let (coord, rx) = Coordinator::start(config, store.clone(), "p", source)
        .await
        .unwrap();
    let url = coord.url();
    let mut listener = Listener::new(coord, rx);
    let run_store = store.clone();
    let run = tokio::spawn(async move {
        let opts = RunOptions {
            slots: mvc::resources::Resources::default(),
            keep_going: true,
            retry_failed: false,
            grace: Duration::from_secs(1),
            quiet: true,
        };
        run_with(&pipeline.workflow, run_store, opts, Some(&mut listener))
            .await
            .unwrap()
    });

    (url, store, run)
}

/// A worker is given the most downstream work that waits: each item goes through the whole
/// pipeline before the next starts, so what waits between stages stays bounded and a run
/// does not end with every worker waiting on one stage's last units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_given_the_most_downstream_work_first() {
    use mvc::remote::client::Client;

    let dir = tempfile::tempdir().unwrap();
    let text = "[stage.a]\nkind = \"command\"\nitems = [\"x\", \"y\"]\ncmd = \"true\"\n\n\
                [stage.b]\nkind = \"command\"\ninputs = [\"a\"]\ncmd = \"true\"\n";
    let (url, _store, run) = listening_run_of(dir.path(), 30, text).await;
    let client = Client::new(&url, None).unwrap();
    let w = client.register(&worker_named("w")).await.unwrap().worker;
    let mut given = Vec::new();
    for _ in 0..4 {
        let unit = client
            .lease(&lease_for(w))
            .await
            .unwrap()
            .unit
            .expect("a unit");
        given.push(format!("{}/{}", unit.stage, unit.tasks[0].item));
        client
            .complete(unit.id, &completed(w, "w", &unit, "made"))
            .await
            .unwrap();
    }
    assert_eq!(
        given,
        ["a/x", "b/x", "a/y", "b/y"],
        "b/x, ready once a/x is done, goes before a/y"
    );
    let report = run.await.unwrap();
    assert!(report.ok(), "{}", report.to_text());
    assert_eq!((report.stages["a"].ran, report.stages["b"].ran), (2, 2));
}

/// A hand-written worker's registration.
fn worker_named(name: &str) -> mvc::remote::protocol::Register {
    mvc::remote::protocol::Register {
        name: name.into(),
        host: "test".into(),
        slots: mvc::resources::Resources::ONE_CPU,
        labels: vec![],
        blender: None,
        slurm_job: None,
    }
}

/// A lease request for one cpu slot, waiting up to 5 s.
fn lease_for(worker: u64) -> mvc::remote::protocol::LeaseRequest {
    mvc::remote::protocol::LeaseRequest {
        worker,
        free: mvc::resources::Resources::ONE_CPU,
        wait_ms: 5000,
    }
}

/// A report that every task of `unit` made one inline output, `text`.
fn completed(
    worker: u64,
    name: &str,
    unit: &mvc::remote::protocol::Unit,
    text: &str,
) -> mvc::remote::protocol::Complete {
    let output = || mvc::stages::TaskOutcome::Success {
        outputs: vec![mvc::store::records::Output {
            name: "o".into(),
            digest: mvc::task::Digest::of(text.as_bytes()),
            size: text.len() as u64,
            inline: Some(text.as_bytes().to_vec()),
        }],
        stdout: None,
        stderr: None,
        started_ms: 0,
        duration_ms: 1,
    };
    mvc::remote::protocol::Complete {
        worker,
        worker_name: name.into(),
        keys: unit.tasks.iter().map(|t| t.key).collect(),
        outcomes: unit.tasks.iter().map(|_| output()).collect(),
    }
}

/// A blob damaged in the coordinator's cache heals: the worker that fetches it is refused
/// its last bytes, hears 404 when it asks again, and reports the input gone; the coordinator
/// runs the producer again, whose output is stored whole, and the consumer then runs.
#[test]
fn a_damaged_blob_on_the_coordinator_is_made_again() {
    let sb = Sandbox::new();
    let big = r#"
[stage.big]
kind = "command"
items = ["one"]
cmd = "head -c 50000 /dev/zero > $MVC_OUT/big.bin"
"#;
    sb.write("p.toml", big);
    sb.mvc(&["run", "p.toml"]).assert_ok();
    let zeros = vec![0u8; 50000];
    let blob = mvc::store::blobs::BlobStore::new(sb.cache().join("blobs"))
        .path(&mvc::task::Digest::of(&zeros));
    assert!(blob.exists(), "{}", blob.display());
    // Bit rot: the same size, other bytes.
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut damaged = zeros.clone();
    damaged[40000] = 1;
    std::fs::write(&blob, &damaged).unwrap();

    sb.write(
        "p.toml",
        &format!(
            "{big}
[stage.use]
kind = \"command\"
inputs = [\"big\"]
items = [\"a\", \"b\"]
resources = {{ gpu = 1 }}
cmd = \"wc -c < $MVC_IN_BIG/one/big.bin > $MVC_OUT/n.txt\"
"
        ),
    );
    let (mut coord, url) = coordinator(&sb, &["--slots", "cpu=1,gpu=0"]);
    let mut w = worker(&sb, &url, "cpu=0,gpu=1", "w", &["--exit-when-idle", "5"]);
    let ran = coord.finish(Duration::from_secs(120));
    let worker_ran = w.finish(Duration::from_secs(30));
    ran.assert_ok();
    assert!(
        ran.stderr
            .contains("big/one is treated as a cache miss and runs again"),
        "{}\n--- worker:\n{}",
        ran.stderr,
        worker_ran.stderr
    );
    assert_eq!(ran.count("big", "ran"), 1, "{}", ran.stdout);
    assert_eq!(ran.count("use", "ran"), 2, "{}", ran.stdout);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        zeros,
        "the blob is whole again"
    );
}

/// A worker that cannot check a stage now (its script is not there yet: a shared file
/// system catching up) refuses that stage's units for a while, not for its whole life: once
/// the file is there, the next run's units run on the same worker.
#[test]
fn a_workers_failed_check_is_tried_again_later() {
    let sb = Sandbox::new();
    sb.write(
        "p.toml",
        r#"
[stage.a]
kind = "command"
items = ["x"]
resources = { gpu = 1 }
files = { s = "s.sh" }
cmd = "sh $MVC_FILE_S > $MVC_OUT/o.txt"
"#,
    );
    sb.write("s.sh", "echo from the script\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // The worker runs in a directory of its own, which has no s.sh yet.
    let here = sb.path().join("w");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::copy(sb.path().join("p.toml"), here.join("p.toml")).unwrap();
    let cache = sb.path().join("worker-cache");
    let url = format!("http://{listen}");
    let mut cmd = sb.command(&[
        "--cache",
        cache.to_str().unwrap(),
        "worker",
        "--connect",
        &url,
        "--slots",
        "cpu=0,gpu=1",
    ]);
    // No --exit-when-idle: it stays between the runs (and is killed when the test ends).
    cmd.current_dir(&here);
    let _worker = Background::start(&mut cmd, false);

    let run = || {
        sb.mvc(&[
            "run",
            "p.toml",
            "--json",
            "--listen",
            &listen,
            "--slots",
            "cpu=1,gpu=0",
        ])
    };
    let first = run();
    assert_ne!(first.code, Some(0), "{}", first.stderr);
    assert!(
        first.stderr.contains("cannot run here now") && first.stderr.contains("s.sh"),
        "{}",
        first.stderr
    );
    std::fs::copy(sb.path().join("s.sh"), here.join("s.sh")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let second = run();
    second.assert_ok();
    assert_eq!(second.count("a", "ran"), 1, "{}", second.stdout);
}

/// A worker fetches a blob it already has only once, and `mvc serve` runs again when the
/// pipeline file changes, with its workers still connected.
#[test]
fn a_worker_fetches_each_blob_once_and_serve_reruns_on_change() {
    let sb = Sandbox::new();
    let pipeline = |items: &str| {
        format!(
            r#"
[stage.big]
kind = "command"
items = ["one"]
cmd = "head -c 50000 /dev/zero > $MVC_OUT/big.bin"

[stage.use]
kind = "command"
inputs = ["big"]
items = [{items}]
resources = {{ gpu = 1 }}
cmd = "wc -c < $MVC_IN_BIG/one/big.bin > $MVC_OUT/n.txt"
"#
        )
    };
    sb.write("p.toml", &pipeline(r#""a", "b", "c", "d""#));
    let (mut serve, url) = spawn(
        &sb,
        &[
            "serve",
            "p.toml",
            "--listen",
            "127.0.0.1:0",
            "--slots",
            "cpu=1,gpu=0",
        ],
        &[],
    );
    let url = url.unwrap();
    // `big` runs on the coordinator's machine; the `use` tasks need the worker's gpu slot.
    let _w = worker(&sb, &url, "cpu=0,gpu=1", "w", &[]);
    let status = || -> serde_json::Value {
        let s = sb.mvc(&["status", "--connect", &url, "--json"]);
        serde_json::from_str(s.stdout.trim()).unwrap_or_default()
    };
    wait_for("the first run", Duration::from_secs(60), || {
        serve
            .stderr
            .lock()
            .unwrap()
            .contains("waiting for p.toml to change")
    });
    let first = status();
    // Four `use` tasks on the worker read the 50,000-byte blob: it was sent once.
    assert_eq!(
        first["blobs_sent"],
        serde_json::json!([1, 50000]),
        "{first}"
    );

    // A new item: only it runs, on the same worker, which has the blob already.
    std::thread::sleep(Duration::from_millis(1100));
    sb.write("p.toml", &pipeline(r#""a", "b", "c", "d", "e""#));
    wait_for("the second run", Duration::from_secs(60), || {
        serve
            .stderr
            .lock()
            .unwrap()
            .matches("waiting for p.toml to change")
            .count()
            == 2
    });
    let second = status();
    assert_eq!(
        second["blobs_sent"],
        serde_json::json!([1, 50000]),
        "{second}"
    );
    let workers = second["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{second}");
    assert_eq!(workers[0]["units_done"], 5, "{second}");
    crate::common::signal(serve.child.as_ref().unwrap(), libc::SIGINT);
    let ran = serve.finish(Duration::from_secs(30));
    ran.assert_ok();
    assert_eq!(ran.stdout.matches("ok in").count(), 2, "{}", ran.stdout);
}

#[test]
fn a_worker_sent_sigterm_while_a_units_thread_is_stuck_exits_within_its_grace() {
    let sb = Sandbox::new();
    // Minutes in the built-in renderer's thread, which nothing but the abandonment of its
    // unit stops.
    sb.write(
        "p.toml",
        &crate::common::glb::slow_render_pipeline(sb.path(), false, 3600),
    );
    let (_coord, url) = coordinator(&sb, &["--no-local"]);
    let cache = sb.path().join("worker-cache");
    let (mut w, _) = spawn(
        &sb,
        &[
            "-v",
            "--cache",
            cache.to_str().unwrap(),
            "worker",
            "--connect",
            &url,
            "--slots",
            "cpu=2",
            "--grace",
            "1",
        ],
        &[],
    );
    wait_for("the slow unit to start", Duration::from_secs(60), || {
        w.stderr
            .lock()
            .unwrap()
            .contains("views of slow in one unit")
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    crate::common::signal(w.child.as_ref().unwrap(), libc::SIGTERM);
    let ran = w.finish(Duration::from_secs(60));
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "the worker took {took:?} to exit after SIGTERM with --grace 1:\n{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("terminated"), "{}", ran.stderr);
}

/// A token file that group or others can read is warned about, naming the file and the
/// fix; one only its owner reads is not.
#[test]
fn a_token_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let token = sb.write("token", "correct-horse-battery-staple\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Nothing listens on port 1: the command fails after reading the token.
    let args = [
        "status",
        "--connect",
        "http://127.0.0.1:1",
        "--token-file",
        "token",
    ];
    let ran = sb.mvc(&args);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr
            .contains("--token-file token: group or others can read it (mode 0644)"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("chmod 600 token"), "{}", ran.stderr);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ran = sb.mvc(&args);
    assert_ne!(ran.code, Some(0));
    assert!(!ran.stderr.contains("can read it"), "{}", ran.stderr);
}
