//! Command line and pipeline-file errors: exit code 2 with a message naming the key or path.

use crate::common::{describe, pipeline, run_pipeline, segmenter, shop};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_key_exits_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(
        tmp.path(),
        shop(),
        &tmp.path().join("out"),
        "[clustering]\nclusters = 5\n",
    );
    let out = run_pipeline(&p, "2026-10-31", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("clusters"), "{}", describe(&out));
}

#[test]
fn missing_input_exits_2_naming_key_and_path() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), shop(), &tmp.path().join("out"), "");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        &format!("{}/orders/", shop().display()),
        &format!("{}/no-such-dir/", tmp.path().display()),
    );
    std::fs::write(&p, text).unwrap();
    let out = run_pipeline(&p, "2026-10-31", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("inputs.orders") && err.contains("no-such-dir"),
        "{}",
        describe(&out)
    );
    assert!(
        !tmp.path().join("out/_runs").exists()
            || !tmp
                .path()
                .join("out/_runs/2026-10-31/manifest.json")
                .exists()
    );
}

#[test]
fn missing_pipeline_file_exits_2() {
    let out = segmenter(&[
        "run",
        "--pipeline",
        "/definitely/not/here.toml",
        "--date",
        "2026-10-31",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("/definitely/not/here.toml"));
}

#[test]
fn malformed_toml_and_bad_values_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, "[inputs\norders = 1").unwrap();
    let out = run_pipeline(&p, "2026-10-31", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    let p = pipeline(tmp.path(), shop(), &tmp.path().join("out"), "");
    let out = segmenter(&[
        "run",
        "--pipeline",
        p.to_str().unwrap(),
        "--date",
        "2026-10-31",
        "--set",
        "clustering.k=0",
        "--set",
        "model.churn_high=1.5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("clustering.k") && err.contains("model.churn_high"),
        "{}",
        describe(&out)
    );
}

#[test]
fn missing_env_var_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        "[inputs]\norders = \"s3://${SEGMENTER_TEST_UNSET_BUCKET}/o/\"\n[output]\nroot = \"out\"\n",
    )
    .unwrap();
    let out = run_pipeline(&p, "2026-10-31", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("SEGMENTER_TEST_UNSET_BUCKET"),
        "{}",
        describe(&out)
    );
}

#[test]
fn bad_usage_exits_2() {
    let out = segmenter(&["run", "--pipeline", "x.toml", "--date", "31/10/2026"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = segmenter(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn held_lock_exits_5() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(out_dir.join("_runs/2026-10-31")).unwrap();
    std::fs::write(
        out_dir.join("_runs/2026-10-31/_lock"),
        "{\"run_id\":\"other\"}",
    )
    .unwrap();
    let p = pipeline(tmp.path(), shop(), &out_dir, "");
    let out = run_pipeline(&p, "2026-10-31", &[]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(stderr(&out).contains("_lock"), "{}", describe(&out));
    assert!(!out_dir.join("_runs/2026-10-31/manifest.json").exists());
}

#[test]
fn demo_generates_runs_and_prints_the_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = segmenter(&["demo", "--dir", dir.to_str().unwrap(), "--customers", "800"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("manifest:") && stdout.contains("segment"),
        "{stdout}"
    );
    assert!(dir.join("out/_runs/2026-10-31/manifest.json").exists());
    assert!(dir.join("data/truth/customers.parquet").exists());
    // one table line per segment (k = 8 in pipelines/demo.toml), under the header
    let rows = stdout
        .lines()
        .skip_while(|l| !(l.contains("segment") && l.contains("mean churn")))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(rows, 8, "{stdout}");
}

#[test]
fn backfill_runs_every_date_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let p = pipeline(tmp.path(), shop(), &out_dir, "");
    let out = segmenter(&[
        "run",
        "--pipeline",
        p.to_str().unwrap(),
        "--from",
        "2026-10-29",
        "--to",
        "2026-10-31",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let order: Vec<usize> = ["2026-10-29", "2026-10-30", "2026-10-31"]
        .iter()
        .map(|d| {
            assert!(
                out_dir.join(format!("_runs/{d}/manifest.json")).exists(),
                "{d}"
            );
            stdout
                .find(&format!("published {d}"))
                .unwrap_or_else(|| panic!("{d}: {stdout}"))
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {stdout}"
    );

    let reversed = segmenter(&[
        "run",
        "--pipeline",
        p.to_str().unwrap(),
        "--from",
        "2026-10-31",
        "--to",
        "2026-10-29",
    ]);
    assert_eq!(reversed.status.code(), Some(2), "{}", describe(&reversed));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), shop(), &tmp.path().join("out"), "");
    let out = crate::common::bin()
        .args([
            "run",
            "--pipeline",
            p.to_str().unwrap(),
            "--date",
            "2026-10-31",
        ])
        .env("RUST_LOG", "info")
        .env("SEGMENTER_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["stage"] == "models"),
        "{stderr}"
    );
}

/// At a terminal (a pseudo-terminal from util-linux `script`), a progress line names the
/// running stage; with JSON logs there is none. Skipped where `script` is missing.
#[test]
fn progress_is_shown_at_a_terminal_and_never_in_json_logs() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `script` command to run segmenter in a pseudo-terminal");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), shop(), &tmp.path().join("out"), "");
    let at_terminal = |json: bool| {
        let typescript = tmp.path().join(format!("typescript-{json}"));
        let command = format!(
            "{} run --pipeline {} --date 2026-10-31",
            env!("CARGO_BIN_EXE_segmenter"),
            p.display()
        );
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec", &command]).arg(&typescript);
        if json {
            cmd.env("SEGMENTER_LOG_FORMAT", "json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned()
    };
    let shown = at_terminal(false);
    assert!(shown.contains("2026-10-31 features ("), "{shown}");
    let json = at_terminal(true);
    assert!(!json.contains("2026-10-31 features ("), "{json}");
}
