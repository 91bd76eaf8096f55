//! The deployment examples under deploy/ (cron, systemd, Airflow, Kubernetes) parse, and the
//! command line each one runs is one segmenter accepts: it is run against a test shop, with
//! only the pipeline file and the metrics path replaced by the test's own.

use std::collections::BTreeMap;

use crate::common::{bin, describe, pipeline, shop};

#[test]
fn every_deployment_example_parses_and_runs() {
    let Some(python) = crate::common::python() else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let parsed = std::process::Command::new(python)
        .arg(format!("{root}/scripts/deploy_commands.py"))
        .arg(format!("{root}/deploy"))
        .arg("2026-10-31")
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", describe(&parsed));
    let commands: BTreeMap<String, Vec<String>> = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(
        commands.keys().collect::<Vec<_>>(),
        ["airflow", "cron", "kubernetes", "systemd"]
    );
    for (name, args) in commands {
        let tmp = tempfile::tempdir().unwrap();
        let p = pipeline(tmp.path(), shop(), &tmp.path().join("out"), "");
        let metrics = tmp.path().join("segmenter.prom");
        let mut replaced = args.clone();
        for i in 1..replaced.len() {
            match replaced[i - 1].as_str() {
                "--pipeline" => replaced[i] = p.to_str().unwrap().into(),
                "--metrics-file" => replaced[i] = metrics.to_str().unwrap().into(),
                _ => {}
            }
        }
        let out = bin()
            .args(&replaced)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {args:?}\n{}", describe(&out));
        if args.iter().any(|a| a == "--metrics-file") {
            let text = std::fs::read_to_string(&metrics).unwrap();
            assert!(text.contains("segmenter_run_success{"), "{name}: {text}");
        }
    }
}
