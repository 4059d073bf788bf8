//! Distribution overhead: N `command` units of 50 ms each (default 2,000), run by the local
//! executor alone, then through the coordinator (`mvc run --listen --no-local`) by two
//! `mvc worker` processes on this machine with the same slots in all, over plain HTTP and
//! then over TLS; plus blob transfer over loopback, over HTTP and over TLS.
//!
//!     cargo bench --bench distributed
//!     MVC_BENCH_UNITS=500 MVC_BENCH_SLOTS=8 MVC_BENCH_BLOB_MB=256 cargo bench --bench distributed
//!
//! Printed per mode: wall time, units per second, and the time per unit beyond its 50 ms
//! sleep (wall × slots / units − 50 ms). The coordinator's overhead per unit is the remote
//! mode's extra slot-time per unit over the local mode's, and, separately, the
//! coordinator process's own CPU time per unit (from wait4's rusage).

#[path = "common/coordinator.rs"]
mod coordinator;
use coordinator::{start_coordinator, wait_child};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT_CMD: &str = r#"sleep 0.05; echo "$MVC_ITEM" > "$MVC_OUT/o""#;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

fn main() {
    let units = env_num("MVC_BENCH_UNITS", 2000);
    let slots = env_num("MVC_BENCH_SLOTS", 8).max(2);
    let blob_mb = env_num("MVC_BENCH_BLOB_MB", 512);
    let mvc = env!("CARGO_BIN_EXE_mvc");
    println!(
        "distributed: {units} command units of 50 ms, {slots} slots in all, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let local_dir = tempfile::tempdir().unwrap();
    write_pipeline(local_dir.path(), units);
    let started = Instant::now();
    let (code, cpu) = run_child(
        Command::new(mvc)
            .args(["run", "p.toml", "--json", "-q", "--slots"])
            .arg(format!("cpu={slots}"))
            .current_dir(local_dir.path()),
    );
    let local = started.elapsed();
    assert_eq!(code, 0, "the local run failed");
    report("local executor", local, units, slots, cpu);

    let (remote, cpu) = coordinated(mvc, units, slots, false);
    report("coordinator + 2 workers", remote, units, slots, cpu);
    let extra = (remote.as_secs_f64() - local.as_secs_f64()) * slots as f64 / units as f64;
    println!(
        "coordinator overhead per unit: {:.2} ms of slot time beyond the local executor's; \
         {:.3} ms of the coordinator's CPU; units/s ratio remote/local {:.3}",
        extra * 1e3,
        cpu.as_secs_f64() * 1e3 / units as f64,
        local.as_secs_f64() / remote.as_secs_f64()
    );
    let (tls, tls_cpu) = coordinated(mvc, units, slots, true);
    report("the same over TLS", tls, units, slots, tls_cpu);
    println!(
        "TLS against plain HTTP: {:+.2} ms of slot time per unit, {:+.3} ms of the \
         coordinator's CPU per unit; units/s ratio TLS/HTTP {:.3}",
        (tls.as_secs_f64() - remote.as_secs_f64()) * slots as f64 / units as f64 * 1e3,
        (tls_cpu.as_secs_f64() - cpu.as_secs_f64()) * 1e3 / units as f64,
        remote.as_secs_f64() / tls.as_secs_f64()
    );

    let plain = blob_transfer(blob_mb, false);
    let tls = blob_transfer(blob_mb, true);
    println!(
        "blob transfer TLS/HTTP ratio: upload {:.3}, download {:.3}",
        tls.0 / plain.0,
        tls.1 / plain.1
    );
}

/// The units run by a coordinator (`mvc run --listen --no-local`) and two workers on this
/// machine, with `slots` in all: over loopback's plain HTTP, or (`tls`) listening on every
/// address with a token, so over HTTPS with the coordinator's self-signed certificate,
/// which the workers pin. Returns the wall time and the coordinator's CPU time.
fn coordinated(mvc: &str, units: u64, slots: u64, tls: bool) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), units);
    std::fs::write(dir.path().join("token"), "bench-token-0123456789abcdef\n").unwrap();
    let listen = if tls { "0.0.0.0:0" } else { "127.0.0.1:0" };
    let started = Instant::now();
    let (coordinator, url, fingerprint) =
        start_coordinator(mvc, dir.path(), listen, &["--token-file", "token"]);
    let url = url.replace("0.0.0.0", "127.0.0.1");
    assert_eq!(url.starts_with("https://"), tls, "{url}");
    let per_worker = slots / 2;
    let workers: Vec<_> = (0..2)
        .map(|k| {
            let mut worker = Command::new(mvc);
            worker
                .arg("--cache")
                .arg(dir.path().join(format!("worker-{k}")))
                .args(["worker", "--connect", &url, "--exit-when-idle", "2"])
                .args(["--token-file", "token", "--slots"])
                .arg(format!("cpu={per_worker}"));
            if let Some(f) = &fingerprint {
                worker.args(["--fingerprint", f]);
            }
            worker
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let (code, cpu) = wait_child(coordinator);
    let wall = started.elapsed();
    assert_eq!(code, 0, "the coordinated run failed");
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    (wall, cpu)
}

fn write_pipeline(dir: &Path, units: u64) {
    let ids: String = (0..units).map(|i| format!("u{i:06}\n")).collect();
    std::fs::write(dir.join("ids.txt"), ids).unwrap();
    std::fs::write(
        dir.join("p.toml"),
        format!("[stage.work]\nkind = \"command\"\nitems_file = \"ids.txt\"\ncmd = '{UNIT_CMD}'\n"),
    )
    .unwrap();
}

fn report(mode: &str, wall: Duration, units: u64, slots: u64, cpu: Duration) {
    let per_unit = wall.as_secs_f64() * slots as f64 / units as f64 - 0.05;
    println!(
        "  {mode:<24} {:>7.2} s  {:>7.1} units/s  {:>6.2} ms/unit beyond the sleep  (mvc CPU {:.2} s)",
        wall.as_secs_f64(),
        units as f64 / wall.as_secs_f64(),
        per_unit * 1e3,
        cpu.as_secs_f64()
    );
}

fn run_child(cmd: &mut Command) -> (i32, Duration) {
    wait_child(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// One blob of `mb` MB up to and down from a coordinator over 127.0.0.1, over plain HTTP
/// or (`tls`) HTTPS with a pinned self-signed certificate: MB/s each way, including hashing,
/// writing and fsync on the receiving side.
fn blob_transfer(mb: u64, tls: bool) -> (f64, f64) {
    use mvc::remote::client::{Client, ClientOptions};
    use mvc::remote::coordinator::{Coordinator, CoordinatorConfig};
    use mvc::remote::protocol::PipelineText;
    use mvc::remote::tls::ServerTls;
    use mvc::store::Store;
    use mvc::store::blobs::BlobStore;
    use mvc::task::Digest;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..mb * 1_000_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &bytes).unwrap();
    let digest = Digest::of(&bytes);
    drop(bytes);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
        let mut config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), None);
        let mut options = ClientOptions::default();
        if tls {
            let certificate =
                ServerTls::self_signed(&dir.path().join("tls"), config.listen).unwrap();
            options.fingerprint = Some(certificate.fingerprint);
            config.tls = Some(certificate);
        }
        let text = PipelineText {
            path: "p.toml".into(),
            text: String::new(),
        };
        let (coord, _rx) = Coordinator::start(config, store, "bench", text)
            .await
            .unwrap();
        let client = Client::with_options(&coord.url(), None, &options).unwrap();
        let started = Instant::now();
        client.put_blob(&digest, &file).await.unwrap();
        let up = mb as f64 / started.elapsed().as_secs_f64();
        let other = BlobStore::new(dir.path().join("other"));
        let started = Instant::now();
        client.get_blob(&digest, &other).await.unwrap();
        let down = mb as f64 / started.elapsed().as_secs_f64();
        println!(
            "blob transfer, {mb} MB over 127.0.0.1 ({}): upload {up:.0} MB/s, download \
             {down:.0} MB/s (verified and fsynced on arrival)",
            if tls { "HTTPS" } else { "HTTP" }
        );
        (up, down)
    })
}
