//! Bad nights: the run lock's lease, crashes (SIGKILL) at each step of the write, and a
//! backfill stopped half way. See src/publish.rs for the order in which a run publishes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::common::{bin, describe, pipeline, run_pipeline, shop, write_ids};

const DATE: &str = "2026-10-31";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// This machine's host name as segmenter records it in the lock.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn write_lock(out: &Path, body: &serde_json::Value) -> PathBuf {
    let dir = out.join(format!("_runs/{DATE}"));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("_lock");
    std::fs::write(&lock, serde_json::to_vec(body).unwrap()).unwrap();
    lock
}

fn lease(pid: u32, host: &str, expires_in_secs: i64) -> serde_json::Value {
    let now = chrono::Utc::now();
    serde_json::json!({
        "format": 1,
        "run_id": "other-run",
        "host": host,
        "pid": pid,
        "started_at": (now - chrono::Duration::seconds(60)).to_rfc3339(),
        "expires_at": (now + chrono::Duration::seconds(expires_in_secs)).to_rfc3339(),
    })
}

fn manifest(out: &Path, date: &str) -> serde_json::Value {
    let bytes = std::fs::read(out.join(format!("_runs/{date}/manifest.json")))
        .unwrap_or_else(|e| panic!("manifest of {date}: {e}"));
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_live_holders_lock_is_not_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // This test process is alive, on this host, with an hour of lease left.
    let lock = write_lock(&out, &lease(std::process::id(), &host(), 3600));
    let p = pipeline(tmp.path(), shop(), &out, "");
    let run = run_pipeline(&p, DATE, &[]);
    assert_eq!(run.status.code(), Some(5), "{}", describe(&run));
    let message = stderr(&run);
    for part in ["_lock", "run other-run", "since", "lease until"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(lock.exists(), "the holder's lock stays");
    assert!(!out.join(format!("_runs/{DATE}/manifest.json")).exists());
}

#[test]
fn a_crashed_holders_lock_is_taken_over() {
    // A process of this host that has exited (waited for, so not a zombie).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let cases = [
        ("dead process on this host", lease(gone_pid, &host(), 3600)),
        (
            "expired lease from another host",
            lease(1, "another-host", -5),
        ),
        (
            "lock of a build before leases, started long ago",
            serde_json::json!({"run_id": "old", "started_at": "2020-01-01T00:00:00+00:00"}),
        ),
    ];
    for (what, body) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let lock = write_lock(&out, &body);
        let p = pipeline(tmp.path(), shop(), &out, "");
        let run = run_pipeline(&p, DATE, &[]);
        assert!(run.status.success(), "{what}: {}", describe(&run));
        assert!(manifest(&out, DATE)["run_id"].is_string(), "{what}");
        assert!(!lock.exists(), "{what}: the lock is released after the run");
    }
}

/// Starts `segmenter run` for `date`, to be held at `point` by the test hook
/// (SEGMENTER_TEST_PAUSE); its stderr is piped.
fn start_held(p: &Path, date: &str, point: &str) -> Child {
    bin()
        .args(["run", "--pipeline", p.to_str().unwrap(), "--date", date])
        .env("RUST_LOG", "warn")
        .env("SEGMENTER_TEST_PAUSE", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// [`start_held`], returning once the run says it is held at `point`.
fn start_paused(p: &Path, date: &str, point: &str) -> Child {
    let mut child = start_held(p, date, point);
    wait_for_line(&mut child, &format!("paused at {point}"), false);
    child
}

/// Holds `segmenter run` for `date` at `point` and kills it there with SIGKILL.
pub(crate) fn run_and_kill_at(p: &Path, date: &str, point: &str) {
    let mut child = start_paused(p, date, point);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Reads the child's stderr (or stdout) until a line contains `needle`; panics if it ends first.
fn wait_for_line(child: &mut Child, needle: &str, stdout: bool) {
    let mut seen = Vec::new();
    let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = if stdout {
        Box::new(BufReader::new(child.stdout.as_mut().unwrap()).lines())
    } else {
        Box::new(BufReader::new(child.stderr.as_mut().unwrap()).lines())
    };
    for line in lines {
        let line = line.unwrap();
        if line.contains(needle) {
            return;
        }
        seen.push(line);
    }
    panic!("the run ended without `{needle}`:\n{}", seen.join("\n"));
}

/// Every file under `dir` (relative path → bytes), with the run id `run_id` taken out of the
/// names so two runs' files can be compared.
fn files(dir: &Path, run_id: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue; // no such directory: no files
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace(run_id, "RUN");
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The published outputs of `out` at DATE: the tables and exports, byte for byte.
fn published(out: &Path) -> Vec<(String, Vec<u8>)> {
    let run_id = manifest(out, DATE)["run_id"].as_str().unwrap().to_string();
    [
        "customer_segments",
        "segment_summary",
        "segment_transitions",
        "exports",
    ]
    .iter()
    .flat_map(|t| {
        files(&out.join(t), &run_id)
            .into_iter()
            .map(move |(n, b)| (format!("{t}/{n}"), b))
    })
    .collect()
}

#[test]
fn a_run_killed_while_writing_leaves_nothing_a_rerun_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let pc = pipeline(&mkdir(tmp.path().join("pc")), shop(), &clean, "");
    let run = run_pipeline(&pc, DATE, &[]);
    assert!(run.status.success(), "{}", describe(&run));
    let expected = published(&clean);

    for point in ["write", "model"] {
        let out = tmp.path().join(format!("killed-{point}"));
        let p = pipeline(
            &mkdir(tmp.path().join(format!("p-{point}"))),
            shop(),
            &out,
            "",
        );
        run_and_kill_at(&p, DATE, point);
        assert!(
            !out.join(format!("_runs/{DATE}/manifest.json")).exists(),
            "{point}: a killed run publishes nothing"
        );
        assert!(
            out.join(format!("_runs/{DATE}/_lock")).exists(),
            "{point}: its lock stays"
        );
        let killed_tables = files(&out.join("customer_segments"), "-");
        assert!(
            !killed_tables.is_empty(),
            "{point}: the killed run had written its tables"
        );

        // The rerun takes the dead process's lock over at once.
        let rerun = run_pipeline(&p, DATE, &[]);
        assert!(rerun.status.success(), "{point}: {}", describe(&rerun));
        assert_eq!(
            published(&out),
            expected,
            "{point}: outputs differ from a clean run's"
        );
        let m = manifest(&out, DATE);
        let run_id = m["run_id"].as_str().unwrap();
        for (table, listed) in m["outputs"].as_object().unwrap() {
            for url in listed.as_array().unwrap() {
                let url = url.as_str().unwrap();
                assert!(
                    url.contains(run_id),
                    "{point}: {table}: {url} is not this run's"
                );
            }
        }
        // The killed attempt's files are gone from every directory.
        for dir in ["customer_segments", "segment_summary", "exports", "_models"] {
            for (name, _) in files(&out.join(dir), run_id) {
                assert!(name.contains("RUN"), "{point}: {dir}/{name} left behind");
            }
        }
        // The next night warm-starts from the model the manifest names.
        let model = m["clustering"]["model"].as_str().unwrap();
        assert!(model.contains(run_id), "{model}");
        assert!(out.join(model).exists(), "{model}");
    }
}

#[test]
fn a_stopped_backfill_resumes_without_running_a_date_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let dates = [
        "2026-10-27",
        "2026-10-28",
        "2026-10-29",
        "2026-10-30",
        "2026-10-31",
    ];
    let backfill = |extra: &[&str]| {
        let mut cmd = bin();
        cmd.args([
            "run",
            "--pipeline",
            p.to_str().unwrap(),
            "--from",
            dates[0],
            "--to",
            dates[4],
        ])
        .args(extra)
        .env("RUST_LOG", "warn");
        cmd
    };
    let mut child = backfill(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, &format!("published {}", dates[2]), true);
    child.kill().unwrap();
    child.wait().unwrap();
    let first: Vec<String> = dates[..3]
        .iter()
        .map(|d| manifest(&out, d)["run_id"].as_str().unwrap().to_string())
        .collect();

    let resumed = backfill(&[]).output().unwrap();
    assert!(resumed.status.success(), "{}", describe(&resumed));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        stdout.contains("2 published, 3 skipped, 0 failed"),
        "{stdout}"
    );
    for (d, run_id) in dates.iter().zip(&first) {
        assert!(stdout.contains(&format!("skipped {d}")), "{stdout}");
        assert_eq!(
            manifest(&out, d)["run_id"].as_str().unwrap(),
            run_id,
            "{d} ran twice"
        );
    }
    for d in &dates[3..] {
        assert!(stdout.contains(&format!("published {d}")), "{stdout}");
    }

    // --force runs published dates again; a failing date stops the backfill with its exit code.
    std::fs::write(
        out.join(format!("_runs/{}/_lock", dates[1])),
        serde_json::to_vec(&lease(std::process::id(), &host(), 3600)).unwrap(),
    )
    .unwrap();
    let forced = backfill(&["--force"]).output().unwrap();
    assert_eq!(forced.status.code(), Some(5), "{}", describe(&forced));
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(
        stdout.contains(&format!("published {}", dates[0])),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("failed {}", dates[1])), "{stdout}");
    assert!(
        stdout.contains("1 published, 0 skipped, 1 failed, 3 not run"),
        "{stdout}"
    );
}

fn mkdir(dir: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_running_holder_renews_its_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // The shortest lease allowed: renewed every 10 s.
    let p = pipeline(tmp.path(), shop(), &out, "lock_lease_seconds = 30");
    let mut child = start_paused(&p, DATE, "write");
    let lock = out.join(format!("_runs/{DATE}/_lock"));
    let child_pid = child.id();
    let expiry = || -> String {
        let body: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        assert_eq!(body["pid"].as_u64(), Some(u64::from(child_pid)), "{body}");
        body["expires_at"].as_str().unwrap().to_string()
    };
    let before = expiry();
    std::thread::sleep(std::time::Duration::from_secs(12));
    let after = expiry();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(after > before, "lease not renewed: {before} then {after}");
}

/// Copies `from` (a directory tree) into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn a_run_on_top_of_the_previous_release_keeps_its_segment_ids() {
    // Published by the build before run-scoped models (its model at the old fixed path).
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/upgrade/778ccb0");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    copy_tree(&fixture, &out);
    let before = manifest(&out, "2026-10-30");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let run = run_pipeline(&p, DATE, &[]);
    assert!(run.status.success(), "{}", describe(&run));
    let after = manifest(&out, DATE);
    let c = &after["clustering"];
    assert_eq!(c["previous_run_date"], "2026-10-30", "{c:#}");
    assert_eq!(c["mode"], "warm_start", "{c:#}");
    let ids = |m: &serde_json::Value| -> Vec<(i64, String)> {
        let mut v: Vec<(i64, String)> = m["clustering"]["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_i64().unwrap(),
                    s["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&after), ids(&before), "segment ids and names kept");
    assert!(c["new_segments"].as_array().unwrap().is_empty(), "{c:#}");
    // The old release's files of its own date are untouched.
    assert!(out
        .join("_models/run_date=2026-10-30/segment_model.json")
        .exists());
}

#[test]
fn a_stage_past_a_fail_limit_stops_the_run_with_exit_6() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(
        tmp.path(),
        shop(),
        &out,
        "[limits]\non_exceeded = \"fail\"\nwrite = 1",
    );
    // The write stage stalls (held by the test hook) until the limit stops it.
    let started = std::time::Instant::now();
    let mut child = start_held(&p, DATE, "write");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(180) {
            child.kill().ok();
            panic!("the limit did not stop the stalled run");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(
        err.contains("limits.write") && err.contains("nothing published"),
        "{err}"
    );
    assert!(!out.join(format!("_runs/{DATE}/manifest.json")).exists());
    assert!(
        !out.join(format!("_runs/{DATE}/_lock")).exists(),
        "lock released: {err}"
    );
}

#[test]
fn limits_set_to_warn_are_logged_and_recorded_in_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(
        tmp.path(),
        shop(),
        &out,
        "[limits]\nfeatures = 0.001\nrun = 0.002\nclustering = 3600",
    );
    let run = run_pipeline(&p, DATE, &[]);
    assert!(run.status.success(), "{}", describe(&run));
    assert!(
        stderr(&run).contains("time limit exceeded"),
        "{}",
        describe(&run)
    );
    let m = manifest(&out, DATE);
    let mut stages: Vec<&str> = m["limits_exceeded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    stages.sort();
    assert_eq!(stages, ["features", "run"], "{:#}", m["limits_exceeded"]);
    let features = m["limits_exceeded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stage"] == "features")
        .unwrap();
    assert!(features["seconds"].as_f64().unwrap() > 0.001);
    assert_eq!(features["limit_seconds"].as_f64(), Some(0.001));
}

#[test]
fn status_lists_published_dates_and_metrics_files_tell_monitoring() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let prom = tmp.path().join("segmenter.prom");
    let ok = run_pipeline(&p, DATE, &["--metrics-file", prom.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", describe(&ok));
    let text = std::fs::read_to_string(&prom).unwrap();
    let customers = manifest(&out, DATE)["customers"].as_u64().unwrap();
    for line in [
        format!("segmenter_run_success{{run_date=\"{DATE}\"}} 1"),
        format!("segmenter_customers{{run_date=\"{DATE}\"}} {customers}"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    assert!(text.contains("segmenter_stage_seconds{"), "{text}");

    // A run that fails (the date is locked by a live run) still tells monitoring.
    let d2 = "2026-10-30";
    let dir = out.join(format!("_runs/{d2}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut live = lease(std::process::id(), &host(), 3600);
    live["run_id"] = "someone".into();
    std::fs::write(dir.join("_lock"), serde_json::to_vec(&live).unwrap()).unwrap();
    let locked = run_pipeline(&p, d2, &["--metrics-file", prom.to_str().unwrap()]);
    assert_eq!(locked.status.code(), Some(5), "{}", describe(&locked));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains(&format!("segmenter_run_success{{run_date=\"{d2}\"}} 0")),
        "{text}"
    );
    assert!(
        text.contains(&format!("segmenter_run_exit_code{{run_date=\"{d2}\"}} 5")),
        "{text}"
    );

    let status = crate::common::segmenter(&["status", "--pipeline", p.to_str().unwrap()]);
    assert!(status.status.success(), "{}", describe(&status));
    let table = String::from_utf8_lossy(&status.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with(DATE))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains(&customers.to_string()) && row.contains("first_fit"),
        "{table}"
    );
    assert!(table.contains(&format!("{d2}: locked")), "{table}");
}

#[test]
fn a_manifest_from_a_newer_release_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let first = run_pipeline(&p, "2026-10-30", &[]);
    assert!(first.status.success(), "{}", describe(&first));
    let path = out.join("_runs/2026-10-30/manifest.json");
    let mut m = manifest(&out, "2026-10-30");
    assert_eq!(m["format"], 1, "manifests carry their format");
    m["format"] = 99.into();
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let next = run_pipeline(&p, DATE, &["--set", "quality.max_row_drop=0.01"]);
    assert!(next.status.success(), "{}", describe(&next));
    assert!(
        stderr(&next).contains("newer release"),
        "{}",
        describe(&next)
    );
    let c = &manifest(&out, DATE)["clustering"];
    assert_eq!(
        c["mode"], "first_fit",
        "no warm start from a manifest it cannot read: {c:#}"
    );
}

#[test]
fn retention_removes_old_exports_and_lost_attempts_but_keeps_published_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = pipeline(
        tmp.path(),
        shop(),
        &out,
        "[retention]\nexports_days = 2\nattempts_days = 2",
    );
    let files_in = |dir: &str| files(&out.join(dir), "-").len();
    let first = run_pipeline(&p, "2026-10-27", &[]);
    assert!(first.status.success(), "{}", describe(&first));
    // 2026-10-28: an attempt killed while writing whose date never ran again (its lock gone
    // too, as after a lease that lapsed long ago).
    run_and_kill_at(&p, "2026-10-28", "write");
    std::fs::remove_file(out.join("_runs/2026-10-28/_lock")).unwrap();
    assert!(files_in("customer_segments/run_date=2026-10-28") > 0);
    for d in ["2026-10-30", "2026-10-31"] {
        let run = run_pipeline(&p, d, &[]);
        assert!(run.status.success(), "{}", describe(&run));
    }
    // Counted back from 2026-10-31: dates before 2026-10-29 are past both limits.
    assert_eq!(
        files_in("exports/run_date=2026-10-27"),
        0,
        "old exports removed"
    );
    assert_eq!(
        files_in("customer_segments/run_date=2026-10-28"),
        0,
        "lost attempt removed"
    );
    assert_eq!(
        files_in("exports/run_date=2026-10-28"),
        0,
        "lost attempt removed"
    );
    assert_eq!(
        files_in("customer_segments/run_date=2026-10-27"),
        1,
        "published tables kept"
    );
    assert_eq!(
        files_in("_models/run_date=2026-10-27"),
        2,
        "published segment model and scoring models (a refit night) kept"
    );
    assert!(
        files_in("exports/run_date=2026-10-30") > 0,
        "recent exports kept"
    );
}

#[test]
fn erased_customers_leave_every_output_and_the_kept_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = tmp.path().join("erasures");
    let p = pipeline(tmp.path(), shop(), &out, "");
    let first = run_pipeline(&p, "2026-10-30", &[]);
    assert!(first.status.success(), "{}", describe(&first));
    // Three customers with an e-mail in yesterday's per-segment exports.
    let mut erased = Vec::new();
    for (_, bytes) in files(&out.join("exports"), "-")
        .into_iter()
        .filter(|(name, _)| name.contains("/segment_"))
    {
        for line in String::from_utf8(bytes).unwrap().lines().skip(1) {
            let mut fields = line.split(',');
            let (id, email) = (fields.next().unwrap(), fields.next().unwrap_or(""));
            if !email.is_empty() && erased.len() < 3 {
                erased.push(id.to_string());
            }
        }
    }
    assert_eq!(erased.len(), 3, "the test shop has opted-in customers");
    write_ids(
        &list.join("part-0.parquet"),
        &[erased.clone(), vec!["never-a-customer".into()]].concat(),
    );

    let rows_of_erased = files(&out.join("exports"), "-")
        .iter()
        .flat_map(|(_, b)| {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| erased.iter().any(|id| l.starts_with(&format!("{id},"))))
        .count();
    assert!(rows_of_erased >= 3);
    let set = format!("privacy.erased_customers={}", list.display());
    let next = run_pipeline(&p, DATE, &["--set", &set]);
    assert!(next.status.success(), "{}", describe(&next));
    let m = manifest(&out, DATE);
    assert_eq!(m["privacy"]["erased_ids_listed"], 4, "{:#}", m["privacy"]);
    assert_eq!(m["privacy"]["customers_removed"], 3, "{:#}", m["privacy"]);
    // Their rows in yesterday's CSVs (their segment's, and retention or prospects if they
    // were selected there); yesterday's customer-match list (hashes, no ids) is deleted.
    assert_eq!(
        m["privacy"]["export_rows_removed"], rows_of_erased,
        "{:#}",
        m["privacy"]
    );
    assert_eq!(m["privacy"]["customer_match_lists_deleted"], 1);
    assert!(!files(&out.join("exports/run_date=2026-10-30"), "-")
        .iter()
        .any(|(name, _)| name.starts_with("customer_match")));
    assert!(files(&out.join(format!("exports/run_date={DATE}")), "-")
        .iter()
        .any(|(name, _)| name.starts_with("customer_match")));
    // This run's tables do not have them (nor its transitions: they are not "customers who
    // left"), and no export, of this run or kept from yesterday, mentions them.
    for table in ["customer_segments", "segment_transitions"] {
        let batch = crate::common::read_table(&out.join(format!("{table}/run_date={DATE}")));
        let ids = batch.column_by_name("customer_id").unwrap();
        let ids = datafusion::arrow::array::AsArray::as_string::<i32>(ids.as_ref());
        for id in ids.iter().flatten() {
            assert!(!erased.iter().any(|e| e == id), "{table} still has {id}");
        }
        if table == "customer_segments" {
            assert!(batch.num_rows() > 500, "the others are still there");
        }
    }
    for (name, bytes) in files(&out.join("exports"), "-") {
        let text = String::from_utf8_lossy(&bytes);
        for id in &erased {
            assert!(
                !text.lines().any(|l| l.starts_with(&format!("{id},"))),
                "exports/{name} still has {id}"
            );
        }
    }
    let before: usize = files(&out.join("exports/run_date=2026-10-30"), "-")
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).lines().count() - 1)
        .sum();
    assert!(before > 0);
}
