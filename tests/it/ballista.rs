//! `engine.kind = "ballista"` (feature `ballista`): a real Ballista scheduler and executor,
//! started as `segmenter scheduler` and `segmenter executor` processes on 127.0.0.1, run the
//! generated shop's SQL; the published tables equal those of a local run byte for byte.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    bin, describe, manifest, pipeline, published, read_table, run_pipeline, shop, write_ids,
};

const D: &str = "2026-10-31";

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "segmenter-it-ballista-{tag}-{}",
        std::process::id()
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped (a failing test leaves no cluster behind).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// A scheduler and one executor of this build on loopback.
struct Cluster {
    _scheduler: Process,
    executors: Vec<Process>,
    port: u16,
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let port = free_port();
        let log = std::fs::File::create(dir.join("scheduler.log")).unwrap();
        let scheduler = Command::new(env!("CARGO_BIN_EXE_segmenter"))
            .args([
                "scheduler",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--external-host",
                "127.0.0.1",
                "--executor-timeout-seconds",
                "15",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the scheduler");
        let mut cluster = Cluster {
            _scheduler: Process(scheduler),
            executors: Vec::new(),
            port,
            dir: dir.to_path_buf(),
        };
        wait_for_port(port);
        cluster.add_executor();
        cluster
    }

    fn add_executor(&mut self) {
        let n = self.executors.len();
        let work = self.dir.join(format!("executor-{n}"));
        std::fs::create_dir_all(&work).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("executor-{n}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_segmenter"))
            .args([
                "executor",
                "--scheduler",
                &format!("127.0.0.1:{}", self.port),
                "--bind-host",
                "127.0.0.1",
                "--external-host",
                "127.0.0.1",
                "--port",
                &free_port().to_string(),
                "--grpc-port",
                &free_port().to_string(),
                "--cores",
                "2",
                "--memory-limit",
                "1GiB",
                "--work-dir",
                work.to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start an executor");
        self.executors.push(Process(child));
        // Registered once the scheduler's REST API lists it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while executors_listed(self.port) <= n {
            assert!(
                Instant::now() < deadline,
                "executor {n} did not register:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "log") {
                let log = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                text.push_str(&format!("--- {}\n", p.display()));
                for line in tail.iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the scheduler did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The scheduler's REST API's answer to `GET path` (empty when it does not answer).
fn api(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    s.read_to_string(&mut body).ok();
    body
}

/// How many executors the scheduler lists.
fn executors_listed(port: u16) -> usize {
    api(port, "/api/executors").matches("\"last_seen\"").count()
}

fn cluster_pipeline(dir: &Path, root: &Path, url: &str) -> PathBuf {
    let sub = dir.join(root.file_name().unwrap());
    std::fs::create_dir_all(&sub).unwrap();
    pipeline(
        &sub,
        shop(),
        root,
        &format!("[engine]\nkind = \"ballista\"\nurl = \"{url}\"\n"),
    )
}

#[test]
fn a_run_on_a_ballista_cluster_publishes_what_a_local_run_does() {
    let dir = tempdir("equal");
    let cluster = Cluster::start(&dir);
    let (local, remote) = (dir.join("local"), dir.join("remote"));
    std::fs::create_dir_all(dir.join("pl")).unwrap();
    let pl = pipeline(&dir.join("pl"), shop(), &local, "");
    let out = run_pipeline(&pl, D, &[]);
    assert!(out.status.success(), "local: {}", describe(&out));

    let pr = cluster_pipeline(&dir, &remote, &cluster.url());
    let out = run_pipeline(&pr, D, &[]);
    assert!(
        out.status.success(),
        "cluster: {}\n{}",
        describe(&out),
        cluster.logs()
    );
    let (x, y) = (published(&local, D), published(&remote, D));
    assert_eq!(
        x.iter().map(|f| &f.0).collect::<Vec<_>>(),
        y.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in x.iter().zip(&y) {
        assert!(
            a == b,
            "{name} differs between the local and the cluster run"
        );
    }
    // The queries really ran on the cluster: the scheduler lists the run's jobs.
    let jobs = api(cluster.port, "/api/jobs");
    let ran = jobs.matches("\"job_name\":\"segmenter\"").count();
    assert!(
        ran >= 5,
        "{ran} jobs named segmenter on the scheduler:\n{jobs}"
    );
    // Nothing of the run's scratch tables is left behind.
    let scratch = remote.join("_scratch");
    assert!(
        !scratch.exists()
            || std::fs::read_dir(&scratch).unwrap().all(|e| {
                std::fs::read_dir(e.unwrap().path())
                    .unwrap()
                    .next()
                    .is_none()
            }),
        "scratch files left under {}",
        scratch.display()
    );
    drop(cluster);
}

#[test]
fn an_incremental_night_on_a_cluster_publishes_what_a_local_night_does() {
    use crate::incremental::{add_day, shop_until_d, D as DAY0, D1 as DAY1};
    let dir = tempdir("night");
    let cluster = Cluster::start(&dir);
    let data = shop_until_d(&dir);
    let (local, remote) = (dir.join("local"), dir.join("remote"));
    std::fs::create_dir_all(dir.join("pl")).unwrap();
    let pl = pipeline(&dir.join("pl"), &data, &local, "");
    let sub = dir.join("pr");
    std::fs::create_dir_all(&sub).unwrap();
    let engine = format!(
        "[engine]\nkind = \"ballista\"\nurl = \"{}\"\n",
        cluster.url()
    );
    let pr = pipeline(&sub, &data, &remote, &engine);
    // D (the refit night), then D+1 after the next day's files arrive: the night reuses D's
    // state, base and stored models, and scores the day's visitors, buyers and sign-ups
    // (those with neither orders nor sessions too).
    for (day, add) in [(DAY0, false), (DAY1, true)] {
        if add {
            add_day(&data, DAY1);
        }
        for (p, what) in [(&pl, "local"), (&pr, "cluster")] {
            let out = run_pipeline(p, day, &[]);
            assert!(
                out.status.success(),
                "{what} {day}: {}\n{}",
                describe(&out),
                cluster.logs()
            );
        }
        let (x, y) = (published(&local, day), published(&remote, day));
        assert_eq!(x.len(), y.len());
        for ((name, a), (_, b)) in x.iter().zip(&y) {
            assert!(
                a == b,
                "{day}: {name} differs between the local and the cluster run"
            );
        }
    }
    let m = manifest(&remote, DAY1);
    assert_eq!(m["state"]["mode"], "incremental", "{:#}", m["state"]);
    assert_eq!(
        m["state"]["base"]["features_kept"], true,
        "{:#}",
        m["state"]
    );
}

#[test]
fn erased_customers_leave_a_cluster_run_as_they_leave_a_local_one() {
    let dir = tempdir("erased");
    let cluster = Cluster::start(&dir);
    // Three customers of the shop and an id it never had.
    let customers = read_table(&shop().join("customers"));
    let ids = datafusion::arrow::array::AsArray::as_string::<i32>(
        customers.column_by_name("customer_id").unwrap().as_ref(),
    )
    .clone();
    let mut erased: Vec<String> = [0, 7, 42]
        .iter()
        .map(|&i| ids.value(i).to_string())
        .collect();
    erased.push("never-a-customer".into());
    let list = dir.join("erasures");
    write_ids(&list.join("part-0.parquet"), &erased);
    let privacy = format!("[privacy]\nerased_customers = \"{}\"\n", list.display());

    let (local, remote) = (dir.join("local"), dir.join("remote"));
    std::fs::create_dir_all(dir.join("pl")).unwrap();
    let pl = pipeline(&dir.join("pl"), shop(), &local, &privacy);
    let out = run_pipeline(&pl, D, &[]);
    assert!(out.status.success(), "local: {}", describe(&out));
    let sub = dir.join("pr");
    std::fs::create_dir_all(&sub).unwrap();
    let engine = format!(
        "[engine]\nkind = \"ballista\"\nurl = \"{}\"\n",
        cluster.url()
    );
    let pr = pipeline(&sub, shop(), &remote, &format!("{privacy}{engine}"));
    let out = run_pipeline(&pr, D, &[]);
    assert!(
        out.status.success(),
        "cluster: {}\n{}",
        describe(&out),
        cluster.logs()
    );
    let (x, y) = (published(&local, D), published(&remote, D));
    assert_eq!(x.len(), y.len());
    for ((name, a), (_, b)) in x.iter().zip(&y) {
        assert!(
            a == b,
            "{name} differs between the local and the cluster run"
        );
    }
    let (ml, mr) = (manifest(&local, D), manifest(&remote, D));
    assert_eq!(ml["privacy"], mr["privacy"]);
    assert_eq!(mr["privacy"]["erased_ids_listed"], 4, "{:#}", mr["privacy"]);
    assert_eq!(mr["privacy"]["customers_removed"], 3, "{:#}", mr["privacy"]);
    let segments = read_table(&remote.join(format!("customer_segments/run_date={D}")));
    let kept = datafusion::arrow::array::AsArray::as_string::<i32>(
        segments.column_by_name("customer_id").unwrap().as_ref(),
    )
    .clone();
    assert!(segments.num_rows() > 500);
    for id in kept.iter().flatten() {
        assert!(!erased.iter().any(|e| e == id), "{id} was erased");
    }
}

#[test]
fn an_unreachable_scheduler_is_exit_4_naming_the_url_and_publishes_nothing() {
    let dir = tempdir("unreachable");
    let root = dir.join("out");
    let url = format!("df://127.0.0.1:{}", free_port());
    let p = cluster_pipeline(&dir, &root, &url);
    let started = Instant::now();
    let out = run_pipeline(&p, D, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&url),
        "the message must name {url}: {stderr}"
    );
    assert!(!root.join(format!("_runs/{D}/manifest.json")).exists());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn an_executor_killed_mid_run_is_survived_or_exit_4_with_nothing_published() {
    let dir = tempdir("killed");
    let mut cluster = Cluster::start(&dir);
    cluster.add_executor();
    let root = dir.join("out");
    let p = cluster_pipeline(&dir, &root, &cluster.url());
    let mut run = bin()
        .args(["run", "--pipeline", p.to_str().unwrap(), "--date", D])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the first executor once the run has sent its first queries.
    std::thread::sleep(Duration::from_secs(3));
    let first = cluster.executors.remove(0);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            run.kill().ok();
            panic!(
                "the run did not end after its executor died\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = run.wait_with_output().unwrap();
    let is_published = root.join(format!("_runs/{D}/manifest.json")).exists();
    match status.code() {
        Some(0) => {
            assert!(is_published, "exit 0 but nothing published");
            // Survived: what it published is what a local run publishes.
            let local = dir.join("local");
            std::fs::create_dir_all(dir.join("pl")).unwrap();
            let pl = pipeline(&dir.join("pl"), shop(), &local, "");
            let out = run_pipeline(&pl, D, &[]);
            assert!(out.status.success(), "local: {}", describe(&out));
            assert!(
                published(&local, D) == published(&root, D),
                "the run that survived its executor published other outputs than a local run"
            );
        }
        Some(4) => assert!(!is_published, "exit 4 but {D} was published"),
        other => panic!(
            "exit {other:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        ),
    }
}
