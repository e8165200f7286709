//! Four popbridge processes over one PostgreSQL move 200 real Dovecot mailboxes while
//! the test breaks them: SIGKILL, SIGSTOP past the lease time then SIGCONT, one
//! instance's database link cut (silent, then restored), and a restart of PostgreSQL.
//! Afterwards the oracle checks what several instances must guarantee:
//!
//! - nothing lost: every message reached the SMTP server, and every mailbox is empty;
//! - every message the SMTP server accepted twice was announced as
//!   `message.possible_duplicate` by the instance that submitted it again;
//! - no DELE without a committed delivery row: each DELE the server received (the POP3
//!   tap's record, with the UIDL it names) came after the commit of the transaction that
//!   recorded that message as delivered (PostgreSQL's commit timestamps);
//! - no ledger write at a stale epoch: a trigger compares each written row's epoch with
//!   the lease's epoch in the writing transaction;
//! - never two POP3 sessions at work on one account at once: the tap's command times of
//!   the sessions of each user do not interleave. A stopped process keeps its TCP
//!   connection open while another instance takes the account over; it must send nothing
//!   once resumed (it fences itself), so its commands all precede the next session's.
//!
//! The faults fire at counts of accepted messages (the SMTP mock's watch), drawn from a
//! fixed seed; the SMTP mock answers each end of data after a delay, so that the run
//! lasts long enough for every fault to hit work in progress. The process is stopped
//! while it holds a lease; the test waits until the database's clock has passed the
//! expiry of its leases, has another instance take one of those accounts over (that
//! instance's next process runs `fetch --account`), and resumes the stopped one only
//! when the takeover is done. The cut lasts longer than the lease by the real clock.
//!
//! Needs Dovecot, root, and PostgreSQL (skipped without them, failing with
//! `POPBRIDGE_REQUIRE_PEERS=1`). About a minute.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mock_core::{FaultAction, FaultRule, Hook};
use mock_smtp::{MockSmtp, MockSmtpHandle, Outcome};
use popbridge::cluster::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::cluster::connect_plain;
use crate::cluster::pg::Postgres;
use crate::harness::{fetch_command, message_id_of, read_events, smtp, write_private};
use crate::interop::{self, chown_tree, maildir_files, write_maildir, Mail};
use crate::pop3_tap::{Tap, TapSession};

/// Mailboxes on the Dovecot server (one account each).
const MAILBOXES: usize = 200;
/// Messages per mailbox, drawn.
const PER_MAILBOX: std::ops::RangeInclusive<usize> = 2..=8;
/// popbridge processes at once.
const INSTANCES: usize = 4;
/// The lease time to live (the configuration's minimum).
const TTL: Duration = Duration::from_secs(10);
/// Accounts each instance works on at once.
const PARALLEL: usize = 2;
/// Sessions the cluster may hold on the POP3 server.
const SESSIONS: u32 = 8;
/// The SMTP mock's delay before each final reply to a message's data.
const END_OF_DATA_DELAY: Duration = Duration::from_millis(250);
/// How long the cut link stays cut.
const HOLD: Duration = Duration::from_secs(13);
/// Between one process of a slot and the next.
const PACE: Duration = Duration::from_millis(200);
/// The whole run, faults included.
const BOUND: Duration = Duration::from_secs(360);
const SEED: u64 = 0x0c1a_5732_0000_0016;
/// The instance whose database link goes through the harness's link proxy, which the test cuts.
const CUT_SLOT: usize = 2;

/// The audit the oracle reads: every write of a ledger row, with the lease's epoch as the
/// writing transaction saw it and the transaction's id (for its commit time).
const AUDIT: &str = "
CREATE TABLE audit_write (
    tbl text NOT NULL,
    account text NOT NULL,
    key text,
    state text,
    epoch bigint,
    lease_epoch bigint,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_write (tbl, account, key, state, epoch, lease_epoch)
    VALUES (TG_TABLE_NAME, NEW.account, to_jsonb(NEW)->>'key', to_jsonb(NEW)->>'state',
            NEW.epoch, (SELECT epoch FROM lease WHERE account = NEW.account));
    RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON ledger_message
    FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON ledger_submission
    FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON ledger_pass
    FOR EACH ROW EXECUTE FUNCTION audit_write();
";

fn user(b: usize) -> String {
    format!("box{b:03}")
}

fn password(b: usize) -> String {
    format!("pw-{b:03}-s3cret")
}

/// Message `i` of mailbox `b`: mostly small, some of tens of kilobytes, a few of
/// hundreds.
fn message(b: usize, i: usize, rng: &mut StdRng) -> Mail {
    let size = match rng.gen_range(0..100) {
        0..=69 => rng.gen_range(1_000..8_000),
        70..=94 => rng.gen_range(20_000..100_000),
        _ => rng.gen_range(300_000..700_000),
    };
    let message_id = format!("<b{b:03}-m{i}@isp.example>");
    let sender = format!("sender-{b:03}-{i}@example.net");
    let mut text = format!(
        "Return-Path: <{sender}>\nFrom: <{sender}>\nTo: {}@isp.example\nSubject: cluster {b} {i}\nMessage-ID: {message_id}\nDate: Mon, 07 Dec 2026 10:00:00 +0000\n\n",
        user(b)
    );
    let filler = (b'a' + (i % 26) as u8) as char;
    let mut line = 0;
    while text.len() < size {
        writeln!(
            text,
            "{b:03}-{i}-{line:05} {}",
            filler.to_string().repeat(60)
        )
        .unwrap();
        line += 1;
    }
    Mail::new(message_id, sender, text.into_bytes())
}

/// One instance: a configuration, and its processes one after another.
struct Slot {
    k: usize,
    dir: PathBuf,
    config: PathBuf,
    /// The running process's pid.
    pid: watch::Sender<Option<u32>>,
    /// The next process works on this account only (`fetch --account`).
    only: Mutex<Option<String>>,
    runs: Mutex<Vec<RunRecord>>,
}

/// One `popbridge fetch` process of a slot.
#[derive(Debug)]
struct RunRecord {
    pid: u32,
    events: PathBuf,
    stderr: PathBuf,
    code: Option<i32>,
    signal: Option<i32>,
}

impl Slot {
    fn helo(k: usize) -> String {
        format!("i{k}.cluster.test")
    }

    /// The instance's name in the cluster (`instance`).
    fn instance(k: usize) -> String {
        format!("i{k}")
    }

    /// Instance `k` moving every mailbox of the POP3 server on `pop3` (loopback) to
    /// `smtp`, over the cluster `database` (none: the local ledger alone).
    fn new(
        root: &Path,
        k: usize,
        smtp: &MockSmtpHandle,
        pop3: u16,
        database: Option<&str>,
    ) -> Slot {
        let dir = root.join(format!("i{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!(
            "state_dir = \"{}\"\nparallel_accounts = {PARALLEL}\n\
             [transport]\nhost = \"127.0.0.1\"\nport = {}\nhelo = \"{}\"\n\
             [timeouts]\nconnect = \"10s\"\ncommand = \"30s\"\ndata = \"60s\"\n",
            dir.join("state").display(),
            smtp.addr().unwrap().port(),
            Slot::helo(k),
        );
        for b in 0..MAILBOXES {
            write!(
                text,
                "{}auth = \"user\"\nusername = \"{}\"\npassword = \"{}\"\ndeliver_to = \"{}@contoso.local\"\n",
                crate::harness::plain_account(&user(b), "127.0.0.1", pop3),
                user(b),
                password(b),
                user(b)
            )
            .unwrap();
        }
        if let Some(database) = database {
            write!(
                text,
                "[cluster]\ndatabase = \"{database}\"\ninstance = \"{}\"\nlease_ttl = \"{}s\"\nserver_sessions = {SESSIONS}\n",
                Slot::instance(k),
                TTL.as_secs()
            )
            .unwrap();
        }
        let config = dir.join("popbridge.toml");
        write_private(&config, text);
        Slot {
            k,
            dir,
            config,
            pid: watch::channel(None).0,
            only: Mutex::new(None),
            runs: Mutex::new(Vec::new()),
        }
    }

    /// Runs `popbridge fetch` again and again until `stop`, telling `ended` after each.
    async fn work(self: Arc<Self>, mut stop: watch::Receiver<bool>, ended: mpsc::Sender<()>) {
        let mut n = 0;
        while !*stop.borrow() {
            let events = self.dir.join(format!("run{n:03}.events.jsonl"));
            let stderr = self.dir.join(format!("run{n:03}.stderr"));
            let mut command = fetch_command(&self.config, &events);
            if let Some(account) = self.only.lock().unwrap().take() {
                command.arg("--account").arg(account);
            }
            let mut child = command
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let pid = child.id().unwrap();
            self.pid.send_replace(Some(pid));
            let status = child.wait().await.unwrap();
            self.pid.send_replace(None);
            self.runs.lock().unwrap().push(RunRecord {
                pid,
                events,
                stderr,
                code: status.code(),
                signal: status.signal(),
            });
            n += 1;
            let _ = ended.send(()).await;
            tokio::select! {
                _ = tokio::time::sleep(PACE) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Waits for a running process of this slot and sends it `signal`; its pid.
    async fn signal(&self, signal: &str) -> u32 {
        let mut pid = self.pid.subscribe();
        let pid = pid.wait_for(Option::is_some).await.unwrap().unwrap();
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
        pid
    }
}

/// What the faults did, for the checks and the summary.
#[derive(Default)]
struct Faults {
    killed: Vec<(usize, u32)>,
    /// The process that took an account of the stopped one over, and the account.
    takeover: Option<(u32, String)>,
    log: Vec<String>,
}

/// What a run needs: the Dovecot server holding the mailboxes, the SMTP mock, and the
/// database (its schema made). Dropped in this order; the directory last.
struct Lab {
    sink: MockSmtpHandle,
    dovecot: interop::Peer,
    pg: Arc<Postgres>,
    /// Every message's Message-ID, with its mailbox.
    all_ids: BTreeMap<String, usize>,
    /// Octets of all the messages, on the wire.
    octets: usize,
    work: tempfile::TempDir,
}

impl Lab {
    /// The mailboxes drawn from `rng`, on a fresh Dovecot; the SMTP mock answering each
    /// end of data after `delay`. `None` when the test is skipped (no Dovecot, no root,
    /// no PostgreSQL).
    async fn new(rng: &mut StdRng, delay: Option<Duration>) -> Option<Lab> {
        let work = interop::workdir();
        let peers = interop::peers(work.path())?;
        let pg = Arc::new(Postgres::start()?);
        let mut all_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut octets = 0;
        for b in 0..MAILBOXES {
            let mails: Vec<Mail> = (0..rng.gen_range(PER_MAILBOX))
                .map(|i| message(b, i, rng))
                .collect();
            for m in &mails {
                all_ids.insert(m.message_id.clone(), b);
            }
            octets += mails.iter().map(Mail::wire_size).sum::<usize>();
            let maildir = work.path().join("home").join(user(b)).join("Maildir");
            write_maildir(&maildir, &mails);
        }
        chown_tree(&work.path().join("home"), peers.mail);
        let users: Vec<(String, String)> = (0..MAILBOXES).map(|b| (user(b), password(b))).collect();
        let users: Vec<(&str, &str)> = users.iter().map(|(u, p)| (&u[..], &p[..])).collect();
        let dovecot = interop::start_dovecot_for(&peers, work.path(), None, &users);
        let mut builder = MockSmtp::builder().record_transcript(false);
        if let Some(delay) = delay {
            builder =
                builder.fault(FaultRule::new(Hook::EndOfData, FaultAction::Delay(delay)).always());
        }
        let sink = smtp(builder).await;
        // The schema, made once before the instances start.
        drop(Cluster::connect(&pg.url(), "observer", TTL).await.unwrap());
        Some(Lab {
            sink,
            dovecot,
            pg,
            all_ids,
            octets,
            work,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_lose_nothing_through_kills_stops_a_cut_link_and_a_database_restart() {
    let began = Instant::now();
    let mut rng = StdRng::seed_from_u64(SEED);
    let Some(lab) = Lab::new(&mut rng, Some(END_OF_DATA_DELAY)).await else {
        return;
    };
    let (sink, dovecot, pg, work) = (lab.sink, lab.dovecot, lab.pg, lab.work);
    let (all_ids, octets) = (lab.all_ids, lab.octets);
    let tap = Tap::start(dovecot.addr).await;

    // The audit on the ledger tables, before any instance writes.
    connect_plain(&pg).await.batch_execute(AUDIT).await.unwrap();
    let link = pg.link().await;

    let slots: Vec<Arc<Slot>> = (0..INSTANCES)
        .map(|k| {
            let database = if k == CUT_SLOT {
                pg.url_via(link.addr())
            } else {
                pg.url()
            };
            let pop3 = tap.addr().port();
            Arc::new(Slot::new(work.path(), k, &sink, pop3, Some(&database)))
        })
        .collect();
    let (stop_tx, stop) = watch::channel(false);
    let (ended_tx, mut ended) = mpsc::channel(64);
    let mut workers = tokio::task::JoinSet::new();
    for slot in &slots {
        workers.spawn(slot.clone().work(stop.clone(), ended_tx.clone()));
    }
    drop(ended_tx);

    let total = all_ids.len() as u64;
    let faults = Arc::new(Mutex::new(Faults::default()));
    let run = async {
        let mut accepted = sink.accepted_watch();
        let at = |share: f64, rng: &mut StdRng| {
            (total as f64 * share) as u64 + rng.gen_range(0..total / 50)
        };
        let (kill1, stop1, cut1, restart1, kill2) = (
            at(0.08, &mut rng),
            at(0.20, &mut rng),
            at(0.30, &mut rng),
            at(0.50, &mut rng),
            at(0.70, &mut rng),
        );
        let say = |what: String| note(&faults, began, what);

        accepted.wait_for(|n| *n >= kill1).await.unwrap();
        let pid = slots[0].signal("KILL").await;
        faults.lock().unwrap().killed.push((0, pid));
        say(format!(
            "SIGKILL instance 0 (pid {pid}) at {kill1} accepted"
        ));

        accepted.wait_for(|n| *n >= stop1).await.unwrap();
        // Stopped while it holds a lease, which another instance then takes over before
        // the stopped one resumes.
        let db = connect_plain(&pg).await;
        held_leases(&db, &Slot::instance(1)).await;
        let stopped = slots[1].signal("STOP").await;
        let held = held_leases(&db, &Slot::instance(1)).await;
        say(format!(
            "SIGSTOP instance 1 (pid {stopped}) at {stop1} accepted, holding {:?}",
            held.iter().map(|(a, _)| a).collect::<Vec<_>>()
        ));
        let resume = {
            let (faults, rescuer) = (faults.clone(), slots[3].clone());
            tokio::spawn(async move {
                let until = held.iter().map(|(_, t)| *t).max().unwrap();
                crate::cluster::wait_for_db_clock(&db, until).await;
                let account = held[0].0.clone();
                *rescuer.only.lock().unwrap() = Some(account.clone());
                let killed = rescuer.signal("KILL").await;
                faults.lock().unwrap().killed.push((3, killed));
                let mut pid = rescuer.pid.subscribe();
                let rescue = pid.wait_for(|p| p.is_some_and(|p| p != killed)).await;
                let rescue = rescue.unwrap().unwrap();
                pid.wait_for(|p| *p != Some(rescue)).await.unwrap();
                faults.lock().unwrap().takeover = Some((rescue, account.clone()));
                note(&faults, began, format!(
                    "instance 1's leases expired; SIGKILL instance 3 (pid {killed}); its next process (pid {rescue}) took {account} over and ended"
                ));
                let sent = std::process::Command::new("kill")
                    .arg("-CONT")
                    .arg(stopped.to_string())
                    .status()
                    .unwrap();
                assert!(sent.success(), "kill -CONT {stopped}");
                note(
                    &faults,
                    began,
                    format!("SIGCONT instance 1 (pid {stopped})"),
                );
            })
        };

        accepted.wait_for(|n| *n >= cut1).await.unwrap();
        link.cut();
        say(format!(
            "cut instance {CUT_SLOT}'s database link at {cut1} accepted"
        ));
        tokio::time::sleep(HOLD).await;
        link.restore();
        say(format!("restored instance {CUT_SLOT}'s database link"));

        resume.await.unwrap();

        accepted.wait_for(|n| *n >= restart1).await.unwrap();
        say(format!("restarting PostgreSQL at {restart1} accepted"));
        let restarting = pg.clone();
        tokio::task::spawn_blocking(move || restarting.restart())
            .await
            .unwrap();
        say("PostgreSQL is back".to_string());

        accepted.wait_for(|n| *n >= kill2).await.unwrap();
        for k in [3, 0] {
            let pid = slots[k].signal("KILL").await;
            faults.lock().unwrap().killed.push((k, pid));
            say(format!(
                "SIGKILL instance {k} (pid {pid}) at {kill2} accepted"
            ));
        }
        // Until every mailbox is empty (whether all of it arrived is the oracle's).
        while left_on_server(work.path()) > 0 {
            ended.recv().await.expect("every instance stopped");
        }
        stop_tx.send_replace(true);
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
    };
    if tokio::time::timeout(BOUND, run).await.is_err() {
        panic!(
            "not done in {} s: {} messages left on the server, {} of {total} delivered\nfaults:\n{}\n{}",
            BOUND.as_secs(),
            left_on_server(work.path()),
            delivered_ids(&sink).len(),
            faults.lock().unwrap().log.join("\n"),
            last_errors(&slots),
        );
    }
    let wall = began.elapsed();
    let faults = std::mem::take(&mut *faults.lock().unwrap());
    let why = || {
        format!(
            "faults:\n{}\n{}",
            faults.log.join("\n"),
            last_errors(&slots)
        )
    };

    // Every property is checked, and every one that fails is reported, with its first
    // cases: a broken build usually breaks several, and each is worth seeing.
    let mut verdict = Verdict::default();

    // How each process ended: by our SIGKILL, or with one of popbridge's exit codes (not
    // 2, configuration: an unreachable database is 3, like a server; a lost lease 1).
    let killed: BTreeSet<u32> = faults.killed.iter().map(|(_, pid)| *pid).collect();
    let mut exits: BTreeMap<String, usize> = BTreeMap::new();
    let mut odd_exits = Vec::new();
    for slot in &slots {
        for r in slot.runs.lock().unwrap().iter() {
            let how = match (r.code, r.signal) {
                (_, Some(9)) if killed.contains(&r.pid) => "killed by the test".to_string(),
                (Some(code @ (0 | 1 | 3 | 4)), _) => format!("exit {code}"),
                (code, signal) => {
                    let err = std::fs::read_to_string(&r.stderr).unwrap_or_default();
                    odd_exits.push(format!(
                        "instance {} pid {}: {code:?}/{signal:?}: {err}",
                        slot.k, r.pid
                    ));
                    format!("{code:?}/{signal:?}")
                }
            };
            *exits.entry(how).or_default() += 1;
        }
    }
    verdict.check("processes end with a meaningful status", odd_exits);

    // Nothing lost: every message reached the SMTP server, none is left on the POP3 one.
    let captured = sink.captured();
    let mut acceptances: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for t in captured.iter().filter(|t| t.outcome == Outcome::Accepted) {
        let id = message_id_of(t).expect("every message has a Message-ID");
        assert!(all_ids.contains_key(&id), "a message nobody sent: {id}");
        let k = (0..INSTANCES)
            .find(|k| t.helo.as_deref() == Some(&Slot::helo(*k)))
            .unwrap_or_else(|| panic!("a transaction of no instance: {:?}", t.helo));
        acceptances.entry(id).or_default().push(k);
    }
    let mut lost: Vec<String> = (all_ids.keys())
        .filter(|id| !acceptances.contains_key(*id))
        .map(|id| format!("{id} never reached the SMTP server"))
        .collect();
    let left = left_on_server(work.path());
    if left > 0 {
        lost.push(format!("{left} messages left on the POP3 server"));
    }
    verdict.check("nothing lost", lost);

    // Every duplicate was announced by the instance that submitted it again.
    let mut named: Vec<BTreeSet<String>> = vec![BTreeSet::new(); INSTANCES];
    let mut interrupted = [0; INSTANCES];
    for slot in &slots {
        for r in slot.runs.lock().unwrap().iter() {
            for e in read_events(&r.events) {
                if e["kind"] == "message.possible_duplicate" {
                    if let Some(id) = e["message_id"].as_str() {
                        named[slot.k].insert(id.to_owned());
                    }
                } else if e["kind"] == "pass.interrupted" {
                    interrupted[slot.k] += 1;
                }
            }
        }
    }
    let mut unnamed = Vec::new();
    let mut duplicated = 0;
    for (id, by) in &acceptances {
        if by.len() > 1 {
            duplicated += 1;
            for k in &by[1..] {
                if !named[*k].contains(id) {
                    unnamed.push(format!(
                        "{id}: accepted from instances {by:?}, not named by {k}"
                    ));
                }
            }
        }
    }
    verdict.check("every duplicate announced", unnamed);

    // The stop hit work in progress: another instance took one of its accounts over
    // while it was stopped, and on resuming the stopped process found its leases lost
    // and stopped those passes (it fenced itself).
    let (by, account) = faults.takeover.clone().expect("the takeover is in the log");
    let took_over = (slots[3].runs.lock().unwrap().iter())
        .filter(|r| r.pid == by)
        .flat_map(|r| read_events(&r.events))
        .any(|e| e["kind"] == "pass.finished" && e["account"] == account.as_str());
    let mut not_fenced = Vec::new();
    if !took_over {
        not_fenced.push(format!("process {by} finished no pass of {account}"));
    }
    if interrupted[1] == 0 {
        not_fenced.push("the stopped instance interrupted no pass".to_string());
    }
    verdict.check(
        "the stopped instance was taken over and fenced itself",
        not_fenced,
    );

    // The ledger's writes: none at a stale epoch; when each delivery row committed. (A
    // client of its own: the restart ended every earlier session.)
    let db = connect_plain(&pg).await;
    let stale = db
        .query(
            "SELECT tbl, account, coalesce(key, ''), epoch, lease_epoch FROM audit_write \
             WHERE lease_epoch IS DISTINCT FROM epoch",
            &[],
        )
        .await
        .unwrap();
    let stale: Vec<String> = stale
        .iter()
        .map(|r| {
            let (t, a, k, e, l): (String, String, String, i64, Option<i64>) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            format!("{t} {a} {k}: written at epoch {e}, lease at {l:?}")
        })
        .collect();
    verdict.check("no ledger write at a stale epoch", stale);
    let writes: i64 = db
        .query_one("SELECT count(*) FROM audit_write", &[])
        .await
        .unwrap()
        .get(0);
    let committed: HashMap<(String, String), SystemTime> = db
        .query(
            "SELECT account, key, min(pg_xact_commit_timestamp(xid::text::xid)) \
             FROM audit_write WHERE tbl = 'ledger_message' AND state = 'delivered' \
             GROUP BY account, key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();

    // Every DELE after the commit of its message's delivery row.
    let sessions = tap.sessions();
    let mut early = Vec::new();
    let mut deles = 0;
    for s in &sessions {
        let Some(account) = &s.user else { continue };
        for (at, n) in &s.deles {
            deles += 1;
            let Some(uid) = s.uidl.get(n) else {
                early.push(format!(
                    "session {} ({account}): DELE {n} of no listed UIDL",
                    s.id
                ));
                continue;
            };
            match committed.get(&(account.clone(), uid.clone())) {
                Some(commit) if commit < at => {}
                found => early.push(format!(
                    "session {} ({account}): DELE {n} ({uid}) at {at:?}, delivery committed at {found:?}",
                    s.id
                )),
            }
        }
    }
    if deles < all_ids.len() {
        early.push(format!("only {deles} DELEs for {} messages", all_ids.len()));
    }
    verdict.check("no DELE before its delivery committed", early);

    // Never two sessions at work on one account.
    verdict.check(
        "never two sessions at work on one account",
        overlapping_sessions(&sessions),
    );
    verdict.assert(&why());

    let extra: usize = acceptances.values().map(|v| v.len() - 1).sum();
    let all_named: usize = named.iter().map(BTreeSet::len).sum();
    eprintln!(
        "cluster faults: {} messages ({:.1} MB) in {MAILBOXES} mailboxes, {INSTANCES} instances, \
         {:.1} s; processes: {exits:?}; {duplicated} messages duplicated ({extra} extra copies), \
         {all_named} announced; {} POP3 sessions, {deles} DELEs, {writes} ledger writes audited\n{}",
        all_ids.len(),
        octets as f64 / 1e6,
        wall.as_secs_f64(),
        sessions.len(),
        faults.log.join("\n")
    );
    drop(dovecot);
}

/// The oracle's findings: each property that failed, with its first cases.
#[derive(Default)]
struct Verdict {
    failed: Vec<String>,
}

impl Verdict {
    /// Records `property` as failed when `cases` is not empty.
    fn check(&mut self, property: &str, cases: Vec<String>) {
        if !cases.is_empty() {
            let shown: Vec<&str> = cases.iter().take(10).map(String::as_str).collect();
            self.failed.push(format!(
                "FAILED: {property} ({} cases):\n  {}",
                cases.len(),
                shown.join("\n  ")
            ));
        }
    }

    /// Fails the test naming every property that failed, then `context`.
    fn assert(&self, context: &str) {
        assert!(
            self.failed.is_empty(),
            "{}\n{context}",
            self.failed.join("\n")
        );
    }
}

/// Adds a line to the faults' log, with the time since the test began.
fn note(faults: &Mutex<Faults>, began: Instant, what: String) {
    let line = format!("{:6.1} s: {what}", began.elapsed().as_secs_f64());
    faults.lock().unwrap().log.push(line);
}

/// The leases `instance` holds now (by the database's clock) and until when, waiting
/// (a bounded poll) until it holds at least one.
async fn held_leases(db: &tokio_postgres::Client, instance: &str) -> Vec<(String, SystemTime)> {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = db
            .query(
                "SELECT account, expires_at FROM lease \
                 WHERE owner = $1 AND expires_at > now() ORDER BY account",
                &[&instance],
            )
            .await
            .unwrap();
        if !rows.is_empty() {
            return rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        assert!(
            Instant::now() < give_up,
            "{instance} held no lease for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages still in the mailboxes.
fn left_on_server(work: &Path) -> usize {
    (0..MAILBOXES)
        .map(|b| maildir_files(&work.join("home").join(user(b)).join("Maildir")).len())
        .sum()
}

/// The Message-IDs the SMTP server accepted.
fn delivered_ids(sink: &MockSmtpHandle) -> BTreeSet<String> {
    (sink.captured().iter())
        .filter(|t| t.outcome == Outcome::Accepted)
        .filter_map(message_id_of)
        .collect()
}

/// Pairs of sessions of one user whose spans of commands (first to last) overlap.
fn overlapping_sessions(sessions: &[TapSession]) -> Vec<String> {
    let mut by_user: BTreeMap<&str, Vec<(SystemTime, SystemTime, u64)>> = BTreeMap::new();
    for s in sessions {
        if let (Some(user), Some((first, last))) = (&s.user, s.active()) {
            by_user.entry(user).or_default().push((first, last, s.id));
        }
    }
    let mut out = Vec::new();
    for (user, mut spans) in by_user {
        spans.sort();
        let mut busy: Option<(SystemTime, u64)> = None;
        for (first, last, id) in spans {
            if let Some((until, other)) = busy {
                if first <= until {
                    out.push(format!(
                        "{user}: session {id} began while session {other} was still sending"
                    ));
                }
            }
            if busy.is_none_or(|(until, _)| last > until) {
                busy = Some((last, id));
            }
        }
    }
    out
}

/// The end of each instance's last process's standard error.
fn last_errors(slots: &[Arc<Slot>]) -> String {
    let mut out = String::new();
    for slot in slots {
        let runs = slot.runs.lock().unwrap();
        if let Some(r) = runs.last() {
            let text = std::fs::read_to_string(&r.stderr).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            writeln!(
                out,
                "instance {} ({} processes), last stderr:\n{}",
                slot.k,
                runs.len(),
                tail.join("\n")
            )
            .unwrap();
        }
    }
    out
}

/// Rounds of each count of instances in the throughput measurement.
const ROUNDS: usize = 3;

/// Throughput of 1, 2 and 4 instances over the same 200 Dovecot mailboxes (the fault
/// test's, without faults or a delay at the SMTP mock), each count on a fresh Dovecot
/// and database, and one instance without `[cluster]` for comparison: a measurement,
/// not run by default, that prints its figures (medians) and checks only that every
/// message arrived and every mailbox is empty.
/// `cargo test --release -p popbridge --test it cluster_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures"]
async fn cluster_throughput_with_one_two_and_four_instances() {
    // (label, instances, with the cluster)
    let setups = [
        ("1, local ledger", 1, false),
        ("1", 1, true),
        ("2", 2, true),
        ("4", 4, true),
    ];
    let mut results: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let mut size = (0, 0);
    for _ in 0..ROUNDS {
        for (label, n, cluster) in setups {
            let mut rng = StdRng::seed_from_u64(SEED);
            let Some(lab) = Lab::new(&mut rng, None).await else {
                return;
            };
            size = (lab.all_ids.len(), lab.octets);
            let database = cluster.then(|| lab.pg.url());
            let pop3 = lab.dovecot.addr.port();
            let slots: Vec<Slot> = (0..n)
                .map(|k| Slot::new(lab.work.path(), k, &lab.sink, pop3, database.as_deref()))
                .collect();
            let cpu = Cpu::now();
            let began = Instant::now();
            let children: Vec<_> = (slots.iter())
                .map(|s| {
                    fetch_command(&s.config, &s.dir.join("events.jsonl"))
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(s.dir.join("stderr")).unwrap())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for mut child in children {
                let status = child.wait().await.unwrap();
                // 1: an account another instance held was skipped.
                assert!(matches!(status.code(), Some(0 | 1)), "{label}: {status}");
            }
            let secs = began.elapsed().as_secs_f64();
            let busy = cpu.busy_cores();
            assert_eq!(
                left_on_server(lab.work.path()),
                0,
                "{label}: left on the server"
            );
            assert_eq!(delivered_ids(&lab.sink).len(), lab.all_ids.len(), "{label}");
            let (messages, octets) = (lab.all_ids.len() as f64, lab.octets as f64);
            results
                .entry(label)
                .or_default()
                .push((messages / secs, octets / secs / 1e6, busy));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let one = median(results["1"].iter().map(|r| r.0).collect());
    let mut table = format!(
        "cluster throughput: {} messages, {:.1} MB, {MAILBOXES} Dovecot mailboxes, medians of {ROUNDS} rounds\n\
         | instances | msg/s | MB/s | × one instance | busy cores |\n|---|---|---|---|---|\n",
        size.0,
        size.1 as f64 / 1e6
    );
    for (label, _, _) in setups {
        let rows = &results[label];
        let rate = median(rows.iter().map(|r| r.0).collect());
        writeln!(
            table,
            "| {label} | {rate:.0} | {:.1} | {:.2} | {:.2} |",
            median(rows.iter().map(|r| r.1).collect()),
            rate / one,
            median(rows.iter().map(|r| r.2).collect()),
        )
        .unwrap();
    }
    eprintln!("{table}");
}

/// The machine's CPU time from `/proc/stat`, to tell how many cores a run kept busy
/// (every process counted).
struct Cpu {
    busy: u64,
    total: u64,
}

impl Cpu {
    fn now() -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = (stat.lines().next().unwrap_or_default().split_whitespace())
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Cpu {
            busy: total - idle,
            total,
        }
    }

    /// Cores kept busy since `self`.
    fn busy_cores(&self) -> f64 {
        let now = Cpu::now();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = (now.total - self.total).max(1) as f64;
        (now.busy - self.busy) as f64 / total * cores
    }
}
