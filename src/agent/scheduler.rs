//! The work queue: one entry per object key, the latest request wins, `--jobs` at a time, failures retried
//! with backoff without ever blocking the others.
//!
//! An entry is queued, running, or waiting for its retry time. A new request for a key that is running marks
//! it dirty, so the key runs again when the current run ends (the file changed while being handled); for a
//! waiting key it replaces the job and makes it ready now (new information beats the backoff).
//!
//! Removals wait until no upload is queued or running (rclone's `--delete-after`): a rename arrives as a
//! removal of the old path and a sync of the new one, and the sync wants the old object as the source of a
//! server-side copy; deleting it first would turn every rename into a re-upload, and would leave a window in
//! which the remote holds neither name. Syncs waiting for a retry do not hold removals back. And no sync
//! starts while a removal runs: a removal decides from `stat` which objects are stale, and a file created
//! under the removed path meanwhile must not have its fresh object deleted after that decision.
//!
//! The scheduler only orders work; what a job does lives in `actions`, and the agent loop drives
//! [`Scheduler::next_ready`] / [`Scheduler::finish`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use super::remote_check::RemoteFinding;

use tokio::time::Instant;

/// What to do for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Bring the object in line with the local file (upload, copy, adopt, or nothing if already synced).
    /// `finding`: the remote check saw the object missing or changed, so the index row is not to be trusted
    /// as it stands (a later request for the same key keeps it: new local news does not make the remote
    /// whole again).
    Sync { rel: PathBuf, renamed_from: Option<PathBuf>, finding: Option<RemoteFinding> },
    /// The local path (and everything under it) is gone: forget it, delete the objects if `--delete`.
    Remove { rel: PathBuf },
    /// `--delete`: an object the index does not know, whose local path held no file when the remote check
    /// listed it: delete it if that is still so.
    DeleteStray { rel: PathBuf },
}

impl Job {
    pub fn sync(rel: PathBuf) -> Job {
        Job::Sync { rel, renamed_from: None, finding: None }
    }

    pub fn rel(&self) -> &PathBuf {
        match self {
            Job::Sync { rel, .. } | Job::Remove { rel } | Job::DeleteStray { rel } => rel,
        }
    }

    /// `self` replaced by the newer request `next` (the latest wins, but a remote finding is kept).
    fn superseded_by(&self, next: Job) -> Job {
        match (self, next) {
            (Job::Sync { finding: Some(f), .. }, Job::Sync { rel, renamed_from, finding: None }) => {
                Job::Sync { rel, renamed_from, finding: Some(*f) }
            }
            (_, next) => next,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sync,
    Removal,
}

impl Kind {
    fn of(job: &Job) -> Kind {
        match job {
            Job::Sync { .. } => Kind::Sync,
            Job::Remove { .. } | Job::DeleteStray { .. } => Kind::Removal,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Running,
    Waiting(Instant),
}

#[derive(Debug)]
struct Entry {
    job: Job,
    phase: Phase,
    /// A newer request arrived while running: run again afterwards.
    dirty: bool,
    /// What the running job is (counted in `running_syncs` / `running_removals`).
    running_as: Option<Kind>,
    attempts: u32,
}

/// How a finished job went, as far as the queue cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Done,
    /// Try again after a backoff.
    Retry,
}

/// First retry delay; doubles per failed attempt up to `max_delay`.
const BASE_DELAY: Duration = Duration::from_secs(2);

pub struct Scheduler {
    entries: HashMap<String, Entry>,
    /// Keys ready to run, in request order (a key may appear twice; stale items are skipped).
    ready: VecDeque<String>,
    /// Ready removals held back while a sync is queued or running.
    removals: VecDeque<String>,
    running_syncs: usize,
    running_removals: usize,
    waiting: BinaryHeap<Reverse<(Instant, String)>>,
    running: usize,
    jobs: usize,
    max_delay: Duration,
    rng: fastrand::Rng,
}

impl Scheduler {
    pub fn new(jobs: usize, max_delay: Duration) -> Self {
        Scheduler {
            entries: HashMap::new(),
            ready: VecDeque::new(),
            removals: VecDeque::new(),
            running_syncs: 0,
            running_removals: 0,
            waiting: BinaryHeap::new(),
            running: 0,
            jobs: jobs.max(1),
            max_delay,
            rng: fastrand::Rng::new(),
        }
    }

    /// Ask for `job` on `key`. Returns true if the key was not known before.
    pub fn request(&mut self, key: String, job: Job) -> bool {
        match self.entries.get_mut(&key) {
            Some(entry) => {
                let now_a_sync = Kind::of(&job) == Kind::Sync && Kind::of(&entry.job) == Kind::Removal;
                entry.job = entry.job.superseded_by(job);
                match entry.phase {
                    // A removal turned into a sync may sit among the held removals: queue it with the syncs.
                    Phase::Queued if now_a_sync => self.ready.push_back(key),
                    Phase::Queued => {}
                    Phase::Running => entry.dirty = true,
                    Phase::Waiting(_) => {
                        entry.phase = Phase::Queued;
                        self.ready.push_back(key);
                    }
                }
                false
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry { job, phase: Phase::Queued, dirty: false, running_as: None, attempts: 0 },
                );
                self.ready.push_back(key);
                true
            }
        }
    }

    /// Move waiting entries whose time has come to the ready queue.
    pub fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.waiting.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.waiting.pop() else { break };
            // Stale heap items (the entry was re-requested or finished meanwhile) are skipped.
            if let Some(entry) = self.entries.get_mut(&key) {
                if entry.phase == Phase::Waiting(at) {
                    entry.phase = Phase::Queued;
                    self.ready.push_back(key);
                }
            }
        }
    }

    /// When the next waiting entry becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.peek().map(|Reverse((at, _))| *at)
    }

    /// The next job to start, if a job slot is free.
    pub fn next_ready(&mut self) -> Option<(String, Job, u32)> {
        if self.running >= self.jobs {
            return None;
        }
        while self.running_removals == 0 {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            if entry.phase != Phase::Queued {
                continue;
            }
            if Kind::of(&entry.job) == Kind::Removal {
                self.removals.push_back(key);
                continue;
            }
            return self.start(key);
        }
        if self.running_syncs > 0 {
            return None;
        }
        while let Some(key) = self.removals.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.phase == Phase::Queued) {
                return self.start(key);
            }
        }
        None
    }

    fn start(&mut self, key: String) -> Option<(String, Job, u32)> {
        let entry = self.entries.get_mut(&key)?;
        entry.phase = Phase::Running;
        entry.dirty = false;
        let kind = Kind::of(&entry.job);
        entry.running_as = Some(kind);
        self.running += 1;
        match kind {
            Kind::Sync => self.running_syncs += 1,
            Kind::Removal => self.running_removals += 1,
        }
        let (job, attempts) = (entry.job.clone(), entry.attempts);
        Some((key, job, attempts))
    }

    /// Record how the running job for `key` ended; returns the retry time when it will be retried.
    pub fn finish(&mut self, key: &str, how: Finish, now: Instant) -> Option<Instant> {
        self.running = self.running.saturating_sub(1);
        let entry = self.entries.get_mut(key)?;
        match entry.running_as.take() {
            Some(Kind::Sync) => self.running_syncs = self.running_syncs.saturating_sub(1),
            Some(Kind::Removal) => self.running_removals = self.running_removals.saturating_sub(1),
            None => {}
        }
        if entry.dirty {
            // Something changed while it ran: run the latest request now, whatever this run's outcome.
            entry.phase = Phase::Queued;
            entry.dirty = false;
            self.ready.push_back(key.to_string());
            return None;
        }
        match how {
            Finish::Done => {
                self.entries.remove(key);
                None
            }
            Finish::Retry => {
                entry.attempts += 1;
                let attempts = entry.attempts;
                let at = now + self.backoff(attempts);
                let entry = self.entries.get_mut(key)?;
                entry.phase = Phase::Waiting(at);
                self.waiting.push(Reverse((at, key.to_string())));
                Some(at)
            }
        }
    }

    /// Forget a key that is not running (a removal supersedes its pending upload, say).
    pub fn cancel_if_idle(&mut self, key: &str) {
        if self.entries.get(key).is_some_and(|e| e.phase != Phase::Running) {
            self.entries.remove(key);
        }
    }

    fn backoff(&mut self, attempts: u32) -> Duration {
        let exp = BASE_DELAY.saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(self.max_delay);
        // Jitter in [50%, 100%]: spreads retries of many files that failed together.
        let factor = 0.5 + self.rng.f64() * 0.5;
        exp.mul_f64(factor)
    }

    /// Entries not finished (queued, running, or waiting).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// Entries waiting for a retry.
    pub fn waiting(&self) -> usize {
        self.entries.values().filter(|e| matches!(e.phase, Phase::Waiting(_))).count()
    }

    /// Attempts so far for `key` (0 if unknown).
    pub fn attempts(&self, key: &str) -> u32 {
        self.entries.get(key).map_or(0, |e| e.attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(rel: &str) -> Job {
        Job::sync(PathBuf::from(rel))
    }

    #[test]
    fn one_entry_per_key_and_latest_wins() {
        let mut s = Scheduler::new(2, Duration::from_secs(60));
        assert!(s.request("k".into(), sync("a")));
        assert!(!s.request("k".into(), Job::Remove { rel: "a".into() }));
        assert_eq!(s.len(), 1);
        let (key, job, _) = s.next_ready().unwrap();
        assert_eq!((key.as_str(), job), ("k", Job::Remove { rel: "a".into() }));
        assert!(s.next_ready().is_none());
    }

    #[test]
    fn jobs_limit_is_respected() {
        let mut s = Scheduler::new(2, Duration::from_secs(60));
        for k in ["a", "b", "c"] {
            s.request(k.into(), sync(k));
        }
        assert!(s.next_ready().is_some());
        assert!(s.next_ready().is_some());
        assert!(s.next_ready().is_none(), "two jobs at most");
        s.finish("a", Finish::Done, Instant::now());
        assert_eq!(s.next_ready().unwrap().0, "c");
    }

    #[test]
    fn a_request_while_running_runs_again_afterwards() {
        let mut s = Scheduler::new(1, Duration::from_secs(60));
        s.request("k".into(), sync("v1"));
        s.next_ready().unwrap();
        s.request("k".into(), sync("v2"));
        assert!(s.finish("k", Finish::Done, Instant::now()).is_none());
        let (_, job, _) = s.next_ready().unwrap();
        assert_eq!(job, sync("v2"));
    }

    #[test]
    fn failures_back_off_without_blocking_others() {
        let mut s = Scheduler::new(1, Duration::from_secs(60));
        let now = Instant::now();
        s.request("bad".into(), sync("bad"));
        s.request("good".into(), sync("good"));
        s.next_ready().unwrap();
        let at = s.finish("bad", Finish::Retry, now).unwrap();
        assert!(at > now && at <= now + BASE_DELAY);
        assert_eq!(s.next_ready().unwrap().0, "good", "the failing file does not block the other");
        s.finish("good", Finish::Done, now);
        assert!(s.next_ready().is_none(), "bad waits for its retry time");
        s.promote_due(at);
        let (key, _, attempts) = s.next_ready().unwrap();
        assert_eq!((key.as_str(), attempts), ("bad", 1));
        let again = s.finish("bad", Finish::Retry, at).unwrap();
        assert!(again - at >= BASE_DELAY, "the second delay is longer");
        assert_eq!(s.waiting(), 1);
        // New information about a waiting key makes it ready at once.
        s.request("bad".into(), sync("bad"));
        assert_eq!(s.next_ready().unwrap().0, "bad");
    }

    fn remove(rel: &str) -> Job {
        Job::Remove { rel: rel.into() }
    }

    #[test]
    fn removals_wait_for_queued_and_running_syncs_but_not_for_retries() {
        let mut s = Scheduler::new(4, Duration::from_secs(60));
        s.request("old".into(), remove("old"));
        s.request("new".into(), sync("new"));
        assert_eq!(s.next_ready().unwrap().0, "new", "the sync goes first although requested later");
        assert!(s.next_ready().is_none(), "the removal waits while the sync runs");
        let now = Instant::now();
        s.finish("new", Finish::Done, now);
        assert_eq!(s.next_ready().unwrap(), ("old".to_string(), remove("old"), 0));
        s.finish("old", Finish::Done, now);

        s.request("failing".into(), sync("failing"));
        s.request("gone".into(), remove("gone"));
        s.next_ready().unwrap();
        s.finish("failing", Finish::Retry, now);
        assert_eq!(s.next_ready().unwrap().0, "gone", "a sync waiting for its retry holds nothing back");
    }

    #[test]
    fn no_sync_starts_while_a_removal_runs() {
        let mut s = Scheduler::new(4, Duration::from_secs(60));
        s.request("dir".into(), remove("dir"));
        s.request("other".into(), remove("other"));
        assert_eq!(s.next_ready().unwrap().0, "dir");
        assert_eq!(s.next_ready().unwrap().0, "other", "removals may run together");
        s.request("dir/new".into(), sync("dir/new"));
        assert!(s.next_ready().is_none(), "a file created under a path being removed waits");
        let now = Instant::now();
        s.finish("dir", Finish::Done, now);
        assert!(s.next_ready().is_none());
        s.finish("other", Finish::Done, now);
        assert_eq!(s.next_ready().unwrap().0, "dir/new");
    }

    #[test]
    fn a_held_removal_turned_into_a_sync_runs_as_a_sync() {
        let mut s = Scheduler::new(4, Duration::from_secs(60));
        s.request("busy".into(), sync("busy"));
        s.request("k".into(), remove("k"));
        s.next_ready().unwrap();
        assert!(s.next_ready().is_none());
        s.request("k".into(), sync("k"));
        assert_eq!(s.next_ready().unwrap().1, sync("k"), "runs beside the other sync");
        assert!(s.next_ready().is_none(), "and only once");
    }

    #[test]
    fn backoff_is_capped() {
        let mut s = Scheduler::new(1, Duration::from_secs(60));
        for attempts in 1..40 {
            assert!(s.backoff(attempts) <= Duration::from_secs(60));
        }
    }
}
