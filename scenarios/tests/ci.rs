//! `poplab run` for CI: a file that does not parse fails the run in every output mode
//! (`--json` with a structured `{file, line, key, message}` entry), and `--junit FILE`
//! writes JUnit XML that a schema validator accepts, one testcase per scenario, each
//! broken expectation with the file and line it is written on.
//!
//! xmllint missing skips the schema test (with the reason printed), unless
//! `POPBRIDGE_REQUIRE_PEERS=1` (CI), in which case it fails.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use quick_xml::events::Event;

#[allow(dead_code)]
mod common;
use common::{poplab, require_tool, root, wrong_copy as wrong};

/// A file that does not parse: an unknown key on line 8.
fn broken(dir: &Path) -> PathBuf {
    let path = dir.join("typo.toml");
    std::fs::write(
        &path,
        "description = \"typo\"\n\n[[pop3.mailbox]]\nuser = \"info\"\n\n[[pop3.mailbox.message]]\nlabel = \"a\"\nsubjet = \"hi\"\n",
    )
    .unwrap();
    path
}

#[test]
fn a_broken_file_fails_the_run_in_every_output_mode() {
    let dir = tempfile::tempdir().unwrap();
    let bad = broken(dir.path());
    let good = root().join("cases/basic-delivery.toml");
    let (bad, good) = (bad.to_str().unwrap(), good.to_str().unwrap());
    let xml = dir.path().join("out.xml");
    let xml = xml.to_str().unwrap();
    for mode in [
        &[][..],
        &["--json"][..],
        &["--junit", xml][..],
        &["--json", "--junit", xml][..],
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(mode);
        args.extend([good, bad]);
        let (code, out, err) = poplab(&args);
        assert_eq!(code, Some(2), "{mode:?}: {out}{err}");
        if mode.contains(&"--json") {
            let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(doc["failed"], 1, "{out}");
            assert_eq!(doc["passed"], 1, "{out}");
            assert_eq!(
                doc["invalid"],
                serde_json::json!([{
                    "file": bad,
                    "line": 8,
                    "key": "pop3.mailbox[0].message[0].subjet",
                    "message": doc["invalid"][0]["message"],
                }]),
                "{out}"
            );
            let message = doc["invalid"][0]["message"].as_str().unwrap();
            assert!(message.starts_with("unknown key \"subjet\""), "{message}");
        }
    }
}

/// Every case under `cases/` plus a folder holding a broken file and a failing one, run
/// once with `--junit` for every test of this binary: (exit code, XML, the folder).
fn junit_run() -> &'static (Option<i32>, String, PathBuf) {
    static RUN: OnceLock<(Option<i32>, String, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let extra = dir.join("extra");
        std::fs::create_dir(&extra).unwrap();
        broken(&extra);
        wrong(&extra);
        let xml = dir.join("out.xml");
        let cases = root().join("cases");
        let (code, out, err) = poplab(&[
            "run",
            "--junit",
            xml.to_str().unwrap(),
            cases.to_str().unwrap(),
            extra.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(&xml)
            .unwrap_or_else(|e| panic!("no JUnit file ({e}): {out}{err}"));
        (code, text, dir)
    })
}

#[test]
fn the_junit_report_of_every_case_validates_against_the_junit_schema() {
    let (code, _, dir) = junit_run();
    assert_eq!(*code, Some(2), "a broken file makes the exit 2");
    if !require_tool("xmllint") {
        return;
    }
    let xsd = root().join("tests/junit.xsd");
    let out = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&xsd)
        .arg(dir.join("out.xml"))
        .output()
        .expect("run xmllint");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xmllint refused the report: {said}");
    assert!(said.contains("validates"), "{said}");

    // The schema is not a rubber stamp: a testcase without a name is refused.
    let bad = dir.join("bad.xml");
    std::fs::write(
        &bad,
        "<testsuites><testsuite name=\"s\" tests=\"1\"><testcase classname=\"c\"/></testsuite></testsuites>",
    )
    .unwrap();
    let out = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&xsd)
        .arg(&bad)
        .output()
        .expect("run xmllint");
    assert!(!out.status.success());
}

/// A testcase as read back: (suite, name, failure message and text, skipped).
#[derive(Debug, Default, Clone)]
struct Case {
    suite: String,
    name: String,
    failure: Option<(String, String)>,
    skipped: bool,
}

fn attr(e: &quick_xml::events::BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .filter_map(Result::ok)
        .find(|a| a.key.as_ref() == name.as_bytes())
        .map(|a| a.unescape_value().unwrap().into_owned())
}

fn testcases(xml: &str) -> Vec<Case> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut out, mut suite, mut in_failure) = (Vec::new(), String::new(), false);
    let mut current: Option<Case> = None;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"testsuite" => {
                suite = attr(&e, "name").unwrap();
            }
            Event::Start(e) if e.name().as_ref() == b"testcase" => {
                current = Some(Case {
                    suite: suite.clone(),
                    name: attr(&e, "name").unwrap(),
                    ..Case::default()
                });
            }
            Event::Empty(e) if e.name().as_ref() == b"testcase" => out.push(Case {
                suite: suite.clone(),
                name: attr(&e, "name").unwrap(),
                ..Case::default()
            }),
            Event::End(e) if e.name().as_ref() == b"testcase" => out.extend(current.take()),
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"failure" => {
                in_failure = true;
                if let Some(c) = current.as_mut() {
                    c.failure = Some((attr(&e, "message").unwrap_or_default(), String::new()));
                }
            }
            Event::End(e) if e.name().as_ref() == b"failure" => in_failure = false,
            Event::Text(t) if in_failure => {
                if let Some((_, text)) = current.as_mut().and_then(|c| c.failure.as_mut()) {
                    text.push_str(&t.decode().unwrap());
                }
            }
            Event::GeneralRef(r) if in_failure => {
                let s = match r.as_ref() {
                    b"quot" => "\"",
                    b"amp" => "&",
                    b"lt" => "<",
                    b"gt" => ">",
                    _ => "'",
                };
                if let Some((_, text)) = current.as_mut().and_then(|c| c.failure.as_mut()) {
                    text.push_str(s);
                }
            }
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"skipped" => {
                if let Some(c) = current.as_mut() {
                    c.skipped = true;
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_junit_report_has_one_testcase_per_scenario_and_names_file_and_line() {
    let (_, xml, dir) = junit_run();
    let cases = testcases(xml);
    let files = std::fs::read_dir(root().join("cases"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .count();
    let cases_suite = root().join("cases").display().to_string();
    let extra = dir.join("extra").display().to_string();
    let in_suite = |s: &str| cases.iter().filter(|c| c.suite == s).count();
    assert_eq!(in_suite(&cases_suite), files, "{xml}");
    assert_eq!(in_suite(&extra), 2, "{xml}");
    assert_eq!(cases.len(), files + 2);
    for c in cases.iter().filter(|c| c.suite == cases_suite) {
        assert!(c.failure.is_none(), "{} failed: {:?}", c.name, c.failure);
    }

    let wrong = dir.join("extra/basic-delivery-wrong.toml");
    let case = cases
        .iter()
        .find(|c| c.name == "basic-delivery-wrong")
        .unwrap();
    let (message, text) = case.failure.clone().expect("the wrong case fails");
    let want = format!(
        "{}:37: hello: expected left, got delivered",
        wrong.display()
    );
    assert!(message.starts_with(&want), "{message}");
    assert!(text.starts_with(&want), "{text}");

    let typo = cases.iter().find(|c| c.name == "typo").unwrap();
    let (message, _) = typo
        .failure
        .clone()
        .expect("a broken file is a failing testcase");
    assert!(
        message.starts_with(&format!(
            "{}:8: pop3.mailbox[0].message[0].subjet: unknown key",
            dir.join("extra/typo.toml").display()
        )),
        "{message}"
    );
}
